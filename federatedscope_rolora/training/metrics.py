"""GLUE metrics: accuracy, F1 of the positive class and Matthews
correlation, and for your own data macro-averaged F1, in plain Python so
evaluation needs no scikit-learn.

They agree with scikit-learn's ``accuracy_score``, ``f1_score`` (binary,
``pos_label=1``; ``average="macro"``) and ``matthews_corrcoef``,
including its convention of 0.0 where a ratio is 0/0 (no positives at
all; a constant prediction).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    hits = sum(p == y for p, y in zip(predictions, labels, strict=True))
    return hits / len(labels)


def f1_positive(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of class 1 (MRPC: paraphrase, QQP: duplicate), as GLUE reports."""
    pairs = list(zip(predictions, labels, strict=True))
    true_pos = sum(p == 1 and y == 1 for p, y in pairs)
    false_pos = sum(p == 1 and y != 1 for p, y in pairs)
    false_neg = sum(p != 1 and y == 1 for p, y in pairs)
    denominator = 2 * true_pos + false_pos + false_neg
    return 2 * true_pos / denominator if denominator else 0.0


def f1_macro(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """The unweighted mean of each class's F1, over the classes that are
    predicted or true (scikit-learn's ``average="macro"``): a rare class
    counts as much as a common one, where accuracy can be high by always
    predicting the majority."""
    pairs = list(zip(predictions, labels, strict=True))
    classes = sorted({p for p, _ in pairs} | {y for _, y in pairs})
    scores = []
    for k in classes:
        true_pos = sum(p == k and y == k for p, y in pairs)
        wrong = sum((p == k) != (y == k) for p, y in pairs)
        scores.append(2 * true_pos / (2 * true_pos + wrong))
    return sum(scores) / len(scores)


def matthews(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation, multiclass form (Gorodkin 2004), which is the
    usual binary formula for two classes."""
    total = len(labels)
    correct = sum(p == y for p, y in zip(predictions, labels, strict=True))
    predicted = Counter(predictions)
    actual = Counter(labels)
    classes = set(predicted) | set(actual)
    agreement = sum(predicted[k] * actual[k] for k in classes)
    numerator = correct * total - agreement
    spread_pred = total**2 - sum(n * n for n in predicted.values())
    spread_true = total**2 - sum(n * n for n in actual.values())
    if spread_pred == 0 or spread_true == 0:
        return 0.0
    return numerator / math.sqrt(spread_pred * spread_true)


_METRICS: dict[str, Callable[[Sequence[int], Sequence[int]], float]] = {
    "acc": accuracy,
    "f1": f1_positive,
    "f1_macro": f1_macro,
    "mcc": matthews,
}


def compute_metrics(
    predictions: Sequence[int],
    labels: Sequence[int],
    names: Sequence[str],
) -> dict[str, float]:
    """The metrics ``names`` (e.g. a TaskSpec's ``metrics``), in order."""
    unknown = [name for name in names if name not in _METRICS]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {', '.join(unknown)}; "
            f"known: {', '.join(_METRICS)}"
        )
    if len(predictions) != len(labels):
        raise ValueError(
            f"{len(predictions)} predictions for {len(labels)} labels"
        )
    if not labels:
        raise ValueError("cannot compute metrics over zero examples")
    preds = [int(p) for p in predictions]
    golds = [int(y) for y in labels]
    return {name: float(_METRICS[name](preds, golds)) for name in names}


def mean_over_clients(scores: Mapping[int, tuple[Mapping[str, float], int]]
                      ) -> dict[str, Any]:
    """Per-client scores ``{client: (metrics, test examples)}`` as
    ``example_weighted`` and ``client_mean`` (plain mean over clients)
    of each metric, with the number of clients and examples scored."""
    total = sum(n for _, n in scores.values())
    names = sorted({name for metrics, _ in scores.values()
                    for name in metrics})
    weighted = {name: sum(m[name] * n for m, n in scores.values()) / total
                for name in names} if total else {}
    plain = {name: sum(m[name] for m, _ in scores.values()) / len(scores)
             for name in names} if scores else {}
    return {"example_weighted": weighted, "client_mean": plain,
            "clients": len(scores), "examples": total}
