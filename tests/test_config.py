"""The YAML schema: defaults, files, ``KEY VALUE`` overrides, and errors
that name the key (invariant 8)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federatedscope_rolora.config import (
    Config,
    ConfigError,
    build_config,
    config_warnings,
    describe_schema,
    dump_config,
    load_config,
    parse_overrides,
    splitter_alpha,
)
from federatedscope_rolora.schema import SCHEMA

LORA_KEY = "llm.adapter.args"


def _lora(**spec: Any) -> list[dict[str, Any]]:
    base = {"adapter_package": "peft", "adapter_method": "lora", "r": 8,
            "lora_alpha": 16, "lora_dropout": 0.0,
            "target_modules": ["query", "value"]}
    return [{**base, **spec}]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(values: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        build_config(values)
    return str(err.value)


# --- defaults ----------------------------------------------------------------


def test_defaults_validate() -> None:
    cfg = build_config({})

    assert set(cfg) == set(SCHEMA)
    assert cfg["federate.method"] == "rolora"
    assert cfg["rolora.first"] == "B"
    assert cfg.lora["r"] == 8
    assert dict(load_config(None)) == dict(cfg)


def test_defaults_are_copies() -> None:
    cfg = build_config({})

    cfg["eval.metrics"].append("f1")

    assert SCHEMA["eval.metrics"].default == ["acc"]
    assert build_config({})["eval.metrics"] == ["acc"]


def test_derived_properties() -> None:
    cfg = build_config({"data.type": "QNLI@glue", "expname": "run1",
                        "outdir": "exp",
                        "model.type": "prajjwal1/bert-tiny@"
                                      "huggingface_seqcls"})

    assert cfg.task == "qnli"
    assert cfg.model_name == "prajjwal1/bert-tiny"
    assert cfg.run_dir == Path("exp") / "run1"
    assert build_config({"outdir": "o"}).run_dir == Path("o")


def test_config_is_read_only() -> None:
    cfg = build_config({})

    with pytest.raises(TypeError):
        cfg["seed"] = 1  # type: ignore[index]


def test_replace_validates() -> None:
    cfg = build_config({})

    other = cfg.replace(federate__method="lora", seed=4)

    assert (other["federate.method"], other["seed"]) == ("lora", 4)
    assert cfg["federate.method"] == "rolora"
    with pytest.raises(ConfigError, match="federate.client_num"):
        cfg.replace(federate__client_num=0)


def test_int_for_a_float_key_becomes_float() -> None:
    cfg = build_config({"train.optimizer.lr": 1})

    assert cfg["train.optimizer.lr"] == 1.0
    assert isinstance(cfg["train.optimizer.lr"], float)


def test_describe_schema_lists_every_key() -> None:
    table = describe_schema()

    for key in SCHEMA:
        assert f"| `{key}` |" in table
    assert describe_schema(["seed"]).count("\n") == 2


# --- files -------------------------------------------------------------------

NESTED = """
seed: 3
federate:
  method: lora
  client_num: 10
  sample_client_rate: 0.5
data:
  splitter: lda
  splitter_args: [{alpha: 0.5}]
llm:
  adapter:
    args:
      - {adapter_package: peft, adapter_method: lora, r: 4,
         lora_alpha: 8, target_modules: [query], layers_to_transform: [0, 1]}
train:
  optimizer:
    lr: 1e-4
rolora:
  head: trained
"""


def test_yaml_file_with_nested_keys_loads(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, NESTED))

    assert cfg["seed"] == 3
    assert cfg["federate.method"] == "lora"
    assert cfg["federate.client_num"] == 10
    assert cfg["federate.sample_client_rate"] == 0.5
    assert cfg["data.splitter"] == "lda"
    assert splitter_alpha(cfg["data.splitter_args"]) == 0.5
    assert cfg.lora["r"] == 4
    assert cfg.lora["layers_to_transform"] == [0, 1]
    assert cfg["train.optimizer.lr"] == pytest.approx(1e-4)
    assert cfg["rolora.head"] == "trained"
    # untouched default
    assert cfg["dataloader.batch_size"] == \
        SCHEMA["dataloader.batch_size"].default


def test_yaml_file_with_dotted_keys_loads(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "federate.method: ffa_lora\n"
                             "train: {optimizer.lr: 0.5}\n"))

    assert cfg["federate.method"] == "ffa_lora"
    assert cfg["train.optimizer.lr"] == 0.5


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, NESTED),
                      ["federate.method", "rolora", "seed", "9"])

    assert (cfg["federate.method"], cfg["seed"]) == ("rolora", 9)
    assert cfg["federate.client_num"] == 10


def test_overrides_as_a_mapping(tmp_path: Path) -> None:
    cfg = load_config(None, {"federate.client_num": 5})

    assert cfg["federate.client_num"] == 5


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert dict(load_config(_write(tmp_path, ""))) == dict(build_config({}))


def test_dump_then_load_round_trips(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, NESTED))
    out = tmp_path / "resolved.yaml"

    dump_config(cfg, out)

    assert dict(load_config(out)) == dict(cfg)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match="nope.yaml.*not found"):
        load_config(path)


def test_directory_instead_of_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path.name)):
        load_config(tmp_path)


def test_top_level_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(_write(tmp_path, "- seed\n- 3\n"))


def test_top_level_scalar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(_write(tmp_path, "just a string\n"))


def test_invalid_yaml_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cfg.yaml.*not valid YAML"):
        load_config(_write(tmp_path, "seed: [1, 2\n"))


def test_unknown_nested_key_in_file_is_named(tmp_path: Path) -> None:
    text = "federate:\n  methd: lora\n"

    with pytest.raises(ConfigError, match="'federate.methd'"):
        load_config(_write(tmp_path, text))


def test_non_string_key_in_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a string"):
        load_config(_write(tmp_path, "federate:\n  1: lora\n"))


# --- overrides ---------------------------------------------------------------


def test_overrides_parse_ints_floats_lists_and_strings() -> None:
    parsed = parse_overrides([
        "federate.client_num", "7",
        "train.optimizer.lr", "0.05",
        "eval.metrics", "[acc, f1]",
        "federate.method", "ffa_lora",
        "dataloader.shuffle", "false",
        "data.root", "some/dir",
    ])

    assert parsed == {
        "federate.client_num": 7, "train.optimizer.lr": 0.05,
        "eval.metrics": ["acc", "f1"], "federate.method": "ffa_lora",
        "dataloader.shuffle": False, "data.root": "some/dir",
    }
    assert isinstance(parsed["federate.client_num"], int)


@pytest.mark.parametrize(("raw", "value"), [
    ("1e-4", 1e-4), ("5E-3", 5e-3), ("2e2", 200.0), ("-1.5e-1", -0.15),
    (".5", 0.5), ("3", 3),
])
def test_overrides_parse_scientific_notation(raw: str, value: float
                                             ) -> None:
    """PyYAML alone reads 1e-4 as a string (YAML 1.1)."""
    parsed = parse_overrides(["train.optimizer.lr", raw])

    assert parsed["train.optimizer.lr"] == pytest.approx(value)
    assert not isinstance(parsed["train.optimizer.lr"], str)


@pytest.mark.parametrize("raw", [
    "[{'r': 2, 'lora_alpha': 4, 'target_modules': ['query']}]",   # Python
    "[{r: 2, lora_alpha: 4, target_modules: [query]}]",            # YAML
    "({'r': 2, 'lora_alpha': 4, 'target_modules': ('query',)},)",  # tuples
])
def test_list_overrides_take_python_literals_and_yaml_alike(raw: str
                                                           ) -> None:
    """FederatedScope's command line takes Python literals only; the
    embedded runner takes both, so one command line serves both."""
    cfg = load_config(None, [LORA_KEY, raw])

    assert cfg.lora == {"r": 2, "lora_alpha": 4,
                        "target_modules": ["query"]}


def test_python_none_and_booleans_parse_as_python_would() -> None:
    parsed = parse_overrides(["seed", "None", "use_gpu", "True",
                              "dataloader.shuffle", "False"])

    assert parsed == {"seed": None, "use_gpu": True,
                      "dataloader.shuffle": False}


@pytest.mark.parametrize("optimizer", ["Adam", "AdamW"])
def test_momentum_with_adam_is_refused_naming_the_key(optimizer: str
                                                      ) -> None:
    """torch's Adam takes no momentum: the embedded runner ignored it and
    FederatedScope raised inside every client."""
    message = _error({"train.optimizer.type": optimizer,
                      "train.optimizer.momentum": 0.9})

    assert "'train.optimizer.momentum'" in message
    assert "SGD only" in message and optimizer in message
    build_config({"train.optimizer.type": optimizer})
    build_config({"train.optimizer.type": "SGD",
                  "train.optimizer.momentum": 0.9})


def test_rolora_first_a_warns_that_the_first_phase_trains_nothing(
) -> None:
    cfg = build_config({"rolora.first": "A", "rolora.period": 2})

    [warning] = config_warnings(cfg)

    assert "rolora.first is A" in warning and "exactly zero" in warning
    assert "(2 round(s))" in warning
    assert config_warnings(build_config({})) == []
    assert config_warnings(build_config({"rolora.first": "A",
                                         "federate.method": "lora"})) == []


def test_override_empty_value_is_the_empty_string() -> None:
    """``data.root ''`` on a shell means 'use the Hub'."""
    cfg = load_config(None, ["data.root", "", "expname", ""])

    assert (cfg["data.root"], cfg["expname"]) == ("", "")


def test_override_unparsable_value_is_named() -> None:
    with pytest.raises(ConfigError, match="override 'federate.client_num': "
                       "cannot parse"):
        parse_overrides(["federate.client_num", "a: b: c"])


@pytest.mark.parametrize(("key", "raw"), [
    ("outdir", "/tmp/run #2"),      # YAML cut it at the comment: /tmp/run
    ("expname", "2024-01-02"),      # a date, then 'must be str'
    ("expname", "12:30"),           # 750 (YAML 1.1 sexagesimal)
    ("data.root", "a: b: c"),       # a YAML error; a fine folder name
    ("model.type", "models/bert #v2"),
])
def test_a_text_override_is_taken_as_written(key: str, raw: str) -> None:
    """As FederatedScope takes it: a Python literal, else the text."""
    assert load_config(None, [key, raw])[key] == raw


@pytest.mark.parametrize("raw", ["null", "~", "NULL"])
def test_override_explicit_null_is_none(raw: str) -> None:
    assert parse_overrides(["seed", raw]) == {"seed": None}


def test_odd_number_of_override_tokens() -> None:
    with pytest.raises(ConfigError, match="'seed' has no value"):
        parse_overrides(["federate.method", "lora", "seed"])


def test_override_with_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="'federate.clients'"):
        load_config(None, ["federate.clients", "3"])


# --- errors name the key -----------------------------------------------------


def test_unknown_key_with_did_you_mean_hint() -> None:
    message = _error({"federate.methd": "lora"})

    assert "unknown config key 'federate.methd'" in message
    assert "did you mean 'federate.method'?" in message


def test_unknown_key_far_from_any_has_no_hint() -> None:
    message = _error({"zzzz": 1})

    assert "'zzzz'" in message
    assert "did you mean" not in message


def test_non_string_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config({1: 2})  # type: ignore[dict-item]


@pytest.mark.parametrize(("key", "value", "kind"), [
    ("federate.client_num", True, "int"),
    ("federate.client_num", "ten", "int"),
    ("federate.client_num", 3.0, "int"),
    ("seed", None, "int"),
    ("train.optimizer.lr", "fast", "int or float"),
    ("train.optimizer.lr", False, "int or float"),
    ("dataloader.shuffle", 1, "bool"),
    ("federate.method", 3, "str"),
    ("eval.metrics", "acc", "list"),
])
def test_wrong_type_is_named(key: str, value: Any, kind: str) -> None:
    message = _error({key: value})

    assert f"config key {key!r} must be {kind}, got {value!r}" == message


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("train.optimizer.lr", 0, "must be > 0"),
    ("train.optimizer.lr", -0.1, "must be > 0"),
    ("train.optimizer.lr", math.nan, "must be > 0 and finite"),
    ("train.optimizer.lr", math.inf, "must be > 0 and finite"),
    ("train.optimizer.weight_decay", math.inf, "must be >= 0 and finite"),
    ("grad.grad_clip", math.nan, "must be a finite number"),
    ("grad.grad_clip", math.inf, "must be a finite number"),
    ("seed", -1, "must be in [0, 2**32)"),
    ("seed", 2 ** 32, "must be in [0, 2**32)"),
    ("federate.client_num", 0, "must be > 0"),
    ("federate.client_num", -4, "must be > 0"),
    ("federate.total_round_num", 0, "must be > 0"),
    ("federate.sample_client_rate", 0, "must be -1 or in (0, 1]"),
    ("federate.sample_client_rate", 1.5, "must be -1 or in (0, 1]"),
    ("federate.sample_client_rate", -0.5, "must be -1 or in (0, 1]"),
    ("federate.sample_client_num", 0, "must be -1 or >= 1"),
    ("train.optimizer.weight_decay", -1e-3, "must be >= 0"),
    ("rolora.period", 0, "must be > 0"),
    ("federate.method", "fedavg", "must be one of rolora, lora, ffa_lora"),
    ("rolora.first", "C", "must be one of A, B"),
    ("data.splitter", "dirichlet", "must be one of iid, lda"),
])
def test_out_of_range_value_is_named(key: str, value: Any,
                                     fragment: str) -> None:
    message = _error({key: value})

    assert f"config key {key!r}" in message
    assert fragment in message


@pytest.mark.parametrize("rate", [-1, 0.25, 1, 1.0])
def test_valid_sample_client_rates(rate: float) -> None:
    assert build_config({"federate.sample_client_rate": rate})[
        "federate.sample_client_rate"] == rate


def test_huge_int_for_a_float_key_is_named() -> None:
    message = _error({"train.optimizer.lr": 10 ** 400})

    assert "train.optimizer.lr" in message


def test_huge_int_for_an_int_key_is_checked_without_overflow() -> None:
    """math.isfinite converts an int to a float: past 1e308 it raised
    OverflowError instead of checking (found by the property test)."""
    big = 10 ** 400

    assert build_config({"train.local_update_steps": big})[
        "train.local_update_steps"] == big
    assert "must be > 0" in _error({"federate.client_num": -big})


def test_sample_client_num_above_client_num() -> None:
    message = _error({"federate.client_num": 3,
                      "federate.sample_client_num": 4})

    assert "'federate.sample_client_num' (4) exceeds" in message


def test_adapter_use_false_is_refused() -> None:
    assert "'llm.adapter.use' must be True" in _error(
        {"llm.adapter.use": False})


@pytest.mark.parametrize("args", [
    [{}, {"alpha": 0.05}],   # FederatedScope split with its own 0.5
    [{"alpha": 0.5, "foo": 1}],   # a TypeError inside FederatedScope
])
def test_splitter_args_hold_one_mapping_with_alpha_alone(
        args: list[Any]) -> None:
    message = _error({"data.splitter": "lda", "data.splitter_args": args})

    assert "'data.splitter_args' holds at most one mapping, with alpha " \
        "alone" in message


@pytest.mark.parametrize("args", [[], [{}]])
def test_lda_without_alpha(args: list[Any]) -> None:
    message = _error({"data.splitter": "lda", "data.splitter_args": args})

    assert "data.splitter 'lda' needs data.splitter_args" in message


@pytest.mark.parametrize("alpha", [0, -0.5, "big", math.nan, None, math.inf])
def test_lda_with_bad_alpha(alpha: Any) -> None:
    message = _error({"data.splitter": "lda",
                      "data.splitter_args": [{"alpha": alpha}]})

    assert "data.splitter 'lda' needs" in message


def test_lda_with_int_alpha_is_fine() -> None:
    cfg = build_config({"data.splitter": "lda",
                        "data.splitter_args": [{"alpha": 1}]})

    assert splitter_alpha(cfg["data.splitter_args"]) == 1


def test_splitter_args_must_be_mappings() -> None:
    message = _error({"data.splitter_args": [0.5]})

    assert "'data.splitter_args' must be a list of mappings" in message


@pytest.mark.parametrize("rank", [0, -2])
def test_rank_must_be_positive(rank: int) -> None:
    message = _error({LORA_KEY: _lora(r=rank)})

    assert f"'{LORA_KEY}[0].r' (the LoRA rank) must be > 0" in message


def test_adapter_args_unknown_key_is_named() -> None:
    message = _error({LORA_KEY: _lora(rank=8)})

    assert f"'{LORA_KEY}[0].rank' is unknown" in message
    assert "lora_alpha" in message          # lists the known keys


@pytest.mark.parametrize(("name", "value", "kind"), [
    ("r", "8", "int"), ("r", True, "int"), ("r", 8.0, "int"),
    ("lora_alpha", "16", "int"), ("lora_alpha", 16.0, "int"),
    ("target_modules", "query", "list"),
    ("layers_to_transform", "0", "list or int or NoneType"),
])
def test_adapter_args_wrong_type_is_named(name: str, value: Any,
                                          kind: str) -> None:
    message = _error({LORA_KEY: _lora(**{name: value})})

    assert f"'{LORA_KEY}[0].{name}' must be {kind}" in message


@pytest.mark.parametrize(("spec", "fragment"), [
    ({"lora_alpha": 0}, "lora_alpha' must be > 0"),
    ({"lora_alpha": -4}, "lora_alpha' must be > 0"),
    ({"lora_dropout": 1.0}, "lora_dropout' must be in [0, 1)"),
    ({"lora_dropout": -0.1}, "lora_dropout' must be in [0, 1)"),
    ({"layers_to_transform": []}, "a non-empty list of them"),
    ({"layers_to_transform": -1}, "layers_to_transform' must be a layer"),
    ({"layers_to_transform": [4, -1]}, "got [4, -1]"),
    ({"layers_to_transform": [4, "5"]}, "got [4, '5']"),
    ({"target_modules": [1]}, "target_modules' must be a non-empty list "
     "of module names such as [query, value], got [1]"),
    ({"target_modules": []}, "target_modules' must be a non-empty list"),
    ({"target_modules": ["query", ""]}, "got ['query', '']"),
    ({"adapter_method": "prefix"}, "must describe a PEFT LoRA adapter"),
    ({"adapter_package": "other"}, "must describe a PEFT LoRA adapter"),
])
def test_adapter_args_bad_values(spec: dict[str, Any], fragment: str
                                 ) -> None:
    assert fragment in _error({LORA_KEY: _lora(**spec)})


@pytest.mark.parametrize("args", [[], [{"r": 4}, {"r": 8}], ["lora"]])
def test_adapter_args_must_be_one_mapping(args: list[Any]) -> None:
    assert "must hold exactly one mapping" in _error({LORA_KEY: args})


def test_adapter_args_may_omit_keys() -> None:
    cfg = build_config({LORA_KEY: [{"r": 2, "layers_to_transform": 3}]})

    assert cfg.lora == {"r": 2, "layers_to_transform": 3}


# --- properties: any input builds a Config or raises ConfigError ------------

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.integers(min_value=-(10 ** 500), max_value=10 ** 500),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["rolora", "lora", "lda", "iid", "A", "B", "peft",
                     "trained", "examples"]),
)
_LORA_NAMES = st.sampled_from(["adapter_package", "adapter_method", "r",
                               "lora_alpha", "lora_dropout",
                               "target_modules", "layers_to_transform",
                               "alpha", "rank"])
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(_LORA_NAMES, st.text(max_size=4)),
                        inner, max_size=3)),
    max_leaves=6,
)
_KEYS = st.one_of(st.sampled_from(sorted(SCHEMA)), st.text(max_size=12),
                  st.integers())


@settings(max_examples=200, deadline=None)
@given(values=st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_any_mapping_builds_a_config_or_raises_config_error(
        values: dict[Any, Any]) -> None:
    try:
        cfg = build_config(values)
    except ConfigError as err:
        assert str(err)
    else:
        assert isinstance(cfg, Config)
        assert set(cfg) == set(SCHEMA)


@settings(max_examples=200, deadline=None)
@given(tokens=st.lists(st.one_of(st.sampled_from(sorted(SCHEMA)),
                                 st.text(max_size=10)), max_size=6))
def test_any_override_tokens_build_a_config_or_raise_config_error(
        tokens: list[str]) -> None:
    try:
        cfg = load_config(None, tokens)
    except ConfigError as err:
        assert str(err)
    else:
        assert isinstance(cfg, Config)


def test_the_schemas_task_list_is_the_loaders() -> None:
    from federatedscope_rolora.schema import GLUE_TASKS
    from federatedscope_rolora.training.glue import TASKS

    assert set(GLUE_TASKS) == set(TASKS)


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("data.type", "imdb@glue", "must name a GLUE task"),
    ("data.type", "sst2@hub", "must name a GLUE task"),
    ("model.type", "gpt2@huggingface_llm", "sequence-classification"),
    ("trainer.type", "llmtrainer", "must be one of rolora_trainer"),
    ("federate.online_aggr", True, "must be one of False"),
])
def test_what_the_plugin_refuses_the_embedded_runner_refuses(
        key: str, value: Any, fragment: str) -> None:
    message = _error({key: value})

    assert f"'{key}'" in message and fragment in message


@pytest.mark.parametrize(("text", "named"), [
    # PyYAML keeps the last of two keys: this ran rolora, not flexlora
    ("federate:\n  method: flexlora\nseed: 1\nfederate:\n  method: rolora\n",
     "key 'federate' is given twice (lines 1 and 4)"),
    ("federate:\n  method: flexlora\n  method: rolora\n",
     "key 'method' is given twice (lines 2 and 3)"),
    ("federate:\n  method: rolora\nfederate.method: lora\n",
     "config key 'federate.method' is given twice"),
])
def test_a_key_given_twice_is_refused(tmp_path: Path, text: str,
                                      named: str) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(path)


@pytest.mark.parametrize(("argv", "files"), [
    (["--cfg", "a.yaml", "federate.total_round_num", "3"], ["a.yaml"]),
    (["--cfg=a.yaml", "--client_cfg", "b.yaml"], ["a.yaml", "b.yaml"]),
    (["--cl", "b.yaml"], ["b.yaml"]),       # argparse's prefix, as FS's
    # after the first override FederatedScope reads everything as opts
    (["--cfg", "a.yaml", "seed", "1", "--client_cfg", "b.yaml"],
     ["a.yaml"]),
    (["--cfg"], []),
    (["-f", "kernel.json"], []),
])
def test_the_plugin_finds_the_files_federatedscope_reads(
        argv: list[str], files: list[str]) -> None:
    from federatedscope_rolora.fs.cfg_rolora import command_line_files

    assert command_line_files(argv) == files


def test_the_plugin_refuses_a_command_line_file_with_a_key_twice(
        tmp_path: Path) -> None:
    """FederatedScope's yacs loader keeps the last of two keys, and the
    plugin sees only the merged config: it reads the files named on the
    command line itself."""
    from federatedscope_rolora.fs.cfg_rolora import check_command_line_files

    good, twice = tmp_path / "good.yaml", tmp_path / "twice.yaml"
    good.write_text("federate:\n  method: rolora\n", encoding="utf-8")
    twice.write_text("federate:\n  method: flexlora\nfederate:\n"
                     "  method: rolora\n", encoding="utf-8")

    check_command_line_files(["--cfg", str(good)])
    check_command_line_files(["--cfg", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match=re.escape(
            f"config file {str(twice)!r} is not valid YAML: key "
            "'federate' is given twice (lines 1 and 3)")):
        check_command_line_files(["--cfg", str(good),
                                  "--client_cfg", str(twice)])


def test_an_empty_section_is_named_as_one(tmp_path: Path) -> None:
    """It was 'unknown config key 'eval' (did you mean 'eval.freq'?)'."""
    path = tmp_path / "empty.yaml"
    path.write_text("eval:\n  # freq: 2\nseed: 1\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="config section 'eval' is empty"):
        load_config(path)
