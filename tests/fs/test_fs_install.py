"""``pip install .`` and ``pip install -e .`` both put the hook's ``.pth``
in site-packages, the hook registers the plugin when FederatedScope's
registry is imported, and ``pip uninstall`` takes the ``.pth`` away.

Runs without FederatedScope: a stub ``federatedscope.register`` with the
same five functions stands in for it. The editable install goes through
setuptools' private ``_install_namespaces`` (setup.py), so this test is
what notices a change there.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fs.conftest import (
    HOOK_PTH,
    Venv,
    clean_env,
    copy_source,
    make_venv,
    pip_install,
)

STUB_REGISTER = """\
calls = []
config_dict, data_dict, model_dict, trainer_dict, worker_dict = \\
    {}, {}, {}, {}, {}


def _register(registry, key, func):
    calls.append(key)
    registry[key] = func


def register_config(key, func): _register(config_dict, key, func)
def register_data(key, func): _register(data_dict, key, func)
def register_model(key, func): _register(model_dict, key, func)
def register_trainer(key, func): _register(trainer_dict, key, func)
def register_worker(key, func): _register(worker_dict, key, func)
"""

PROBE = """\
import json, os, sys
hooked = any(type(f).__name__ == "RegisterHook" for f in sys.meta_path)
import federatedscope.register as r
print(json.dumps({
    "hooked": hooked,
    "registries": {name: sorted(getattr(r, name + "_dict"))
                   for name in ("config", "data", "model", "trainer",
                                "worker")},
    "protobuf": os.environ.get("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"),
    "plugin_file": sys.modules["federatedscope_rolora"].__file__,
}))
"""

EXPECTED = {"config": ["rolora"], "data": ["rolora_glue"],
            "model": ["rolora_seqcls"], "trainer": ["rolora_trainer"],
            "worker": ["rolora"]}


def write_stub(root: Path) -> Path:
    package = root / "federatedscope"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "register.py").write_text(STUB_REGISTER, encoding="utf-8")
    return root


def probe(venv: Venv, stub: Path) -> dict[str, object]:
    out = subprocess.run([str(venv.python), "-c", PROBE],
                         env=clean_env(PYTHONPATH=str(stub)),
                         capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def uninstall(venv: Venv) -> None:
    """The venv's own pip, offline: it sees nothing but the venv."""
    subprocess.run([str(venv.python), "-m", "pip", "uninstall", "--yes",
                    "--quiet", "--no-input", "federatedscope-rolora"],
                   env=clean_env(PIP_NO_INDEX="1"), check=True,
                   capture_output=True, text=True)


@pytest.mark.parametrize("editable", [False, True],
                         ids=["install", "editable"])
def test_install_ships_the_hook_and_uninstall_removes_it(
        tmp_path: Path, editable: bool) -> None:
    venv = make_venv(tmp_path / "venv", with_pip=True)
    source = copy_source(tmp_path / "src")
    stub = write_stub(tmp_path / "stub")

    pip_install(venv, source, editable=editable)
    found = probe(venv, stub)
    pth_installed = (venv.site / HOOK_PTH).is_file()
    uninstall(venv)

    assert pth_installed
    assert found["hooked"] is True
    assert found["registries"] == EXPECTED
    assert found["protobuf"] == "python"
    plugin_file = Path(str(found["plugin_file"]))
    if editable:
        assert plugin_file.is_relative_to(source)
    else:
        assert plugin_file.is_relative_to(venv.site)
    assert not (venv.site / HOOK_PTH).exists()
