"""A finished run's model rebuilt from its files alone (runners/trained.py,
``federatedscope-rolora eval``) scores what the run recorded, for every
method: FedEx-LoRA's residual folded in, FedSA-LoRA's B per client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from federatedscope_rolora.config import _flatten as flatten
from federatedscope_rolora.config import build_config
from federatedscope_rolora.core.names import METHODS
from federatedscope_rolora.runners.simulation import run
from federatedscope_rolora.runners.trained import (
    EXPORT_RECORD,
    TrainedError,
    export_model,
    load_trained,
    score_run,
)
from tests.conftest import rescale_a_weight, tiny_config_tree

pytestmark = pytest.mark.slow


def finished_run(model: Path, glue: Path, run_dir: Path, method: str,
                 **federate: Any) -> tuple[Any, dict[str, Any]]:
    tree = tiny_config_tree(model, glue, run_dir,
                            federate={"method": method,
                                      "total_round_num": 3, **federate})
    cfg = build_config(flatten(tree))
    return cfg, run(cfg)


@pytest.mark.parametrize("method", METHODS)
def test_the_files_reproduce_the_runs_final_score(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        method: str) -> None:
    cfg, summary = finished_run(tiny_model_dir, tiny_glue_root,
                                tmp_path / "run", method)

    scored = score_run(tmp_path / "run", cfg)

    assert scored["rows"] == 80
    assert scored["eval"]["acc"] == summary["final"]["acc"]
    assert scored["eval"]["loss"] == pytest.approx(summary["final"]["loss"],
                                                   rel=1e-6)
    assert scored["recorded"] == summary["final"]
    assert scored["same_rows"] is True


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[2, 5, 9, 11, 3]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)
                     ).logits


def test_fedex_lora_needs_its_residual_and_gets_it(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """Without the residual the model is not the run's: the
    reproduction above would fail if it were left out."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    cfg, _ = finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                          "fedex_lora")
    base = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), num_labels=2)
    bare = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter"))

    folded = load_trained(tmp_path / "run", cfg).model

    assert not torch.allclose(logits(folded), logits(bare.eval()),
                              atol=1e-6)


def test_fedsa_lora_scores_each_client_with_its_own_b(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    cfg, summary = finished_run(tiny_model_dir, tiny_glue_root,
                                tmp_path / "run", "fedsa_lora")

    per_client = score_run(tmp_path / "run", cfg, per_client=True)
    trained = load_trained(tmp_path / "run", cfg)
    shared = logits(trained.model)
    trained.use_client(2)
    own = logits(trained.model)

    recorded = summary["final_per_client"]
    assert per_client["recorded"] == recorded
    means = per_client["eval_per_client"]
    assert (means["clients"], means["examples"]) == (3, 80)
    for mean in ("example_weighted", "client_mean"):
        assert means[mean]["acc"] == recorded[mean]["acc"]
        assert means[mean]["loss"] == pytest.approx(recorded[mean]["loss"],
                                                    rel=1e-6)
    assert sorted(trained.personal) == [1, 2, 3]
    assert not torch.allclose(own, shared, atol=1e-6)


def test_a_run_without_an_adapter_or_client_is_named(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    cfg, _ = finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                          "fedsa_lora")

    with pytest.raises(TrainedError, match="holds no adapter"):
        load_trained(tmp_path / "elsewhere", cfg)
    with pytest.raises(TrainedError, match=r"client 4: the run had "
                       r"clients 1\.\.3"):
        score_run(tmp_path / "run", cfg, client=4)


def test_a_config_of_another_method_is_refused(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """FedSA-LoRA's run read as LoRA's used to export the initial B and
    leave every client's B out, exit 0."""
    cfg, _ = finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                          "fedsa_lora")
    other = cfg.replace(federate__method="lora")

    with pytest.raises(TrainedError, match="trained with federate.method "
                       "fedsa_lora, but the config given says lora"):
        load_trained(tmp_path / "run", other)
    with pytest.raises(TrainedError, match="federate.method fedsa_lora"):
        export_model(tmp_path / "run", other, tmp_path / "model")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(("method", "removed", "command", "named"), [
    ("fedex_lora", "fedex_residual.safetensors", ["eval"],
     "holds no fedex_residual.safetensors: FedEx-LoRA's residual"),
    ("fedex_lora", "fedex_residual.safetensors", ["export"],
     "holds no fedex_residual.safetensors"),
    ("fedsa_lora", "personal.safetensors", ["eval", "--per-client"],
     r"client 1 trained in the run in .*, but its adapter/ holds no B of "
     r"its \(personal.safetensors, or the plugin's "
     r"personal_client1.safetensors\)"),
    ("fedsa_lora", "personal.safetensors", ["export", "--client", "2"],
     "client 2 trained in the run"),
])
def test_a_model_file_left_behind_is_named_not_scored_without(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        method: str, removed: str, command: list[str], named: str) -> None:
    """Copying only PEFT's files (the usual way to move an adapter), or
    a plugin client's B saved in its own outdir: eval scored, and export
    wrote and checked, the model without the residual or with the
    initial B, exit 0."""
    import re

    finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run", method)
    (tmp_path / "run" / "adapter" / removed).unlink()
    extra = [str(tmp_path / "model")] if command[0] == "export" else []

    done = cli(*command, tmp_path / "run", *extra)

    assert done.returncode == 2, done.stderr
    assert re.search(named, done.stderr), done.stderr
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("damage", [
    "adapter_model.safetensors", "personal.safetensors",
    "adapter_config.json", "missing weights", "summary digest",
    "metrics bytes"])
def test_damaged_run_files_are_named_not_a_traceback(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        damage: str) -> None:
    finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                 "fedsa_lora")
    run_dir = tmp_path / "run"
    adapter = run_dir / "adapter"
    if damage.endswith(".safetensors"):
        (adapter / damage).write_bytes(b"not safetensors")
    elif damage == "adapter_config.json":
        (adapter / damage).write_text("[]", encoding="utf-8")
    elif damage == "missing weights":
        (adapter / "adapter_model.safetensors").unlink()
    elif damage == "summary digest":
        summary = json.loads((run_dir / "summary.json").read_text())
        (run_dir / "summary.json").write_text(json.dumps(
            {**summary, "data_digest": "abc"}), encoding="utf-8")
    else:
        (run_dir / "metrics.jsonl").write_bytes(b"\xff\xfe\n")

    done = cli("eval", run_dir)

    if damage == "summary digest":   # no digest to check: scored, no note
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "federatedscope-rolora: error: "), lines
    named = {"missing weights": "holds no adapter weights "
             "(adapter_model.safetensors)",
             "adapter_model.safetensors": "cannot load the adapter in",
             "adapter_config.json": "cannot load the adapter in",
             "metrics bytes": "metrics.jsonl' cannot be read"}.get(
                 damage, f"{damage}' cannot be read")
    assert named in lines[0]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "federatedscope_rolora", *map(str, args)],
        capture_output=True, text=True, timeout=600, check=False)


def test_cli_eval_prints_the_score_beside_the_runs(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    _, summary = finished_run(tiny_model_dir, tiny_glue_root,
                              tmp_path / "run", "fedex_lora")
    acc = summary["final"]["acc"]

    done = cli("eval", tmp_path / "run")
    as_json = cli("eval", "--json", tmp_path / "run")
    misplaced = cli("eval", tmp_path / "run", "--json")

    assert done.returncode == 0, done.stderr
    assert (f"fedex_lora on sst2, global adapter on 80 test rows: acc "
            f"{acc:.4f} (run: {acc:.4f})") in done.stdout
    assert json.loads(as_json.stdout)["eval"]["acc"] == acc
    assert "note:" not in done.stderr
    assert misplaced.returncode == 2
    assert ("--json stands among the KEY VALUE overrides: options go "
            "before RUN_DIR") in misplaced.stderr


def test_eval_under_other_scoring_values_says_so(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """Shorter inputs scored other numbers beside the run's own, with no
    word; the test-rows note blamed the data files for an eval_samples
    override."""
    finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run", "lora")

    shorter = cli("eval", tmp_path / "run", "llm.tok_len", "12")
    fewer = cli("eval", "--json", tmp_path / "run", "rolora.eval_samples",
                "40")
    spelt = cli("eval", tmp_path / "run", "data.type", "sst2")

    assert shorter.returncode == 0, shorter.stderr
    assert "note: scored under other values than the run's config.yaml: " \
        "llm.tok_len (16 in the run, 12 here)" in shorter.stderr
    assert "rolora.eval_samples (" in fewer.stderr   # --json too
    assert json.loads(fewer.stdout)["same_rows"] is False
    assert spelt.returncode == 0 and "note:" not in spelt.stderr


def test_eval_takes_the_yaml_a_distributed_run_ran_with(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """The README says to pass the YAML a run used; a distributed
    process's has a ``distribute:`` section, refused as unknown keys."""
    import yaml

    _, summary = finished_run(tiny_model_dir, tiny_glue_root,
                              tmp_path / "run", "lora")
    tree = tiny_config_tree(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                            federate={"method": "lora",
                                      "total_round_num": 3,
                                      "mode": "distributed"},
                            distribute={"use": True, "role": "server",
                                        "server_host": "127.0.0.1",
                                        "server_port": 50051,
                                        "data_idx": 0})
    server = tmp_path / "server.yaml"
    server.write_text(yaml.safe_dump(tree), encoding="utf-8")

    done = cli("eval", "--cfg", server, "--json", tmp_path / "run")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["eval"]["acc"] == summary["final"]["acc"]


def test_eval_says_when_the_test_rows_are_not_the_runs(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    glue = tmp_path / "glue"
    shutil.copytree(tiny_glue_root, glue)
    finished_run(tiny_model_dir, glue, tmp_path / "run", "lora")
    dev = glue / "SST-2" / "dev.tsv"
    header, first, *rest = dev.read_text(encoding="utf-8").splitlines()
    text, label = first.split("\t")
    dev.write_text("\n".join([header, f"{text}\t{1 - int(label)}", *rest])
                   + "\n", encoding="utf-8")

    done = cli("eval", tmp_path / "run")

    assert done.returncode == 0, done.stderr
    assert "global adapter on 80 test rows" in done.stdout
    assert ("note: these test rows differ from the ones the run was "
            "scored on") in done.stderr


def test_per_client_eval_checks_how_the_train_rows_were_dealt(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """Each client's test share follows the train split, so an edited
    train file makes per-client scores incomparable, global ones not."""
    glue = tmp_path / "glue"
    shutil.copytree(tiny_glue_root, glue)
    cfg, _ = finished_run(tiny_model_dir, glue, tmp_path / "run",
                          "fedsa_lora")
    assert score_run(tmp_path / "run", cfg, per_client=True)[
        "same_rows"] is True
    train = glue / "SST-2" / "train.tsv"
    header, first, *rest = train.read_text(encoding="utf-8").splitlines()
    text, label = first.split("\t")
    train.write_text("\n".join([header, f"{text}\t{1 - int(label)}", *rest])
                     + "\n", encoding="utf-8")

    assert score_run(tmp_path / "run", cfg, per_client=True)[
        "same_rows"] is False
    assert score_run(tmp_path / "run", cfg)["same_rows"] is True


def exported_scores(out: Path, cfg: Any) -> dict[str, float]:
    """The exported checkpoint, loaded and tokenising with transformers
    alone, scored on the run's test rows."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from federatedscope_rolora.runners.trained import _scored_rows
    from federatedscope_rolora.training.encoding import encode
    from federatedscope_rolora.training.local import evaluate

    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    data = encode(_scored_rows(cfg)[1], tokenizer, cfg["llm.tok_len"])
    return evaluate(model, data, ("acc",), batch_size=32,
                    pad_token_id=int(tokenizer.pad_token_id),
                    device=torch.device("cpu"))


@pytest.mark.parametrize(("method", "head"), [
    *((m, "frozen") for m in METHODS if m != "fedsa_lora"),
    ("lora", "trained")])
def test_the_export_is_the_runs_model_without_peft(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        method: str, head: str) -> None:
    """transformers alone loads the merged checkpoint, and it scores what
    the run recorded: LoRA, FedEx-LoRA's residual and a trained head are
    all in the weights."""
    tree = tiny_config_tree(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                            federate={"method": method,
                                      "total_round_num": 3},
                            rolora={"head": head, "threads": 1})
    cfg = build_config(flatten(tree))
    summary = run(cfg)

    record = export_model(tmp_path / "run", cfg, tmp_path / "out")
    scores = exported_scores(tmp_path / "out", cfg)
    config = json.loads((tmp_path / "out" / "config.json").read_text())

    assert scores["acc"] == summary["final"]["acc"]
    assert scores["loss"] == pytest.approx(summary["final"]["loss"],
                                           rel=1e-4)
    from safetensors.torch import load_file
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert not any("lora_" in key for key in weights)
    assert not (tmp_path / "out" / "adapter_config.json").exists()
    assert config["id2label"] == {"0": "0", "1": "1"}  # SST-2's names
    assert record["check"]["rows"] == 16
    assert record["check"]["max_abs_logit_diff"] < 1e-4
    assert record["pair_separator"] is None   # one text, and BERT's anyway
    assert json.loads((tmp_path / "out" / EXPORT_RECORD).read_text()) == \
        record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


def test_fedsa_lora_exports_one_clients_model(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    cfg, _ = finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                          "fedsa_lora")
    with pytest.raises(TrainedError, match="--client ID"):
        export_model(tmp_path / "run", cfg, tmp_path / "global")

    export_model(tmp_path / "run", cfg, tmp_path / "c2", client=2)
    trained = load_trained(tmp_path / "run", cfg)
    trained.use_client(2)
    from transformers import AutoModelForSequenceClassification
    exported = AutoModelForSequenceClassification.from_pretrained(
        str(tmp_path / "c2")).eval()

    assert torch.allclose(logits(exported), logits(trained.model),
                          atol=1e-5)
    trained.use_client(1)
    assert not torch.allclose(logits(exported), logits(trained.model),
                              atol=1e-5)
    assert not (tmp_path / "global").exists()


def test_export_overwrites_nothing_and_leaves_nothing_when_refused(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from federatedscope_rolora.runners import trained as module

    cfg, _ = finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                          "rolora")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")

    with pytest.raises(TrainedError, match="not an empty directory"):
        export_model(tmp_path / "run", cfg, tmp_path / "taken")
    # it was exported as "client 2's model": the global adapter
    with pytest.raises(TrainedError, match="--client 2: rolora trains one "
                       "model, the global adapter"):
        export_model(tmp_path / "run", cfg, tmp_path / "c2", client=2)
    # a written copy that does not match the run's model is not exported
    monkeypatch.setattr(module, "EXPORT_TOLERANCE", -1.0)
    with pytest.raises(TrainedError, match="nothing was exported"):
        export_model(tmp_path / "run", cfg, tmp_path / "bad")

    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "taken"]


def test_cli_export(tiny_model_dir: Path, tiny_glue_root: Path,
                    tmp_path: Path) -> None:
    finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run", "lora")
    (tmp_path / "empty").mkdir()

    done = cli("export", tmp_path / "run", tmp_path / "empty")
    again = cli("export", tmp_path / "run", tmp_path / "empty")
    misplaced = cli("export", tmp_path / "run", tmp_path / "x", "--client",
                    "1")

    assert done.returncode == 0, done.stderr
    assert "lora on sst2: merged checkpoint written to" in done.stdout
    assert "match the run's model to" in done.stdout
    assert (tmp_path / "empty" / "config.json").is_file()
    assert again.returncode == 2
    assert "exists and is not an empty directory" in again.stderr
    assert misplaced.returncode == 2
    assert ("--client stands among the KEY VALUE overrides: options "
            "go before RUN_DIR") in misplaced.stderr


def test_export_refuses_a_negative_check_rows(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--check-rows -5`` is no number of rows: it used to skip the
    check silently and say '(--check-rows 0)'."""
    from federatedscope_rolora.cli import main

    finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run", "lora")

    code = main(["export", "--check-rows", "-5", str(tmp_path / "run"),
                 str(tmp_path / "out")])

    assert code == 2
    assert "--check-rows -5" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_eval_and_export_refuse_a_model_whose_weights_changed(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The weights at model.type replaced after the run (same path and
    shapes): eval scored the adapter on them and export merged it into
    them, its own check passing (the model against itself), both exit
    0. FedEx-LoRA: the run's base is checked before its residual is
    folded in, so the unchanged model still scores."""
    from federatedscope_rolora.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg, summary = finished_run(model, tiny_glue_root, tmp_path / "run",
                                "fedex_lora")
    run_dir = str(tmp_path / "run")
    assert score_run(tmp_path / "run", cfg)["eval"]["acc"] == \
        summary["final"]["acc"]

    rescale_a_weight(model)

    assert main(["eval", run_dir]) == 2
    refused = (f"model.type {str(model)!r}: its weights are not those the "
               f"run in {run_dir!r} trained on (base_digest "
               f"{summary['base_digest'][:12]} in summary.json, ")
    assert refused in capsys.readouterr().err
    assert main(["export", run_dir, str(tmp_path / "out")]) == 2
    assert refused in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_eval_runs_on_the_runs_threads_and_over_a_damaged_summary(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """eval took every core whatever rolora.threads said; a summary whose
    final scores are not a mapping (edited, damaged) ended in a
    traceback: it is scored, with no recorded figure beside."""
    from federatedscope_rolora.cli import main

    threads: list[int] = []   # recorded, not applied to this process
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    summary = run(build_config(flatten(tiny_config_tree(
        tiny_model_dir, tiny_glue_root, tmp_path / "run",
        federate={"method": "lora", "total_round_num": 2},
        rolora={"threads": 1}))))
    assert threads == [1]
    assert main(["eval", str(tmp_path / "run")]) == 0
    assert threads == [1, 1]
    capsys.readouterr()

    damaged = {**summary, "final": "0.6"}
    (tmp_path / "run" / "summary.json").write_text(json.dumps(damaged),
                                                   encoding="utf-8")
    assert main(["eval", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "acc " in out and "(run:" not in out


def test_export_writes_into_an_empty_current_directory_or_link(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """OUT_DIR ``.`` (an empty current directory) and a link to an empty
    directory are empty directories: the export goes there (it used to
    fail with a ValueError, and a NotADirectoryError for the link, after
    the whole export was written)."""
    cfg, summary = finished_run(tiny_model_dir, tiny_glue_root,
                                tmp_path / "run", "lora")
    (tmp_path / "here").mkdir()
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    monkeypatch.chdir(tmp_path / "here")

    export_model(tmp_path / "run", cfg, Path("."))
    export_model(tmp_path / "run", cfg, tmp_path / "link")

    for out in (tmp_path / "here", tmp_path / "target"):
        assert exported_scores(out, cfg)["acc"] == summary["final"]["acc"]
        assert sorted(p.name for p in out.iterdir()) == [
            "config.json", "model.safetensors", EXPORT_RECORD,
            "tokenizer.json", "tokenizer_config.json"]
    assert (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "here", "link", "run", "target"]


@pytest.mark.skipif(not Path("/proc/self").exists(),
                    reason="needs Linux's /proc, where no folder can be made")
def test_export_into_a_folder_it_cannot_write_is_named(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    cfg, _ = finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                          "lora")

    with pytest.raises(TrainedError, match="cannot write into '/proc'"):
        export_model(tmp_path / "run", cfg, Path("/proc/rolora-export"))


def test_export_refuses_a_dangling_link_and_leaves_no_folder_it_made(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from federatedscope_rolora.runners import trained as module

    cfg, _ = finished_run(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                          "lora")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("mine")

    with pytest.raises(TrainedError, match="not an empty directory"):
        export_model(tmp_path / "run", cfg, tmp_path / "dangling")
    with pytest.raises(TrainedError, match="file' is not a directory"):
        export_model(tmp_path / "run", cfg, tmp_path / "file" / "out")
    # a refused export under folders that did not exist leaves none
    monkeypatch.setattr(module, "EXPORT_TOLERANCE", -1.0)
    with pytest.raises(TrainedError, match="nothing was exported"):
        export_model(tmp_path / "run", cfg, tmp_path / "new" / "deep" / "x")

    assert os.readlink(tmp_path / "dangling") == str(tmp_path / "nowhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dangling", "file", "run"]


def test_a_run_continued_and_stopped_is_not_taken_for_finished(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """A run finished at 2 rounds, resumed to 4 and stopped after round
    3 still holds round 2's adapter and summary; eval and export used to
    take them for the model of the run its config describes."""
    def config(rounds: int) -> Any:
        return build_config(flatten(tiny_config_tree(
            tiny_model_dir, tiny_glue_root, tmp_path / "run",
            federate={"method": "lora", "total_round_num": rounds})))

    class Stop(Exception):
        pass

    def stop_after_round_3(record: dict[str, Any]) -> None:
        if record["round"] == 3:
            raise Stop

    run(config(2))
    with pytest.raises(Stop):
        run(config(4), resume=True, on_round=stop_after_round_3)

    with pytest.raises(TrainedError, match=r"has not finished: its adapter "
                       r"and summary.json are of round 2, but metrics.jsonl "
                       r"goes on to round 3"):
        score_run(tmp_path / "run", config(4))
    with pytest.raises(TrainedError, match="has not finished"):
        export_model(tmp_path / "run", config(4), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_killed_while_writing_its_model_is_not_finished(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """Killed after adapter_model.safetensors was moved into adapter/ but
    before FedEx-LoRA's residual (and summary.json, written last): eval
    and export used to score the model without its residual, exit 0."""
    cfg, summary = finished_run(tiny_model_dir, tiny_glue_root,
                                tmp_path / "run", "fedex_lora")
    (tmp_path / "run" / "adapter" / "fedex_residual.safetensors").unlink()
    (tmp_path / "run" / "summary.json").unlink()

    with pytest.raises(TrainedError, match="holds no readable summary.json"
                       ".*has not finished; continue it with run --resume"):
        score_run(tmp_path / "run", cfg)
    with pytest.raises(TrainedError, match="has not finished"):
        export_model(tmp_path / "run", cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    run(cfg, resume=True)   # rewrites the model, residual included
    scored = score_run(tmp_path / "run", cfg)
    assert scored["eval"]["acc"] == summary["final"]["acc"]
    assert scored["eval"]["loss"] == pytest.approx(summary["final"]["loss"],
                                                   rel=1e-6)


def test_eval_of_a_client_without_test_rows_says_so(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """Under ``lda`` a client may be dealt no test row; ``eval --client``
    of it used to print an empty score and exit 0."""
    from federatedscope_rolora.runners.setup import split_test_per_client
    from federatedscope_rolora.runners.trained import _scored_rows

    tree = tiny_config_tree(
        tiny_model_dir, tiny_glue_root, tmp_path / "run",
        federate={"method": "lora", "total_round_num": 1,
                  "client_num": 12},
        data={"splitter": "lda", "splitter_args": [{"alpha": 0.3}]})
    cfg = build_config(flatten(tree))
    run(cfg)
    shares = split_test_per_client(cfg, *_scored_rows(cfg))
    empty = [i for i, rows in enumerate(shares, start=1) if not rows]
    assert empty, "the test needs a client with no test rows"

    with pytest.raises(TrainedError, match=rf"client {empty[0]} has no "
                       r"test rows to be scored on: data.splitter 'lda' "
                       r"dealt it none of the 80 scored rows"):
        score_run(tmp_path / "run", cfg, client=empty[0])
    scored = score_run(tmp_path / "run", cfg, per_client=True)
    assert scored["eval_per_client"]["clients"] == 12 - len(empty)
