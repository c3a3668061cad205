"""Invariant 1: the phase is a pure function of the server's round."""

from __future__ import annotations

import pytest

from federatedscope_rolora.core.phase import PHASES, phase_for_round


def test_first_b_alternates_b_a_b_a() -> None:
    phases = [phase_for_round(t) for t in range(1, 7)]

    assert phases == ["B", "A", "B", "A", "B", "A"]


def test_first_a_alternates_a_b_a_b() -> None:
    phases = [phase_for_round(t, first="A") for t in range(1, 6)]

    assert phases == ["A", "B", "A", "B", "A"]


def test_period_two_keeps_each_phase_for_two_rounds() -> None:
    phases = [phase_for_round(t, "B", 2) for t in range(1, 9)]

    assert phases == ["B", "B", "A", "A", "B", "B", "A", "A"]


def test_period_three_first_a() -> None:
    phases = [phase_for_round(t, "A", 3) for t in range(1, 8)]

    assert phases == ["A", "A", "A", "B", "B", "B", "A"]


def test_phases_are_a_and_b() -> None:
    assert PHASES == ("A", "B")


@pytest.mark.parametrize("round_idx", [0, -1, -7])
def test_rejects_rounds_below_one(round_idx: int) -> None:
    with pytest.raises(ValueError, match=f"numbered from 1, got {round_idx}"):
        phase_for_round(round_idx)


@pytest.mark.parametrize("round_idx", [True, False, 1.0, "1", None])
def test_rejects_round_that_is_not_an_int(round_idx: object) -> None:
    with pytest.raises(TypeError, match="round must be an int"):
        phase_for_round(round_idx)  # type: ignore[arg-type]


@pytest.mark.parametrize("first", ["b", "C", "", "AB", None])
def test_rejects_bad_first_phase(first: object) -> None:
    with pytest.raises(ValueError, match="first phase must be 'A' or 'B'"):
        phase_for_round(1, first)  # type: ignore[arg-type]


@pytest.mark.parametrize("period", [0, -2, True, 1.5, "2"])
def test_rejects_bad_period(period: object) -> None:
    with pytest.raises(ValueError, match="period must be an int >= 1"):
        phase_for_round(1, "B", period)  # type: ignore[arg-type]


def test_phase_is_pure_whatever_was_asked_before() -> None:
    """No hidden counter: the answer for round t does not depend on which
    rounds (or how many evaluation passes) were queried before it."""
    rounds = [5, 1, 1, 2, 9, 3, 3, 3, 4, 10, 6]
    fresh = {t: phase_for_round(t, "B", 1) for t in range(1, 11)}

    for _ in range(3):
        for t in rounds:
            phase_for_round(t, "A", 2)  # other settings in between
            assert phase_for_round(t, "B", 1) == fresh[t]
    assert [fresh[t] for t in (1, 2, 9, 10)] == ["B", "A", "B", "A"]


def test_skipped_rounds_do_not_shift_the_schedule() -> None:
    """Round 7 has the same phase whether rounds 2-6 ran or not."""
    straight = [phase_for_round(t) for t in range(1, 8)][-1]

    skipped = phase_for_round(7)

    assert straight == skipped == "B"
