"""The registered trainer (``trainer.type: rolora_trainer``).

FederatedScope's ``GeneralTorchTrainer`` with four hooks changed:

- on fit start, the round's plan decides what trains: the client hands the
  trainer the plan of the server's round (``set_plan``), never a counter
  of its own, so evaluation passes cannot shift the phase;
- the optimizer is the embedded runner's (trained parameters only, the
  same types and defaults: AdamW without weight decay unless set);
- the forward pass feeds a sequence-classification model and cuts each
  batch to its longest row; with ``rolora.prefix_cache`` it feeds the
  cached states after the frozen prefix instead of the tokens, and only
  the layers above run (``fs/prefix.py``);
- the metrics are the task's own (GLUE F1 of the positive class, MCC),
  beside FederatedScope's loss, total and ``eval.metrics``.

Evaluation batches are ``rolora.eval_batch_size`` examples of similar
length, as in the embedded runner. Flop counting (``eval.count_flops``)
is off: FederatedScope's counter assumes a model called on one tensor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from federatedscope.core.auxiliaries.scheduler_builder import get_scheduler
from federatedscope.core.auxiliaries.utils import param2tensor
from federatedscope.core.trainers import GeneralTorchTrainer
from federatedscope.core.trainers.context import CtxVar
from federatedscope.core.trainers.enums import LIFECYCLE, MODE
from torch.utils.data import DataLoader

from federatedscope_rolora.core.methods import RoundPlan
from federatedscope_rolora.fs import prefix
from federatedscope_rolora.fs.cfg_rolora import fs_task, schema_view
from federatedscope_rolora.fs.data import IDS, MASK, TYPES, row_lengths
from federatedscope_rolora.runners.setup import local_spec_from_config
from federatedscope_rolora.training.local import make_optimizer
from federatedscope_rolora.training.metrics import compute_metrics
from federatedscope_rolora.training.models import (
    get_adapter_state,
    load_adapter_state,
    set_trainable,
)
from federatedscope_rolora.training.prefix import run_model


class RoloraTrainer(GeneralTorchTrainer):  # type: ignore[misc]
    """Trains what the round's plan says; reports the task's metrics."""

    def __init__(self, model: torch.nn.Module, data: Any, device: Any,
                 config: Any, only_for_eval: bool = False,
                 monitor: Any = None) -> None:
        super().__init__(model, data, device, config, only_for_eval,
                         monitor)
        self.plan: RoundPlan | None = None
        self.metric_names = fs_task(config).metrics
        self.local_spec = local_spec_from_config(schema_view(config))
        self._evaluated: dict[str, float] = {}

    def set_plan(self, plan: RoundPlan) -> None:
        self.plan = plan

    def take_eval_results(self) -> dict[str, float]:
        """Metrics of the evaluations since the last call, by FederatedScope
        name (``test_acc``...)."""
        results, self._evaluated = self._evaluated, {}
        return results

    # --- data ---------------------------------------------------------
    def parse_data(self, data: Any) -> dict[str, Any]:
        init: dict[str, Any] = super().parse_data(data)
        batch_size = int(self.cfg.rolora.eval_batch_size)
        for split in ("val", "test"):
            loader = init.get(f"{split}_loader")
            if loader is None:
                continue
            dataset = loader.dataset
            order = sorted(range(len(dataset)),
                           key=row_lengths(dataset).__getitem__)
            init[f"{split}_loader"] = DataLoader(
                dataset, batch_size=batch_size, sampler=order)
            init[f"num_{split}_batch"] = math.ceil(len(dataset) /
                                                   batch_size)
        return init

    # --- hooks --------------------------------------------------------
    def register_default_hooks_train(self) -> None:
        super().register_default_hooks_train()
        self.register_hook_in_train(self._hook_on_fit_start_plan,
                                    "on_fit_start", insert_pos=0)

    def _hook_on_fit_start_plan(self, ctx: Any) -> None:
        if self.plan is None:
            raise RuntimeError("the rolora trainer got no round plan: the "
                               "client sets it from the server's round")
        names = [name for name, _ in ctx.model.named_parameters()]
        set_trainable(ctx.model, self.plan.trained_keys(names))

    def _hook_on_fit_start_init(self, ctx: Any) -> None:
        super()._hook_on_fit_start_init(ctx)
        if ctx.cur_mode in (MODE.TRAIN, MODE.FINETUNE):
            params = [p for p in ctx.model.parameters() if p.requires_grad]
            ctx.optimizer = make_optimizer(params, self.local_spec)
            ctx.scheduler = get_scheduler(ctx.optimizer,
                                          **ctx.cfg[ctx.cur_mode].scheduler)

    def _hook_on_batch_forward(self, ctx: Any) -> None:
        x, labels = ctx.data_batch
        width = max(int(x[:, MASK].sum(dim=1).max()), 1)
        x = x[:, :, :width]
        cache = prefix.current()
        inputs = {"attention_mask": x[:, MASK]}
        if cache is not None:
            inputs["inputs_embeds"] = cache.hidden(
                prefix.row_keys(x, IDS, MASK, TYPES), width)
        else:
            inputs["input_ids"] = x[:, IDS]
            if x.shape[1] > TYPES:
                inputs["token_type_ids"] = x[:, TYPES]
        labels = labels.to(ctx.device)
        out = run_model(ctx.model,
                        {k: v.to(ctx.device) for k, v in inputs.items()}
                        | {"labels": labels}, cache)
        ctx.y_true = CtxVar(labels, LIFECYCLE.BATCH)
        ctx.y_prob = CtxVar(out.logits, LIFECYCLE.BATCH)
        ctx.loss_batch = CtxVar(out.loss, LIFECYCLE.BATCH)
        ctx.batch_size = CtxVar(len(labels), LIFECYCLE.BATCH)

    def _hook_on_batch_forward_flop_count(self, ctx: Any) -> None:
        return None

    def _hook_on_fit_end(self, ctx: Any) -> None:
        super()._hook_on_fit_end(ctx)
        predictions = np.argmax(ctx.ys_prob, axis=1).tolist()
        task_metrics = compute_metrics(predictions, ctx.ys_true.tolist(),
                                       self.metric_names)
        for name, value in task_metrics.items():
            ctx.eval_metrics[f"{ctx.cur_split}_{name}"] = value

    # --- parameters ---------------------------------------------------
    def evaluate(self, target_data_split_name: str = "test"
                 ) -> dict[str, float]:
        metrics: dict[str, float] = super().evaluate(target_data_split_name)
        self._evaluated.update(metrics)
        return metrics

    def get_model_para(self) -> dict[str, torch.Tensor]:
        """The adapter, never the frozen base model."""
        return get_adapter_state(self.ctx.model)

    def update(self, model_parameters: dict[str, Any],
               strict: bool = False) -> None:
        load_adapter_state(self.ctx.model,
                           {k: param2tensor(v) for k, v in
                            model_parameters.items()})
