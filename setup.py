"""Packaging for federatedscope-rolora."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).parent
# Loads the FederatedScope import hook at interpreter start-up; it must
# sit at the root of site-packages, where setuptools puts no file of its
# own (DESIGN.md, section 7).
HOOK_PTH = "federatedscope_rolora_hook.pth"


class BuildPyWithHook(build_py):
    """Copy the hook's .pth into build_lib, the root of the wheel."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(HERE / HOOK_PTH),
                       str(Path(self.build_lib) / HOOK_PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode),
                str(Path(self.build_lib) / HOOK_PTH)]


class EditableWheelWithHook(editable_wheel):
    """Editable installs skip build_lib; put the .pth beside the editable
    wheel's own files. ``_install_namespaces`` is private setuptools API
    (84.x): tests/fs/test_fs_install.py installs both ways to catch a
    change."""

    def _install_namespaces(self, installation_dir: str,
                            pth_prefix: str) -> None:
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copy(HERE / HOOK_PTH, Path(installation_dir) / HOOK_PTH)


setup(
    name="federatedscope-rolora",
    version="0.1.0",
    description=("RoLoRA, LoRA and FFA-LoRA federated fine-tuning: a "
                 "FederatedScope-LLM plugin and an embedded runner"),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["federatedscope_rolora",
                                    "federatedscope_rolora.*"]),
    install_requires=[
        # 2.13.0 is the CPU build on this project's machines; an unpinned
        # torch pulls a CUDA build of several GB.
        "torch>=2.1,<2.14",
        "transformers>=4.40",
        "peft>=0.10",
        "safetensors>=0.4",
        "numpy>=1.24",
        "pyyaml>=6",
    ],
    extras_require={
        "plot": ["matplotlib>=3.7"],
        "hub": ["datasets>=2.14"],
        "test": ["pytest>=8", "hypothesis>=6", "ruff>=0.6", "mypy>=1.10",
                 "matplotlib>=3.7"],
    },
    cmdclass={"build_py": BuildPyWithHook,
              "editable_wheel": EditableWheelWithHook},
    entry_points={"console_scripts": [
        "federatedscope-rolora=federatedscope_rolora.cli:main",
    ]},
)
