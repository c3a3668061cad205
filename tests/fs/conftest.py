"""Fixtures of the FederatedScope plugin's tests.

``installed_venv`` is a fresh virtual environment with this package
installed the way a user installs it (``pip install``, offline, no
dependencies) from a copy of the source, so its ``.pth`` file lies in a
real site-packages and runs at interpreter start-up. The test
environment's own site-packages (torch, transformers, FederatedScope) is
added after it as a site directory, so the plugin can come in only
through the installed ``.pth``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import tiny_config_tree

ROOT = Path(__file__).resolve().parents[2]
HOOK_PTH = "federatedscope_rolora_hook.pth"
SOURCE = ("setup.py", "pyproject.toml", "README.md", HOOK_PTH,
          "federatedscope_rolora")
# FederatedScope starts in ~7 s here (scipy, sklearn, peft); a tiny run
# takes seconds more, distributed mode three processes.
TIMEOUT_S = 240


def copy_source(dest: Path) -> Path:
    """The files a build needs, so the build leaves nothing in the repo."""
    dest.mkdir(parents=True)
    for name in SOURCE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


@dataclass(frozen=True)
class Venv:
    python: Path
    site: Path


def make_venv(path: Path, with_pip: bool = False) -> Venv:
    """A venv, without pip unless asked (built in well under a second;
    with pip, from the bundled wheel, offline, in a few seconds).

    Uninstall with the venv's own pip: this environment's pip, even
    with ``--python VENV``, acts on this environment's packages too.
    """
    flags = [] if with_pip else ["--without-pip"]
    subprocess.run([sys.executable, "-m", "venv", *flags, str(path)],
                   check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; "
         "print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    return Venv(python, Path(site))


def pip_install(venv: Venv, source: Path, editable: bool) -> None:
    """This environment's pip installs into the venv's prefix; no index,
    no build isolation, no dependencies: nothing is downloaded."""
    prefix = venv.python.parent.parent
    # --ignore-installed: without it, pip first uninstalls the copy of
    # this package in the environment running the tests.
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
           "--no-build-isolation", "--no-index", "--ignore-installed",
           "--prefix", str(prefix)]
    cmd += ["-e", str(source)] if editable else [str(source)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def see_test_packages(venv: Venv) -> None:
    """Let the venv import this environment's packages (after its own),
    with their ``.pth`` files processed (FederatedScope may be an editable
    install)."""
    purelib = sysconfig.get_paths()["purelib"]
    (venv.site / "zz_test_env.pth").write_text(
        f"import site; site.addsitedir({purelib!r})\n", encoding="utf-8")


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH (the repo must not shadow the installed copy), no
    protobuf setting (the hook makes it), one thread per process."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION",
                        "FEDERATEDSCOPE_ROLORA_NO_HOOK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="session")
def installed_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    base = tmp_path_factory.mktemp("installed")
    venv = make_venv(base / "venv")
    pip_install(venv, copy_source(base / "src"), editable=False)
    see_test_packages(venv)
    return venv


def fs_package_dir() -> Path | None:
    """FederatedScope's package directory, found without importing it."""
    try:
        spec = importlib.util.find_spec("federatedscope")
    except ImportError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass
class FsRun:
    proc: subprocess.CompletedProcess[str]
    run_dir: Path

    @property
    def log(self) -> str:
        return self.proc.stdout + self.proc.stderr


class FsMain:
    """``python federatedscope/main.py --cfg FILE KEY VALUE...`` with the
    installed venv's interpreter: the plugin is found by its ``.pth``."""

    def __init__(self, venv: Venv, main_py: Path) -> None:
        self.venv = venv
        self.main_py = main_py

    def command(self, cfg_file: Path, *opts: str,
                fallback: bool = False) -> list[str]:
        """``main.py``; or, with ``fallback``, the ``fs-main`` launcher
        (``python -m federatedscope_rolora.fs.launch``)."""
        entry = ["-m", "federatedscope_rolora.fs.launch"] if fallback \
            else [str(self.main_py)]
        return [str(self.venv.python), *entry, "--cfg", str(cfg_file),
                *opts]

    def start(self, cfg_file: Path, *opts: str, log: Path,
              env: Mapping[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen(self.command(cfg_file, *opts),
                                    cwd=cfg_file.parent,
                                    env=clean_env(**(env or {})),
                                    stdout=out, stderr=subprocess.STDOUT)

    def run(self, cfg_file: Path, *opts: str, check: bool = True,
            fallback: bool = False,
            env: Mapping[str, str] | None = None) -> FsRun:
        """Run to the end; with ``fallback``, through ``fs-main`` with the
        ``.pth`` hook switched off; ``env``: extra variables."""
        extra = dict(env or {})
        if fallback:
            extra["FEDERATEDSCOPE_ROLORA_NO_HOOK"] = "1"
        run_env = clean_env(**extra)
        proc = subprocess.run(self.command(cfg_file, *opts,
                                           fallback=fallback),
                              cwd=cfg_file.parent, env=run_env,
                              capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        if check and proc.returncode != 0:
            raise AssertionError(f"FederatedScope exited with "
                                 f"{proc.returncode}:\n{proc.stderr[-4000:]}")
        tree = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
        return FsRun(proc, Path(tree["outdir"]) / tree["expname"])


@pytest.fixture(scope="session")
def fs_main(request: pytest.FixtureRequest) -> FsMain:
    package = fs_package_dir()
    if package is None or not (package / "main.py").is_file():
        pytest.skip("FederatedScope (its llm branch) is not installed: "
                    "see docs/federatedscope.md")
    return FsMain(request.getfixturevalue("installed_venv"),
                  package / "main.py")


def write_config(path: Path, tree: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def fs_tree(model_dir: Path, glue_root: Path, outdir: Path,
            **sections: Any) -> dict[str, Any]:
    """The shared tiny config, written for both runners; ``expname``
    fixes FederatedScope's run directory (``outdir/expname``)."""
    tree = tiny_config_tree(model_dir, glue_root, outdir, **sections)
    tree.setdefault("expname", "run")
    return tree


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    import json

    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def embedded_records(cfg_file: Path, outdir: Path,
                     opts: Sequence[str] = (), faults: str = ""
                     ) -> list[dict[str, Any]]:
    """The embedded runner's per-round records on the same file, with
    ``faults`` injected as ROLORA_TEST_FAULTS would."""
    from federatedscope_rolora.config import load_config
    from federatedscope_rolora.runners.faults import (
        drift_hook,
        fault_hook,
        parse_faults,
    )
    from federatedscope_rolora.runners.simulation import run

    cfg = load_config(cfg_file, ["outdir", str(outdir), "expname", "",
                                 *opts])
    parsed = parse_faults(faults)
    run(cfg, update_hook=fault_hook(parsed), state_hook=drift_hook(parsed))
    return read_jsonl(outdir / "metrics.jsonl")


@pytest.fixture
def free_ports() -> Iterator[list[int]]:
    """Three free TCP ports on 127.0.0.1 (server, two clients)."""
    import socket

    sockets = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    yield ports
