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
