"""The RoLoRA phase schedule: a pure function of the server's round."""

from __future__ import annotations

PHASES = ("A", "B")


def phase_for_round(round_idx: int, first: str = "B", period: int = 1) -> str:
    """Return which LoRA factor is trained in round ``round_idx``.

    RoLoRA (arXiv 2409.02346, eqs. 3-4) alternates: with ``first="B"``
    rounds 1, 3, 5, ... train ``lora_B`` with ``lora_A`` frozen and rounds
    2, 4, 6, ... the reverse. ``period`` keeps each phase for that many
    rounds. Rounds are numbered from 1, as the server counts them; the
    function depends on nothing else, so evaluation passes, skipped rounds
    and resumed runs cannot shift the schedule (DESIGN.md, invariant 1).
    """
    if isinstance(round_idx, bool) or not isinstance(round_idx, int):
        raise TypeError(f"round must be an int, got {round_idx!r}")
    if round_idx < 1:
        raise ValueError(f"rounds are numbered from 1, got {round_idx}")
    if first not in PHASES:
        raise ValueError(f"first phase must be 'A' or 'B', got {first!r}")
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"period must be an int >= 1, got {period!r}")
    flipped = ((round_idx - 1) // period) % 2 == 1
    other = "A" if first == "B" else "B"
    return other if flipped else first
