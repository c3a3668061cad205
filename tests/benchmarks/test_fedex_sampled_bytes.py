"""The sampled-participation residual benchmark (fedex_sampled_bytes.py):
its quick run writes its table and numbers, every client's totals stay
the server's (no refusal), and lagging clients download less than the
dense baseline while full participation is unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_sends_less_than_the_dense_total_and_stays_exact(
        tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fedex_sampled_bytes.py"),
         "--quick", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
        text=True, timeout=300)

    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "fedex_sampled_bytes_quick.json")
                      .read_text())["rows"]
    sampled, full = rows
    assert all(r["refused"] == 0 for r in rows)
    assert sampled["lagging_downlinks"] > 0
    assert 0 < sampled["residual_down_bytes"] < \
        sampled["dense_baseline_bytes"]
    assert full["lagging_downlinks"] == 0
    assert full["residual_down_bytes"] == full["dense_baseline_bytes"] > 0
    assert "| clients | a round |" in \
        (tmp_path / "fedex_sampled_bytes_quick.md").read_text()
