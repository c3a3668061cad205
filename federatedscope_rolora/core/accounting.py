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
# The part of UP that the server refused: it crossed the wire, so it is
# in UP too, and it is also counted apart under this name.
REJECTED = "up_rejected"
# What the server sends a client to score its own model (FedSA-LoRA's
# per-client evaluation): real traffic, counted apart from the training
# downlink, which it leaves unchanged.
EVAL_DOWN = "eval_down"
# Role of a refused tensor that is no adapter tensor (a wrong key set).
OTHER = "other"


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


def refused_bytes_by_role(payload: Mapping[str, object]) -> dict[str, int]:
    """Bytes per role of a refused upload, whatever it holds: tensors
    without an adapter role (or under a name that is not a string)
    count as ``other``; values that are not tensors carried no tensor
    payload and count nothing."""
    totals: dict[str, int] = {}
    for key, value in payload.items():
        if not isinstance(value, torch.Tensor):
            continue
        role = (role_of(key) if isinstance(key, str) else None) or OTHER
        totals[role] = totals.get(role, 0) + tensor_bytes(value)
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
        if direction not in (UP, DOWN, EVAL_DOWN):
            raise ValueError(f"direction must be 'up', 'down' or "
                             f"'eval_down', got {direction!r}")
        self._add(round_idx, client_id, direction, bytes_by_role(tensors))

    def record_refused(self, round_idx: int, client_id: int,
                       payload: Mapping[str, object]) -> None:
        """An upload that arrived and was refused: traffic all the same,
        so it counts in ``up`` and, apart, in ``up_rejected``."""
        self._add(round_idx, client_id, REJECTED,
                  refused_bytes_by_role(payload))

    def _add(self, round_idx: int, client_id: int, direction: str,
             by_role: Mapping[str, int]) -> None:
        for role, num_bytes in sorted(by_role.items()):
            rec = TrafficRecord(round_idx, client_id, direction, role,
                                num_bytes)
            self.records.append(rec)
            self._by_round.setdefault(round_idx, []).append(rec)

    def totals(self, round_idx: int | None = None,
               client_id: int | None = None) -> dict[str, dict[str, int]]:
        """``{"up": {role: bytes}, "down": {...}, "up_rejected": {...},
        "eval_down": {...}}``, filtered. ``up`` is every byte uploaded,
        refused ones included; ``up_rejected`` is the refused part of it;
        ``eval_down`` is what was sent for per-client evaluation, not in
        ``down``."""
        out: dict[str, dict[str, int]] = {UP: {}, DOWN: {}, REJECTED: {},
                                          EVAL_DOWN: {}}
        records = self.records if round_idx is None \
            else self._by_round.get(round_idx, [])
        for rec in records:
            if round_idx is not None and rec.round_idx != round_idx:
                continue
            if client_id is not None and rec.client_id != client_id:
                continue
            directions = (UP, REJECTED) if rec.direction == REJECTED \
                else (rec.direction,)
            for direction in directions:
                by_role = out[direction]
                by_role[rec.role] = by_role.get(rec.role, 0) + \
                    rec.num_bytes
        return out
