"""Loading and checking the one YAML schema (``schema.SCHEMA``) of the runners.

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
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from federatedscope_rolora.core.sampling import clients_per_round
from federatedscope_rolora.schema import (
    LORA_ARG_KINDS,
    NUMBER,
    SCHEMA,
    Field,
    model_path,
)


class ConfigError(ValueError):
    """Bad configuration; the message names the key."""


def _unique_mapping(loader: Any, node: Any, deep: bool = False) -> Any:
    """A mapping whose keys are unique: YAML requires it, and PyYAML
    would keep the last of two without a word (a second ``federate:``
    block would replace the method the first one names)."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if isinstance(key, str) and key in seen:
            raise yaml.YAMLError(f"key {key!r} is given twice (lines "
                                 f"{seen[key]} and {line})")
        if isinstance(key, str):
            seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


def _make_loader() -> Any:
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.2); plain
    PyYAML keeps YAML 1.1's rule and returns the string '1e-4'. It also
    refuses a key given twice in one mapping. A copy, so
    ``yaml.SafeLoader`` itself is left alone."""
    loader: Any = type("_Loader", (yaml.SafeLoader,), {})
    loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                           _unique_mapping)
    return loader


_LOADER = _make_loader()


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_LOADER)


def _type_ok(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def flatten_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A config file's nested mapping as dotted keys (``federate.method``);
    ConfigError for a key that is not a string."""
    return _flatten(tree)


def _flatten(tree: Mapping[str, Any], prefix: str = ""
             ) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"config key {dotted!r} is not a string")
        if value is None and dotted not in SCHEMA and any(
                k.startswith(dotted + ".") for k in SCHEMA):
            # 'eval:' with every entry under it commented out
            raise ConfigError(f"config section {dotted!r} is empty; give "
                              "it keys or remove it")
        inner = _flatten(value, dotted + ".") \
            if isinstance(value, Mapping) and dotted not in SCHEMA \
            else {dotted: value}
        for name in inner.keys() & flat.keys():
            # 'federate: {method: ...}' beside 'federate.method: ...'
            raise ConfigError(f"config key {name!r} is given twice")
        flat.update(inner)
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
        return model_path(self._values["model.type"])

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
                and field.kind == NUMBER:
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
    if len(args) > 1 or any(set(a) - {"alpha"} for a in args):
        # FederatedScope passes its first entry alone to the splitter, as
        # keywords: a second entry's alpha was checked here and ignored
        # there, another key a TypeError inside it
        raise ConfigError("config key 'data.splitter_args' holds at most "
                          "one mapping, with alpha alone ([{alpha: 0.5}] "
                          f"for lda), got {args!r}")
    if cfg["data.splitter"] == "lda":
        alpha = splitter_alpha(args)
        if alpha is None or not _type_ok(alpha, NUMBER) or \
                not 0 < alpha < float("inf"):
            raise ConfigError("data.splitter 'lda' needs "
                              "data.splitter_args [{alpha: A}] with A > 0 "
                              "and finite (equal label shares are "
                              f"data.splitter 'iid'), got {args!r}")


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
    return args[0].get("alpha") if args else None


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
    targets = spec.get("target_modules", ["query", "value"])
    if not targets or not all(isinstance(t, str) and t for t in targets):
        # PEFT would fail on a number with a bare AttributeError
        raise ConfigError(f"config key '{key}[0].target_modules' must be a "
                          "non-empty list of module names such as "
                          f"[query, value], got {targets!r}")
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
    Tuples become lists, as YAML would give them. The value of a text
    key (``outdir``, ``expname``, ``data.root``, ...) that is no Python
    literal is the text itself, as FederatedScope takes it: YAML cut
    ``run #2`` at its comment and read ``2024-01-02`` as a date."""
    try:
        return _lists(ast.literal_eval(raw.strip()))
    except (ValueError, SyntaxError, TypeError, MemoryError,
            RecursionError):
        pass
    if key in SCHEMA and SCHEMA[key].kind is str:
        return raw
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


def read_yaml_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (empty for an empty file);
    ConfigError naming the file if it is missing, unreadable, not YAML,
    not a mapping, or gives a key twice in one mapping."""
    path = Path(path)
    try:
        tree = _load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"config file {str(path)!r} not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read: "
                          f"{err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid "
                          f"YAML: {err}") from err
    if tree is None:
        return {}
    if not isinstance(tree, Mapping):
        raise ConfigError(f"config file {str(path)!r} must hold a "
                          "mapping at the top level")
    return dict(tree)


def load_config(path: str | Path | None,
                overrides: Sequence[str] | Mapping[str, Any] = (),
                ignore: Iterable[str] = ()) -> Config:
    """Read a YAML file (or start from defaults) and apply overrides;
    the file's top-level sections named in ``ignore`` are left out."""
    values: dict[str, Any] = {}
    if path is not None:
        tree = read_yaml_file(path)
        values.update(_flatten({k: v for k, v in tree.items()
                                if k not in set(ignore)}))
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
