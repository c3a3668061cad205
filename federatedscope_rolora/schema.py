"""The keys of the one YAML schema, their defaults, types and checks.

``config`` loads and validates files against ``SCHEMA``; this module only
lists what there is to load. A key's help text is what ``describe_schema``
prints and what the README's configuration table says.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from federatedscope_rolora.core.names import METHODS

FS_ONLY = "FederatedScope only; the embedded runner ignores it"
# model.type's optional suffix, FederatedScope-LLM's hub marker
MODEL_SUFFIX = "@huggingface_seqcls"


def model_path(model_type: str) -> str:
    """``model.type`` without its suffix: a Hub name or a local path,
    which may hold '@' in a folder's name (``/models/roberta@v2/large``)."""
    text = str(model_type)
    if text.lower().endswith(MODEL_SUFFIX):
        return text[:-len(MODEL_SUFFIX)]
    return text


def model_type_ok(model_type: str) -> bool:
    """No '@' in the last part of ``model.type`` but the suffix's."""
    return "@" not in model_path(model_type).rpartition("/")[2]


@dataclass(frozen=True)
class Field:
    default: Any
    kind: type | tuple[type, ...]
    help: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    check_help: str = ""


def _finite(v: Any) -> bool:
    """An int is finite however large (``math.isfinite`` would convert it
    to a float, and overflow past 1e308)."""
    return isinstance(v, int) or math.isfinite(v)


def _positive(v: Any) -> bool:
    return bool(_finite(v) and v > 0)


def _non_negative(v: Any) -> bool:
    return bool(_finite(v) and v >= 0)


def _rate(v: Any) -> bool:
    return bool(v == -1 or 0 < v <= 1)


GLUE_TASKS = ("sst2", "qnli", "mnli", "qqp", "rte", "cola", "mrpc")


# Your own data, NAME@tsv: NAME is a directory under data.root.
TSV_SUFFIX = "tsv"
TSV_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _task_ok(v: Any) -> bool:
    task, _, suffix = str(v).partition("@")
    if suffix.lower() == TSV_SUFFIX:
        return bool(TSV_NAME.fullmatch(task))
    return task.lower() in GLUE_TASKS and suffix in ("", "glue")


_POS: dict[str, Any] = {"check": _positive,
                        "check_help": "must be > 0 and finite"}
_NONNEG: dict[str, Any] = {"check": _non_negative,
                           "check_help": "must be >= 0 and finite"}
# The kind of a numeric key: an int or a float (bool is refused apart).
NUMBER = (int, float)

SCHEMA: dict[str, Field] = {
    "seed": Field(0, int, "seed of every random draw of the run",
                  check=lambda v: 0 <= v < 2 ** 32,
                  check_help="must be in [0, 2**32), as numpy's seed"),
    "outdir": Field("exp", str, "directory the run writes its outputs to"),
    "expname": Field("", str, "sub-directory of outdir (empty: none)"),
    "use_gpu": Field(False, bool, "train on CUDA when it is available"),
    "device": Field(0, int, "CUDA device index when use_gpu is True",
                    **_NONNEG),
    "backend": Field("torch", str, FS_ONLY, choices=("torch",)),
    "verbose": Field(1, int, FS_ONLY),
    "federate.mode": Field("standalone", str,
                           "standalone (both runners) or distributed "
                           "(FederatedScope only)",
                           choices=("standalone", "distributed")),
    "federate.method": Field("rolora", str, "how the adapter is federated",
                             choices=METHODS),
    "federate.client_num": Field(3, int, "number of clients", **_POS),
    "federate.total_round_num": Field(50, int, "number of rounds", **_POS),
    "federate.sample_client_rate": Field(
        -1.0, NUMBER, "share of clients drawn per round, in (0, 1]; wins "
        "over sample_client_num; -1: unset",
        check=_rate, check_help="must be -1 or in (0, 1]"),
    "federate.sample_client_num": Field(
        -1, int, "clients drawn per round when sample_client_rate is "
        "-1; -1: all",
        check=lambda v: v == -1 or v >= 1, check_help="must be -1 or >= 1"),
    "federate.share_local_model": Field(False, bool, FS_ONLY),
    "federate.online_aggr": Field(False, bool, FS_ONLY + "; must be "
                                  "False (the online aggregator needs "
                                  "every key in every update)",
                                  choices=(False,)),
    "federate.make_global_eval": Field(True, bool, FS_ONLY + "; the "
                                       "global adapter is always evaluated "
                                       "(the plugin sets True)"),
    "federate.save_to": Field("", str, FS_ONLY),
    "data.root": Field("data", str,
                       "GLUE directory in TSV layout (<root>/SST-2/"
                       "train.tsv); empty: the Hugging Face Hub"),
    "data.type": Field("sst2@glue", str, "GLUE task: sst2, qnli, mnli, "
                       "qqp, rte, cola or mrpc (suffix @glue optional); "
                       "or your own data, NAME@tsv: <data.root>/NAME/"
                       "train.tsv and dev.tsv with a label column and one "
                       "or two text columns",
                       check=lambda v: _task_ok(v),
                       check_help="must name a GLUE task (sst2, qnli, mnli, "
                       "qqp, rte, cola, mrpc), optionally with @glue, or "
                       "your own data as NAME@tsv"),
    "data.splitter": Field("iid", str, "how train data is split over "
                           "clients", choices=("iid", "lda")),
    "data.splitter_args": Field([], list, "[{alpha: A}] for lda (one "
                                "mapping, alpha alone)"),
    "model.type": Field("all-MiniLM-L6-v2@huggingface_seqcls", str,
                        "checkpoint name or local path "
                        "(suffix @huggingface_seqcls optional)",
                        check=model_type_ok,
                        check_help="must be a sequence-classification "
                        "checkpoint, NAME or NAME@huggingface_seqcls"),
    "llm.tok_len": Field(128, int, "maximum tokens per example", **_POS),
    "llm.adapter.use": Field(True, bool, "must be True: LoRA adapters"),
    "llm.adapter.args": Field(
        [{"adapter_package": "peft", "adapter_method": "lora", "r": 8,
          "lora_alpha": 16, "lora_dropout": 0.0,
          "target_modules": ["query", "value"]}],
        list, "one PEFT LoRA spec: r, lora_alpha, lora_dropout, "
        "target_modules, layers_to_transform"),
    "train.local_update_steps": Field(1, int, "local steps per round",
                                      **_POS),
    "train.batch_or_epoch": Field("batch", str, "unit of local steps",
                                  choices=("batch", "epoch")),
    "train.optimizer.type": Field("SGD", str, "local optimizer",
                                  choices=("SGD", "Adam", "AdamW")),
    "train.optimizer.lr": Field(0.1, NUMBER, "learning rate", **_POS),
    "train.optimizer.weight_decay": Field(0.0, NUMBER, "weight decay",
                                          **_NONNEG),
    "train.optimizer.momentum": Field(0.0, NUMBER, "SGD momentum",
                                      **_NONNEG),
    "train.is_enable_half": Field(False, bool, FS_ONLY + "; must be "
                                  "False (the adapter trains and travels "
                                  "in float32; FederatedScope's half "
                                  "precision made every update fail "
                                  "validation)", choices=(False,)),
    "grad.grad_clip": Field(-1.0, NUMBER, "max gradient norm; <= 0 (e.g. "
                            "-1): no clipping",
                            check=_finite, check_help="must be a "
                            "finite number"),
    "dataloader.batch_size": Field(64, int, "local batch size", **_POS),
    "dataloader.shuffle": Field(True, bool, "shuffle local batches"),
    "dataloader.num_workers": Field(0, int, FS_ONLY),
    "eval.freq": Field(1, int, "evaluate every this many rounds (and "
                       "after the last)", **_POS),
    "eval.metrics": Field(["acc"], list, FS_ONLY + "; the task decides "
                          "the metrics (acc, f1, mcc)"),
    "eval.split": Field(["test"], list, FS_ONLY + "; must hold 'test' "
                        "(the global adapter is scored on the test set)",
                        check=lambda v: "test" in v,
                        check_help="must hold 'test'"),
    "eval.best_res_update_round_wise_key": Field("test_acc", str, FS_ONLY),
    "eval.count_flops": Field(False, bool, FS_ONLY),
    "trainer.type": Field("rolora_trainer", str, FS_ONLY + "; must be "
                          "rolora_trainer", choices=("rolora_trainer",)),
    "rolora.head": Field("frozen", str,
                         "frozen: classifier stays at its seeded init and "
                         "never travels (the paper's code); trained: "
                         "trained and averaged every round",
                         choices=("frozen", "trained")),
    "rolora.first": Field("B", str, "factor trained in round 1",
                          choices=("A", "B")),
    "rolora.period": Field(1, int, "rounds per RoLoRA phase", **_POS),
    "rolora.weighting": Field("examples", str, "client weights in the "
                              "average", choices=("examples", "uniform")),
    "rolora.train_samples": Field(0, int, "train examples over all clients, "
                                  "fixed as client_num grows; 0: all",
                                  **_NONNEG),
    "rolora.eval_samples": Field(0, int, "test examples evaluated; 0: all",
                                 **_NONNEG),
    "rolora.per_client_eval": Field(
        "auto", str, "also score each client's model (the global "
        "adapter with the keys it keeps, FedSA-LoRA's own B) on its own "
        "test share (embedded runner: dealt like its train share; "
        "FederatedScope: its splitter's), reported apart as "
        "eval_per_client (example-weighted and plain mean over clients); "
        "what each client is sent for it counts as eval_down bytes; "
        "auto: for fedsa_lora only", choices=("auto", "always", "never")),
    "rolora.eval_batch_size": Field(64, int, "evaluation batch size",
                                    **_POS),
    "rolora.holdout": Field(2000, int, "test rows carved from train when "
                            "the local copy has no dev set (QQP)", **_POS),
    "rolora.threads": Field(0, int, "torch CPU threads; 0: torch's default",
                            check=lambda v: 0 <= v <= 4096,
                            check_help="must be in [0, 4096]"),
    "rolora.min_received": Field(
        1, int, "accepted client updates a round needs; with fewer the "
        "run stops (exit code 3) and its last checkpoint stays intact",
        **_POS),
    "rolora.client_deadline_s": Field(
        0.0, NUMBER, "seconds a client's local update may take; a later "
        "update is left out of its round; 0: no deadline (FederatedScope: "
        "the training time the client reports)", **_NONNEG),
    "rolora.prefix_cache": Field(
        False, bool, "run the frozen layers below the lowest adapted one "
        "(embeddings and layers 0..L-1, L = min(layers_to_transform)) "
        "once per input, without dropout, and train and evaluate only "
        "the layers above; off by default because it drops dropout in "
        "that prefix"),
    "rolora.prefix_cache_mb": Field(
        2048.0, NUMBER, "largest prefix cache allowed, in MB (10^6 bytes); a "
        "larger one stops the run before it starts (exit code 2)",
        **_POS),
}

LORA_ARG_KINDS: dict[str, type | tuple[type, ...]] = {
    "adapter_package": str, "adapter_method": str, "r": int,
    "lora_alpha": int, "lora_dropout": NUMBER, "target_modules": list,
    "layers_to_transform": (list, int, type(None)),
}
