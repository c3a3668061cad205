"""Client partitions: every example goes to exactly one client, splits are
seeded, label skew follows alpha, and bad arguments name the culprit."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federatedscope_rolora.training.partition import (
    deal_like_train,
    dirichlet_with_shares,
    partition,
    partition_dirichlet,
    partition_iid,
    subsample_indices,
)


def _assert_exact_cover(parts: list[list[int]], num_examples: int) -> None:
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(num_examples))
    assert all(part == sorted(part) for part in parts)


# --- subsample -------------------------------------------------------------


def test_subsample_all_when_size_none_or_large() -> None:
    assert subsample_indices(5, None, seed=0) == [0, 1, 2, 3, 4]
    assert subsample_indices(5, 5, seed=0) == [0, 1, 2, 3, 4]
    assert subsample_indices(5, 9, seed=0) == [0, 1, 2, 3, 4]


def test_subsample_is_seeded_sorted_and_unique() -> None:
    first = subsample_indices(1000, 50, seed=7)
    again = subsample_indices(1000, 50, seed=7)
    other = subsample_indices(1000, 50, seed=8)

    assert first == again
    assert first != other
    assert first == sorted(set(first))
    assert len(first) == 50
    assert all(0 <= i < 1000 for i in first)


def test_subsample_rejects_negative_size() -> None:
    with pytest.raises(ValueError, match="size must be >= 0, got -1"):
        subsample_indices(10, -1, seed=0)


# --- iid -------------------------------------------------------------------


def test_iid_deals_balanced_shares() -> None:
    parts = partition_iid(10, 3, seed=0)

    _assert_exact_cover(parts, 10)
    assert sorted(len(part) for part in parts) == [3, 3, 4]
    assert parts == partition_iid(10, 3, seed=0)
    assert parts != partition_iid(10, 3, seed=1)


@settings(max_examples=60, deadline=None)
@given(
    num_examples=st.integers(1, 300),
    num_clients=st.integers(1, 40),
    seed=st.integers(0, 2**31),
)
def test_iid_exact_cover_property(
    num_examples: int, num_clients: int, seed: int
) -> None:
    num_clients = min(num_clients, num_examples)

    parts = partition_iid(num_examples, num_clients, seed)

    assert len(parts) == num_clients
    _assert_exact_cover(parts, num_examples)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


# --- lda -------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=20, max_size=200),
    num_clients=st.integers(1, 5),
    alpha=st.sampled_from([0.5, 1.0, 10.0]),
    seed=st.integers(0, 2**31),
)
def test_lda_exact_cover_property(
    labels: list[int], num_clients: int, alpha: float, seed: int
) -> None:
    parts = partition_dirichlet(labels, num_clients, alpha, seed)

    assert len(parts) == num_clients
    _assert_exact_cover(parts, len(labels))
    assert min(len(part) for part in parts) >= 1


def _dominant_share(parts: list[list[int]], labels: list[int]) -> float:
    """Mean, over clients, of the share of a client's examples that carry
    its most common label: 1/num_labels when mixed, 1 when one-label."""
    shares = [
        Counter(labels[i] for i in part).most_common(1)[0][1] / len(part)
        for part in parts
    ]
    return sum(shares) / len(shares)


def test_lda_small_alpha_skews_labels() -> None:
    labels = [i % 10 for i in range(2000)]

    skewed = partition(labels, 10, "lda", seed=0, alpha=0.1)
    mixed = partition(labels, 10, "lda", seed=0, alpha=100.0)

    assert _dominant_share(skewed, labels) > 0.4
    assert _dominant_share(mixed, labels) < 0.2
    assert partition(labels, 10, "lda", seed=0, alpha=0.1) == skewed


def test_lda_min_size_respected() -> None:
    labels = [0] * 60 + [1] * 60

    parts = partition_dirichlet(labels, 4, alpha=1.0, seed=2, min_size=10)

    assert min(len(part) for part in parts) >= 10
    _assert_exact_cover(parts, 120)


def test_lda_gives_up_with_clear_error() -> None:
    labels = [0, 1] * 25  # 50 examples, 2 labels, near one-hot shares

    with pytest.raises(ValueError, match=r"fewer than 1 examples.*alpha"):
        partition_dirichlet(labels, 40, alpha=0.01, seed=0)


def test_lda_needs_more_examples_than_clients() -> None:
    """As FederatedScope's lda splitter asserts: one example a client is
    refused, whatever alpha (an iid split deals it)."""
    labels = [0, 1] * 3

    with pytest.raises(ValueError, match="needs more than 6 examples, and "
                       "there are 6"):
        partition_dirichlet(labels, 6, alpha=100.0, seed=0)
    assert len(partition(labels, 6, "iid", seed=0)) == 6


def test_lda_labels_need_not_be_contiguous() -> None:
    labels = [3, 7, 7, 3, 42, 42, 3, 7]

    parts = partition_dirichlet(labels, 2, alpha=1.0, seed=0)

    _assert_exact_cover(parts, 8)
    assert Counter(labels[i] for p in parts for i in p) == Counter(labels)


# --- errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_clients": 0, "splitter": "iid"}, "num_clients must be at"),
        ({"num_clients": 9, "splitter": "iid"}, r"num_clients \(9\) exceeds"),
        ({"num_clients": 9, "splitter": "lda", "alpha": 1.0}, r"\(9\)"),
        ({"num_clients": 2, "splitter": "lda"}, "'lda' needs alpha"),
        ({"num_clients": 2, "splitter": "lda", "alpha": 0.0}, "alpha must"),
        ({"num_clients": 2, "splitter": "lda", "alpha": -1.0}, "got -1.0"),
        ({"num_clients": 2, "splitter": "louvain"}, "'louvain'.*iid, lda"),
    ],
)
def test_partition_errors_name_the_culprit(
    kwargs: dict[str, object], message: str
) -> None:
    labels = [0, 1, 0, 1, 0, 1, 0, 1]

    with pytest.raises(ValueError, match=message):
        partition(labels, seed=0, **kwargs)  # type: ignore[arg-type]


def test_partition_iid_ignores_alpha() -> None:
    labels = [0, 1] * 5

    parts = partition(labels, 2, "iid", seed=0, alpha=0.5)

    assert parts == partition_iid(10, 2, seed=0)


def test_test_rows_are_dealt_at_the_train_splits_label_proportions(
) -> None:
    train = [i % 3 for i in range(3000)]
    test = [i % 3 for i in range(900)]
    parts, shares = dirichlet_with_shares(train, 4, 0.3, seed=5)

    dealt = deal_like_train(test, 4, "lda", seed=6, shares=shares)

    assert parts == partition_dirichlet(train, 4, 0.3, seed=5)
    assert sorted(i for part in dealt for i in part) == list(range(900))
    for client in range(4):
        for label in range(3):
            got = sum(1 for i in dealt[client] if test[i] == label) / 300
            assert got == pytest.approx(shares[label][client], abs=0.01)


def test_iid_test_rows_are_dealt_in_equal_shares() -> None:
    dealt = deal_like_train(list(range(10)), 3, "iid", seed=0)

    assert sorted(len(p) for p in dealt) == [3, 3, 4]
    assert sorted(i for p in dealt for i in p) == list(range(10))
