"""The registered model builder: a PEFT ``SEQ_CLS`` LoRA model.

FederatedScope-LLM builds causal language models only; this builds what
the embedded runner builds (``training.models.build_model``): any
``AutoModelForSequenceClassification`` checkpoint with the LoRA of
``llm.adapter.args``, seeded by ``seed`` so every process, and every
client that builds its own copy, starts from the same adapter. The head
policy is not the model's business: each round's plan decides what
trains (``rolora.head``).
"""

from __future__ import annotations

from typing import Any

import torch

from federatedscope_rolora.fs.cfg_rolora import (
    fs_task,
    model_name,
    run_config,
    schema_view,
)
from federatedscope_rolora.fs.prefix import prepare
from federatedscope_rolora.runners.setup import (
    check_method_model,
    method_from_config,
)
from federatedscope_rolora.training.models import (
    LoraSpec,
    build_model,
    check_tok_len,
)


def build(model_cfg: Any) -> torch.nn.Module:
    """The model of ``model.type``, with the run's LoRA, seed and task.

    FederatedScope's standalone runner sets one torch thread before it
    builds models; ``rolora.threads`` (if set) takes over from here. With
    ``rolora.prefix_cache``, the first model runs its frozen prefix over
    the run's inputs (``fs/prefix.py``).
    """
    cfg = run_config()
    if model_name(model_cfg.type) != model_name(cfg.model.type):
        raise ValueError(f"model.type {model_cfg.type!r} differs from the "
                         f"run's {cfg.model.type!r}")
    if cfg.rolora.threads:
        torch.set_num_threads(int(cfg.rolora.threads))
    lora = LoraSpec.from_args(dict(cfg.llm.adapter.args[0]))
    task = fs_task(cfg)
    model, tokenizer = build_model(model_name(model_cfg.type),
                                   task.num_labels, lora, int(cfg.seed))
    check_tok_len(int(cfg.llm.tok_len), model, tokenizer,
                  model_name(model_cfg.type), len(task.text_columns))
    settings = schema_view(cfg)
    check_method_model(model, method_from_config(settings),
                       model_name(model_cfg.type))
    prepare(settings, model)
    return model
