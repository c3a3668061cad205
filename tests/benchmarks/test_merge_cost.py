"""The merge-cost benchmark (merge_cost.py): its quick run writes its
table and numbers, and the factored and dense ways agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_agrees_with_the_dense_way(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "merge_cost.py"),
         "--quick", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
        text=True, timeout=300)

    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "merge_cost_quick.json").read_text())
    assert len(data["rows"]) == 2
    for row in data["rows"]:
        assert row["flexlora_rel_diff"] < 1e-10
        assert row["gap_rel_diff"] < 1e-10
        assert row["flexlora_s"] > 0 and row["gap_dense_s"] > 0
    assert "| d | clients |" in (tmp_path / "merge_cost_quick.md").read_text()
