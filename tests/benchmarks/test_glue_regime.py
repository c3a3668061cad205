"""The paper's-regime benchmark (glue_regime.py): one quick run on the
tiny BERT (LoRA on its top layer, the layer below cached), its tables of
accuracy, aggregation gap and client drift, and a restart that skips
what is done."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks.test_glue_benchmarks import load
from tests.conftest import write_sst2, write_tiny_bert

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "glue_regime.py"
METHODS = "rolora,lora,fedex_lora"

pytestmark = pytest.mark.slow


def run_script(out: Path, model: Path, glue: Path, *extra: str
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--model", str(model),
         "--glue-root", str(glue), "--out", str(out), "--methods", METHODS,
         *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("regime")
    model = write_tiny_bert(base / "tiny")
    glue = write_sst2(base / "glue")
    out = base / "out"
    proc = run_script(out, model, glue)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in
            (out / "glue_regime_quick_runs.jsonl").read_text().splitlines()]
    return {"out": out, "model": model, "glue": glue, "rows": rows,
            "text": (out / "glue_regime_quick.md").read_text(),
            "data": json.loads((out / "glue_regime_quick.json").read_text())}


def test_every_planned_run_is_done_once_with_its_device(
        quick: dict[str, Any]) -> None:
    coverage = quick["data"]["coverage"]

    assert all(c["planned"] == c["done"] > 0 for c in coverage.values())
    keys = [r["key"] for r in quick["rows"]]
    assert len(keys) == len(set(keys))
    assert all(r["device"].startswith("cpu") for r in quick["rows"])


def test_the_json_holds_every_run_behind_the_tables(
        quick: dict[str, Any]) -> None:
    """One record per stored run, with the score its table shows (the
    per-client one for FedSA-LoRA), its seed's chance and its gap."""
    records = {r["key"]: r for r in quick["data"]["runs"]}

    assert sorted(records) == sorted(r["key"] for r in quick["rows"])
    for row in quick["rows"]:
        record = records[row["key"]]
        personal = row["spec"]["method"] == "fedsa_lora"
        want = row["final_per_client"]["example_weighted"]["acc"] \
            if personal else row["final"]["acc"]
        assert record["score"] == want
        assert record["score_is_per_client"] is personal
        assert record["chance"] == quick["data"]["chance"][
            row["spec"]["task"]][str(row["spec"]["seed"])]
        assert record["device"] == row["device"]
    assert {p for r in records.values() for p in r["parts"]} == {
        "cells", "steps", "skew", "lr", "long"}


def test_runs_use_the_top_layer_the_cache_and_the_local_unit(
        quick: dict[str, Any]) -> None:
    specs = [r["spec"] for r in quick["rows"]]

    assert all(s["layers"] == [1] and s["prefix_cache"] for s in specs)
    assert {s["local_unit"] for s in specs} == {"epoch", "batch"}
    assert {s["local_epochs"] for s in specs
            if s["local_unit"] == "batch"} == {1, 2}
    assert {s["alpha"] for s in specs} == {0.0, 0.5}


def test_the_gap_is_zero_for_exact_methods_and_not_for_lora(
        quick: dict[str, Any]) -> None:
    gaps: dict[str, list[float]] = {}
    for row in quick["rows"]:
        gaps.setdefault(row["spec"]["method"], []).extend(
            g["aggregation_gap"] for g in row["gap_rounds"])

    assert max(gaps["rolora"]) < 1e-5
    assert max(gaps["fedex_lora"]) < 1e-5
    # (LoRA's round 1 with one local step is exact too: A gets no
    # gradient while B is zero, so every client still holds the same A.)
    assert max(gaps["lora"]) > 1e-3


def test_the_report_shows_the_cells_gaps_and_runs(
        quick: dict[str, Any]) -> None:
    text = quick["text"]

    assert "| sst2 | 2 |" in text and "| sst2 | 4 |" in text
    assert "rolora gap / drift" in text
    assert "## Local steps" in text and "## Label skew" in text
    assert "| local steps | rolora gap / drift | lora gap / drift |" in text
    assert "## Longer training (4 clients, 3 rounds)" in text
    assert "| cells |" in text and "cpu" in text
    assert (quick["out"] / "glue_regime_quick_gaps.png").stat().st_size


def test_a_long_run_starts_as_its_cell_run(quick: dict[str, Any]) -> None:
    """The long runs differ from their cells only in the round count, so
    their curve up to the cells' last round is the cell's curve, and the
    report says so (a run that depended on the round count, e.g. through
    a schedule, would break this)."""
    rows = {(r["spec"]["method"], r["spec"]["clients"], r["spec"]["seed"],
             r["spec"]["rounds"], r["spec"]["local_unit"],
             r["spec"]["alpha"], r["spec"]["lr"]): r for r in quick["rows"]}
    long_runs = [k for k in rows if k[3] == 3]

    assert sorted(k[0] for k in long_runs) == ["lora", "rolora"]
    for key in long_runs:
        cell = rows[key[:3] + (2,) + key[4:]]
        assert rows[key]["curve"][:2] == cell["curve"]
        assert rows[key]["gap_rounds"][:2] == cell["gap_rounds"]
        assert len(rows[key]["curve"]) == 3
    assert set(quick["data"]["long_equals_cell"].values()) == {True}
    assert "| sst2 | rolora |" in quick["text"]
    assert (quick["out"] / "glue_regime_quick_long.png").stat().st_size


def test_the_lr_part_runs_each_rate_and_shares_the_cell_run(
        quick: dict[str, Any]) -> None:
    """RoLoRA and LoRA at every rate of the probe; the run at a method's
    grid rate is its cell run (one row), marked * in the table."""
    best = quick["data"]["best_lr"]
    probe = {(r["spec"]["method"], r["spec"]["lr"]) for r in quick["rows"]
             if r["spec"]["clients"] == 4 and r["spec"]["rounds"] == 2
             and r["spec"]["local_unit"] == "epoch"
             and not r["spec"]["alpha"] and r["spec"]["seed"] == 0}

    for method in ("rolora", "lora"):
        assert {(method, 1e-2), (method, 3e-2)} <= probe
        assert (method, best[method]) in probe
    assert quick["data"]["coverage"]["lr"]["planned"] == 4
    lines = quick["text"].split("## Learning rate (sst2, 4 clients)")[1]
    marked = [line for line in lines.splitlines()[:10] if " * |" in line]
    assert len({line.split(" |")[0] for line in marked}) >= 1
    assert sum(line.count(" * |") for line in marked) == 2


def test_a_restart_skips_finished_runs(quick: dict[str, Any]) -> None:
    store = quick["out"] / "glue_regime_quick_runs.jsonl"
    before = store.read_text()

    proc = run_script(quick["out"], quick["model"], quick["glue"])

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert store.read_text() == before
    assert "[1/" not in proc.stderr


def test_filters_choose_the_cells_to_run(quick: dict[str, Any]) -> None:
    """``--clients`` and ``--seeds`` pick cells; a run outside them is not
    started, a bad value is exit 2 naming it, and nothing is written."""
    store = quick["out"] / "glue_regime_quick_runs.jsonl"
    before = store.read_text()

    proc = run_script(quick["out"], quick["model"], quick["glue"],
                      "--only", "cells", "--clients", "4", "--seeds", "7",
                      "--methods", "rolora")

    assert proc.returncode == 0, proc.stderr[-3000:]
    added = store.read_text()[len(before):].splitlines()
    specs = [json.loads(line)["spec"] for line in added]
    assert [(s["clients"], s["seed"], s["method"]) for s in specs] == \
        [(4, 7, "rolora")]
    after = store.read_text()
    for flag, value in (("--clients", "many"), ("--tasks", "nosuch")):
        bad = run_script(quick["out"], quick["model"], quick["glue"],
                         flag, value)
        assert bad.returncode == 2
        assert value in bad.stderr
    assert store.read_text() == after


def test_parallel_runs_give_the_numbers_of_one_at_a_time(
        quick: dict[str, Any], tmp_path: Path) -> None:
    """``--jobs 2`` into a fresh store: the same runs, and every number
    each stores equal to the one-at-a-time run of the fixture."""
    out = tmp_path / "parallel"
    proc = run_script(out, quick["model"], quick["glue"], "--only",
                      "cells", "--clients", "4", "--methods",
                      "rolora,lora", "--jobs", "2")

    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in
            (out / "glue_regime_quick_runs.jsonl").read_text().splitlines()]
    serial = {r["key"]: r for r in quick["rows"]}
    assert sorted(r["spec"]["method"] for r in rows) == ["lora", "rolora"]
    for row in rows:
        for field in ("final", "curve", "gap_rounds", "bytes_rounds"):
            assert row[field] == serial[row["key"]][field], field


def test_bad_jobs_and_a_missing_gpu_are_refused(quick: dict[str, Any],
                                                tmp_path: Path) -> None:
    import torch

    bad = run_script(tmp_path, quick["model"], quick["glue"], "--jobs", "0")
    assert bad.returncode == 2 and "--jobs must be >= 1" in bad.stderr
    if not torch.cuda.is_available():
        gpu = run_script(tmp_path, quick["model"], quick["glue"], "--gpu")
        assert gpu.returncode == 2 and "no CUDA device" in gpu.stderr
    assert not (tmp_path / "glue_regime_quick_runs.jsonl").exists()


def test_the_long_check_compares_runs_of_one_device_only(
        quick: dict[str, Any], tmp_path: Path) -> None:
    """Another kind of CPU rounds differently, so a long run and its cell
    are compared only where both ran on the same device."""
    glue_regime = load("glue_regime")

    rows = [dict(r) for r in quick["rows"]]
    for row in rows:
        if row["spec"]["rounds"] == 3 and row["spec"]["method"] == "lora":
            row["device"] = "another cpu"
    store = glue_regime.common.Store(tmp_path / "runs.jsonl")
    for row in rows:
        store.add(row)
    lrs = quick["data"]["best_lr"]
    quick_plan = glue_regime.QUICK
    plan = glue_regime.replace(
        quick_plan, methods=("rolora", "lora", "fedex_lora"),
        base=quick_plan.base.with_(model=str(quick["model"])))

    lines, checks = glue_regime.long_table(plan, store, lrs)

    assert sorted(spec.split("|")[1] for spec in checks) == ["rolora"]
    assert set(checks.values()) == {True}
    # across devices the comparison is shown, and a difference is no NO
    assert any("| lora |" in line and line.endswith("| yes (other CPU) |")
               for line in lines)
    for row in rows:   # the lora cell's final score, moved
        if row["spec"]["rounds"] == plan.base.rounds and \
                row["spec"]["method"] == "lora" and \
                row["key"] in {s.with_(rounds=plan.base.rounds).key
                               for s in glue_regime.long_specs(plan, lrs)}:
            row["final"] = {**row["final"], "acc": row["final"]["acc"] + 0.1}
            store.add(row)

    lines, _ = glue_regime.long_table(plan, store, lrs)

    assert any("| lora |" in line and
               line.endswith("| differs (other CPU) |") for line in lines)


def test_the_runs_table_shows_a_run_under_way(tmp_path: Path) -> None:
    """A run stopped midway (its outdir in ``.inflight/``, one whole
    metrics line and half of the next) shows in the Runs table as
    under way with the rounds it wrote; nothing else does."""
    regime = load("glue_regime")

    common = regime.common
    store = common.Store(tmp_path / "runs.jsonl")
    lrs = dict.fromkeys(common.METHODS, 1e-2)
    # 2 clients: a cell that no other part shares
    spec = next(s for s in regime.cell_specs(regime.QUICK, lrs)
                if s.clients == 2)
    metrics = common.inflight_dir(store.path, spec) / "run" / \
        "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"round": 1}\n{"round": 2, "pha', encoding="utf-8")

    lines, coverage = regime.runs_table(regime.QUICK, store, lrs)

    assert coverage["cells"]["under_way"] == {spec.key: "1/2"}
    assert all(not c["under_way"] for part, c in coverage.items()
               if part != "cells")
    assert "| 1/2 |" in "\n".join(lines)


def test_chance_is_per_seed_on_the_rows_the_runs_score(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test rows are drawn with each run's seed (MNLI's 1,000 of
    them: chance 34.1 % at seed 0, 39.1 % at seed 1), and with the
    regime's own eval size: the report gives chance for every seed it
    covers, on those rows, not seed 0's of the head-to-head plan."""
    from dataclasses import asdict

    from federatedscope_rolora.training.partition import subsample_indices

    regime = load("glue_regime")
    common = regime.common
    glue = write_sst2(tmp_path / "glue")
    monkeypatch.setattr(regime, "QUICK", regime.replace(
        regime.QUICK, base=regime.QUICK.base.with_(eval_samples=8)))
    h2h = regime.replace(regime.h2h.QUICK, methods=("rolora",),
                         base=regime.h2h.QUICK.base.with_(model="tiny"))
    grid = common.Store(tmp_path / "out" / "glue_quick_runs.jsonl")
    for spec in regime.h2h.lr_specs(h2h):
        grid.add({"key": spec.key, "spec": asdict(spec),
                  "primary_metric": "acc", "final": {"acc": 0.5}})

    assert regime.main(["--quick", "--report-only", "--methods", "rolora",
                        "--seeds", "0,1", "--model", "tiny", "--glue-root",
                        str(glue), "--out", str(tmp_path / "out")]) == 0

    dev = (glue / "SST-2" / "dev.tsv").read_text().splitlines()[1:]
    labels = [int(line.rsplit("\t", 1)[1]) for line in dev]
    want = {}
    for seed in ("0", "1"):
        rows = subsample_indices(len(labels), 8, int(seed) + 1)
        want[seed] = max(sum(labels[i] == y for i in rows)
                         for y in (0, 1)) / 8
    data = json.loads(
        (tmp_path / "out" / "glue_regime_quick.json").read_text())
    assert data["chance"] == {"sst2": want}
    text = (tmp_path / "out" / "glue_regime_quick.md").read_text()
    assert regime._chance_text(data["chance"]) in text


def test_the_paired_table_subtracts_lora_seed_by_seed(
        quick: dict[str, Any]) -> None:
    """Each cell: the method's score minus LoRA's at the same seed, over
    the seeds both ran; here the quick plan's one seed per cell."""
    score = {(r["spec"]["clients"], r["spec"]["method"]): r["score"]
             for r in quick["data"]["runs"] if "cells" in r["parts"]}
    paired = quick["text"].split("Paired by seed")[1]
    line = paired.split("| sst2 | 4 | ")[1].splitlines()[0]
    diff = 100 * (score[4, "rolora"] - score[4, "lora"])

    assert line.startswith(f"{diff:+.2f}, ahead {int(diff > 0)}/1 | ")


def test_a_paired_cell_gives_mean_sd_and_seeds_ahead() -> None:
    regime = load("glue_regime")

    assert regime._paired_cell([-3.5, -3.3, -6.1]) == \
        "-4.30 ± 1.56, ahead 0/3"
    assert regime._paired_cell([1.9]) == "+1.90, ahead 1/1"
    assert regime._paired_cell([]) == "n/a"
