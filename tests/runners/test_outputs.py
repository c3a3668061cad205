"""Atomic writes of the run's files (runners/outputs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from federatedscope_rolora.runners.outputs import (
    write_atomic,
    write_text_atomic,
)


def test_a_write_that_fails_midway_leaves_the_previous_file(
        tmp_path: Path) -> None:
    path = tmp_path / "comparison.md"
    write_text_atomic(path, "old table\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("new ta", encoding="utf-8")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)

    assert path.read_text(encoding="utf-8") == "old table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comparison.md"]


def test_a_write_that_succeeds_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "comparison.md"
    write_text_atomic(path, "old table\n")

    write_text_atomic(path, "new table\n")

    assert path.read_text(encoding="utf-8") == "new table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comparison.md"]
