"""The ``rolora:`` config node and its check function, for FederatedScope.

The node holds exactly the ``rolora.*`` keys of the embedded runner's
schema (``federatedscope_rolora.config.SCHEMA``), with the same defaults,
so one YAML file means the same under both runners. For the plugin's
methods (``federate.method`` rolora, lora, ffa_lora, fedex_lora,
flexlora, fedsa_lora) the check function

1. fills in the few keys whose FederatedScope default cannot work for
   sequence classification, and only while they still hold that default
   (``FS_DEFAULTS_REPLACED``): the embedded runner's value instead;
2. refuses the FederatedScope features the plugin does not implement,
   naming the key;
3. validates every key the two runners share with the embedded runner's
   own rules, so a file one runner rejects, the other rejects too.

FederatedScope runs check functions after every merge (file, command
line, data builder) and at ``freeze()``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from federatedscope_rolora.config import (
    Config,
    ConfigError,
    build_config,
    config_warnings,
    flatten_tree,
    read_yaml_file,
)
from federatedscope_rolora.core.names import METHODS as CORE_METHODS
from federatedscope_rolora.schema import (
    MODEL_SUFFIX,
    SCHEMA,
    TSV_SUFFIX,
    model_path,
    model_type_ok,
)

if TYPE_CHECKING:
    from federatedscope_rolora.training.glue import TaskSpec

logger = logging.getLogger("federatedscope.rolora")

NODE = "rolora"
TRAINER_TYPE = "rolora_trainer"
DATA_SUFFIX = "@glue"
OWN_DATA_SUFFIX = "@" + TSV_SUFFIX  # your own data, training/glue.py
METHODS = CORE_METHODS

# FederatedScope's default -> the embedded runner's, for keys where no
# other value can work for these methods: a LoRA adapter, a splitter
# (FederatedScope requires one for external data), this plugin's trainer,
# no val split (best result on test), accuracy, the global adapter
# evaluated on the server.
FS_DEFAULTS_REPLACED: dict[str, tuple[Any, Any]] = {
    "llm.adapter.use": (False, True),
    "data.splitter": ("", SCHEMA["data.splitter"].default),
    "trainer.type": ("general", TRAINER_TYPE),
    "eval.split": (["test", "val"], SCHEMA["eval.split"].default),
    "eval.metrics": ([], SCHEMA["eval.metrics"].default),
    "eval.best_res_update_round_wise_key": (
        "val_loss", SCHEMA["eval.best_res_update_round_wise_key"].default),
    "federate.make_global_eval": (False, True),
    # the plugin's trainer counts no flops; say so in config.yaml
    "eval.count_flops": (True, False),
}

# key -> (value that works, why another one does not)
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "trainer.type": (TRAINER_TYPE, "the plugin's methods train with its "
                     "own trainer"),
    "federate.online_aggr": (False, "the online aggregator needs every "
                             "key in every update"),
    "federate.make_global_eval": (True, "the global adapter is evaluated "
                                  "on the server's test set, as in the "
                                  "embedded runner"),
    "federate.use_ss": (False, "updates are validated in the clear"),
    "federate.sampler": ("uniform", "participants are drawn by the core, "
                         "as in the embedded runner"),
    "federate.unseen_clients_rate": (0.0, "every client may be drawn"),
    "federate.restore_from": ("", "resuming is the embedded runner's "
                              "--resume"),
    "federate.process_num": (1, "one process simulates all clients"),
    "model.model_num_per_trainer": (1, "one adapter per client"),
    "asyn.use": (False, "rounds are synchronous"),
    "quantization.method": ("none", "the exact tensors travel"),
    "fedopt.use": (False, "the server averages, as the paper does"),
    # FederatedScope wraps the server with it: the recorded scores were
    # the SWA model's while adapter/ held the merged one
    "fedswa.use": (False, "the global adapter is the server's merge, "
                   "with no weight averaging over rounds"),
    # ignored by the plugin's merges (the adapter was the same either way)
    "federate.ignore_weight": (False, "clients are weighed by "
                               "rolora.weighting (uniform: all alike)"),
    "aggregator.robust_rule": ("fedavg", "the server averages, as the "
                               "paper does"),
    # FederatedScope wraps every trainer with these, the plugin's too:
    # each would change local training where the embedded runner cannot
    "fedprox.use": (False, "local training is the method's own, with no "
                    "proximal term"),
    "nbafl.use": (False, "the exact tensors travel, with no noise added"),
    "sgdmf.use": (False, "the exact tensors travel, with no noise added"),
    "finetune.before_eval": (False, "the global adapter is scored as the "
                             "server merged it"),
    "regularizer.type": ("", "local training adds no regularizer"),
    "train.scheduler.type": ("", "the learning rate is constant, as in "
                             "the embedded runner"),
    "train.scheduler.warmup_ratio": (0.0, "the learning rate is constant, "
                                     "as in the embedded runner"),
    "dataloader.drop_last": (False, "every train example is used, as in "
                             "the embedded runner"),
    "data.drop_last": (False, "every train example is used, as in the "
                       "embedded runner"),
    "grad.grad_accum_count": (1, "one optimizer step per batch"),
}

# Keys a client's own config (FederatedScope's --client_cfg) may set
# otherwise than the run's: where it runs. Every other shared key
# decides the numbers, and every client trains alike, as in the embedded
# runner.
CLIENT_MAY_DIFFER = frozenset({"outdir", "expname", "verbose", "use_gpu",
                               "rolora.threads"})


# Keys a process of a distributed run may set otherwise than the server:
# beside where it runs, the data's path on its machine, and what only the
# server reads (rounds, sampling, evaluation, fault tolerance, weighting,
# outputs). Every other key decides what a client trains.
PROCESS_MAY_DIFFER = CLIENT_MAY_DIFFER | frozenset({
    # the model's path on its machine: its weights are compared instead
    # (``with_base_digest``)
    "model.type",
    "device", "data.root", "dataloader.num_workers",
    "rolora.prefix_cache_mb", "rolora.eval_batch_size",
    "federate.total_round_num", "federate.sample_client_rate",
    "federate.sample_client_num", "federate.make_global_eval",
    "federate.save_to", "federate.share_local_model", "eval.freq",
    "eval.metrics", "eval.split", "eval.best_res_update_round_wise_key",
    "eval.count_flops", "rolora.min_received", "rolora.client_deadline_s",
    "rolora.per_client_eval", "rolora.weighting"})


def shared_settings(cfg: Any,
                    may_differ: frozenset[str] = CLIENT_MAY_DIFFER) -> str:
    """The keys every client shares with the run (all of the schema's
    but ``may_differ``), as JSON: what a client's config is checked on
    (``--client_cfg``: ``CLIENT_MAY_DIFFER``), and what it sends up with
    its update for a distributed run's server to check
    (``PROCESS_MAY_DIFFER``: each process reads its own YAML)."""
    view = schema_view(cfg)
    return json.dumps({k: view[k] for k in SCHEMA
                       if k not in may_differ and k in view},
                      sort_keys=True, default=str)


# The settings entries holding a process's base-weight fingerprint and
# the digest of its data as read and dealt.
BASE_WEIGHTS = "model weights (base_digest)"
DATA_DEALT = "train and test rows as read and dealt (data_digest)"


def with_digests(settings: str, base: str, data: str) -> str:
    """``settings`` (``shared_settings``) with the fingerprint of the
    base weights this process built (``setup.model_fingerprint``) and
    the digest of its data as read and dealt (``data.dealt_digest``): in
    distributed mode each process loads ``model.type`` and reads
    ``data.root`` on its own machine, and a client on other weights
    under the same name (or the same weights under another path) was
    told apart by the name alone, one on an edited copy of the data not
    at all."""
    values = json.loads(settings)
    values[BASE_WEIGHTS] = base
    values[DATA_DEALT] = data
    return json.dumps(values, sort_keys=True, default=str)


def settings_changes(mine: str, run: str) -> list[str]:
    """``KEY (run's value for the run, this one's here)`` for each key of
    two ``shared_settings`` that differs (an adapter spelt otherwise,
    ``lora_dropout: 0.0`` written out, is the same adapter)."""
    from federatedscope_rolora.runners.checkpoint import same_adapter

    ours, theirs = json.loads(mine), json.loads(run)
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        raise ValueError("settings are not a JSON object")
    return [f"{k} ({theirs.get(k)!r} for the run, {ours.get(k)!r} here)"
            for k in sorted(set(ours) | set(theirs))
            if ours.get(k) != theirs.get(k)
            and not same_adapter(k, theirs.get(k), ours.get(k))]


def check_client_config(client_id: int, client_cfg: Any,
                        run_cfg: Any) -> None:
    """ConfigError naming the keys a client's config sets otherwise than
    the run's (``--client_cfg``), which FederatedScope would merge into
    that client's training without a word."""
    changed = settings_changes(shared_settings(client_cfg),
                               shared_settings(run_cfg))
    if changed:
        raise ConfigError(f"client {client_id}'s config changes "
                          f"{'; '.join(changed)}; the plugin's methods "
                          "train every client alike, as the embedded "
                          "runner does (drop these keys from "
                          "--client_cfg)")

# Keys of the shared schema whose FederatedScope values mean something
# the embedded runner does not express (device -1: pick a free GPU).
_NOT_VALIDATED = frozenset({"device"})
# Internals of FederatedScope's config nodes, not user keys.
_CN_INTERNALS = frozenset({"__help_info__", "__cfg_check_funcs__",
                           "is_ready_for_run"})
_MISSING = object()
_announced: set[str] = set()
# Each config file named on the command line, read once per process
_file_trees: dict[str, dict[str, Any]] = {}
_run_config: list[Any] = []


def extend_cfg(cfg: Any) -> None:
    """Registered config function: add the ``rolora`` node (the embedded
    runner's ``rolora.*`` keys and defaults) and the check function."""
    # Imported here: config.py is still being imported when this runs,
    # and CN is all it has defined by then.
    from federatedscope.core.configs.config import CN

    node = CN()
    for key, field in SCHEMA.items():
        if key.startswith(NODE + "."):
            setattr(node, key.split(".", 1)[1], copy.deepcopy(field.default))
    setattr(cfg, NODE, node)
    cfg.register_cfg_check_fun(check_cfg)


def uses_plugin(cfg: Any) -> bool:
    return str(cfg.federate.method).lower() in METHODS


def check_cfg(cfg: Any) -> None:
    """Registered check function; a no-op for other methods."""
    if not uses_plugin(cfg):
        return
    check_command_line_files(sys.argv[1:])
    _refuse_explicit_fs_defaults(cfg, sys.argv[1:])
    _replace_fs_defaults(cfg)
    _refuse_unsupported(cfg)
    if cfg.federate.client_num == 0:
        # the schema's "must be >= 1, got 0" reads as if it were written
        raise ConfigError("config key 'federate.client_num' is 0, "
                          "FederatedScope's default, which takes the "
                          "clients from a dataset's own partition; these "
                          "rows have none: set the number of clients "
                          "(e.g. federate.client_num 3)")
    view = schema_view(cfg)
    _check_types(cfg)
    for warning in config_warnings(view):
        if warning not in _announced:
            _announced.add(warning)
            logger.warning("rolora plugin: %s", warning)


def _parse_command_line(argv: list[str]) -> argparse.Namespace | None:
    """A FederatedScope command line, parsed as its ``parse_args`` parses
    it; None where it does not parse."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--cfg", dest="cfg_file")
    parser.add_argument("--client_cfg", dest="client_cfg_file")
    parser.add_argument("--local_rank")
    parser.add_argument("--help", nargs="?")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    try:
        known, _ = parser.parse_known_args(argv)
    except argparse.ArgumentError:
        return None
    return known


def command_line_files(argv: list[str]) -> list[str]:
    """The config files a FederatedScope command line names (``--cfg``,
    ``--client_cfg``); none where it does not parse."""
    known = _parse_command_line(argv)
    if known is None:
        return []
    return [f for f in (known.cfg_file, known.client_cfg_file) if f]


def keys_set_on_command_line(argv: list[str]) -> set[str]:
    """The keys the run's ``--cfg`` file and ``KEY VALUE`` opts set."""
    known = _parse_command_line(argv)
    if known is None:
        return set()
    keys = {str(k) for k in (known.opts or [])[::2]}
    if known.cfg_file:
        keys.update(_keys_of(known.cfg_file))
    return keys


def _refuse_explicit_fs_defaults(cfg: Any, argv: list[str]) -> None:
    """ConfigError where the config sets, itself, one of
    ``FS_DEFAULTS_REPLACED``'s keys to FederatedScope's default and the
    embedded runner refuses that value (``llm.adapter.use: False``): the
    plugin replaced it without a word, and one file meant two things."""
    replaced = [k for k, (fs_default, _) in FS_DEFAULTS_REPLACED.items()
                if _get(cfg, k) == fs_default]
    if not replaced:
        return
    written = keys_set_on_command_line(argv)
    for key in replaced:
        if key not in written:
            continue
        try:
            build_config({key: FS_DEFAULTS_REPLACED[key][0]})
        except ConfigError as err:
            raise ConfigError(f"{err} (set in the config; the plugin "
                              "replaces only FederatedScope's default, "
                              "left unset)") from None


def check_command_line_files(argv: list[str]) -> None:
    """ConfigError naming the file and key where a config file on the
    command line gives a key twice in one mapping: FederatedScope's yacs
    loader keeps the last without a word (a second ``federate:`` block
    would run another method), and the plugin sees only the merged
    config, never the file. Each file is checked once per process."""
    for path in command_line_files(argv):
        _tree_of(path)


def _keys_of(path: str) -> set[str]:
    """The dotted keys of the config file ``path``, read (and checked
    for a key given twice) once per process; none for a missing file,
    which is FederatedScope's to report."""
    return set(flatten_tree(_tree_of(path)))


def _tree_of(path: str) -> dict[str, Any]:
    if path not in _file_trees:
        if not os.path.isfile(path):
            return {}
        _file_trees[path] = read_yaml_file(path)
    return _file_trees[path]


def _replace_fs_defaults(cfg: Any) -> None:
    for key, (fs_default, ours) in FS_DEFAULTS_REPLACED.items():
        if _get(cfg, key) != fs_default:
            continue
        _set(cfg, key, copy.deepcopy(ours))
        if key not in _announced:
            _announced.add(key)
            logger.info("rolora plugin: %s set to %r (FederatedScope's "
                        "default %r does not fit %s)", key, ours,
                        fs_default, cfg.federate.method)


def _refuse_unsupported(cfg: Any) -> None:
    method = cfg.federate.method
    for key, (works, why) in UNSUPPORTED.items():
        value = _get(cfg, key)
        if value is _MISSING or value == works:
            continue
        if key == "federate.process_num" and value <= 1:
            continue
        raise ConfigError(f"config key {key!r} is {value!r}; "
                          f"federate.method {method} in the rolora plugin "
                          f"needs {works!r}: {why}")


def _check_types(cfg: Any) -> None:
    from federatedscope_rolora.training.glue import DataError

    method = cfg.federate.method
    kind = str(cfg.data.type).partition("@")[2].lower()
    if kind and "@" + kind not in (DATA_SUFFIX, OWN_DATA_SUFFIX):
        raise ConfigError(f"config key 'data.type' is {cfg.data.type!r}; "
                          f"federate.method {method} needs a GLUE task, "
                          f"TASK{DATA_SUFFIX}, or your own data, "
                          f"NAME{OWN_DATA_SUFFIX}")
    try:
        fs_task(cfg)
    except DataError as err:
        raise ConfigError(f"config key 'data.type': {err}") from err
    _check_best_key(cfg)
    if not model_type_ok(cfg.model.type):
        raise ConfigError(f"config key 'model.type' is {cfg.model.type!r}; "
                          f"federate.method {method} needs a "
                          "sequence-classification checkpoint, "
                          f"NAME{MODEL_SUFFIX} or a bare name or path")


def _check_best_key(cfg: Any) -> None:
    """ConfigError unless ``eval.best_res_update_round_wise_key`` names a
    result FederatedScope tracks for the run: the test split's loss,
    avg_loss or total, or a metric of ``eval.metrics``. Another one
    stopped FederatedScope at the server's start (not in eval.metrics)
    or after round 1 (a val_ key: there is no val split), with a
    traceback."""
    key = str(cfg.eval.best_res_update_round_wise_key)
    allowed = [f"test_{m}" for m in (*cfg.eval.metrics, "loss", "avg_loss",
                                     "total")]
    if key not in allowed:
        raise ConfigError(
            f"config key 'eval.best_res_update_round_wise_key' is {key!r}; "
            f"FederatedScope tracks {', '.join(allowed)} for this run "
            "(the test split, and the metrics of eval.metrics)")


def schema_view(cfg: Any) -> Config:
    """The embedded runner's validated view of a FederatedScope config:
    every key of the shared schema, with its FederatedScope value. A
    ConfigError names a key the embedded runner would reject, including
    an extra ``train.optimizer`` key (FederatedScope accepts any there)."""
    values: dict[str, Any] = {}
    for key in SCHEMA:
        value = _get(cfg, key)
        if key in _NOT_VALIDATED or value is _MISSING:
            continue
        values[key] = _plain(value)
    for name in cfg.train.optimizer:
        key = f"train.optimizer.{name}"
        if name not in _CN_INTERNALS and key not in SCHEMA:
            raise ConfigError(f"config key {key!r} is not one the embedded "
                              "runner honours (type, lr, weight_decay, "
                              "momentum)")
    return build_config(values)


def fs_task(cfg: Any) -> TaskSpec:
    """The TaskSpec of the run's ``data.type`` (a GLUE task, or your own
    data under ``data.root``)."""
    from federatedscope_rolora.training.glue import task_spec

    return task_spec(str(cfg.data.type), cfg.data.root or None)


def model_name(model_type: str) -> str:
    return model_path(model_type)


def claims_data(cfg: Any) -> bool:
    """``<task>@glue``, or a bare task name under the plugin's methods."""
    data_type = str(cfg.data.type)
    if data_type.lower().endswith((DATA_SUFFIX, OWN_DATA_SUFFIX)):
        return True
    return uses_plugin(cfg) and "@" not in data_type and bool(data_type)


def claims_model(model_cfg: Any) -> bool:
    """``<name>@huggingface_seqcls``, or a bare name or path in a run whose
    data this plugin built."""
    model_type = str(model_cfg.type)
    if model_type.lower().endswith(MODEL_SUFFIX):
        return True
    return model_type_ok(model_type) and bool(_run_config) \
        and uses_plugin(_run_config[-1])


def remember_run_config(cfg: Any) -> None:
    """FederatedScope hands model builders ``cfg.model`` alone; the data
    builder, which always runs first and gets the whole config, keeps it
    here for them (LoRA settings, seed, task)."""
    _run_config[:] = [cfg]


def run_config() -> Any:
    if not _run_config:
        raise RuntimeError("the rolora model builder needs the run's config, "
                           "which its data builder keeps: build the data "
                           "(FederatedScope's get_data) before the model")
    return _run_config[-1]


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(cfg: Any, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def _plain(value: Any) -> Any:
    """FederatedScope's nodes and tuples as the dicts and lists the
    embedded runner's schema expects."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()
                if k not in _CN_INTERNALS}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
