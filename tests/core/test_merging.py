"""The merge maths as plain functions: FedEx-LoRA's residual, FlexLoRA's
truncation, the residual's travelling forms and the aggregation gap."""

from __future__ import annotations

import math

import pytest
import torch

from federatedscope_rolora.core.merging import (
    GapStats,
    fedex_residual_factors,
    flexlora_truncate,
    lora_modules,
    module_gap,
    reconstruct,
    smallest_exact_form,
)
from tests.core.reference import dense_gap, mean_product

PREFIX = "base_model.model.bert.encoder.layer.0.attention.self"


def _factors(n: int, d: int, k: int, r: int, seed: int = 0
             ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    bs = [torch.randn(d, r, generator=gen) for _ in range(n)]
    as_ = [torch.randn(r, k, generator=gen) for _ in range(n)]
    return bs, as_


def test_lora_modules_pairs_factors_and_names_the_residual() -> None:
    a = f"{PREFIX}.query.lora_A.other.weight"
    b = f"{PREFIX}.query.lora_B.other.weight"

    modules = lora_modules([b, a, "base_model.model.classifier.weight"])

    assert list(modules) == [f"{PREFIX}.query.fedex_residual.other"]
    module = modules[f"{PREFIX}.query.fedex_residual.other"]
    assert (module.a_key, module.b_key) == (a, b)


def test_lora_modules_refuses_an_a_without_its_b() -> None:
    with pytest.raises(ValueError, match="no B factor"):
        lora_modules([f"{PREFIX}.query.lora_A.default.weight"])


def _means(bs: list[torch.Tensor], as_: list[torch.Tensor],
           weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted means of the B and of the A factors."""
    return (torch.stack([w * b for w, b in zip(weights, bs, strict=True)])
            .sum(0),
            torch.stack([w * a for w, a in zip(weights, as_, strict=True)])
            .sum(0))


def test_fedex_residual_makes_the_mean_exact() -> None:
    bs, as_ = _factors(3, 6, 5, 2)
    weights = [0.2, 0.3, 0.5]
    b_mean, a_mean = _means(bs, as_, weights)

    u, v = fedex_residual_factors(bs, as_, weights, b_mean, a_mean, 2.0)

    want = mean_product(bs, as_, weights, 2.0)
    got = 2.0 * b_mean.double() @ a_mean.double() + u @ v
    # (n-1)·r columns: the clients' departures, one client as pivot
    assert u.shape == (6, 2 * 2) and v.shape == (2 * 2, 5)
    # exact but for the float32 rounding of the kept means
    assert float((got - want).norm() / want.norm()) < 1e-7


def test_fedex_residual_is_exact_in_float64_means() -> None:
    """With means held in float64 there is no rounding to hide behind:
    the (n-1)·r factors give the mean of the products to 1e-12."""
    bs, as_ = [[t.double() for t in f] for f in _factors(4, 7, 5, 3)]
    weights = [0.1, 0.2, 0.3, 0.4]
    b_mean, a_mean = _means(bs, as_, weights)

    u, v = fedex_residual_factors(bs, as_, weights, b_mean, a_mean, 0.5)

    want = mean_product(bs, as_, weights, 0.5)
    assert u.shape == (7, 3 * 3)
    assert torch.allclose(0.5 * b_mean @ a_mean + u @ v, want, rtol=0,
                          atol=1e-12)


def test_fedex_residual_of_one_client_is_zero() -> None:
    bs, as_ = _factors(1, 6, 5, 2)

    u, v = fedex_residual_factors(bs, as_, [1.0], bs[0], as_[0], 2.0)

    assert u.shape == (6, 0) and v.shape == (0, 5)
    assert smallest_exact_form(u, v, torch.float32)["add_u"].numel() == 0


def test_fedex_residual_needs_weights_that_sum_to_one() -> None:
    bs, as_ = _factors(2, 6, 5, 2)

    with pytest.raises(ValueError, match="sum to 1.5, not 1"):
        fedex_residual_factors(bs, as_, [0.5, 1.0], bs[0], as_[0], 2.0)


@pytest.mark.parametrize(("d", "k", "n", "factored"),
                         [(4, 4, 3, False), (64, 64, 3, True)])
def test_residual_travels_in_its_smaller_exact_form(
        d: int, k: int, n: int, factored: bool) -> None:
    u = torch.randn(d, (n - 1) * 2, dtype=torch.float64)
    v = torch.randn((n - 1) * 2, k, dtype=torch.float64)

    form = smallest_exact_form(u, v, torch.float32)

    numel = sum(t.numel() for t in form.values())
    assert numel == min(d * k, (n - 1) * 2 * (d + k))
    assert set(form) == ({"add_u", "add_v"} if factored else {"add"})
    assert torch.allclose(reconstruct(form).double(), u @ v, rtol=1e-5,
                          atol=1e-5)


def test_factored_residual_rebuilds_to_the_same_bits_each_time() -> None:
    u, v = torch.randn(64, 8), torch.randn(8, 64)
    form = {"add_u": u, "add_v": v}

    assert torch.equal(reconstruct(form), reconstruct(
        {"add_u": u.clone(), "add_v": v.clone()}))


def test_flexlora_reproduces_the_mean_when_its_rank_fits() -> None:
    gen = torch.Generator().manual_seed(1)
    f64 = torch.float64
    basis = torch.randn(8, 2, generator=gen, dtype=f64)
    bs = [basis @ torch.randn(2, 2, generator=gen, dtype=f64)
          for _ in range(4)]
    as_ = [torch.randn(2, 7, generator=gen, dtype=f64) for _ in range(4)]
    weights = [0.1, 0.2, 0.3, 0.4]
    full = mean_product(bs, as_, weights, 1.0)

    b, a, dropped = flexlora_truncate(bs, as_, weights, 2)

    assert b.shape == (8, 2) and a.shape == (2, 7)
    assert torch.allclose(b @ a, full, rtol=0, atol=1e-12)
    assert float(dropped.norm()) < 1e-12 * float(full.norm())


@pytest.mark.parametrize("n,d,k", [
    (5, 9, 7),      # n·r >= min(d, k): the SVD of the mean itself
    (5, 40, 30),    # n·r below both: the SVD of the k x k core
])
def test_flexlora_error_is_the_discarded_singular_values(
        n: int, d: int, k: int) -> None:
    bs, as_ = _factors(n, d, k, 2, seed=3)
    weights = [1 / n] * n
    full = mean_product(bs, as_, weights, 1.0)

    b, a, dropped = flexlora_truncate(bs, as_, weights, 2)

    u, singular, vh = torch.linalg.svd(full)
    error = float((full - b @ a).norm())
    assert error == pytest.approx(float(singular[2:].norm()), rel=1e-10)
    assert float(dropped.norm()) == pytest.approx(
        float(singular[2:].norm()), rel=1e-10)
    # the best rank-2 approximation, which is unique here
    assert torch.allclose(b @ a, (u[:, :2] * singular[:2]) @ vh[:2],
                          rtol=0, atol=1e-10)
    # the paper's code puts the singular values on B: A's rows orthonormal
    assert torch.allclose(a @ a.T, torch.eye(2, dtype=torch.float64),
                          atol=1e-12)
    assert torch.allclose(b.norm(dim=0), singular[:2], rtol=1e-10)
    # and no rank-2 product of the means does better (Eckart-Young)
    b_mean = sum(w * x for w, x in zip(weights, bs, strict=True))
    a_mean = sum(w * x for w, x in zip(weights, as_, strict=True))
    assert isinstance(b_mean, torch.Tensor)
    assert isinstance(a_mean, torch.Tensor)
    naive = float((full - b_mean.double() @ a_mean.double()).norm())
    assert error < naive


def _scalar(x: float) -> torch.Tensor:
    return torch.tensor([[x]], dtype=torch.float64)


def test_gap_of_a_hand_computed_lora_round() -> None:
    """Scalars (d = k = r = 1, s = 1): clients B = A = 1 and B = A = 3,
    equal weights. Mean update (1 + 9) / 2 = 5; LoRA keeps mean(B)
    mean(A) = 2·2 = 4: gap |5 - 4| / 5 = 0.2; drift sqrt((16 + 16) / 2)
    / 5 = 0.8."""
    bs = as_ = [_scalar(1.0), _scalar(3.0)]

    stats = GapStats.of([module_gap(bs, as_, [0.5, 0.5], 1.0,
                                    _scalar(2.0), _scalar(2.0))])

    assert stats.aggregation_gap == pytest.approx(0.2)
    assert stats.aggregation_gap_module_max == pytest.approx(0.2)
    assert stats.client_drift == pytest.approx(0.8)


def test_gap_sums_modules_as_one_ratio_and_reports_the_worst() -> None:
    one = module_gap([_scalar(1.0)], [_scalar(1.0)], [1.0], 1.0,
                     _scalar(0.0), _scalar(0.0))
    exact = module_gap([_scalar(3.0)], [_scalar(1.0)], [1.0], 1.0,
                       _scalar(3.0), _scalar(1.0))

    stats = GapStats.of([one, exact])

    assert stats.aggregation_gap == pytest.approx(1 / math.sqrt(10))
    assert stats.aggregation_gap_module_max == pytest.approx(1.0)
    assert stats.client_drift == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n,d,k,r,residual", [
    (5, 40, 30, 2, None),       # n·r + r < min(d, k): through the QRs
    (30, 20, 24, 2, None),      # more factor columns than rows: dense
    (5, 40, 30, 2, "factored"),
    (5, 40, 30, 2, "dense"),
])
def test_gap_from_factors_equals_the_dense_definition(
        n: int, d: int, k: int, r: int, residual: str | None) -> None:
    bs, as_ = _factors(n, d, k, r, seed=n)
    gen = torch.Generator().manual_seed(7)
    weights = torch.rand(n, generator=gen).tolist()
    weights = [w / sum(weights) for w in weights]
    s = 4.0
    kept_b, kept_a = torch.randn(d, r, generator=gen), \
        torch.randn(r, k, generator=gen)
    kept = s * kept_b.double() @ kept_a.double()
    form = None
    if residual is not None:
        u, v = torch.randn(d, 3, generator=gen), \
            torch.randn(3, k, generator=gen)
        form = {"add_u": u, "add_v": v} if residual == "factored" \
            else {"add": u @ v}
        kept = kept + reconstruct(form).double()

    got = module_gap(bs, as_, weights, s, kept_b, kept_a, form)

    want = dense_gap(bs, as_, weights, s, kept)
    assert got.mean_sq == pytest.approx(want[0], rel=1e-10)
    assert got.gap_sq == pytest.approx(want[1], rel=1e-10)
    assert got.spread_sq == pytest.approx(want[2], rel=1e-8)


def test_gap_of_an_exact_merge_is_at_float64_precision() -> None:
    """Clients share A (RoLoRA's B phase): averaging B in float64 is
    exact, and the gap reads float64 round-off, not ~1e-8."""
    bs, as_ = _factors(50, 64, 48, 2)
    a = as_[0]
    weights = [1 / 50] * 50
    b_mean = sum(w * b.double() for w, b in zip(weights, bs, strict=True))
    assert isinstance(b_mean, torch.Tensor)

    stats = GapStats.of([module_gap(bs, [a] * 50, weights, 8.0, b_mean,
                                    a)])

    assert stats.aggregation_gap is not None
    assert stats.aggregation_gap < 1e-12


def test_gap_is_none_without_an_update_to_compare() -> None:
    zero = torch.zeros(2, 2, dtype=torch.float64)

    stats = GapStats.of([module_gap([zero, zero], [zero, zero], [0.5, 0.5],
                                    1.0, zero, zero)])

    assert stats.record() == {"aggregation_gap": None,
                              "aggregation_gap_module_max": None,
                              "client_drift": None}
