"""The real CLI on a tiny random BERT: outputs, phases, bytes, adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from federatedscope_rolora.core.roles import role_of

pytestmark = pytest.mark.slow


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "federatedscope_rolora", *map(str, args)],
        capture_output=True, text=True, timeout=600, check=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_alternates_phases_and_writes_a_loadable_adapter(
        tiny_cfg_file: Path, tiny_model_dir: Path,
        tiny_glue_root: Path) -> None:
    run_dir = tiny_cfg_file.parent / "run"

    done = cli("run", "--cfg", tiny_cfg_file, "federate.total_round_num",
               "8")

    assert done.returncode == 0, done.stderr
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records] == list(range(1, 9))
    assert [r["phase"] for r in records] == ["B", "A"] * 4
    for rec in records:
        trained = "lora_B" if rec["phase"] == "B" else "lora_A"
        assert set(rec["bytes"]["up"]) == {trained}
        assert rec["clients"] == [1, 2, 3]
    summary = json.loads((run_dir / "summary.json").read_text())
    first_acc = records[0]["eval"]["acc"]
    assert summary["final"]["acc"] > max(0.6, first_acc)
    assert (run_dir / "config.yaml").exists()
    assert_adapter_reproduces(run_dir / "adapter", tiny_model_dir,
                              tiny_glue_root, summary["final"]["acc"])


def assert_adapter_reproduces(adapter_dir: Path, model_dir: Path,
                              glue_root: Path, accuracy: float) -> None:
    """PeftModel.from_pretrained on the saved adapter gives the run's
    final test accuracy."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from federatedscope_rolora.training.encoding import encode
    from federatedscope_rolora.training.glue import load_task
    from federatedscope_rolora.training.local import evaluate

    base = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), num_labels=2)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    _, test = load_task("sst2", glue_root)
    metrics = evaluate(model, encode(test, tokenizer, 16), ["acc"],
                       batch_size=64, pad_token_id=0,
                       device=torch.device("cpu"))
    assert metrics["acc"] == pytest.approx(accuracy)


def adapter_bytes_by_role(model_dir: Path) -> dict[str, int]:
    """Bytes per role of the tiny model's adapter, from its shapes."""
    from federatedscope_rolora.training.models import (
        LoraSpec,
        adapter_parameters,
        build_model,
    )

    model, _ = build_model(str(model_dir), 2, LoraSpec(
        r=4, lora_alpha=8, target_modules=("query", "value", "dense")), 0)
    out: dict[str, int] = {}
    for key, param in adapter_parameters(model).items():
        role = role_of(key)
        assert role is not None
        out[role] = out.get(role, 0) + param.numel() * 4
    return out


def test_compare_bytes_follow_each_methods_plan(
        tiny_cfg_file: Path, tiny_model_dir: Path) -> None:
    out = tiny_cfg_file.parent / "run"
    per_client = adapter_bytes_by_role(tiny_model_dir)

    done = cli("compare", "--cfg", tiny_cfg_file,
               "federate.total_round_num", "2")

    assert done.returncode == 0, done.stderr
    result = json.loads((out / "comparison.json").read_text())
    assert list(result["methods"]) == ["rolora", "lora", "ffa_lora"]
    assert (out / "comparison.md").read_text().count("| rolora |") == 1
    assert {"accuracy_vs_round.png", "accuracy_vs_upload.png"} <= {
        p.name for p in out.iterdir()}
    rounds = {m: read_jsonl(out / m / "metrics.jsonl")
              for m in ("rolora", "lora", "ffa_lora")}
    a3, b3 = 3 * per_client["lora_A"], 3 * per_client["lora_B"]
    assert [r["bytes"]["up"] for r in rounds["rolora"]] == [
        {"lora_B": b3}, {"lora_A": a3}]
    assert [r["bytes"]["up"] for r in rounds["lora"]] == [
        {"lora_A": a3, "lora_B": b3}] * 2
    assert [r["bytes"]["up"] for r in rounds["ffa_lora"]] == [
        {"lora_B": b3}] * 2
    # Round 1 sends everyone the adapter but the frozen head, which each
    # client builds itself; round 2 only what changed.
    full = {role: 3 * n for role, n in per_client.items() if role != "head"}
    assert rounds["rolora"][0]["bytes"]["down"] == full
    assert rounds["rolora"][1]["bytes"]["down"] == {"lora_B": b3}
    assert rounds["lora"][1]["bytes"]["down"] == {"lora_A": a3,
                                                   "lora_B": b3}


def test_compare_all_runs_six_methods_with_exact_bytes(
        tiny_cfg_file: Path, tiny_model_dir: Path) -> None:
    out = tiny_cfg_file.parent / "run"
    per_client = adapter_bytes_by_role(tiny_model_dir)
    a3, b3 = 3 * per_client["lora_A"], 3 * per_client["lora_B"]

    done = cli("compare", "--cfg", tiny_cfg_file, "--methods", "all",
               "--no-plots", "federate.total_round_num", "2")

    assert done.returncode == 0, done.stderr
    result = json.loads((out / "comparison.json").read_text())
    assert list(result["methods"]) == ["rolora", "lora", "ffa_lora",
                                       "fedex_lora", "flexlora",
                                       "fedsa_lora"]
    rounds = {m: read_jsonl(out / m / "metrics.jsonl")
              for m in result["methods"]}
    for method in ("fedex_lora", "flexlora"):
        assert [r["bytes"]["up"] for r in rounds[method]] == [
            {"lora_A": a3, "lora_B": b3}] * 2
    assert [r["bytes"]["up"] for r in rounds["fedsa_lora"]] == [
        {"lora_A": a3}] * 2
    # FedSA-LoRA's round 2 sends A only: each client keeps its B
    assert rounds["fedsa_lora"][1]["bytes"]["down"] == {"lora_A": a3}
    # FedEx-LoRA's residual: none in round 1, then one increment per
    # client in its smaller exact form (n - 1 = 2 stacked factors)
    assert rounds["fedex_lora"][0]["bytes"]["down"].get("residual", 0) == 0
    assert rounds["fedex_lora"][1]["bytes"]["down"]["residual"] == \
        3 * residual_bytes(tiny_model_dir, stacked=2)
    table = (out / "comparison.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in
            table.splitlines() if line.startswith("| ")}
    assert " / " in rows["fedsa_lora"].split("|")[4]
    assert rows["lora"].split("|")[4].strip() == "-"
    assert "per-client" in table
    for method in ("rolora", "ffa_lora", "fedex_lora"):
        assert all(r["aggregation_gap"] < 1e-6 for r in rounds[method])


def residual_bytes(model_dir: Path, stacked: int) -> int:
    """Bytes of one client's FedEx-LoRA increment, from the shapes: per
    module min(d·k, stacked·r·(d + k)) float32 values."""
    from federatedscope_rolora.training.models import (
        LoraSpec,
        adapter_parameters,
        build_model,
    )

    model, _ = build_model(str(model_dir), 2, LoraSpec(
        r=4, lora_alpha=8, target_modules=("query", "value", "dense")), 1)
    params = adapter_parameters(model)
    total = 0
    for key, a in params.items():
        if role_of(key) != "lora_A":
            continue
        b = params[key.replace("lora_A", "lora_B")]
        d, k, r = b.shape[0], a.shape[1], a.shape[0]
        total += min(d * k, stacked * r * (d + k)) * 4
    return total


def test_rolora_uploads_half_of_lora_on_square_targets(
        tiny_cfg_file: Path) -> None:
    out = tiny_cfg_file.parent / "run"
    adapter = ("[{r: 4, lora_alpha: 8, target_modules: [query, value]}]")

    done = cli("compare", "--cfg", tiny_cfg_file, "--methods",
               "rolora,lora", "--no-plots", "federate.total_round_num", "2",
               "llm.adapter.args", adapter)

    assert done.returncode == 0, done.stderr
    result = json.loads((out / "comparison.json").read_text())["methods"]
    assert result["rolora"]["bytes_up_total"] * 2 == \
        result["lora"]["bytes_up_total"]
    assert not (out / "accuracy_vs_round.png").exists()


@pytest.mark.parametrize(("override", "named"), [
    (("federate.methd", "lora"), "federate.methd"),
    (("llm.tok_len", "long"), "llm.tok_len"),
    (("federate.method", "fedavg"), "federate.method"),
    (("data.type", "stsb@glue"), "stsb"),
    (("federate.client_num", "1000"), "1000"),
    (("rolora.per_client_eval", "sometimes"), "rolora.per_client_eval"),
])
def test_bad_input_exits_2_naming_the_culprit_and_writes_nothing(
        tiny_cfg_file: Path, override: tuple[str, str], named: str) -> None:
    run_dir = tiny_cfg_file.parent / "run"

    done = cli("run", "--cfg", tiny_cfg_file, *override)

    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("federatedscope-rolora: error:")
    assert named in last
    assert not run_dir.exists()


def test_unknown_compare_method_exits_2(tiny_cfg_file: Path) -> None:
    done = cli("compare", "--cfg", tiny_cfg_file, "--methods", "lora,foo")

    assert done.returncode == 2
    assert "foo" in done.stderr


def test_existing_run_is_not_overwritten(tiny_cfg_file: Path) -> None:
    run_dir = tiny_cfg_file.parent / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"round": 1}\n')

    done = cli("run", "--cfg", tiny_cfg_file)

    assert done.returncode == 2
    assert "already holds a run" in done.stderr
    assert (run_dir / "metrics.jsonl").read_text() == '{"round": 1}\n'
