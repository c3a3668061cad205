"""Bad input through the CLI: exit code 2, one line naming the culprit,
and nothing written to the outdir of a run that never started."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from federatedscope_rolora.cli import main
from federatedscope_rolora.runners.faults import FAULTS_ENV
from tests.conftest import tiny_config_tree, write_sst2

PREFIX = "federatedscope-rolora: error: "


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path
            ) -> tuple[int, str]:
    """Exit code and the one line on stderr (asserted to be one)."""
    code = main(["run", *map(str, args)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(PREFIX)
    return code, lines[0]


def write_cfg(tmp_path: Path, model: Path | str, glue: Path,
              **sections: Any) -> Path:
    path = tmp_path / "tiny.yaml"
    tree = tiny_config_tree(Path(model), glue, tmp_path / "run", **sections)
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def drop_dev(task: Path) -> None:
    (task / "dev.tsv").unlink()


def spoil_row(task: Path) -> None:
    lines = (task / "train.tsv").read_text().splitlines()
    lines[4] = "a\ttoo\tmany"
    (task / "train.tsv").write_text("\n".join(lines) + "\n")


def spoil_label(task: Path) -> None:
    lines = (task / "dev.tsv").read_text().splitlines()
    lines[2] = "the movie was good\t7"
    (task / "dev.tsv").write_text("\n".join(lines) + "\n")


def empty_dev(task: Path) -> None:
    (task / "dev.tsv").write_text("sentence\tlabel\n")


def dev_as_folder(task: Path) -> None:
    drop_dev(task)
    (task / "dev.tsv").mkdir()


@pytest.mark.parametrize(("spoil", "named"), [
    (drop_dev, "SST-2/dev.tsv: file not found"),
    # else a traceback at the first evaluation, after a round of training
    (empty_dev, "SST-2/dev.tsv: no examples after the header"),
    (dev_as_folder, "SST-2/dev.tsv: cannot be read"),
    (spoil_row, "SST-2/train.tsv:5: expected 2 tab-separated columns, "
     "found 3"),
    (spoil_label, "SST-2/dev.tsv:3: unknown label '7'"),
])
def test_bad_glue_file_is_named_with_its_line(
        tiny_model_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        spoil: Callable[[Path], None], named: str) -> None:
    glue = write_sst2(tmp_path / "glue")
    spoil(glue / "SST-2")
    cfg = write_cfg(tmp_path, tiny_model_dir, glue)

    code, line = run_cli(capsys, "--cfg", cfg)

    assert code == 2
    assert named in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "named"), [
    (("federate.client_num", "500"), ["500", "240"]),
    (("rolora.min_received", "4"),
     ["rolora.min_received", "(4) exceeds the 3 client(s)"]),
    (("rolora.client_deadline_s", "-1"),
     ["rolora.client_deadline_s", "must be >= 0"]),
    (("rolora.min_received", "0"), ["rolora.min_received", "must be > 0"]),
    (("rolora.min_recieved", "2"), ["did you mean 'rolora.min_received'"]),
    # the tiny BERT has 64 positions: longer inputs would fail every
    # client in its first forward pass
    (("llm.tok_len", "65"),
     ["'llm.tok_len' (65) exceeds the 64 tokens model"]),
    # truncation was skipped (every client failed at its first batch), or
    # [CLS][SEP] was all the model saw
    (("llm.tok_len", "2"),
     ["'llm.tok_len' (2) leaves no room for a text beside the special "
      "tokens model", "give at least 3"]),
    (("seed", "-1"), ["config key 'seed'", "must be in [0, 2**32)"]),
    # torch: "Overflow when unpacking long long", naming no key
    (("rolora.threads", "100000000000000000000"),
     ["config key 'rolora.threads'", "must be in [0, 4096]"]),
    (("train.optimizer.lr", ".inf"),
     ["config key 'train.optimizer.lr'", "finite"]),
    # PEFT would stop with an AttributeError (exit 1)
    (("llm.adapter.args", "[{r: 4, lora_alpha: 8, target_modules: [1]}]"),
     ["config key 'llm.adapter.args[0].target_modules'", "got [1]"]),
    # A and B cannot be allocated: a RuntimeError traceback, exit 1
    (("llm.adapter.args", "[{r: 1099511627776, lora_alpha: 8, "
      "target_modules: [query]}]"),
     ["cannot add LoRA of r=1099511627776", "'llm.adapter.args[0].r'"]),
    # the tiny BERT has layers 0 and 1: PEFT would adapt layer 1 alone
    (("llm.adapter.args", "[{r: 4, lora_alpha: 8, target_modules: [query], "
      "layers_to_transform: [1, 2]}]"),
     ["config key 'llm.adapter.args[0].layers_to_transform'",
      "holds layer(s) [2]", "has layers 0..1"]),
])
def test_bad_config_value_is_named(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], override: tuple[str, str],
        named: list[str]) -> None:
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)

    code, line = run_cli(capsys, "--cfg", cfg, *override)

    assert code == 2
    assert all(part in line for part in named), line
    assert not (tmp_path / "run").exists()


def test_more_samples_than_rows_is_said(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """rolora.train_samples 1000 on 240 rows trained on 240 without a
    word (summary.json recorded it); a reader of the config would think
    1,000."""
    import logging

    from federatedscope_rolora.config import load_config
    from federatedscope_rolora.runners.simulation import run

    cfg = load_config(write_cfg(tmp_path, tiny_model_dir, tiny_glue_root),
                      ["rolora.train_samples", "1000",
                       "federate.total_round_num", "1"])
    with caplog.at_level(logging.WARNING, "federatedscope_rolora"):
        run(cfg)

    logged = [r.getMessage() for r in caplog.records]
    assert "rolora.train_samples is 1000, but the train split holds 240 " \
        "rows: all 240 are used" in logged
    assert not any("eval_samples" in m for m in logged)


def test_fedex_lora_on_a_layer_it_cannot_fold_into_is_refused_first(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """FedEx-LoRA adds its residual to nn.Linear weights: an adapted
    embedding used to train a whole round, then stop with a ValueError
    traceback (exit 1) beside a written config.yaml."""
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)

    code, line = run_cli(
        capsys, "--cfg", cfg, "federate.method", "fedex_lora",
        "llm.adapter.args", "[{r: 4, lora_alpha: 8, target_modules: "
        "[word_embeddings, query]}]")

    assert code == 2
    assert "fedex_lora folds its residual into nn.Linear weights" in line
    assert "adapts word_embeddings (Embedding) of" in line
    assert "query" not in line.split("adapts")[1].split(" of ")[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["run", "compare"])
def test_ffa_lora_on_an_embedding_is_refused_before_it_trains_nothing(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], command: str) -> None:
    """PEFT starts an embedding's lora_embedding_A at zero: FFA-LoRA,
    which never trains A, ran every round with B's gradient zero and its
    test loss unchanged, exit 0."""
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)
    adapter = ["llm.adapter.args", "[{r: 4, lora_alpha: 8, target_modules: "
               "[word_embeddings, query]}]"]
    method = ["federate.method", "ffa_lora"] if command == "run" else \
        ["--methods", "lora,ffa_lora"]
    if command == "compare":
        code = main(["compare", "--cfg", str(cfg), *method, *adapter])
        line = capsys.readouterr().err.strip()
    else:
        code, line = run_cli(capsys, "--cfg", cfg, *method, *adapter)

    assert code == 2
    assert "ffa_lora never trains lora_A, but PEFT starts it at zero in " \
        "word_embeddings of" in line, line
    assert not (tmp_path / "run").exists()


def test_compare_refuses_fedex_lora_before_any_method_runs(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """rolora and lora used to run to the end, then fedex_lora stopped
    the comparison, and a rerun was refused for their outdirs."""
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)

    code = main(["compare", "--cfg", str(cfg), "--methods",
                 "rolora,lora,fedex_lora", "llm.adapter.args",
                 "[{r: 4, lora_alpha: 8, target_modules: "
                 "[word_embeddings, query]}]"])

    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "adapts word_embeddings (Embedding)" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("outdir", "named"), [
    ("afile", "is a file, not a folder"),
    ("afile/sub", "cannot be created: "),
    ("readonly/run", "is not writable"),
])
def test_an_outdir_that_cannot_be_written_is_named_before_the_run(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], outdir: str,
        named: str) -> None:
    import os

    (tmp_path / "afile").write_text("mine\n", encoding="utf-8")
    (tmp_path / "readonly").mkdir()
    (tmp_path / "readonly").chmod(0o555)
    if os.access(tmp_path / "readonly", os.W_OK) and "readonly" in outdir:
        pytest.skip("root writes into a folder without write permission")
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)
    try:
        for command in ("run", "compare"):
            code = main([command, "--cfg", str(cfg), "outdir",
                         str(tmp_path / outdir)])
            lines = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(lines) == 1, (command, lines)
            assert named in lines[0], (command, lines)
    finally:
        (tmp_path / "readonly").chmod(0o755)
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "mine\n"
    assert list((tmp_path / "readonly").iterdir()) == []


def test_fedex_lora_refuses_a_fan_in_fan_out_layer() -> None:
    """GPT-2's Conv1D stores W transposed (PEFT's fan_in_fan_out): the
    residual, laid out as B·A, would be added the wrong way round."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from federatedscope_rolora.training.models import ModelError
    from federatedscope_rolora.training.residual import check_residual_fits

    torch.manual_seed(0)
    base = GPT2ForSequenceClassification(GPT2Config(
        n_embd=16, n_layer=1, n_head=2, n_positions=8, vocab_size=32))
    model = get_peft_model(base, LoraConfig(
        r=2, target_modules=["c_attn"], fan_in_fan_out=True))

    with pytest.raises(ModelError, match=r"adapts c_attn \(Conv1D, "
                       r"fan_in_fan_out\) of 'gpt2-tiny'"):
        check_residual_fits(model, "gpt2-tiny")


def test_a_cuda_device_this_machine_lacks_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from federatedscope_rolora.config import ConfigError, load_config
    from federatedscope_rolora.runners.setup import device_from_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    assert device_from_config(load_config(
        None, ["use_gpu", "True", "device", "1"])) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"config key 'device' is 2, but "
                       r"this machine has CUDA devices 0\.\.1"):
        device_from_config(load_config(None, ["use_gpu", "True",
                                              "device", "2"]))
    assert device_from_config(load_config(
        None, ["use_gpu", "False", "device", "2"])) == torch.device("cpu")


def test_a_model_folder_with_an_at_sign_is_a_path(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """'@' marks the optional suffix only in the last part of model.type:
    '/models/m@v2/model' was cut at the '@' and refused."""
    import shutil

    model = tmp_path / "m@v2" / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = write_cfg(tmp_path, model, tiny_glue_root)

    assert main(["run", "--cfg", str(cfg), "federate.total_round_num",
                 "1"]) == 0
    assert main(["run", "--cfg", str(cfg), "outdir", str(tmp_path / "b"),
                 "federate.total_round_num", "1", "model.type",
                 f"{model}@huggingface_seqcls"]) == 0
    code, line = run_cli(capsys, "--cfg", cfg, "model.type",
                         f"{model}@hub")
    assert code == 2 and "must be a sequence-classification" in line


def test_missing_model_path_is_named(
        tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-model"
    cfg = write_cfg(tmp_path, missing, tiny_glue_root)

    code, line = run_cli(capsys, "--cfg", cfg)

    assert code == 2
    assert f"model path {str(missing)!r} is not a directory" in line
    assert not (tmp_path / "run").exists()


def test_bad_fault_spec_is_refused_before_the_run(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)
    monkeypatch.setenv(FAULTS_ENV, "2:1:explode")

    code, line = run_cli(capsys, "--cfg", cfg)

    assert code == 2
    assert "'2:1:explode'" in line
    assert not (tmp_path / "run").exists()


def test_resume_of_an_outdir_without_a_run_is_refused(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)

    code, line = run_cli(capsys, "--cfg", cfg, "--resume",
                         tmp_path / "typo")

    assert code == 2
    assert "nothing to resume in" in line and "typo" in line
    assert not (tmp_path / "typo").exists()


def spoil_checkpoint(run_dir: Path) -> None:
    path = run_dir / "checkpoint" / "state.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def edit_checkpoint(change: Callable[[dict[str, Any], dict[str, Any]], None]
                    ) -> Callable[[Path], None]:
    """A whole checkpoint file whose metadata or tensors say otherwise."""
    def spoil(run_dir: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        path = run_dir / "checkpoint" / "state.safetensors"
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata())
        info = json.loads(meta["rolora_checkpoint"])
        tensors = load_file(str(path))
        change(info, tensors)
        meta["rolora_checkpoint"] = json.dumps(info)
        save_file(tensors, str(path), metadata=meta)
    return spoil


def _drop_a_client_tensor(info: dict[str, Any],
                          tensors: dict[str, Any]) -> None:
    del tensors[min(k for k in tensors if k.startswith("client/1/"))]


def cut_metrics(run_dir: Path) -> None:
    path = run_dir / "metrics.jsonl"
    path.write_text(path.read_text().splitlines()[0] + "\n")


def spoil_metrics(run_dir: Path) -> None:
    path = run_dir / "metrics.jsonl"
    path.write_text("not json\n" + path.read_text())


def hollow_metrics(run_dir: Path) -> None:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text('{"round": 1}\n' + lines[1] + "\n")


def edit_first_record(change: Callable[[dict[str, Any]], None]
                      ) -> Callable[[Path], None]:
    def spoil(run_dir: Path) -> None:
        path = run_dir / "metrics.jsonl"
        lines = path.read_text().splitlines()
        record = json.loads(lines[0])
        change(record)
        path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    return spoil


@pytest.mark.parametrize(("spoil", "named"), [
    (spoil_checkpoint, "state.safetensors' cannot be read"),
    # whole files, but for one part: they resumed with a client's
    # tensor missing (exit 0, another run), or ended in a traceback
    (edit_checkpoint(_drop_a_client_tensor),
     "checkpoint: client 1's adapter lacks "),
    (edit_checkpoint(lambda info, t: info.update(config=[])),
     "its config or random states are not mappings"),
    (edit_checkpoint(lambda info, t: info["rng"].update(python=[3, [1], 0])),
     "checkpoint: its random generator states cannot be restored"),
    (edit_checkpoint(lambda info, t: t.update(
        {"rng/torch": t["rng/torch"][:10]})),
     "checkpoint: its random generator states cannot be restored"),
    # valid records but for one value that the summary reads: the run
    # trained round 3, then crashed in its summary (exit 1), every time
    (edit_first_record(lambda r: r["eval"].update(acc="0.55")),
     "metrics.jsonl:1: not the metrics record of round 1"),
    (edit_first_record(lambda r: r.update(aggregation_gap="n/a")),
     "metrics.jsonl:1: not the metrics record of round 1"),
    (edit_first_record(lambda r: r.update(eval_per_client={})),
     "metrics.jsonl:1: not the metrics record of round 1"),
    (cut_metrics, "holds 1 complete lines, fewer than the 2"),
    (spoil_metrics, "metrics.jsonl:1: not a metrics record"),
    # valid JSON, but the resumed run's summary would fail on it (exit 1)
    (hollow_metrics, "metrics.jsonl:1: not the metrics record of round 1"),
])
def test_damaged_run_is_refused_on_resume_and_left_alone(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        spoil: Callable[[Path], None], named: str) -> None:
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root,
                    federate={"total_round_num": 2})
    assert main(["run", "--cfg", str(cfg)]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "run"
    spoil(run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    code, line = run_cli(capsys, "--cfg", cfg, "--resume",
                         "federate.total_round_num", "3")

    assert code == 2
    assert named in line
    assert {p: p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file()} == before


def test_resume_of_a_run_whose_checkpoint_was_removed_is_refused(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """It restarted from round 1 without a word, cutting the metrics and
    overwriting model and summary (a kill before the first checkpoint,
    which leaves at most round 1's line, still restarts)."""
    import shutil

    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root,
                    federate={"total_round_num": 2})
    assert main(["run", "--cfg", str(cfg)]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "run"
    shutil.rmtree(run_dir / "checkpoint")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    code, line = run_cli(capsys, "--cfg", cfg, "--resume",
                         "federate.total_round_num", "3")

    assert code == 2
    assert ("holds metrics.jsonl with 2 rounds, summary.json, adapter but "
            "no checkpoint/") in line
    assert {p: p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file()} == before


def test_resume_into_an_outdir_that_cannot_be_written_is_named(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume checked only a new run's outdir: a read-only run folder
    built the model and data, then failed writing config.yaml with a
    traceback (exit 1). Root writes anywhere, so the check is given a
    folder it reports not writable, and a write that fails."""
    import os

    from federatedscope_rolora.runners import outputs

    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root,
                    federate={"total_round_num": 1})
    assert main(["run", "--cfg", str(cfg)]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "run"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    real_access = os.access
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False
                        if Path(path) == run_dir else real_access(path, mode))

    code, line = run_cli(capsys, "--cfg", cfg, "--resume",
                         "federate.total_round_num", "2")

    assert code == 2
    assert f"outdir {str(run_dir)!r} cannot be written" in line
    monkeypatch.undo()
    (run_dir / "config.yaml.tmp").mkdir()   # the write itself fails
    code, line = run_cli(capsys, "--cfg", cfg, "--resume",
                         "federate.total_round_num", "2")
    assert code == 2
    assert f"outdir {str(run_dir)!r} cannot be written" in line
    (run_dir / "config.yaml.tmp").rmdir()
    assert {p: p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file()} == before


@pytest.mark.parametrize("argv", [
    ["compare", "federate.total_round_num", "1", "--seeds", "0,1"],
    ["run", "federate.total_round_num", "1", "--resume"],
    # not one of run's options: the message must not say it is
    ["run", "federate.total_round_num", "1", "--seeds", "0"],
])
def test_an_option_after_the_overrides_is_named_as_one(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """It used to be read as a config key: "unknown config key '--seeds'
    (did you mean 'seed'?)"."""
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)

    code = main([argv[0], "--cfg", str(cfg), *argv[1:]])

    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert f"{argv[3]} stands among the KEY VALUE overrides: options go " \
        "before the KEY VALUE overrides" in lines[0]
    assert f"federatedscope-rolora {argv[0]} --help lists them" in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_end_of_options_marker_may_lead_the_overrides(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--`` before the overrides was refused as a misplaced option."""
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)

    code = main(["run", "--cfg", str(cfg), "--", "federate.total_round_num",
                 "1"])

    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "summary.json").is_file()


def test_a_folder_holding_a_config_or_summary_is_not_written_over(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``outdir: .`` where the user keeps a commented config.yaml and a
    summary.json: both used to be overwritten, exit 0."""
    here = tmp_path / "work"
    here.mkdir()
    mine = {"config.yaml": "# my notes\nseed: 1\n",
            "summary.json": '{"mine": 1}\n'}
    for name, text in mine.items():
        (here / name).write_text(text, encoding="utf-8")
    cfg = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)

    code, line = run_cli(capsys, "--cfg", cfg, "outdir", here)

    assert code == 2
    assert "already holds a run (config.yaml, summary.json)" in line
    assert {p.name: p.read_text(encoding="utf-8")
            for p in here.iterdir()} == mine


@pytest.mark.parametrize(("argv", "named"), [
    ([], "the following arguments are required: command"),
    (["eval", "--json"], "eval: the following arguments are required: "
     "RUN_DIR (see federatedscope-rolora eval --help)"),
    (["compare", "--methods", "lora"], "compare: the following arguments "
     "are required: --cfg"),
])
def test_a_usage_error_is_one_line_too(
        capsys: pytest.CaptureFixture[str], argv: list[str],
        named: str) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)

    lines = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(PREFIX) and named in lines[0]
