"""Every shipped config loads, and shows the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from federatedscope_rolora.config import load_config
from federatedscope_rolora.training.glue import task_spec

CONFIGS = sorted((Path(__file__).parent.parent / "yaml_configs")
                 .glob("*.yaml"))


def test_there_are_configs_for_every_paper_task() -> None:
    names = {p.stem for p in CONFIGS}
    assert {f"rolora_{t}" for t in ("sst2", "qnli", "mnli", "qqp",
                                    "rte")} <= names
    assert "quickstart_sst2" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_its_header_shows_how_to_run_it(
        path: Path) -> None:
    cfg = load_config(path)

    task_spec(cfg.task)
    header = path.read_text().split("\n\n")[0]
    assert f"--cfg yaml_configs/{path.name}" in header


@pytest.mark.parametrize("task", ["sst2", "qnli", "mnli", "qqp", "rte"])
def test_paper_configs_use_the_papers_lora_placement(task: str) -> None:
    cfg = load_config(Path(__file__).parent.parent / "yaml_configs" /
                      f"rolora_{task}.yaml")

    assert cfg.model_name == "roberta-large"
    assert cfg.lora["target_modules"] == ["query", "value"]
    assert cfg.lora["layers_to_transform"] == list(range(15, 24))
    assert cfg["federate.client_num"] == 3
