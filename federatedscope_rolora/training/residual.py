"""FedEx-LoRA's residual folded into the frozen base weights.

A PEFT LoRA layer computes ``base_layer(x) + s·B·A·x``; FedEx-LoRA adds
the server's residual total to ``base_layer.weight``. That is B·A's own
layout for ``nn.Linear`` targets; an embedding or a ``fan_in_fan_out``
(GPT-2 ``Conv1D``) target stores the transpose and is refused, naming
it, rather than folded wrongly. The original
weight W0 is kept (once per model, for the adapted modules only), and
the folded weight is always ``W0 + total``, never a running sum, so a
resumed run holds the same bits as one run straight through.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from federatedscope_rolora.core.merging import RESIDUAL_COMPONENT
from federatedscope_rolora.training.models import ModelError

_ORIGINAL = "_rolora_original_base"
RESIDUAL_FILE = "fedex_residual.safetensors"
PERSONAL_FILE = "personal.safetensors"


def base_weight_name(residual_key: str) -> str:
    """``<module>.fedex_residual.<adapter>`` -> ``<module>.base_layer.weight``
    (the frozen weight PEFT wraps)."""
    module, _, _ = residual_key.rpartition(f".{RESIDUAL_COMPONENT}.")
    return f"{module}.base_layer.weight"


def fold_residual(model: torch.nn.Module,
                  totals: Mapping[str, torch.Tensor]) -> None:
    """Set each adapted module's base weight to ``W0 + totals[module]``;
    ValueError naming the module if its shape does not fit."""
    params = dict(model.named_parameters())
    original: dict[str, torch.Tensor] = getattr(model, _ORIGINAL, {})
    with torch.no_grad():
        for key, total in totals.items():
            name = base_weight_name(key)
            weight = params.get(name)
            layer = model.get_submodule(name.rsplit(".", 2)[0]) \
                if weight is not None else None
            if weight is None or weight.shape != total.shape or \
                    getattr(layer, "fan_in_fan_out", False) or not \
                    isinstance(getattr(layer, "base_layer", None),
                               torch.nn.Linear):
                raise ValueError(f"residual {key!r} fits no nn.Linear "
                                 f"base weight {name!r} of this model")
            if name not in original:
                original[name] = weight.detach().clone()
            weight.copy_(original[name] + total.to(weight.device,
                                                   weight.dtype))
    object.__setattr__(model, _ORIGINAL, original)


def check_residual_fits(model: torch.nn.Module, name: str) -> None:
    """Before a FedEx-LoRA run starts: every module the adapter wraps
    must be an ``nn.Linear`` that stores W as B·A does, or the residual
    could not be folded after round 1. ModelError naming the modules."""
    misfits = set()
    for module_name, module in model.named_modules():
        if not (hasattr(module, "lora_A") and hasattr(module, "base_layer")):
            continue
        kind = type(module.base_layer).__name__
        if getattr(module, "fan_in_fan_out", False):
            kind += ", fan_in_fan_out"
        elif isinstance(module.base_layer, torch.nn.Linear):
            continue
        misfits.add(f"{module_name.rpartition('.')[2]} ({kind})")
    if misfits:
        raise ModelError(
            f"fedex_lora folds its residual into nn.Linear weights, but "
            f"llm.adapter.args[0].target_modules adapts "
            f"{', '.join(sorted(misfits))} of {name!r}; target "
            "Linear layers only (e.g. query, value)")


def save_residual(totals: Mapping[str, torch.Tensor], adapter_dir: Path
                  ) -> None:
    """FedEx-LoRA's residual totals beside the PEFT adapter: the model is
    W0 + residual + s·B·A, so the adapter alone is not the model. Keys
    name the base weight each total adds to."""
    save_file({base_weight_name(k): v.contiguous()
               for k, v in totals.items()}, str(adapter_dir / RESIDUAL_FILE))


def save_personal(clients: Mapping[int, Mapping[str, torch.Tensor]],
                  adapter_dir: Path, file_name: str = PERSONAL_FILE
                  ) -> None:
    """FedSA-LoRA's per-client tensors (each client's own B) beside the
    shared adapter, as ``<client>/<key>``."""
    save_file({f"{c}/{k}": v.contiguous() for c, state in clients.items()
               for k, v in state.items()}, str(adapter_dir / file_name))


def personal_file_of(client_id: int) -> str:
    """Where a FederatedScope client saves its own tensors, in its run's
    ``adapter/`` (the plugin's clients save one file each; together they
    hold what the embedded runner's ``personal.safetensors`` holds)."""
    return f"personal_client{client_id}.safetensors"
