"""The six ways to federate a LoRA adapter, as small strategy objects.

Each method answers, for round t, which roles are trained, which of them
are sent up, and how the server merges what arrives; everything else the
server and the clients do follows from those answers (core/server.py):

| method     | trained in round t | sent up  | server keeps                 |
|------------|--------------------|----------|------------------------------|
| lora       | A and B            | A and B  | mean(A), mean(B)             |
| ffa_lora   | B; A at its init   | B        | mean(B)                      |
| rolora     | B if phase(t) is B, else A | that factor | its mean          |
| fedex_lora | A and B            | A and B  | means, plus a base residual  |
| flexlora   | A and B            | A and B  | SVD of mean(B_i A_i), rank r |
| fedsa_lora | A and B            | A        | mean(A); each client its B   |

plus the head when the head policy is ``trained``. The maths of the
merges is in core/merging.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from federatedscope_rolora.core.aggregation import weighted_average
from federatedscope_rolora.core.merging import (
    GapStats,
    fedex_residual_factors,
    flexlora_truncate,
    lora_modules,
    module_gap,
    smallest_exact_form,
)
from federatedscope_rolora.core.names import METHODS as METHODS
from federatedscope_rolora.core.phase import phase_for_round
from federatedscope_rolora.core.roles import HEAD, LORA_A, LORA_B, role_of


@dataclass(frozen=True)
class RoundPlan:
    """What round ``round_idx`` trains; the rest of the adapter is frozen."""

    round_idx: int
    trained_roles: frozenset[str]
    phase: str | None = None
    # Trained but never sent: FedSA-LoRA's B stays on its client.
    kept_roles: frozenset[str] = frozenset()

    def trained_keys(self, keys: Iterable[str]) -> list[str]:
        """Keys trained locally this round."""
        return [k for k in keys if role_of(k) in self.trained_roles]

    def uploaded_keys(self, keys: Iterable[str]) -> list[str]:
        """Keys trained and sent up, for the server to merge."""
        return [k for k in keys if role_of(k) in self.trained_roles
                and role_of(k) not in self.kept_roles]

    def frozen_keys(self, keys: Iterable[str]) -> list[str]:
        """Adapter keys held fixed this round (identical on every client)."""
        return [
            k
            for k in keys
            if role_of(k) is not None
            and role_of(k) not in self.trained_roles
        ]


@dataclass(frozen=True)
class MergeInputs:
    """A round's accepted uploads (sorted by client id), their weights,
    the server's adapter before the merge and LoRA's scaling."""

    updates: Sequence[Mapping[str, torch.Tensor]]
    weights: Sequence[float]
    state: Mapping[str, torch.Tensor]
    scaling: float


@dataclass
class Merged:
    """What a merge keeps: new values of adapter keys and, for
    FedEx-LoRA, each module's residual of this round in the exact form
    it travels in (core/merging.py, ``smallest_exact_form``)."""

    values: dict[str, torch.Tensor]
    residual: dict[str, dict[str, torch.Tensor]] = field(
        default_factory=dict)


class Method(Protocol):
    """A federation method: a name, a plan per round and a merge."""

    @property
    def name(self) -> str: ...

    @property
    def has_residual(self) -> bool: ...

    def plan(self, round_idx: int) -> RoundPlan: ...

    def merge(self, inputs: MergeInputs) -> Merged: ...


def average_merge(inputs: MergeInputs) -> Merged:
    """FedAvg of every uploaded key (lora, ffa_lora, rolora,
    fedsa_lora)."""
    return Merged(weighted_average(inputs.updates, inputs.weights))


def client_factors(inputs: MergeInputs, key: str
                   ) -> list[torch.Tensor]:
    """Each client's value of ``key``: its upload, or the server's frozen
    value when it sent only the other factor."""
    return [u.get(key, inputs.state[key]) for u in inputs.updates]


def merge_gap(inputs: MergeInputs, merged: Merged) -> GapStats:
    """Aggregation gap and client drift of a merge (issue 11, §1): the
    clients' effective updates s·B_i·A_i (a factor a client did not send
    is the server's frozen one) against what the server keeps, s·B·A
    after the merge plus this round's residual (FedEx-LoRA)."""
    terms = []
    for key, module in lora_modules(inputs.state).items():
        terms.append(module_gap(
            client_factors(inputs, module.b_key),
            client_factors(inputs, module.a_key), inputs.weights,
            inputs.scaling,
            merged.values.get(module.b_key, inputs.state[module.b_key]),
            merged.values.get(module.a_key, inputs.state[module.a_key]),
            merged.residual.get(key)))
    return GapStats.of(terms)


def fedex_merge(inputs: MergeInputs) -> Merged:
    """FedEx-LoRA (arXiv 2410.09432): average A and B, and keep per
    module the residual s·(mean(B_i A_i) - mean(B)·mean(A)) that every
    client adds to its frozen base weight."""
    merged = average_merge(inputs)
    for key, module in lora_modules(inputs.state).items():
        u, v = fedex_residual_factors(
            client_factors(inputs, module.b_key),
            client_factors(inputs, module.a_key), inputs.weights,
            merged.values[module.b_key], merged.values[module.a_key],
            inputs.scaling)
        merged.residual[key] = smallest_exact_form(
            u, v, inputs.state[module.a_key].dtype)
    return merged


def flexlora_merge(inputs: MergeInputs) -> Merged:
    """FlexLoRA (arXiv 2402.11505): the weighted mean of the full
    updates B_i A_i, truncated by SVD back to rank r (the head, if
    trained, is averaged)."""
    merged = average_merge(inputs)
    for module in lora_modules(inputs.state).values():
        a_ref = inputs.state[module.a_key]
        b, a, _ = flexlora_truncate(client_factors(inputs, module.b_key),
                                    client_factors(inputs, module.a_key),
                                    inputs.weights, a_ref.shape[0])
        merged.values[module.b_key] = b.to(a_ref.dtype)
        merged.values[module.a_key] = a.to(a_ref.dtype)
    return merged


def _with_head(roles: set[str], train_head: bool) -> frozenset[str]:
    return frozenset(roles | {HEAD} if train_head else roles)


@dataclass(frozen=True)
class LoRA:
    """Plain federated LoRA: both factors trained and averaged separately.

    Averaging A and B apart is inexact: mean(B_i) mean(A_i) differs from
    mean(B_i A_i) (arXiv 2409.02346, eq. 1 vs eq. 2).
    """

    train_head: bool = False
    name: str = "lora"
    has_residual: bool = False

    def plan(self, round_idx: int) -> RoundPlan:
        return RoundPlan(round_idx, _with_head({LORA_A, LORA_B},
                                               self.train_head))

    def merge(self, inputs: MergeInputs) -> Merged:
        return average_merge(inputs)


@dataclass(frozen=True)
class FFALoRA:
    """FFA-LoRA: A frozen at the server's shared init forever, B trained."""

    train_head: bool = False
    name: str = "ffa_lora"
    has_residual: bool = False

    def plan(self, round_idx: int) -> RoundPlan:
        return RoundPlan(round_idx, _with_head({LORA_B}, self.train_head))

    def merge(self, inputs: MergeInputs) -> Merged:
        return average_merge(inputs)


@dataclass(frozen=True)
class RoLoRA:
    """RoLoRA: alternate the trained factor by round (eqs. 3-4).

    The frozen factor is the same on every client, so averaging the
    trained one is exact: mean(B_i) A = mean(B_i A).
    """

    train_head: bool = False
    first: str = "B"
    period: int = 1
    name: str = "rolora"
    has_residual: bool = False

    def plan(self, round_idx: int) -> RoundPlan:
        phase = phase_for_round(round_idx, self.first, self.period)
        role = LORA_B if phase == "B" else LORA_A
        return RoundPlan(round_idx, _with_head({role}, self.train_head),
                         phase)

    def merge(self, inputs: MergeInputs) -> Merged:
        return average_merge(inputs)


@dataclass(frozen=True)
class FedExLoRA:
    """FedEx-LoRA: LoRA's averages plus the residual that makes the
    global update the clients' exact mean, folded into the base."""

    train_head: bool = False
    name: str = "fedex_lora"
    has_residual: bool = True

    def plan(self, round_idx: int) -> RoundPlan:
        return RoundPlan(round_idx, _with_head({LORA_A, LORA_B},
                                               self.train_head))

    def merge(self, inputs: MergeInputs) -> Merged:
        return fedex_merge(inputs)


@dataclass(frozen=True)
class FlexLoRA:
    """FlexLoRA: the mean full update, truncated to rank r by SVD."""

    train_head: bool = False
    name: str = "flexlora"
    has_residual: bool = False

    def plan(self, round_idx: int) -> RoundPlan:
        return RoundPlan(round_idx, _with_head({LORA_A, LORA_B},
                                               self.train_head))

    def merge(self, inputs: MergeInputs) -> Merged:
        return flexlora_merge(inputs)


@dataclass(frozen=True)
class FedSALoRA:
    """FedSA-LoRA (arXiv 2410.01463): A is shared (sent and averaged),
    each client's B stays with it, trained across rounds, never sent."""

    train_head: bool = False
    name: str = "fedsa_lora"
    has_residual: bool = False

    def plan(self, round_idx: int) -> RoundPlan:
        return RoundPlan(round_idx, _with_head({LORA_A, LORA_B},
                                               self.train_head),
                         kept_roles=frozenset({LORA_B}))

    def merge(self, inputs: MergeInputs) -> Merged:
        return average_merge(inputs)


def make_method(
    name: str, *, train_head: bool = False, first: str = "B",
    period: int = 1,
) -> Method:
    """Build a method by its config name (``federate.method``)."""
    if name == "lora":
        return LoRA(train_head)
    if name == "ffa_lora":
        return FFALoRA(train_head)
    if name == "rolora":
        phase_for_round(1, first, period)  # validates first and period
        return RoLoRA(train_head, first, period)
    if name == "fedex_lora":
        return FedExLoRA(train_head)
    if name == "flexlora":
        return FlexLoRA(train_head)
    if name == "fedsa_lora":
        return FedSALoRA(train_head)
    raise ValueError(
        f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
