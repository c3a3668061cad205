"""The three ways to federate a LoRA adapter, as small strategy objects.

Each method answers one question for round t: which roles are trained
(and therefore sent up and averaged). Everything else the server and the
clients do follows from that answer:

| method     | trained and sent in round t            |
|------------|----------------------------------------|
| lora       | lora_A and lora_B                      |
| ffa_lora   | lora_B; lora_A stays at its shared init |
| rolora     | lora_B if phase(t) is B, else lora_A   |

plus the head when the head policy is ``trained``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from federatedscope_rolora.core.phase import phase_for_round
from federatedscope_rolora.core.roles import HEAD, LORA_A, LORA_B, role_of

METHODS = ("rolora", "lora", "ffa_lora")


@dataclass(frozen=True)
class RoundPlan:
    """What round ``round_idx`` trains; the rest of the adapter is frozen."""

    round_idx: int
    trained_roles: frozenset[str]
    phase: str | None = None

    def trained_keys(self, keys: Iterable[str]) -> list[str]:
        """Keys trained, sent up and averaged this round."""
        return [k for k in keys if role_of(k) in self.trained_roles]

    def frozen_keys(self, keys: Iterable[str]) -> list[str]:
        """Adapter keys held fixed this round (identical on every client)."""
        return [
            k
            for k in keys
            if role_of(k) is not None
            and role_of(k) not in self.trained_roles
        ]


class Method(Protocol):
    """A federation method: a name and a plan per round."""

    @property
    def name(self) -> str: ...

    def plan(self, round_idx: int) -> RoundPlan: ...


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

    def plan(self, round_idx: int) -> RoundPlan:
        return RoundPlan(round_idx, _with_head({LORA_A, LORA_B},
                                               self.train_head))


@dataclass(frozen=True)
class FFALoRA:
    """FFA-LoRA: A frozen at the server's shared init forever, B trained."""

    train_head: bool = False
    name: str = "ffa_lora"

    def plan(self, round_idx: int) -> RoundPlan:
        return RoundPlan(round_idx, _with_head({LORA_B}, self.train_head))


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

    def plan(self, round_idx: int) -> RoundPlan:
        phase = phase_for_round(round_idx, self.first, self.period)
        role = LORA_B if phase == "B" else LORA_A
        return RoundPlan(round_idx, _with_head({role}, self.train_head),
                         phase)


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
    raise ValueError(
        f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
