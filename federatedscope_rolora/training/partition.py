"""Seeded splits of a data set over clients, as FederatedScope makes them.

``iid`` shuffles and deals equal shares; ``lda`` is FederatedScope's
Dirichlet label skew (``dirichlet_distribution_noniid_slice``): for each
label, the share of each client is drawn from Dir(alpha), so a small alpha
gives each client few labels. Every function takes its own seed and uses a
private generator, never numpy's global state, so a partition does not
depend on what ran before it. Each client's indices come back sorted; the
local loop shuffles them itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Dirichlet draws tried before giving up on min_size. FederatedScope loops
# forever; a clear error is better, and a feasible setting needs far fewer.
_MAX_DIRICHLET_TRIES = 1000

SPLITTERS = ("iid", "lda")


def check_clients(num_examples: int, num_clients: int) -> None:
    """ValueError unless every one of ``num_clients`` clients can get at
    least one of ``num_examples`` examples."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    if num_clients > num_examples:
        raise ValueError(
            f"num_clients ({num_clients}) exceeds the number of examples "
            f"({num_examples}); every client needs at least one"
        )


def subsample_indices(
    num_examples: int, size: int | None, seed: int
) -> list[int]:
    """Sorted indices of a seeded sample of ``size`` examples (all of them
    when ``size`` is None or not smaller than ``num_examples``)."""
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if size is not None and size < 0:
        raise ValueError(f"subsample size must be >= 0, got {size}")
    if size is None or size >= num_examples:
        return list(range(num_examples))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(num_examples, size=size, replace=False)
    return sorted(chosen.tolist())


def partition_iid(
    num_examples: int, num_clients: int, seed: int
) -> list[list[int]]:
    """Shuffle, then deal shares whose sizes differ by at most one."""
    check_clients(num_examples, num_clients)
    order = np.random.default_rng(seed).permutation(num_examples)
    return [
        sorted(part.tolist()) for part in np.array_split(order, num_clients)
    ]


def _cut(
    members: np.ndarray, shares: np.ndarray, clients: list[list[int]]
) -> None:
    """Deal ``members`` (in order) at the cumulative ``shares``."""
    cuts = (np.cumsum(shares) * len(members)).astype(int)[:-1]
    for client, part in zip(clients, np.split(members, cuts), strict=True):
        client.extend(part.tolist())


def _dirichlet_draw(
    by_label: list[np.ndarray],
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
) -> tuple[list[list[int]], list[np.ndarray]]:
    """One draw of FederatedScope's label-skew split: each label's examples,
    shuffled, cut at the cumulative Dir(alpha) proportions (returned)."""
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    drawn = []
    for members in by_label:
        shuffled = rng.permutation(members)
        shares = rng.dirichlet(np.full(num_clients, alpha))
        _cut(shuffled, shares, clients)
        drawn.append(shares)
    return clients, drawn


def partition_dirichlet(
    labels: Sequence[int],
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
) -> list[list[int]]:
    """Dirichlet label skew; redraws until every client has ``min_size``
    examples, and raises after a bounded number of draws."""
    return dirichlet_with_shares(labels, num_clients, alpha, seed,
                                 min_size)[0]


def dirichlet_with_shares(
    labels: Sequence[int],
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
) -> tuple[list[list[int]], dict[int, np.ndarray]]:
    """``partition_dirichlet`` and the Dirichlet proportions of the
    accepted draw, by label value."""
    check_clients(len(labels), num_clients)
    if not alpha > 0:
        raise ValueError(f"lda alpha must be > 0, got {alpha}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if num_clients * min_size >= len(labels):
        # FederatedScope's lda splitter asserts more, and so does this
        # one, so that a split one runner refuses the other refuses too
        raise ValueError(
            f"an lda split of {num_clients} clients with at least "
            f"{min_size} examples each needs more than "
            f"{num_clients * min_size} examples, and there are "
            f"{len(labels)}"
        )
    label_array = np.asarray(labels)
    by_label = [
        np.flatnonzero(label_array == value)
        for value in np.unique(label_array)
    ]
    values = np.unique(label_array).tolist()
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_DIRICHLET_TRIES):
        clients, shares = _dirichlet_draw(by_label, num_clients, alpha, rng)
        if min(len(client) for client in clients) >= min_size:
            return ([sorted(client) for client in clients],
                    dict(zip(values, shares, strict=True)))
    raise ValueError(
        f"lda split gave some of the {num_clients} clients fewer than "
        f"{min_size} examples in {_MAX_DIRICHLET_TRIES} draws (alpha "
        f"{alpha}, {len(labels)} examples); raise alpha or use fewer clients"
    )


def partition(
    labels: Sequence[int],
    num_clients: int,
    splitter: str,
    seed: int,
    alpha: float | None = None,
) -> list[list[int]]:
    """Client index lists for FederatedScope's ``data.splitter``: 'iid'
    (alpha unused) or 'lda' (alpha required)."""
    if splitter == "iid":
        return partition_iid(len(labels), num_clients, seed)
    if splitter == "lda":
        if alpha is None:
            raise ValueError(
                "splitter 'lda' needs alpha (data.splitter_args alpha)"
            )
        return partition_dirichlet(labels, num_clients, alpha, seed)
    raise ValueError(
        f"unknown splitter {splitter!r}; known: {', '.join(SPLITTERS)}"
    )


def deal_like_train(
    labels: Sequence[int],
    num_clients: int,
    splitter: str,
    seed: int,
    shares: dict[int, np.ndarray] | None = None,
) -> list[list[int]]:
    """Test rows per client, dealt as the train rows were: ``iid`` equal
    shares; ``lda`` each label's rows (shuffled) cut at the Dirichlet
    proportions the train split drew for that label (``shares``, from
    ``dirichlet_with_shares``), so a client tested on a share of labels
    like its own. A client may get no test row (a tiny test set)."""
    if splitter == "iid":
        order = np.random.default_rng(seed).permutation(len(labels))
        return [sorted(part.tolist())
                for part in np.array_split(order, num_clients)]
    if splitter != "lda" or shares is None:
        raise ValueError(f"cannot deal test rows like splitter "
                         f"{splitter!r} without its shares")
    rng = np.random.default_rng(seed)
    label_array = np.asarray(labels)
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    equal = np.full(num_clients, 1.0 / num_clients)
    for value in np.unique(label_array).tolist():
        members = rng.permutation(np.flatnonzero(label_array == value))
        _cut(members, shares.get(value, equal), clients)
    return [sorted(client) for client in clients]
