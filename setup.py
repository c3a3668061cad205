"""Packaging for federatedscope-rolora."""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

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
    entry_points={"console_scripts": [
        "federatedscope-rolora=federatedscope_rolora.cli:main",
    ]},
)
