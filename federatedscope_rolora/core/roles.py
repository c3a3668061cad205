"""Parameter roles, read off PEFT's parameter names.

PEFT names adapter tensors ``...<module>.lora_A.<adapter>.weight``; the
classifier head of a sequence-classification model is a
``modules_to_save`` copy of ``classifier`` (BERT, RoBERTa) or ``score``
(decoder models). We match path components, never the adapter's name, so
an adapter called ``default`` or anything else gets the same roles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

LORA_A = "lora_A"
LORA_B = "lora_B"
HEAD = "head"
# FedEx-LoRA's base residual (core/residual.py): never a model parameter,
# it travels under keys of its own and is folded into the frozen base.
RESIDUAL = "residual"
ROLES = (LORA_A, LORA_B, HEAD, RESIDUAL)

_A_COMPONENTS = frozenset({"lora_A", "lora_embedding_A"})
_B_COMPONENTS = frozenset({"lora_B", "lora_embedding_B"})
_HEAD_COMPONENTS = frozenset({"classifier", "score", "modules_to_save"})
_RESIDUAL_COMPONENTS = frozenset({"fedex_residual"})
# PEFT keeps the untouched original head beside its trainable copy; it is
# part of the frozen base model, not of the adapter.
_BASE_COMPONENTS = frozenset({"original_module"})

T = TypeVar("T")


def role_of(key: str) -> str | None:
    """Return ``lora_A``, ``lora_B``, ``head``, ``residual`` or None for
    a base weight."""
    parts = set(key.split("."))
    if parts & _RESIDUAL_COMPONENTS:
        return RESIDUAL
    if parts & _A_COMPONENTS:
        return LORA_A
    if parts & _B_COMPONENTS:
        return LORA_B
    if parts & _BASE_COMPONENTS:
        return None
    if parts & _HEAD_COMPONENTS:
        return HEAD
    return None


def keys_with_roles(keys: Iterable[str], roles: Iterable[str]) -> list[str]:
    """The keys whose role is in ``roles``, in their given order."""
    wanted = frozenset(roles)
    return [key for key in keys if role_of(key) in wanted]


def split_by_role(state: Mapping[str, T]) -> dict[str, dict[str, T]]:
    """Group a state dict by role; keys without a role are dropped."""
    groups: dict[str, dict[str, T]] = {}
    for key, value in state.items():
        role = role_of(key)
        if role is not None:
            groups.setdefault(role, {})[key] = value
    return groups
