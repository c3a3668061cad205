"""The core runs with transformers, peft and federatedscope unimportable
(DESIGN.md §3): its modules, a RoLoRA round, and its own test files.

A meta-path finder placed first on ``sys.meta_path`` refuses those names,
so an import of them anywhere under the core fails, even one wrapped in
``try/except ImportError``, because every attempt is also recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("transformers", "peft", "federatedscope")

BLOCKER = f'''
import atexit, importlib.abc, json, os, sys

BLOCKED = {BLOCKED!r}
ATTEMPTS = []


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            ATTEMPTS.append(name)
            raise ImportError(f"{{name}} is blocked for the core")
        return None


sys.meta_path.insert(0, _Refuse())


def _report():
    loaded = sorted(m for m in sys.modules
                    if m.split(".")[0] in BLOCKED)
    path = os.environ.get("CORE_BLOCK_REPORT")
    if path:
        with open(path, "w") as out:
            json.dump({{"attempts": ATTEMPTS, "loaded": loaded}}, out)


atexit.register(_report)
'''

ROUND = '''
import importlib, pkgutil
import torch
import federatedscope_rolora.core as core
from federatedscope_rolora.core.methods import make_method
from federatedscope_rolora.core.server import AdapterServer, build_update

names = [m.name for m in pkgutil.iter_modules(core.__path__)]
for name in names:
    importlib.import_module(f"federatedscope_rolora.core.{name}")
assert {"roles", "phase", "methods", "aggregation", "validation",
        "accounting", "server"} <= set(names), names

pre = "base_model.model.bert.encoder.layer.0.attention.self.query"
init = {f"{pre}.lora_A.other.weight": torch.ones(2, 4),
        f"{pre}.lora_B.other.weight": torch.zeros(4, 2)}
server = AdapterServer(make_method("rolora"), init)
for cid, value in ((0, 1.0), (1, 3.0)):
    state = server.downlink(cid, 1)
    state[f"{pre}.lora_B.other.weight"].fill_(value)
    server.receive(build_update(cid, server.plan(1), state, 1))
merged = server.aggregate(1)
assert torch.equal(merged[f"{pre}.lora_B.other.weight"],
                   torch.full((4, 2), 2.0))
print("core round ok")
'''


def _run(args: list[str], tmp_path: Path, pythonpath: list[Path]
         ) -> tuple[subprocess.CompletedProcess[str], dict[str, list[str]]]:
    report = tmp_path / "report.json"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath),
           "CORE_BLOCK_REPORT": str(report),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120,
                          check=False)
    found = json.loads(report.read_text()) if report.exists() else {}
    return done, found


def test_blocker_refuses_the_blocked_packages(tmp_path: Path) -> None:
    """Control: without this the other tests could pass vacuously."""
    code = BLOCKER + "\nimport transformers\n"

    done, found = _run(["-c", code], tmp_path, [REPO])

    assert done.returncode != 0
    assert "transformers is blocked for the core" in done.stderr
    assert found["attempts"] == ["transformers"]


def test_core_modules_and_a_rolora_round_run_without_them(
        tmp_path: Path) -> None:
    done, found = _run(["-c", BLOCKER + ROUND], tmp_path, [REPO])

    assert done.returncode == 0, done.stderr
    assert "core round ok" in done.stdout
    assert found == {"attempts": [], "loaded": []}


def test_core_test_files_pass_without_them(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    files = sorted(str(p.relative_to(REPO)) for p in
                   (REPO / "tests" / "core").glob("test_*.py")
                   if p.name != Path(__file__).name)

    done, found = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--noconftest", *files], tmp_path, [site, REPO])

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert " passed" in done.stdout
    assert found == {"attempts": [], "loaded": []}
