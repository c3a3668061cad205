"""Averaging of client tensors: plain functions, no server state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

WEIGHTINGS = ("examples", "uniform")


def client_weights(num_examples: Sequence[int], weighting: str
                   ) -> list[float]:
    """Normalised weights: by example count (FedAvg) or uniform."""
    if not num_examples:
        raise ValueError("no client updates to weigh")
    if weighting == "uniform":
        return [1.0 / len(num_examples)] * len(num_examples)
    if weighting != "examples":
        raise ValueError(f"unknown weighting {weighting!r}; choose one of "
                         f"{', '.join(WEIGHTINGS)}")
    if any(n <= 0 for n in num_examples):
        raise ValueError(f"example counts must be positive: {num_examples}")
    total = float(sum(num_examples))
    return [n / total for n in num_examples]


def weighted_average(
    updates: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
) -> dict[str, torch.Tensor]:
    """Per-key weighted mean of client tensors, sum(w_i * x_i).

    Accumulates in float64 and casts back to each tensor's dtype, so the
    result does not depend on the order of the clients beyond rounding of
    the final cast. Every update must hold the same keys.
    """
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    if not updates:
        raise ValueError("no client updates to average")
    keys = list(updates[0])
    for i, update in enumerate(updates[1:], start=1):
        if set(update) != set(keys):
            raise ValueError(f"update {i} has keys {sorted(update)}, "
                             f"update 0 has {sorted(keys)}")
    merged: dict[str, torch.Tensor] = {}
    for key in keys:
        shape = updates[0][key].shape
        acc = torch.zeros(shape, dtype=torch.float64)
        for i, (update, weight) in enumerate(zip(updates, weights,
                                                 strict=True)):
            # checked, or a smaller tensor would broadcast silently
            if update[key].shape != shape:
                raise ValueError(f"update {i}: {key} has shape "
                                 f"{tuple(update[key].shape)}, update 0 "
                                 f"has {tuple(shape)}")
            acc += update[key].detach().to("cpu", torch.float64) * weight
        merged[key] = acc.to(updates[0][key].dtype)
    return merged
