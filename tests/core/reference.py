"""The merge maths by its definition, client by client and densely: the
reference the core's factored computations are checked against."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mean_product(bs: Sequence[torch.Tensor], as_: Sequence[torch.Tensor],
                 weights: Sequence[float], scaling: float) -> torch.Tensor:
    """``sum_i w_i·s·B_i·A_i`` in float64: the clients' mean update."""
    total = torch.zeros(bs[0].shape[0], as_[0].shape[1],
                        dtype=torch.float64)
    for b, a, w in zip(bs, as_, weights, strict=True):
        total += w * scaling * (b.double() @ a.double())
    return total


def dense_gap(bs: Sequence[torch.Tensor], as_: Sequence[torch.Tensor],
              weights: Sequence[float], scaling: float, kept: torch.Tensor
              ) -> tuple[float, float, float]:
    """A module's squared norms of the gap by the definition, each
    client's update formed: ||M||^2, ||M - K||^2 and sum_i w_i
    ||E_i - M||^2."""
    updates = [scaling * (b.double() @ a.double())
               for b, a in zip(bs, as_, strict=True)]
    mean = mean_product(bs, as_, weights, scaling)
    spread = sum(w * float((e - mean).pow(2).sum())
                 for w, e in zip(weights, updates, strict=True))
    return (float(mean.pow(2).sum()), float((mean - kept).pow(2).sum()),
            spread)


def dense_flexlora(bs: Sequence[torch.Tensor], as_: Sequence[torch.Tensor],
                   weights: Sequence[float], rank: int) -> torch.Tensor:
    """FlexLoRA's rank-r product B·A by the SVD of the dense mean."""
    u, s, vh = torch.linalg.svd(mean_product(bs, as_, weights, 1.0),
                                full_matrices=False)
    product: torch.Tensor = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return product
