"""Saving an adapter: PEFT's format, and no network lookup on the way."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from federatedscope_rolora.training.models import (
    LoraSpec,
    adapter_parameters,
    build_model,
    save_adapter,
)


def test_saving_an_adapter_never_looks_up_the_hub(
        tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = build_model(str(tiny_model_dir), 2, LoraSpec(r=2), seed=0)
    # What a run on the offline MiniLM copy records: a Hub id, which PEFT
    # would try to fetch a config for unless told not to.
    configs: dict[str, Any] = getattr(model, "peft_config")  # noqa: B009
    for config in configs.values():
        config.base_model_name_or_path = \
            "sentence-transformers/all-MiniLM-L6-v2"
    lookups: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        lookups.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    state = {k: torch.ones_like(v)
             for k, v in adapter_parameters(model).items()}

    save_adapter(model, state, tmp_path / "adapter")

    assert lookups == []
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
