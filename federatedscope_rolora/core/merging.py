"""How the server merges a round's client factors: plain functions.

A LoRA module's effective update is ``s·B·A`` with ``s = lora_alpha / r``
(PEFT's scaling). Averaging the factors apart gives ``s·mean(B)·mean(A)``,
which is not ``mean(s·B_i·A_i)`` (arXiv 2409.02346, eq. 1 vs eq. 2). The
functions here compute what each method keeps instead, and how far that
is from the clients' mean (the aggregation gap). Everything runs in
float64 and is cast to the adapter's dtype at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from federatedscope_rolora.core.roles import LORA_A, role_of

Tensors = Mapping[str, torch.Tensor]
RESIDUAL_COMPONENT = "fedex_residual"
_B_OF = {"lora_A": "lora_B", "lora_embedding_A": "lora_embedding_B"}


@dataclass(frozen=True)
class Module:
    """One adapted module: its A and B keys and its residual key."""

    a_key: str
    b_key: str
    residual_key: str


def lora_modules(keys: Iterable[str]) -> dict[str, Module]:
    """The LoRA modules among ``keys``, by residual key: every A key
    ``<prefix>.lora_A.<adapter>.weight`` paired with its B key."""
    keys = list(keys)
    present = set(keys)
    out: dict[str, Module] = {}
    for key in keys:
        if role_of(key) != LORA_A:
            continue
        parts = key.split(".")
        i = next(j for j, p in enumerate(parts) if p in _B_OF)
        b_key = ".".join([*parts[:i], _B_OF[parts[i]], *parts[i + 1:]])
        if b_key not in present:
            raise ValueError(f"LoRA factor {key!r} has no B factor "
                             f"{b_key!r}")
        adapter = parts[i + 1] if i + 1 < len(parts) else "default"
        residual = ".".join([*parts[:i], RESIDUAL_COMPONENT, adapter])
        out[residual] = Module(key, b_key, residual)
    return out


def _f64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float64)


def fedex_residual_factors(
    bs: Sequence[torch.Tensor], as_: Sequence[torch.Tensor],
    weights: Sequence[float], b_mean: torch.Tensor, a_mean: torch.Tensor,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FedEx-LoRA's residual (arXiv 2410.09432, §3: the exact mean minus
    the product of the means, times LoRA's scaling) as factors U·V of
    rank at most (n-1)·r, in float64. With weights summing to 1 and
    a = sum_i w_i A_i, every sum_i w_i (A_i - a) is zero, so

        sum_i w_i B_i A_i - mean(B)·mean(A)
          = sum_i w_i (B_i - B_n)(A_i - a)          (the i = n term is 0)
          = [w_1 (B_1 - B_n), ..., w_{n-1} (B_{n-1} - B_n)]
            · [A_1 - a; ...; A_{n-1} - a]

    up to the float32 rounding of the kept means ``b_mean`` and
    ``a_mean``: with the factors cast to float32, the global update
    B·A + U·V is the clients' exact mean to about 4e-8 of its norm,
    inside float32's resolution (6e-8), where the (n+1)·r form
    [w_i B_i, -mean(B)]·[A_i; mean(A)] reaches about 1e-8 with n+1
    blocks of r columns against n-1 (twice as many at 3 clients); the
    weights W0 + residual are float32 anyway. One client: zero, as factors of
    rank 0 (as before the first merge, core/residual.py)."""
    total = sum(weights)
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"client weights sum to {total}, not 1")
    a_exact = sum((w * _f64(a) for a, w in zip(as_, weights, strict=True)),
                  torch.zeros_like(_f64(a_mean)))
    if len(bs) == 1:  # the mean of one product is that product
        return (a_exact.new_zeros(b_mean.shape[0], 0),
                a_exact.new_zeros(0, a_mean.shape[1]))
    pivot = _f64(bs[-1])
    us = [scaling * w * (_f64(b) - pivot)
          for b, w in zip(bs[:-1], weights[:-1], strict=True)]
    vs = [_f64(a) - a_exact for a in as_[:-1]]
    return torch.cat(us, dim=1), torch.cat(vs, dim=0)


def smallest_exact_form(u: torch.Tensor, v: torch.Tensor,
                        dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The residual U·V in whichever form has fewer elements: dense
    (``{"add": U·V}``) or factored (``{"add_u": U, "add_v": V}``), cast
    to ``dtype``. Either reconstructs to the same tensor through
    ``reconstruct``, on the server and on every client."""
    d, k = u.shape[0], v.shape[1]
    if u.shape[1] * (d + k) < d * k:
        return {"add_u": u.to(dtype), "add_v": v.to(dtype)}
    return {"add": (u @ v).to(dtype)}


def reconstruct(form: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The dense tensor a residual form stands for: the dense tensor
    itself, or ``U·V`` computed in float64 and cast back, so that every
    process that holds the same factors gets the same bits."""
    for dense in ("add", "set"):
        if dense in form:
            return form[dense]
    for prefix in ("add", "set"):
        u, v = form.get(f"{prefix}_u"), form.get(f"{prefix}_v")
        if u is not None and v is not None:
            return (_f64(u) @ _f64(v)).to(u.dtype)
    raise ValueError(f"not a residual form: {sorted(form)}")


def flexlora_truncate(bs: Sequence[torch.Tensor],
                      as_: Sequence[torch.Tensor],
                      weights: Sequence[float], rank: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlexLoRA's SVD-based redistribution (arXiv 2402.11505, §3) of the
    clients' weighted mean update ``M = sum_i w_i B_i A_i``, in float64:
    the truncated SVD ``M ≈ U_r Σ_r V_r^T`` returned as ``B = U_r·Σ_r``
    (all singular values on B) and ``A = V_r^T``, the split of the
    paper's code (FederatedScope's FlexLoRA branch,
    fed_utils/adaptive_peft.py: ``lora_B = u @ diag(s)``, ``lora_A =
    v.T[:rank]``); plus the discarded singular values. By Eckart-Young,
    ``||M - B·A||_F`` is the norm of the discarded values.

    M is never formed when its rank bound k = n·r is below both of its
    sides: with the thin QRs ``[w_i B_i] = Q_U R_U`` and ``[A_i]^T =
    Q_V R_V``, ``M = Q_U (R_U R_V^T) Q_V^T``, so the SVD of the k x k
    core gives M's (the same subspaces; each singular pair's sign is the
    solver's choice either way, and B·A does not depend on it). The cost
    is O((d_out + d_in)·k^2) instead of an SVD of d_out x d_in."""
    u = torch.cat([w * _f64(b) for b, w in zip(bs, weights, strict=True)],
                  dim=1)
    v = torch.cat([_f64(a) for a in as_], dim=0)
    if u.shape[1] >= min(u.shape[0], v.shape[1]):
        left, s, right_h = torch.linalg.svd(u @ v, full_matrices=False)
    else:
        q_u, r_u = torch.linalg.qr(u)
        q_v, r_v = torch.linalg.qr(v.T)
        p, s, h_t = torch.linalg.svd(r_u @ r_v.T)
        left, right_h = q_u @ p, h_t @ q_v.T
    r = min(rank, s.numel())
    b = left[:, :r] * s[:r]
    a = right_h[:r, :]
    if r < rank:  # fewer singular values than the rank: pad with zeros
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - r)], dim=1)
        a = torch.cat([a, a.new_zeros(rank - r, a.shape[1])], dim=0)
    return b, a, s[r:]


@dataclass(frozen=True)
class ModuleGap:
    """Squared Frobenius norms of one module: of the clients' mean update
    M, of M minus what the server keeps K, and the weighted spread
    sum_i w_i ||E_i - M||^2 of the clients' updates E_i around M."""

    mean_sq: float
    gap_sq: float
    spread_sq: float


def module_gap(bs: Sequence[torch.Tensor], as_: Sequence[torch.Tensor],
               weights: Sequence[float], scaling: float,
               kept_b: torch.Tensor, kept_a: torch.Tensor,
               residual: Mapping[str, torch.Tensor] | None = None
               ) -> ModuleGap:
    """One module's terms of the gap from the factors, in float64: the
    clients' updates ``E_i = s·B_i·A_i`` and what the server keeps,
    ``K = s·B·A`` plus this round's residual (FedEx-LoRA).

    No client's dense update is formed. The mean is one product of the
    stacked factors, ``M = [s w_1 B_1, ...]·[A_1; ...]`` (rank <= n·r),
    and ``M - K`` another, one block longer; the norm of a product
    ``U·V`` of rank k below both sides is ``||R_U·R_V^T||_F`` from two
    thin QRs, so the cost is O((d_out + d_in)·k^2), not O(n·d_out·d_in),
    and the error stays at float64 precision relative to the factors
    (an exact merge reads ~1e-16, not the ~1e-8 of a difference of
    squared norms). The spread uses ``sum_i w_i ||E_i||^2 - (2 -
    sum_i w_i)·||M||^2``, each ``||E_i||^2`` from r x r Gram matrices:
    a difference, so its floor is ~1e-8 of ||M||, far below any drift
    worth reading."""
    bs64 = [_f64(b) for b in bs]
    as64 = [_f64(a) for a in as_]
    u_mean = torch.cat([scaling * w * b
                        for b, w in zip(bs64, weights, strict=True)], dim=1)
    v_mean = torch.cat(as64, dim=0)
    u_gap = [u_mean, -scaling * _f64(kept_b)]
    v_gap = [v_mean, _f64(kept_a)]
    dense_residual = None
    if residual is not None:
        if "add_u" in residual:
            u_gap.append(-_f64(residual["add_u"]))
            v_gap.append(_f64(residual["add_v"]))
        else:
            dense_residual = _f64(reconstruct(residual))
    mean_sq = _product_norm_sq(u_mean, v_mean)
    if dense_residual is None:
        gap_sq = _product_norm_sq(torch.cat(u_gap, dim=1),
                                  torch.cat(v_gap, dim=0))
    else:
        diff = torch.cat(u_gap, dim=1) @ torch.cat(v_gap, dim=0)
        gap_sq = float((diff - dense_residual).pow(2).sum())
    own_sq = sum(w * scaling ** 2 * float(((b.T @ b) * (a @ a.T)).sum())
                 for b, a, w in zip(bs64, as64, weights, strict=True))
    spread_sq = own_sq - (2.0 - sum(weights)) * mean_sq
    return ModuleGap(mean_sq, gap_sq, max(spread_sq, 0.0))


def _product_norm_sq(u: torch.Tensor, v: torch.Tensor) -> float:
    """``||U·V||_F^2`` for U (d x k) and V (k x e), through the thin QRs
    of U and V^T when k is below d and e, else densely."""
    k = u.shape[1]
    if k >= min(u.shape[0], v.shape[1]):
        return float((u @ v).pow(2).sum())
    r_u = torch.linalg.qr(u, mode="r")[1]
    r_v = torch.linalg.qr(v.T, mode="r")[1]
    return float((r_u @ r_v.T).pow(2).sum())


@dataclass(frozen=True)
class GapStats:
    """Aggregation gap and client drift of one round (issue 11, §1).

    Over the adapted modules m, with E_i the clients' effective updates,
    M their weighted mean and K what the server keeps:

        aggregation_gap = sqrt(sum_m ||M - K||^2) / sqrt(sum_m ||M||^2)
        client_drift = sqrt(sum_m sum_i w_i ||E_i - M||^2)
                       / sqrt(sum_m ||M||^2)

    and the largest per-module ratio ||M - K|| / ||M|| beside the gap.
    All None where the mean update is zero (nothing to compare with)."""

    aggregation_gap: float | None
    aggregation_gap_module_max: float | None
    client_drift: float | None

    @classmethod
    def of(cls, modules: Iterable[ModuleGap]) -> GapStats:
        terms = list(modules)
        scale = sum(t.mean_sq for t in terms)
        if scale <= 0.0:
            return cls(None, None, None)
        worst = max((t.gap_sq / t.mean_sq) ** 0.5 for t in terms
                    if t.mean_sq > 0)
        return cls((sum(t.gap_sq for t in terms) / scale) ** 0.5, worst,
                   (sum(t.spread_sq for t in terms) / scale) ** 0.5)

    def record(self) -> dict[str, float | None]:
        return {"aggregation_gap": self.aggregation_gap,
                "aggregation_gap_module_max":
                    self.aggregation_gap_module_max,
                "client_drift": self.client_drift}
