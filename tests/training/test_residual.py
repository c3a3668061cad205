"""FedEx-LoRA's residual in a real PEFT model's base weights: always
W0 + total (never a running sum), refused where it does not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from federatedscope_rolora.core.merging import lora_modules
from federatedscope_rolora.training.models import (
    LoraSpec,
    build_model,
    get_adapter_state,
)
from federatedscope_rolora.training.residual import (
    base_weight_name,
    fold_residual,
)


def _model(tiny_model_dir: Path) -> torch.nn.Module:
    model, _ = build_model(str(tiny_model_dir), 2, LoraSpec(r=2), seed=0)
    return model


def test_fold_sets_the_base_to_w0_plus_the_total(
        tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir)
    key = next(iter(lora_modules(get_adapter_state(model))))
    params = dict(model.named_parameters())
    weight = params[base_weight_name(key)]
    w0 = weight.detach().clone()
    first = torch.randn_like(w0)
    second = torch.randn_like(w0)

    fold_residual(model, {key: first})
    fold_residual(model, {key: second})

    assert torch.equal(weight.detach(), w0 + second)
    fold_residual(model, {key: torch.zeros_like(w0)})
    assert torch.equal(weight.detach(), w0)


def test_fold_refuses_a_residual_that_fits_no_base_weight(
        tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir)
    key = next(iter(lora_modules(get_adapter_state(model))))

    with pytest.raises(ValueError, match="fits no nn.Linear"):
        fold_residual(model, {key: torch.zeros(3, 5)})
    with pytest.raises(ValueError, match="fits no nn.Linear"):
        fold_residual(model, {"base_model.model.nowhere.fedex_residual."
                              "default": torch.zeros(3, 5)})
