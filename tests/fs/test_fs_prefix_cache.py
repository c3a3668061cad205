"""``rolora.prefix_cache`` through FederatedScope's own ``main.py``: on a
tiny BERT without dropout (so caching changes nothing), a cached run ends
with the adapter of an uncached one; the cache covers the inputs the
embedded runner caches; a cache over the limit stops the run naming the
figure. Skipped when FederatedScope is not installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.fs.conftest import FsMain, FsRun, fs_tree, write_config

pytestmark = [pytest.mark.fs, pytest.mark.slow]

LORA = {"adapter_package": "peft", "adapter_method": "lora", "r": 4,
        "lora_alpha": 8, "target_modules": ["query", "value", "dense"],
        "layers_to_transform": [1]}


@pytest.fixture(scope="module")
def no_dropout_bert(tiny_model_dir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with every dropout off."""
    path = tmp_path_factory.mktemp("bert-no-dropout") / "model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return path


def tree(model: Path, glue: Path, outdir: Path, cached: bool,
         shared: bool = True, **rolora: Any) -> dict[str, Any]:
    return fs_tree(model, glue, outdir,
                   federate={"total_round_num": 3,
                             "share_local_model": shared},
                   llm={"tok_len": 16, "adapter": {"args": [LORA]}},
                   rolora={"head": "frozen", "threads": 1,
                           "prefix_cache": cached, **rolora})


def adapter(run: FsRun) -> dict[str, torch.Tensor]:
    return load_file(str(run.run_dir / "adapter" /
                         "adapter_model.safetensors"))


def summary(run_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (run_dir / "summary.json").read_text())
    return loaded


@pytest.mark.parametrize("shared", [True, False],
                         ids=["one-shared-model", "a-model-per-client"])
def test_cached_run_ends_with_the_uncached_adapter(
        fs_main: FsMain, no_dropout_bert: Path, tiny_glue_root: Path,
        tmp_path: Path, shared: bool) -> None:
    from federatedscope_rolora.config import load_config
    from federatedscope_rolora.runners.simulation import run

    runs = {}
    for cached in (True, False):
        cfg = write_config(tmp_path / f"cached_{cached}.yaml", tree(
            no_dropout_bert, tiny_glue_root, tmp_path / f"fs_{cached}",
            cached, shared))
        runs[cached] = fs_main.run(cfg)
    embedded = load_config(tmp_path / "cached_True.yaml",
                           ["outdir", str(tmp_path / "embedded"),
                            "expname", ""])

    run(embedded)

    got, want = adapter(runs[True]), adapter(runs[False])
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.allclose(got[key], value, atol=1e-5), key
    report = summary(runs[True].run_dir)["prefix_cache"]
    assert report["layers"] == 1 and report["bytes"] > 0
    theirs = summary(embedded.run_dir)["prefix_cache"]
    assert (report["bytes"], report["inputs"]) == \
        (theirs["bytes"], theirs["inputs"])
    assert summary(runs[False].run_dir)["prefix_cache"] is None
    assert "rolora prefix cache: embeddings and layer 0" in \
        runs[True].log


def test_a_cache_over_the_limit_stops_the_run_naming_its_size(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "small.yaml", tree(
        tiny_model_dir, tiny_glue_root, tmp_path / "fs", True,
        prefix_cache_mb=0.01))

    run = fs_main.run(cfg, check=False)

    assert run.proc.returncode != 0
    assert "over rolora.prefix_cache_mb (0.01 MB)" in run.log
    assert not (run.run_dir / "metrics.jsonl").exists()


def test_the_trainer_runs_on_the_cache(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    """With dropout on, only the cache can make the two runs differ (its
    prefix runs without dropout): the test above cannot pass by a trainer
    that ignores the cache."""
    runs = {}
    for cached in (True, False):
        cfg = write_config(tmp_path / f"cached_{cached}.yaml", tree(
            tiny_model_dir, tiny_glue_root, tmp_path / f"fs_{cached}",
            cached))
        runs[cached] = fs_main.run(cfg)

    got, want = adapter(runs[True]), adapter(runs[False])

    assert max(float((got[k] - want[k]).abs().max()) for k in want) > 1e-3
