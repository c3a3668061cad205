"""The import hook: what it registers and when, what it costs a Python
that never touches FederatedScope. Runs without FederatedScope (a stub
``federatedscope.register`` stands in for it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fs.conftest import (
    ROOT,
    Venv,
    clean_env,
    copy_source,
    make_venv,
    pip_install,
)
from tests.fs.test_fs_install import EXPECTED, write_stub

HEAVY = ("torch", "transformers", "peft", "federatedscope", "numpy",
         "typing")
BUDGET_US = 10_000


def run_python(code: str, stub: Path, **env: str
               ) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that sees the repo and the stub,
    with no ``.pth`` of this package installed."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(PYTHONPATH=f"{ROOT}:{stub}", **env),
        capture_output=True, text=True)


REPORT = ("import json, os, federatedscope.register as r; "
          "print(json.dumps({'calls': r.calls, 'protobuf': os.environ.get("
          "'PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION')}))")


@pytest.fixture
def stub(tmp_path: Path) -> Path:
    return write_stub(tmp_path / "stub")


def test_the_plugin_registers_when_the_registry_is_imported(
        stub: Path) -> None:
    code = ("import sys, federatedscope_rolora.fs.hook as h; h.install(); "
            "assert 'federatedscope_rolora.fs.register' not in sys.modules; "
            + REPORT)

    out = run_python(code, stub)

    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert sorted(report["calls"]) == sorted(k for keys in EXPECTED.values()
                                             for k in keys)
    assert report["protobuf"] == "python"


def test_a_protobuf_backend_set_by_the_user_is_kept(stub: Path) -> None:
    code = "import federatedscope_rolora.fs.hook as h; h.install(); " + REPORT

    out = run_python(code, stub,
                     PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="upb")

    assert json.loads(out.stdout)["protobuf"] == "upb"


def test_registering_twice_changes_nothing(stub: Path) -> None:
    code = ("import federatedscope_rolora.fs.hook as h; h.install(); "
            "import federatedscope.register; "
            "from federatedscope_rolora.fs.register import register_all; "
            "register_all(); h.install(); " + REPORT)

    out = run_python(code, stub)

    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["calls"]) == 5


def test_installing_after_federatedscope_was_imported_registers_now(
        stub: Path) -> None:
    code = ("import federatedscope.register; "
            "import federatedscope_rolora.fs.hook as h; h.install(); "
            + REPORT)

    out = run_python(code, stub)

    assert len(json.loads(out.stdout)["calls"]) == 5


def test_the_opt_out_variable_turns_the_hook_off(stub: Path) -> None:
    code = "import federatedscope_rolora.fs.hook as h; h.install(); " + REPORT

    out = run_python(code, stub, FEDERATEDSCOPE_ROLORA_NO_HOOK="1")

    assert json.loads(out.stdout)["calls"] == []


def test_a_failed_registration_names_the_way_out(stub: Path) -> None:
    register = stub / "federatedscope" / "register.py"
    register.write_text(register.read_text().replace(
        "def register_worker", "def _gone"), encoding="utf-8")
    code = ("import federatedscope_rolora.fs.hook as h; h.install(); "
            "import federatedscope.register")

    out = run_python(code, stub)

    assert out.returncode != 0
    assert "PluginError" in out.stderr
    assert "FEDERATEDSCOPE_ROLORA_NO_HOOK=1" in out.stderr


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """This package alone, installed: nothing else to import at start-up."""
    base = tmp_path_factory.mktemp("bare")
    venv = make_venv(base / "venv")
    pip_install(venv, copy_source(base / "src"), editable=False)
    return venv


def import_times(venv: Venv) -> dict[str, int]:
    """Self time (us) of each module ``python -X importtime -c pass``
    imports at start-up."""
    out = subprocess.run([str(venv.python), "-X", "importtime", "-c",
                          "pass"], env=clean_env(), capture_output=True,
                         text=True, check=True)
    times: dict[str, int] = {}
    for line in out.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s+(\S+)", line)
        if match:
            times[match.group(2)] = int(match.group(1))
    return times


def test_start_up_imports_only_the_tiny_hook(bare_venv: Venv) -> None:
    runs = [import_times(bare_venv) for _ in range(5)]

    modules = set().union(*runs)
    ours = sorted(m for m in modules if m.startswith("federatedscope_rolora"))
    assert ours == ["federatedscope_rolora", "federatedscope_rolora.fs",
                    "federatedscope_rolora.fs.hook"]
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    # The fastest of five runs: the others measure the machine's load.
    cost = min(sum(t for m, t in run.items() if m in ours) for run in runs)
    assert cost < BUDGET_US, f"the hook took {cost} us at start-up"
