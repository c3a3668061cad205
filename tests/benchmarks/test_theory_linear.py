"""Benchmark 1 (rank-1 linear model): the quick run and its maths."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "theory_linear.py"
COMMITTED = ROOT / "benchmarks" / "results" / "theory_linear.json"
METHODS = ("rolora", "ffa_lora", "lora")
Run = dict[str, Any]  # what the quick_run fixture hands a test


def load_benchmark() -> ModuleType:
    """Import the script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("theory_linear", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["theory_linear"] = module
    spec.loader.exec_module(module)
    return module


def digest(path: Path) -> str | None:
    """Hash of a file, to show that a run left it alone."""
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Run the real CLI once in quick mode into a temporary folder."""
    out = tmp_path_factory.mktemp("theory_linear")
    before = digest(COMMITTED)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out),
         "--plot"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "theory_linear.json").read_text())
    return {"out": out, "data": data, "stdout": proc.stdout,
            "committed_before": before}


def runs(
    data: dict[str, Any], regime: str, method: str
) -> list[dict[str, Any]]:
    seeds = data["regimes"][regime]["methods"][method]["seeds"]
    return list(seeds.values())


def test_rolora_angle_collapses_and_beats_ffa(quick_run: Run) -> None:
    data = quick_run["data"]
    rolora = runs(data, "population", "rolora")
    ffa = runs(data, "population", "ffa_lora")

    for ro, ff in zip(rolora, ffa, strict=True):
        assert ro["angle"][-1] < 0.1 * ro["angle"][0]
        assert ro["angle"][-1] < ff["angle"][-1]


def test_ffa_lora_angle_never_moves(quick_run: Run) -> None:
    for regime in ("population", "finite"):
        for run in runs(quick_run["data"], regime, "ffa_lora"):
            first = run["angle"][0]

            assert all(abs(a - first) <= 1e-6 * first for a in run["angle"])


def test_only_plain_lora_has_an_aggregation_gap(quick_run: Run) -> None:
    data = quick_run["data"]

    exact = [max(r["agg_gap"]) for m in ("rolora", "ffa_lora")
             for r in runs(data, "population", m)]
    lora = [max(r["agg_gap"]) for r in runs(data, "population", "lora")]

    assert max(exact) < 1e-12
    assert min(lora) > 1e-3


def test_json_has_every_method_round_and_the_command(quick_run: Run) -> None:
    data = quick_run["data"]
    rounds = data["setup"]["rounds"]

    assert data["command"].startswith(
        "python benchmarks/theory_linear.py --quick")
    for regime in ("population", "finite"):
        methods = data["regimes"][regime]["methods"]
        assert set(methods) == set(METHODS)
        for method in METHODS:
            seeds = methods[method]["seeds"]
            assert len(seeds) == len(data["setup"]["seeds"])
            for run in seeds.values():
                assert len(run["angle"]) == rounds + 1
                assert len(run["loss"]) == rounds + 1


def test_report_files_go_to_out_only(quick_run: Run) -> None:
    out = quick_run["out"]

    names = sorted(p.name for p in out.iterdir())

    assert names == ["theory_linear.json", "theory_linear.md",
                     "theory_linear.png"]
    assert digest(COMMITTED) == quick_run["committed_before"]
    table = (out / "theory_linear.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in table
    assert "| rolora |" in quick_run["stdout"]


def test_rolora_alternates_b_first() -> None:
    bench = load_benchmark()

    phases = [bench.trained_factors("rolora", t, 1) for t in range(1, 5)]

    assert phases == ["B", "A", "B", "A"]
    assert bench.trained_factors("ffa_lora", 2, 1) == "B"
    assert bench.trained_factors("lora", 1, 1) == "AB"


def test_population_a_round_shrinks_the_off_part_by_rho() -> None:
    bench = load_benchmark()
    setup = bench.Setup(dim_in=6, dim_out=3, clients=4, local_steps=3,
                        lr=0.2)
    prob = bench.make_problem(setup, seed=7, regime="population")
    a = prob.a0.clone()
    b = prob.heads.mean(0) * 0.8
    rho = (1 - setup.lr * float(b @ b)) ** setup.local_steps

    a_s, _ = bench.local_train(a, b, prob, "A", setup)
    new = a_s.mean(0)

    a_star: torch.Tensor = prob.a_star

    def off(v: torch.Tensor) -> torch.Tensor:
        return v - (v @ a_star) * a_star

    torch.testing.assert_close(off(new), rho * off(a))
