"""The make stamp notices a venv that lost the package: ``make`` plans a
new set-up when the venv's python cannot import the package or the
command is gone, and nothing when both are there. Dry runs (``make -n``)
on a throwaway venv of stub scripts: nothing is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None,
                                reason="make is not installed")


def fake_venv(root: Path, imports: bool, has_command: bool) -> Path:
    """A venv whose python 'imports' the package or not, and whose
    command exists or not; stamped as installed."""
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\nexit {0 if imports else 1}\n")
    python.chmod(0o755)
    if has_command:
        command = venv / "bin" / "federatedscope-rolora"
        command.write_text("#!/bin/sh\nexit 0\n")
        command.chmod(0o755)
    (venv / ".installed").touch()
    return venv


def planned(tmp_path: Path, venv: Path) -> str:
    out = subprocess.run(["make", "-n", "-C", str(ROOT), "install",
                          f"VENV={venv}"], capture_output=True, text=True,
                         check=True)
    return out.stdout


@pytest.mark.parametrize(("imports", "has_command"), [
    (False, True), (True, False), (False, False)])
def test_a_venv_that_lost_the_package_is_set_up_again(
        tmp_path: Path, imports: bool, has_command: bool) -> None:
    venv = fake_venv(tmp_path, imports, has_command)

    plan = planned(tmp_path, venv)

    assert f"-m venv {venv}" in plan
    assert "pip install -q -e '.[test,plot]'" in plan


def test_a_whole_venv_is_left_alone(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, imports=True, has_command=True)

    plan = planned(tmp_path, venv)

    assert "-m venv" not in plan and "pip install" not in plan
    assert (venv / ".installed").exists()
