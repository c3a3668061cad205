"""``rolora.prefix_cache`` in the embedded runner: with LoRA on the tiny
BERT's layer 1 only, the embeddings and layer 0 run once per input. The
run then equals an uncached run whose prefix has no dropout, for every
method; with nothing below the adapted layers it runs uncached and says
so; a cache over the limit stops the run before it starts, naming the
figure; and a resumed run rebuilds the cache and continues bit-identically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from federatedscope_rolora.config import Config, build_config
from federatedscope_rolora.config import _flatten as flatten
from federatedscope_rolora.runners import simulation
from federatedscope_rolora.runners.checkpoint import (
    load_checkpoint,
    save_checkpoint,
)
from federatedscope_rolora.runners.outputs import read_metrics
from federatedscope_rolora.runners.setup import Federation
from federatedscope_rolora.runners.simulation import run
from federatedscope_rolora.training.prefix import backbone_of
from tests.conftest import tiny_config_tree
from tests.runners.test_bad_input import run_cli, write_cfg
from tests.runners.test_resume import Stop, assert_same_run, stop_after

ADAPTED = [1]        # the tiny BERT has layers 0 and 1
LORA = {"adapter_package": "peft", "adapter_method": "lora", "r": 4,
        "lora_alpha": 8, "target_modules": ["query", "value", "dense"]}


def lora_args(layers: list[int] | None) -> list[dict[str, Any]]:
    spec: dict[str, Any] = dict(LORA)
    if layers is not None:
        spec["layers_to_transform"] = layers
    return [spec]


def make_cfg(model: Path, glue: Path, outdir: Path, *, cached: bool,
             method: str = "rolora", layers: list[int] | None = ADAPTED,
             rounds: int = 4, **rolora: Any) -> Config:
    tree = tiny_config_tree(
        model, glue, outdir,
        federate={"method": method, "total_round_num": rounds},
        llm={"tok_len": 16, "adapter": {"args": lora_args(layers)}},
        rolora={"head": "frozen", "threads": 1, "prefix_cache": cached,
                **rolora})
    return build_config(flatten(tree))


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def summary(run_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (run_dir / "summary.json").read_text())
    return loaded


def max_difference(a: dict[str, torch.Tensor],
                   b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture
def prefix_dropout_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference of an uncached run: the tiny BERT's embeddings and
    layer 0 in evaluation mode at every forward, layer 1 and the head
    training as usual."""
    build = simulation.build_federation

    def without_prefix_dropout(cfg: Config) -> Federation:
        fed = build(cfg)
        backbone = backbone_of(fed.model)
        prefix = [backbone.embeddings,
                  *backbone.encoder.layer[:min(ADAPTED)]]

        def to_eval(module: torch.nn.Module, args: Any) -> None:
            for part in prefix:
                part.eval()

        backbone.register_forward_pre_hook(to_eval)
        return fed

    monkeypatch.setattr(simulation, "build_federation",
                        without_prefix_dropout)


@pytest.fixture(scope="module")
def cached_runs(tiny_model_dir: Path, tiny_glue_root: Path,
                tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, Path]:
    """Four rounds of each method with the prefix cached."""
    out = {}
    for method in ALL_METHODS:
        cfg = make_cfg(tiny_model_dir, tiny_glue_root,
                       tmp_path_factory.mktemp(f"cached_{method}") / "run",
                       cached=True, method=method)
        run(cfg)
        out[method] = cfg.run_dir
    return out


ALL_METHODS = ("rolora", "lora", "ffa_lora", "fedex_lora", "flexlora",
               "fedsa_lora")


@pytest.mark.parametrize("method", ALL_METHODS)
def test_cached_run_equals_uncached_run_without_prefix_dropout(
        cached_runs: dict[str, Path], tiny_model_dir: Path,
        tiny_glue_root: Path, tmp_path: Path, method: str,
        prefix_dropout_off: None) -> None:
    reference = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                         cached=False, method=method)

    run(reference)

    cached = cached_runs[method]
    assert max_difference(adapter(cached), adapter(reference.run_dir)) \
        < 1e-5
    got, want = read_metrics(cached), read_metrics(reference.run_dir)
    assert [r["eval"]["acc"] for r in got] == \
        [r["eval"]["acc"] for r in want]
    assert [r["bytes"] for r in got] == [r["bytes"] for r in want]
    # FedSA-LoRA's per-client scores go through the cache as well
    assert [r.get("eval_per_client") for r in got] == \
        [r.get("eval_per_client") for r in want]
    for mine, theirs in zip(got, want, strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"],
                                                   abs=1e-5)


def test_the_prefix_dropout_is_what_the_cache_changes(
        cached_runs: dict[str, Path], tiny_model_dir: Path,
        tiny_glue_root: Path, tmp_path: Path) -> None:
    """With the prefix's dropout on, as uncached runs train by default,
    the adapter differs: the comparison above can fail."""
    plain = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                     cached=False)

    run(plain)

    assert max_difference(adapter(cached_runs["rolora"]),
                          adapter(plain.run_dir)) > 1e-3


def test_the_summary_reports_the_cache(
        cached_runs: dict[str, Path], tiny_glue_root: Path) -> None:
    report = summary(cached_runs["rolora"])["prefix_cache"]

    assert report["layers"] == 1
    # one 32-wide float32 state per token of the distinct inputs; every
    # tiny sentence has 6 words, [CLS] and [SEP] (and may repeat)
    assert 0 < report["bytes"] <= (240 + 80) * 8 * 32 * 4
    assert report["bytes"] == report["inputs"] * 8 * 32 * 4
    assert report["build_seconds"] > 0


@pytest.mark.parametrize("layers", [None, [0, 1]],
                         ids=["all-layers", "from-layer-0"])
def test_nothing_to_cache_runs_uncached_and_says_so(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
        layers: list[int] | None) -> None:
    cached = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "cached",
                      cached=True, layers=layers, rounds=2)
    plain = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "plain",
                     cached=False, layers=layers, rounds=2)

    with caplog.at_level(logging.WARNING, "federatedscope_rolora"):
        run(cached)
    run(plain)

    assert "rolora.prefix_cache: nothing to cache" in caplog.text
    assert "layers_to_transform" in caplog.text
    assert summary(cached.run_dir)["prefix_cache"] == {
        "layers": 0, "bytes": 0, "inputs": 0, "build_seconds": 0.0}
    assert summary(plain.run_dir)["prefix_cache"] is None
    assert max_difference(adapter(cached.run_dir),
                          adapter(plain.run_dir)) == 0.0


def test_a_cache_over_the_limit_is_refused_naming_its_size(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root,
                    llm={"tok_len": 16, "adapter": {"args":
                                                    lora_args(ADAPTED)}},
                    rolora={"prefix_cache": True,
                            "prefix_cache_mb": 0.01})

    code, line = run_cli(capsys, "--cfg", cfg)

    assert code == 2
    assert "rolora.prefix_cache_mb (0.01 MB)" in line
    figure = line.split("would take ")[1].split(" MB")[0]
    assert float(figure) > 0.01, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "named"), [
    (("rolora.prefix_cache", "'yes'"), "'rolora.prefix_cache' must be bool"),
    (("rolora.prefix_cache_mb", "0"), "'rolora.prefix_cache_mb' must be > 0"),
])
def test_a_bad_value_names_the_key(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], override: tuple[str, str],
        named: str) -> None:
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)

    code, line = run_cli(capsys, "--cfg", cfg, *override)

    assert code == 2
    assert named in line
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_rebuilds_the_cache_and_matches_the_straight_run(
        cached_runs: dict[str, Path], tiny_model_dir: Path,
        tiny_glue_root: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                   cached=True)
    with pytest.raises(Stop):
        run(cfg, on_round=stop_after(2))

    # the cache is rebuilt, not read back: a limit change is allowed
    with caplog.at_level(logging.INFO, "federatedscope_rolora"):
        resumed = run(cfg.replace(rolora__prefix_cache_mb=100.0),
                      resume=True)

    assert "prefix cache: embeddings and layer 0 ran once for " \
        f"{resumed['prefix_cache']['inputs']:,} distinct inputs" \
        in caplog.text

    assert_same_run(cfg.run_dir, cached_runs["rolora"])
    assert resumed["prefix_cache"]["bytes"] == \
        summary(cached_runs["rolora"])["prefix_cache"]["bytes"]
    assert not any("prefix" in p.name for p in
                   (cfg.run_dir / "checkpoint").iterdir())


def test_resume_refuses_to_switch_the_cache(
        cached_runs: dict[str, Path], tiny_model_dir: Path,
        tiny_glue_root: Path, tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                   cached=True, rounds=1)
    run(cfg)

    with pytest.raises(ValueError, match="rolora.prefix_cache: True in "
                       "the checkpoint, False now"):
        run(cfg.replace(rolora__prefix_cache=False,
                        federate__total_round_num=2), resume=True)


def test_a_checkpoint_older_than_the_keys_resumes_as_uncached(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """A run checkpointed before the keys existed ran uncached: it
    resumes as such, and switching the cache on is refused."""
    cfg = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                   cached=False, rounds=1)
    run(cfg)
    old = load_checkpoint(cfg.run_dir)
    assert old is not None
    for key in ("rolora.prefix_cache", "rolora.prefix_cache_mb"):
        del old.config[key]
    save_checkpoint(cfg.run_dir, old)

    with pytest.raises(ValueError, match="rolora.prefix_cache: False in "
                       "the checkpoint, True now"):
        run(cfg.replace(rolora__prefix_cache=True,
                        federate__total_round_num=2), resume=True)
    resumed = run(cfg.replace(federate__total_round_num=2), resume=True)

    assert resumed["rounds"] == 2
