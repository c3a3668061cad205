"""The ``rolora:`` node and the check function inside FederatedScope's own
config system: every shipped YAML file means the same under both runners,
and what the plugin cannot honour is refused with the key's name.

One FederatedScope process (in the venv with the plugin installed) loads
every file and tries every bad setting, and reports back as JSON.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fs.conftest import ROOT, TIMEOUT_S, FsMain, clean_env

pytestmark = pytest.mark.fs

CONFIGS = sorted((ROOT / "yaml_configs").glob("*.yaml"))
BAD = {
    "federate.online_aggr": "True",
    "trainer.type": "llmtrainer",
    "asyn.use": "True",
    "rolora.first": "C",
    "rolora.bogus": "1",
    "train.optimizer.betas": "[0.9, 0.99]",
    "llm.adapter.args": "[{'r': 4, 'bias': 'all'}]",
    "model.type": "gpt2@huggingface_llm",
    "data.type": "alpaca@llm",
    "rolora.prefix_cache": "'yes'",
    "rolora.prefix_cache_mb": "0",
    # FederatedScope's trainer wrappers and options that change local
    # training where the embedded runner cannot: they ran silently
    "fedprox.use": "True",
    "nbafl.use": "True",
    "finetune.before_eval": "True",
    "train.scheduler.type": "StepLR",
    "dataloader.drop_last": "True",
    "grad.grad_accum_count": "2",
    # passed both checks, then crashed inside FederatedScope
    "train.is_enable_half": "True",
    "eval.split": "['val']",
    "eval.best_res_update_round_wise_key": "test_f1",
    # accepted, then the SWA model's scores were recorded beside the
    # merged adapter; the weighting flag was ignored
    "fedswa.use": "True",
    "federate.ignore_weight": "True",
    # the pre-check read alpha from the second entry, FederatedScope's
    # splitter from the first
    "data.splitter_args": "[{}, {'alpha': 0.05}]",
}

PROBE = """\
import json, sys
from federatedscope.core.configs.config import global_cfg
from federatedscope_rolora.config import load_config
from federatedscope_rolora.schema import SCHEMA
from federatedscope_rolora.core.sampling import clients_per_round
from federatedscope_rolora.fs.cfg_rolora import schema_view

configs, bad = json.loads(sys.argv[1]), json.loads(sys.argv[2])
node = {k: v for k, v in global_cfg.rolora.items()
        if not k.startswith("__") and k != "is_ready_for_run"}
out = {"node": node, "files": {}, "bad": {}}
for path in configs:
    fs = global_cfg.clone()
    fs.merge_from_file(path)
    ours, theirs = load_config(path), schema_view(fs)
    out["files"][path] = {
        "differ": sorted(k for k in SCHEMA if k not in
                         ("device", "federate.sample_client_num")
                         and ours[k] != theirs[k]),
        "per_round": [clients_per_round(c["federate.client_num"],
                                        c["federate.sample_client_rate"],
                                        c["federate.sample_client_num"])
                      for c in (ours, theirs)],
    }
for key, value in bad.items():
    fs = global_cfg.clone()
    fs.merge_from_file(configs[0])
    try:
        fs.merge_from_list([key, value])
        out["bad"][key] = None
    except Exception as err:
        out["bad"][key] = f"{type(err).__name__}: {err}"
print(json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def probed(fs_main: FsMain) -> dict[str, Any]:
    proc = subprocess.run(
        [str(fs_main.venv.python), "-c", PROBE,
         json.dumps([str(p) for p in CONFIGS]), json.dumps(BAD)],
        env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_the_node_holds_the_embedded_runners_rolora_keys(
        probed: dict[str, Any]) -> None:
    from federatedscope_rolora.schema import SCHEMA

    expected = {k.split(".", 1)[1]: f.default for k, f in SCHEMA.items()
                if k.startswith("rolora.")}

    assert probed["node"] == expected


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_shipped_file_means_the_same_under_both_runners(
        probed: dict[str, Any], path: Path) -> None:
    report = probed["files"][str(path)]

    assert report["differ"] == []
    assert report["per_round"][0] == report["per_round"][1]


@pytest.mark.parametrize("key", sorted(BAD))
def test_what_the_plugin_cannot_honour_is_refused_by_name(
        probed: dict[str, Any], key: str) -> None:
    error = probed["bad"][key]

    assert error is not None, f"{key} {BAD[key]} was accepted"
    assert key.split(".")[-1] in error or key in error


@pytest.mark.parametrize(("role", "index", "named"), [
    ("server", 1, "is 1; a server needs 0 (or -1): it holds the test set"),
    ("client", 0, "is 0; a client needs one of [1, 2], its own share"),
    ("client", 3, "is 3; a client needs one of [1, 2], its own share"),
])
def test_a_process_on_another_roles_data_is_refused(
        role: str, index: int, named: str) -> None:
    """A server on a client's share recorded that share's score as the
    run's; a client on the server's 0 trained on every example."""
    from types import SimpleNamespace

    from federatedscope_rolora.fs.data import _for_this_process

    config = SimpleNamespace(
        federate=SimpleNamespace(mode="distributed"),
        distribute=SimpleNamespace(role=role, data_idx=index))
    data = {0: "all", 1: "one", 2: "two"}

    with pytest.raises(ValueError, match=named.replace("[", r"\[")
                       .replace("(", r"\(").replace(")", r"\)")):
        _for_this_process(data, config)
    for ok_role, ok_index, share in (("server", 0, "all"),
                                     ("server", -1, "all"),
                                     ("client", 2, "two")):
        config.distribute = SimpleNamespace(role=ok_role, data_idx=ok_index)
        assert _for_this_process(data, config) == share


def test_a_model_that_cannot_be_loaded_is_named_as_the_runner_names_it(
        tmp_path: Path) -> None:
    """The data builder loads the tokenizer first: a bad model.type
    ended there in transformers' own OSError."""
    from federatedscope_rolora.fs.data import load_tokenizer
    from federatedscope_rolora.training.models import ModelError

    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelError, match=f"cannot load model '{missing}' "):
        load_tokenizer(missing)
