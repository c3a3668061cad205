"""One YAML schema for both runners: FederatedScope's keys plus ``rolora:``.

The embedded runner reads the same files as FederatedScope-LLM. Every key
it accepts is listed in ``SCHEMA`` with its default, its type and what it
means; a key that is not listed is an error naming it, never silently
ignored. Keys marked "FederatedScope only" are accepted so that one file
serves both runners, and documented as doing nothing in the embedded one.
Overrides use FederatedScope's form: ``KEY VALUE`` pairs after ``--cfg``.
"""

from __future__ import annotations

import ast
import copy
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from federatedscope_rolora.core.names import METHODS
from federatedscope_rolora.core.sampling import clients_per_round

FS_ONLY = "FederatedScope only; the embedded runner ignores it"


class ConfigError(ValueError):
    """Bad configuration; the message names the key."""


def _make_loader() -> Any:
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.2); plain
    PyYAML keeps YAML 1.1's rule and returns the string '1e-4'. A copy,
    so ``yaml.SafeLoader`` itself is left alone."""
    loader: Any = type("_Loader", (yaml.SafeLoader,), {})
    loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    return loader


_LOADER = _make_loader()


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_LOADER)


@dataclass(frozen=True)
class Field:
    default: Any
    kind: type | tuple[type, ...]
    help: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    check_help: str = ""


def _positive(v: Any) -> bool:
    return bool(math.isfinite(v) and v > 0)


def _non_negative(v: Any) -> bool:
    return bool(math.isfinite(v) and v >= 0)


def _rate(v: Any) -> bool:
    return bool(v == -1 or 0 < v <= 1)


GLUE_TASKS = ("sst2", "qnli", "mnli", "qqp", "rte", "cola", "mrpc")


def _task_ok(v: Any) -> bool:
    task, _, suffix = str(v).partition("@")
    return task.lower() in GLUE_TASKS and suffix in ("", "glue")


_POS: dict[str, Any] = {"check": _positive,
                        "check_help": "must be > 0 and finite"}
_NONNEG: dict[str, Any] = {"check": _non_negative,
                           "check_help": "must be >= 0 and finite"}
_NUM = (int, float)

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
        -1.0, _NUM, "share of clients drawn per round, in (0, 1]; wins "
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
                       "qqp, rte, cola or mrpc (suffix @glue optional)",
                       check=lambda v: _task_ok(v),
                       check_help="must name a GLUE task (sst2, qnli, mnli, "
                       "qqp, rte, cola, mrpc), optionally with @glue"),
    "data.splitter": Field("iid", str, "how train data is split over "
                           "clients", choices=("iid", "lda")),
    "data.splitter_args": Field([], list, "e.g. [{alpha: 0.5}] for lda"),
    "model.type": Field("all-MiniLM-L6-v2@huggingface_seqcls", str,
                        "checkpoint name or local path "
                        "(suffix @huggingface_seqcls optional)",
                        check=lambda v: str(v).partition("@")[2] in
                        ("", "huggingface_seqcls"),
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
    "train.optimizer.lr": Field(0.1, _NUM, "learning rate", **_POS),
    "train.optimizer.weight_decay": Field(0.0, _NUM, "weight decay",
                                          **_NONNEG),
    "train.optimizer.momentum": Field(0.0, _NUM, "SGD momentum",
                                      **_NONNEG),
    "train.is_enable_half": Field(False, bool, FS_ONLY),
    "grad.grad_clip": Field(-1.0, _NUM, "max gradient norm; <= 0 (e.g. "
                            "-1): no clipping",
                            check=math.isfinite, check_help="must be a "
                            "finite number"),
    "dataloader.batch_size": Field(64, int, "local batch size", **_POS),
    "dataloader.shuffle": Field(True, bool, "shuffle local batches"),
    "dataloader.num_workers": Field(0, int, FS_ONLY),
    "eval.freq": Field(1, int, "evaluate every this many rounds (and "
                       "after the last)", **_POS),
    "eval.metrics": Field(["acc"], list, FS_ONLY + "; the task decides "
                          "the metrics (acc, f1, mcc)"),
    "eval.split": Field(["test"], list, FS_ONLY),
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
                            **_NONNEG),
    "rolora.min_received": Field(
        1, int, "accepted client updates a round needs; with fewer the "
        "run stops (exit code 3) and its last checkpoint stays intact",
        **_POS),
    "rolora.client_deadline_s": Field(
        0.0, _NUM, "seconds a client's local update may take; a later "
        "update is left out of its round; 0: no deadline", **_NONNEG),
    "rolora.prefix_cache": Field(
        False, bool, "run the frozen layers below the lowest adapted one "
        "(embeddings and layers 0..L-1, L = min(layers_to_transform)) "
        "once per input, without dropout, and train and evaluate only "
        "the layers above; off by default because it drops dropout in "
        "that prefix"),
    "rolora.prefix_cache_mb": Field(
        2048.0, _NUM, "largest prefix cache allowed, in MB (10^6 bytes); a "
        "larger one stops the run before it starts (exit code 2)",
        **_POS),
}

LORA_ARG_KINDS: dict[str, type | tuple[type, ...]] = {
    "adapter_package": str, "adapter_method": str, "r": int,
    "lora_alpha": int, "lora_dropout": _NUM, "target_modules": list,
    "layers_to_transform": (list, int, type(None)),
}


def _type_ok(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _flatten(tree: Mapping[str, Any], prefix: str = ""
             ) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"config key {dotted!r} is not a string")
        if isinstance(value, Mapping) and dotted not in SCHEMA:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _unknown(key: str) -> ConfigError:
    near = difflib.get_close_matches(key, list(SCHEMA), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return ConfigError(f"unknown config key {key!r}{hint}; the embedded "
                       "runner accepts only the keys listed in the README")


class Config(Mapping[str, Any]):
    """A validated, flat, read-only view: ``cfg["federate.method"]``."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def to_tree(self) -> dict[str, Any]:
        """Nested dict, as it would be written to YAML."""
        tree: dict[str, Any] = {}
        for key, value in self._values.items():
            node = tree
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = copy.deepcopy(value)
        return tree

    def replace(self, **dotted: Any) -> Config:
        """A copy with keys replaced (use ``__`` for dots) and validated."""
        values = dict(self._values)
        values.update({k.replace("__", "."): v for k, v in dotted.items()})
        return build_config(values)

    @property
    def lora(self) -> dict[str, Any]:
        return dict(self._values["llm.adapter.args"][0])

    @property
    def task(self) -> str:
        return str(self._values["data.type"]).split("@")[0].lower()

    @property
    def model_name(self) -> str:
        return str(self._values["model.type"]).split("@")[0]

    @property
    def run_dir(self) -> Path:
        out = Path(self._values["outdir"])
        name = self._values["expname"]
        return out / name if name else out


def build_config(values: Mapping[str, Any]) -> Config:
    """Defaults, then ``values`` (flat dotted keys), then validation."""
    merged = {k: copy.deepcopy(f.default) for k, f in SCHEMA.items()}
    for key, value in values.items():
        if not isinstance(key, str) or key not in SCHEMA:
            raise _unknown(str(key))
        field = SCHEMA[key]
        if isinstance(value, int) and not isinstance(value, bool) \
                and field.kind == _NUM:
            try:
                value = float(value)
            except OverflowError as err:
                raise ConfigError(f"config key {key!r} is too large, got "
                                  f"{value}") from err
        merged[key] = value
    for key, value in merged.items():
        _check_field(key, SCHEMA[key], value)
    _check_cross(merged)
    return Config(merged)


def _check_field(key: str, field: Field, value: Any) -> None:
    if not _type_ok(value, field.kind):
        raise ConfigError(f"config key {key!r} must be "
                          f"{_type_name(field.kind)}, got {value!r}")
    if field.choices is not None and value not in field.choices:
        raise ConfigError(f"config key {key!r} must be one of "
                          f"{', '.join(map(str, field.choices))}; "
                          f"got {value!r}")
    if field.check is not None and not field.check(value):
        raise ConfigError(f"config key {key!r} {field.check_help}, "
                          f"got {value!r}")


def _check_cross(cfg: dict[str, Any]) -> None:
    if not cfg["llm.adapter.use"]:
        raise ConfigError("config key 'llm.adapter.use' must be True: "
                          "every method federates a LoRA adapter")
    _check_lora_args(cfg["llm.adapter.args"])
    if cfg["federate.sample_client_num"] > cfg["federate.client_num"]:
        raise ConfigError("config key 'federate.sample_client_num' "
                          f"({cfg['federate.sample_client_num']}) exceeds "
                          "federate.client_num "
                          f"({cfg['federate.client_num']})")
    per_round = clients_per_round(cfg["federate.client_num"],
                                  cfg["federate.sample_client_rate"],
                                  cfg["federate.sample_client_num"])
    if cfg["rolora.min_received"] > per_round:
        raise ConfigError("config key 'rolora.min_received' "
                          f"({cfg['rolora.min_received']}) exceeds the "
                          f"{per_round} client(s) drawn per round")
    optimizer = cfg["train.optimizer.type"]
    if cfg["train.optimizer.momentum"] != 0 and optimizer != "SGD":
        # torch's Adam and AdamW take no momentum: the embedded runner
        # would drop it, FederatedScope would raise in every client.
        raise ConfigError("config key 'train.optimizer.momentum' "
                          f"({cfg['train.optimizer.momentum']}) applies to "
                          f"SGD only; train.optimizer.type is {optimizer} "
                          "(set momentum to 0, or use SGD)")
    args = cfg["data.splitter_args"]
    if not all(isinstance(a, Mapping) for a in args):
        raise ConfigError("config key 'data.splitter_args' must be a list of "
                          f"mappings such as [{{alpha: 0.5}}], got {args!r}")
    if cfg["data.splitter"] == "lda":
        alpha = splitter_alpha(args)
        if alpha is None or not _type_ok(alpha, _NUM) or not alpha > 0:
            raise ConfigError("data.splitter 'lda' needs "
                              "data.splitter_args [{alpha: A}] with A > 0, "
                              f"got {args!r}")


def config_warnings(cfg: Mapping[str, Any]) -> list[str]:
    """Settings that are valid but probably not what the user wants, with
    the reason; both runners log them once at start."""
    warnings = []
    if cfg["federate.method"] == "rolora" and cfg["rolora.first"] == "A":
        warnings.append(
            "rolora.first is A: PEFT initialises lora_B to zero, so the "
            "gradient of lora_A is exactly zero in the first phase "
            f"({cfg['rolora.period']} round(s)): it trains nothing, yet "
            "uploads A. Keep the default B unless B starts non-zero.")
    return warnings


def splitter_alpha(args: Sequence[Mapping[str, Any]]) -> Any:
    """The Dirichlet alpha of ``data.splitter_args``, or None."""
    for arg in args:
        if "alpha" in arg:
            return arg["alpha"]
    return None


def _check_lora_args(args: Any) -> None:
    key = "llm.adapter.args"
    if len(args) != 1 or not isinstance(args[0], Mapping):
        raise ConfigError(f"config key {key!r} must hold exactly one "
                          f"mapping of LoRA settings, got {args!r}")
    spec = args[0]
    for name, value in spec.items():
        if name not in LORA_ARG_KINDS:
            raise ConfigError(f"config key '{key}[0].{name}' is unknown; "
                              f"known: {', '.join(LORA_ARG_KINDS)}")
        if not _type_ok(value, LORA_ARG_KINDS[name]):
            raise ConfigError(f"config key '{key}[0].{name}' must be "
                              f"{_type_name(LORA_ARG_KINDS[name])}, "
                              f"got {value!r}")
    if spec.get("adapter_package", "peft") != "peft" or \
            spec.get("adapter_method", "lora") != "lora":
        raise ConfigError(f"config key {key!r} must describe a PEFT LoRA "
                          "adapter (adapter_package: peft, "
                          "adapter_method: lora)")
    if spec.get("r", 8) <= 0:
        raise ConfigError(f"config key '{key}[0].r' (the LoRA rank) must be "
                          f"> 0, got {spec['r']}")
    if spec.get("lora_alpha", 16) <= 0:
        raise ConfigError(f"config key '{key}[0].lora_alpha' must be > 0")
    if not 0 <= spec.get("lora_dropout", 0.0) < 1:
        raise ConfigError(f"config key '{key}[0].lora_dropout' must be in "
                          "[0, 1)")
    layers = spec.get("layers_to_transform")
    indices = layers if isinstance(layers, list) else \
        [] if layers is None else [layers]
    if layers == [] or not all(_type_ok(i, int) and i >= 0
                               for i in indices):
        raise ConfigError(f"config key '{key}[0].layers_to_transform' must "
                          "be a layer index >= 0 or a non-empty list of "
                          f"them (null or absent: every layer), got "
                          f"{layers!r}")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """FederatedScope's ``KEY VALUE ...`` form; values are parsed as YAML."""
    if len(pairs) % 2:
        raise ConfigError(f"overrides come as KEY VALUE pairs; "
                          f"{pairs[-1]!r} has no value")
    out: dict[str, Any] = {}
    for key, raw in zip(pairs[::2], pairs[1::2], strict=True):
        out[key] = parse_value(key, raw)
    return out


def parse_value(key: str, raw: str) -> Any:
    """One override's value, in either form a user may have in hand:
    a Python literal, as FederatedScope's command line takes it
    (``"[{'r': 2}]"``, ``None``), else YAML (``"[{r: 2}]"``, ``null``).
    Tuples become lists, as YAML would give them."""
    try:
        return _lists(ast.literal_eval(raw.strip()))
    except (ValueError, SyntaxError, TypeError, MemoryError,
            RecursionError):
        pass
    try:
        value = _load_yaml(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key!r}: cannot parse {raw!r}: "
                          f"{err}") from err
    # only an explicit null is None; ``KEY ''`` is the empty string
    if value is None and raw.strip().lower() not in ("null", "~"):
        return raw
    return value


def _lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def load_config(path: str | Path | None,
                overrides: Sequence[str] | Mapping[str, Any] = ()
                ) -> Config:
    """Read a YAML file (or start from defaults) and apply overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            tree = _load_yaml(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"config file {str(path)!r} not found") \
                from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {str(path)!r} cannot be read: "
                              f"{err}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid "
                              f"YAML: {err}") from err
        if tree is None:
            tree = {}
        if not isinstance(tree, Mapping):
            raise ConfigError(f"config file {str(path)!r} must hold a "
                              "mapping at the top level")
        values.update(_flatten(tree))
    extra = overrides if isinstance(overrides, Mapping) \
        else parse_overrides(overrides)
    values.update(extra)
    return build_config(values)


def dump_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_tree(), sort_keys=False),
                    encoding="utf-8")


def describe_schema(keys: Iterable[str] | None = None) -> str:
    """A markdown table of the keys, for the README."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key in keys if keys is not None else SCHEMA:
        field = SCHEMA[key]
        rows.append(f"| `{key}` | `{field.default!r}` | {field.help} |")
    return "\n".join(rows)
