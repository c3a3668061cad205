"""Weighted averaging of client tensors, checked against hand-computed
numbers."""

from __future__ import annotations

import pytest
import torch

from federatedscope_rolora.core.aggregation import (
    WEIGHTINGS,
    client_weights,
    weighted_average,
)

B_KEY = ("base_model.model.bert.encoder.layer.0.attention.self.query."
         "lora_B.default.weight")
HEAD_KEY = "base_model.model.classifier.modules_to_save.other.bias"


def _three_updates(dtype: torch.dtype) -> list[dict[str, torch.Tensor]]:
    return [
        {B_KEY: torch.tensor([[8.0], [-8.0], [16.0]], dtype=dtype),
         HEAD_KEY: torch.tensor([1.0, 0.0], dtype=dtype)},
        {B_KEY: torch.tensor([[4.0], [4.0], [0.0]], dtype=dtype),
         HEAD_KEY: torch.tensor([1.0, 4.0], dtype=dtype)},
        {B_KEY: torch.tensor([[0.0], [8.0], [8.0]], dtype=dtype),
         HEAD_KEY: torch.tensor([1.0, -8.0], dtype=dtype)},
    ]


def test_client_weights_by_examples() -> None:
    assert client_weights([1, 2, 5], "examples") == [0.125, 0.25, 0.625]


def test_client_weights_uniform_ignores_counts() -> None:
    weights = client_weights([1, 2, 5], "uniform")

    assert weights == [1 / 3, 1 / 3, 1 / 3]


def test_weightings_are_examples_and_uniform() -> None:
    assert WEIGHTINGS == ("examples", "uniform")


def test_client_weights_rejects_unknown_weighting() -> None:
    with pytest.raises(ValueError, match="unknown weighting 'median'"):
        client_weights([1, 2], "median")


@pytest.mark.parametrize("counts", [[3, 0], [-1, 4]])
def test_client_weights_rejects_non_positive_counts(counts: list[int]
                                                    ) -> None:
    with pytest.raises(ValueError, match="example counts must be positive"):
        client_weights(counts, "examples")


def test_client_weights_rejects_no_clients() -> None:
    with pytest.raises(ValueError, match="no client updates"):
        client_weights([], "uniform")


def test_weighted_average_matches_hand_computed_mean() -> None:
    # weights 1/8, 2/8, 5/8 (examples 1, 2, 5):
    #   B row 0: 8/8 + 2*4/8 + 5*0/8  = 1 + 1 + 0 = 2
    #   B row 1: -8/8 + 2*4/8 + 5*8/8 = -1 + 1 + 5 = 5
    #   B row 2: 16/8 + 2*0/8 + 5*8/8 = 2 + 0 + 5 = 7
    #   head:   [1/8 + 2/8 + 5/8, 0 + 8/8 - 40/8] = [1, -4]
    updates = _three_updates(torch.float32)

    merged = weighted_average(updates, [0.125, 0.25, 0.625])

    assert list(merged) == [B_KEY, HEAD_KEY]
    assert torch.equal(merged[B_KEY], torch.tensor([[2.0], [5.0], [7.0]]))
    assert torch.equal(merged[HEAD_KEY], torch.tensor([1.0, -4.0]))


def test_weighted_average_uniform() -> None:
    # (8 + 4 + 0) / 3 = 4, (-8 + 4 + 8) / 3 = 4/3, (16 + 0 + 8) / 3 = 8
    updates = _three_updates(torch.float32)

    merged = weighted_average(updates, client_weights([1, 2, 5], "uniform"))

    expected = torch.tensor([[4.0], [4.0 / 3.0], [8.0]])
    torch.testing.assert_close(merged[B_KEY], expected)


def test_weighted_average_does_not_touch_inputs() -> None:
    updates = _three_updates(torch.float32)
    before = [{k: v.clone() for k, v in u.items()} for u in updates]

    weighted_average(updates, [0.125, 0.25, 0.625])

    for update, copy in zip(updates, before, strict=True):
        assert all(torch.equal(update[k], copy[k]) for k in copy)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16,
                                   torch.float64])
def test_weighted_average_keeps_dtype(dtype: torch.dtype) -> None:
    updates = _three_updates(dtype)

    merged = weighted_average(updates, [0.125, 0.25, 0.625])

    assert merged[B_KEY].dtype == dtype
    assert merged[HEAD_KEY].dtype == dtype
    assert torch.equal(merged[B_KEY],
                       torch.tensor([[2.0], [5.0], [7.0]], dtype=dtype))


def test_weighted_average_accumulates_in_float64() -> None:
    # mean of 1000, 0.1, 0.1, 0.1 = 250.075; float16 has steps of 0.125
    # near 250, so summing 250 + 0.025 + ... in float16 stays at 250.0,
    # while one cast of the float64 sum rounds to the nearer 250.125.
    values = [torch.tensor([x], dtype=torch.float16)
              for x in (1000.0, 0.1, 0.1, 0.1)]

    merged = weighted_average([{B_KEY: v} for v in values], [0.25] * 4)

    assert torch.equal(merged[B_KEY],
                       torch.tensor([250.125], dtype=torch.float16))


def test_weighted_average_rejects_mismatched_key_sets() -> None:
    updates = _three_updates(torch.float32)
    del updates[2][HEAD_KEY]

    with pytest.raises(ValueError, match="update 2 has keys"):
        weighted_average(updates, [0.125, 0.25, 0.625])


def test_weighted_average_rejects_extra_key() -> None:
    updates = _three_updates(torch.float32)
    updates[1]["extra.lora_A.default.weight"] = torch.zeros(1)

    with pytest.raises(ValueError, match="update 1 has keys"):
        weighted_average(updates, [0.125, 0.25, 0.625])


def test_weighted_average_rejects_mismatched_shapes() -> None:
    """A (2,) tensor would broadcast silently into a (3, 2) sum."""
    updates = [{HEAD_KEY: torch.ones(3, 2)}, {HEAD_KEY: torch.ones(2)}]

    with pytest.raises(ValueError, match="shape"):
        weighted_average(updates, [0.5, 0.5])


def test_weighted_average_rejects_weight_count_mismatch() -> None:
    with pytest.raises(ValueError, match="3 updates but 2 weights"):
        weighted_average(_three_updates(torch.float32), [0.5, 0.5])


def test_weighted_average_rejects_no_updates() -> None:
    with pytest.raises(ValueError, match="no client updates"):
        weighted_average([], [])
