"""Checkpoint and resume: a run stopped after k rounds (in-process, or by
a real ``kill -9`` of the CLI mid-round) and resumed ends bit-identical to
the same run made straight through (DESIGN.md, invariant 7)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from federatedscope_rolora.cli import main
from federatedscope_rolora.config import Config, build_config
from federatedscope_rolora.config import _flatten as flatten
from federatedscope_rolora.core.methods import make_method
from federatedscope_rolora.core.server import AdapterServer
from federatedscope_rolora.runners import simulation
from federatedscope_rolora.runners.checkpoint import (
    Checkpoint,
    capture_rng,
    checkpoint_path,
    config_differences,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from federatedscope_rolora.runners.faults import FAULTS_ENV
from federatedscope_rolora.runners.outputs import (
    OutdirError,
    RunDirLock,
    read_metrics,
)
from federatedscope_rolora.runners.simulation import run
from tests.conftest import rescale_a_weight, tiny_config_tree


class Stop(Exception):
    """Stands for the process dying between two rounds."""


def make_tree(model: Path, glue: Path, outdir: Path,
              **sections: Any) -> dict[str, Any]:
    return tiny_config_tree(model, glue, outdir, **sections)


def make_cfg(model: Path, glue: Path, outdir: Path,
             **sections: Any) -> Config:
    return build_config(flatten(make_tree(model, glue, outdir, **sections)))


def write_cfg_file(path: Path, tree: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def stop_after(round_idx: int) -> Any:
    def callback(record: dict[str, Any]) -> None:
        if record["round"] == round_idx:
            raise Stop
    return callback


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def untimed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"}
            for r in records]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Bit-identical adapters; same metrics but for timing fields."""
    got, want = adapter(run_dir), adapter(reference)
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert untimed(read_metrics(run_dir)) == \
        untimed(read_metrics(reference))


@pytest.fixture(scope="module")
def straight(tiny_model_dir: Path, tiny_glue_root: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four rounds straight through: the reference."""
    cfg = make_cfg(tiny_model_dir, tiny_glue_root,
                   tmp_path_factory.mktemp("straight") / "run")
    run(cfg)
    return cfg.run_dir


def test_stopped_run_resumes_to_the_straight_run(
        straight: Path, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run")
    with pytest.raises(Stop):
        run(cfg, on_round=stop_after(2))
    # A kill while round 3's line was being written leaves half of it.
    with open(cfg.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"round": 3, "pha')
    saved = load_checkpoint(cfg.run_dir)
    assert saved is not None and saved.round_idx == 2
    assert saved.metrics_lines == 2 and sorted(saved.clients) == [1, 2, 3]

    summary = run(cfg, resume=True)

    assert_same_run(cfg.run_dir, straight)
    assert summary["rounds"] == 4
    assert summary["bytes"] == read_summary(straight)["bytes"]
    assert load_checkpoint(cfg.run_dir).round_idx == 4  # type: ignore


def read_summary(run_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (run_dir / "summary.json").read_text())
    return loaded


def test_a_finished_run_may_be_extended_to_more_rounds(
        straight: Path, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    short = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                     federate={"total_round_num": 2})
    run(short)

    run(short.replace(federate__total_round_num=4), resume=True)

    assert_same_run(short.run_dir, straight)


def test_a_failed_final_write_leaves_the_last_adapter_whole(
        straight: Path, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Extending a finished run rewrites its adapter; a crash (here a
    full disk) halfway through one file leaves the previous adapter, not
    a torn one, and the next resume writes the new one."""
    short = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                     federate={"total_round_num": 2})
    run(short)
    folder = short.run_dir / "adapter"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = simulation.save_adapter

    def dies_midway(model: Any, state: Any, path: Path) -> None:
        real(model, state, path)
        target = path / "adapter_model.safetensors"
        target.write_bytes(target.read_bytes()[:100])
        raise OSError(28, "No space left on device")

    longer = short.replace(federate__total_round_num=4)
    monkeypatch.setattr(simulation, "save_adapter", dies_midway)
    with pytest.raises(OSError, match="No space left"):
        run(longer, resume=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in short.run_dir.iterdir()) == \
        sorted(["adapter", "checkpoint", "config.yaml", "metrics.jsonl",
                "summary.json"])

    monkeypatch.setattr(simulation, "save_adapter", real)
    run(longer, resume=True)
    assert_same_run(short.run_dir, straight)


def test_a_run_killed_before_its_first_checkpoint_starts_over(
        straight: Path, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run")
    with pytest.raises(Stop):
        run(cfg, on_round=stop_after(1))
    # As if killed after round 1's metrics line but before its checkpoint.
    shutil.rmtree(cfg.run_dir / "checkpoint")

    run(cfg, resume=True)

    assert_same_run(cfg.run_dir, straight)


def metrics_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_9_in_round_3_then_resume(cfg_file: Path, run_dir: Path
                                  ) -> subprocess.CompletedProcess[str]:
    """Run the CLI on ``cfg_file`` with client 1 stalled a minute in
    round 3, ``kill -9`` it there (after round 2's line), check nothing
    of round 3 was written, then ``--resume``; the resumed process."""
    command = [sys.executable, "-m", "federatedscope_rolora", "run",
               "--cfg", str(cfg_file)]
    env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    stalled = {**env, FAULTS_ENV: "3:1:hang=60"}
    proc = subprocess.Popen(command, env=stalled,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while metrics_lines(run_dir / "metrics.jsonl") < 2:
            assert proc.poll() is None, "the run ended before round 3"
            assert time.monotonic() < deadline, "round 2 never finished"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert metrics_lines(run_dir / "metrics.jsonl") == 2
    assert not (run_dir / "adapter").exists()
    return subprocess.run([*command, "--resume"], env=env,
                          capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.slow
def test_kill_9_mid_round_then_resume_matches_the_straight_run(
        straight: Path, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg_file = write_cfg_file(tmp_path / "tiny.yaml", make_tree(
        tiny_model_dir, tiny_glue_root, run_dir))

    done = kill_9_in_round_3_then_resume(cfg_file, run_dir)

    assert done.returncode == 0, done.stderr
    assert_same_run(run_dir, straight)


@pytest.mark.slow
def test_a_second_process_on_a_run_still_going_is_refused(
        straight: Path, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same command started twice, or a --resume beside the run it
    would continue: both wrote the run folder, the same rounds were
    appended twice and each overwrote the other's checkpoint. The
    running CLI (stalled in round 2) holds the folder; once it is
    killed, the resume goes on to the straight run."""
    run_dir = tmp_path / "run"
    cfg_file = write_cfg_file(tmp_path / "tiny.yaml", make_tree(
        tiny_model_dir, tiny_glue_root, run_dir))
    env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "federatedscope_rolora", "run", "--cfg",
         str(cfg_file)], env={**env, FAULTS_ENV: "2:1:hang=60"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not round_1_saved(run_dir):   # then it stalls in round 2
            assert proc.poll() is None, "the run ended before round 2"
            assert time.monotonic() < deadline, "round 1 never finished"
            time.sleep(0.05)

        error = refused_resume(cfg_file, run_dir, capsys)
        assert f"outdir {str(run_dir)!r} is in use: another process is " \
            "writing a run there" in error
        assert main(["run", "--cfg", str(cfg_file)]) == 2
        assert "already holds a run" in capsys.readouterr().err
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=30)

    assert main(["run", "--cfg", str(cfg_file), "--resume"]) == 0
    assert_same_run(run_dir, straight)


def test_resume_removes_the_scratch_folder_of_a_killed_adapter_write(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """A kill while the adapter was written left its scratch copy (as
    mkdtemp names it) beside it for good; a folder of another name is
    not the run's and stays."""
    cfg = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                   federate={"total_round_num": 2})
    with pytest.raises(Stop):
        run(cfg, on_round=stop_after(1))
    scratch = cfg.run_dir / ".adapter.k3_x9q0a"
    scratch.mkdir()
    (scratch / "adapter_model.safetensors").write_bytes(b"half")
    mine = cfg.run_dir / ".adapter.notes"
    mine.mkdir()

    run(cfg, resume=True)

    assert not scratch.exists() and mine.is_dir()


def round_1_saved(run_dir: Path) -> bool:
    """Round 1's checkpoint is whole and nothing is being written."""
    try:
        saved = load_checkpoint(run_dir)
    except Exception:   # caught mid-write
        return False
    return saved is not None and saved.round_idx == 1 and \
        not any(run_dir.rglob("*.tmp"))


def test_the_run_folder_is_free_again_when_a_run_ends(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """In one process (compare, a notebook) the lock goes with the run,
    whether it finished or stopped."""
    cfg = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                   federate={"total_round_num": 2})
    with pytest.raises(Stop):
        run(cfg, on_round=stop_after(1))
    run(cfg, resume=True)

    lock = RunDirLock(cfg.run_dir)
    lock.acquire()
    with pytest.raises(OutdirError, match="is in use"):
        run(cfg.replace(federate__total_round_num=3), resume=True)
    lock.release()
    run(cfg.replace(federate__total_round_num=3), resume=True)


@pytest.mark.parametrize(("override", "named"), [
    (("federate.method", "lora"),
     "federate.method: 'rolora' in the checkpoint, 'lora' now"),
    (("llm.adapter.args", "[{r: 2, lora_alpha: 8, target_modules: "
      "[query, value, dense]}]"), "llm.adapter.args: "),
    (("seed", "7"), "seed: 1 in the checkpoint, 7 now"),
])
def test_resume_refuses_a_config_that_differs_naming_the_key(
        straight: Path, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        override: tuple[str, str], named: str) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    cfg_file = write_cfg_file(tmp_path / "tiny.yaml", make_tree(
        tiny_model_dir, tiny_glue_root, tmp_path / "elsewhere"))
    before = {p: p.read_bytes() for p in run_dir.rglob("*")
              if p.is_file()}

    code = main(["run", "--cfg", str(cfg_file), "--resume", str(run_dir),
                 *override])

    assert code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1
    assert errors[0].startswith("federatedscope-rolora: error: cannot "
                                "resume")
    assert named in errors[0]
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before
    assert not (tmp_path / "elsewhere").exists()


def refused_resume(cfg_file: Path, run_dir: Path,
                   capsys: pytest.CaptureFixture[str]) -> str:
    """``run --resume``'s one error line; asserts exit 2 and that no file
    of the run changed."""
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    code = main(["run", "--cfg", str(cfg_file), "--resume"])

    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(errors) == 1, errors
    assert {p: p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file()} == before
    return errors[0]


@pytest.mark.parametrize("edited", ["train.tsv", "dev.tsv"])
def test_resume_refuses_data_that_changed_since_the_checkpoint(
        straight: Path, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        edited: str) -> None:
    glue = tmp_path / "glue"
    shutil.copytree(tiny_glue_root, glue)
    tree = make_tree(tiny_model_dir, glue, tmp_path / "run")
    cfg = build_config(flatten(tree))
    with pytest.raises(Stop):
        run(cfg, on_round=stop_after(2))
    tsv = glue / "SST-2" / edited
    original = tsv.read_text(encoding="utf-8")
    header, first, *rest = original.splitlines()
    text, label = first.split("\t")
    tsv.write_text("\n".join([header, f"{text}\t{1 - int(label)}", *rest])
                   + "\n", encoding="utf-8")
    cfg_file = write_cfg_file(tmp_path / "tiny.yaml", tree)

    error = refused_resume(cfg_file, cfg.run_dir, capsys)

    which = "train" if edited == "train.tsv" else "test"
    assert f"its {which} data (sha256 " in error
    assert "differ from the examples it ran on to round 2" in error
    # Put back, the same files resume to the straight run.
    tsv.write_text(original, encoding="utf-8")
    assert main(["run", "--cfg", str(cfg_file), "--resume"]) == 0
    assert_same_run(cfg.run_dir, straight)
    assert read_summary(cfg.run_dir)["data_digest"] == \
        read_summary(straight)["data_digest"]


def test_resume_refuses_a_model_whose_weights_changed(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """One weight scaled by 1.01, same shapes, same path: the resume was
    accepted and trained on from another model (no longer bit-identical
    to a straight run); a hub name's files can change the same way."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    tree = make_tree(model, tiny_glue_root, tmp_path / "run")
    cfg = build_config(flatten(tree))
    with pytest.raises(Stop):
        run(cfg, on_round=stop_after(2))
    original = rescale_a_weight(model)
    cfg_file = write_cfg_file(tmp_path / "tiny.yaml", tree)

    error = refused_resume(cfg_file, cfg.run_dir, capsys)

    assert (f"the model built from model.type {str(model)!r} differs from "
            "the one it ran on to round 2") in error
    (model / "model.safetensors").write_bytes(original)
    assert main(["run", "--cfg", str(cfg_file), "--resume"]) == 0
    assert read_summary(cfg.run_dir)["model_digest"] == \
        load_checkpoint(cfg.run_dir).model


def test_a_checkpoint_without_data_digests_still_resumes(
        straight: Path, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, tiny_glue_root, tmp_path / "run")
    with pytest.raises(Stop):
        run(cfg, on_round=stop_after(2))
    saved = load_checkpoint(cfg.run_dir)
    assert saved is not None
    assert set(saved.data) == {"train", "test"}
    saved.data = {}      # as written before checkpoints kept digests
    save_checkpoint(cfg.run_dir, saved)

    run(cfg, resume=True)

    assert_same_run(cfg.run_dir, straight)


def test_resume_refuses_fewer_rounds_than_the_checkpoint_holds(
        straight: Path, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    cfg_file = write_cfg_file(tmp_path / "tiny.yaml", make_tree(
        tiny_model_dir, tiny_glue_root, run_dir))

    code = main(["run", "--cfg", str(cfg_file), "--resume",
                 "federate.total_round_num", "3"])

    assert code == 2
    assert "checkpoint is at round 4, past federate.total_round_num (3)" \
        in capsys.readouterr().err


def test_checkpoint_round_trips_tensors_versions_and_rng(
        tmp_path: Path) -> None:
    server: dict[str, Any] = {
        "state": {"m.lora_A.default.weight": torch.randn(2, 3)},
        "version": {"m.lora_A.default.weight": 3},
        "client_versions": {2: {"m.lora_A.default.weight": -1}},
        "aggregated_round": 3}
    clients = {2: {"m.lora_A.default.weight": torch.randn(2, 3)}}
    rng = capture_rng()
    expected = (torch.rand(3), random.random())
    ckpt = Checkpoint(3, "B", {"seed": 1}, server, clients, rng, 3, 1.5)
    # A temporary file left by a kill during an earlier save is ignored.
    path = checkpoint_path(tmp_path)
    path.parent.mkdir()
    stale = path.with_name(path.name + ".tmp")   # the name save uses
    stale.write_bytes(b"junk")

    save_checkpoint(tmp_path, ckpt)
    loaded = load_checkpoint(tmp_path)

    assert loaded is not None
    assert (loaded.round_idx, loaded.phase, loaded.metrics_lines) == \
        (3, "B", 3)
    key = "m.lora_A.default.weight"
    assert torch.equal(loaded.server["state"][key], server["state"][key])
    assert torch.equal(loaded.clients[2][key], clients[2][key])
    assert loaded.server["client_versions"] == {"2": {key: -1}}
    restore_rng(loaded.rng)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    # safetensors: an 8-byte header length, then JSON; never a pickle.
    assert path.read_bytes()[8:9] == b"{"
    assert not stale.exists()       # replaced, then renamed into place


def test_server_state_round_trips_and_refuses_another_adapter() -> None:
    def server(rank: int) -> AdapterServer:
        torch.manual_seed(rank)
        return AdapterServer(make_method("rolora"), {
            "m.lora_A.default.weight": torch.randn(rank, 3),
            "m.lora_B.default.weight": torch.zeros(3, rank)})

    source = server(2)
    source.downlink(1, 1)
    saved = source.state_dict()
    target = server(2)

    target.load_state_dict(saved)

    assert target.client_versions == source.client_versions
    assert target.version == source.version
    assert all(torch.equal(target.state[k], v)
               for k, v in source.state.items())
    with pytest.raises(ValueError, match="has shape"):
        server(4).load_state_dict(saved)
    with pytest.raises(ValueError, match="exceed round 0"):
        target.load_state_dict({**saved, "version": {
            k: 5 for k in saved["version"]}})


def test_lora_args_spelt_out_at_their_defaults_are_the_same_adapter(
        ) -> None:
    key = "llm.adapter.args"
    saved = {key: [{"r": 4, "lora_alpha": 8, "layers_to_transform": 1}]}
    same = [{"adapter_package": "peft", "adapter_method": "lora", "r": 4,
             "lora_alpha": 8, "lora_dropout": 0.0,
             "target_modules": ["query", "value"],
             "layers_to_transform": [1]}]
    other = [{**same[0], "r": 2}]
    # PEFT matches targets and layers as sets: order is not the adapter
    reordered = [{**same[0], "target_modules": ["value", "query"]}]
    saved_two = {key: [{**same[0], "layers_to_transform": [4, 5]}]}
    two_reordered = [{**same[0], "layers_to_transform": [5, 4]}]

    assert config_differences(saved, {**saved, key: same}) == []
    assert config_differences(saved, {**saved, key: reordered}) == []
    assert config_differences(saved_two, {key: two_reordered}) == []
    assert config_differences(saved, {**saved, key: other}) == [
        f"{key}: {saved[key]!r} in the checkpoint, {other!r} now"]
