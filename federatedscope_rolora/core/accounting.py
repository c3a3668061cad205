"""Exact byte accounting: numel x element_size of the tensors sent.

Never an estimate of Python object sizes (DESIGN.md, invariant 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from federatedscope_rolora.core.roles import role_of

UP = "up"
DOWN = "down"


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of one tensor's payload."""
    return tensor.numel() * tensor.element_size()


def bytes_by_role(tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Bytes per role of a payload; a tensor without a role is an error."""
    totals: dict[str, int] = {}
    for key, tensor in tensors.items():
        role = role_of(key)
        if role is None:
            raise ValueError(f"tensor {key!r} is not an adapter tensor "
                             "(lora_A, lora_B or head) and must not travel")
        totals[role] = totals.get(role, 0) + tensor_bytes(tensor)
    return totals


@dataclass(frozen=True)
class TrafficRecord:
    round_idx: int
    client_id: int
    direction: str
    role: str
    num_bytes: int


@dataclass
class TrafficLedger:
    """Every payload handed over, per round, client, direction and role."""

    records: list[TrafficRecord] = field(default_factory=list)
    # Per-round index, so a round's totals do not rescan the whole run.
    _by_round: dict[int, list[TrafficRecord]] = field(
        default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for rec in self.records:
            self._by_round.setdefault(rec.round_idx, []).append(rec)

    def record(self, round_idx: int, client_id: int, direction: str,
               tensors: Mapping[str, torch.Tensor]) -> None:
        if direction not in (UP, DOWN):
            raise ValueError(f"direction must be 'up' or 'down', "
                             f"got {direction!r}")
        for role, num_bytes in sorted(bytes_by_role(tensors).items()):
            rec = TrafficRecord(round_idx, client_id, direction, role,
                                num_bytes)
            self.records.append(rec)
            self._by_round.setdefault(round_idx, []).append(rec)

    def totals(self, round_idx: int | None = None,
               client_id: int | None = None) -> dict[str, dict[str, int]]:
        """``{"up": {role: bytes}, "down": {role: bytes}}``, filtered."""
        out: dict[str, dict[str, int]] = {UP: {}, DOWN: {}}
        records = self.records if round_idx is None \
            else self._by_round.get(round_idx, [])
        for rec in records:
            if round_idx is not None and rec.round_idx != round_idx:
                continue
            if client_id is not None and rec.client_id != client_id:
                continue
            by_role = out[rec.direction]
            by_role[rec.role] = by_role.get(rec.role, 0) + rec.num_bytes
        return out
