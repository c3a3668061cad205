"""GLUE metrics against hand-computed values."""

from __future__ import annotations

import random

import pytest

from federatedscope_rolora.training.metrics import compute_metrics

ALL = ("acc", "f1", "mcc")


def test_mixed_binary_case() -> None:
    # TP=2 (0, 4), FP=1 (1), FN=1 (3), TN=1 (2).
    predictions = [1, 1, 0, 0, 1]
    labels = [1, 0, 0, 1, 1]

    result = compute_metrics(predictions, labels, ALL)

    assert result["acc"] == pytest.approx(3 / 5)
    assert result["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 1/6
    assert result["mcc"] == pytest.approx(1 / 6)


def test_perfect_and_inverted() -> None:
    labels = [0, 1, 1, 0, 1]
    inverted = [1 - y for y in labels]

    perfect = compute_metrics(labels, labels, ALL)
    wrong = compute_metrics(inverted, labels, ALL)

    assert perfect == {"acc": 1.0, "f1": 1.0, "mcc": 1.0}
    assert wrong["acc"] == 0.0
    assert wrong["f1"] == 0.0
    assert wrong["mcc"] == pytest.approx(-1.0)


def test_constant_prediction_gives_zero_mcc_and_f1() -> None:
    labels = [0, 1, 0, 0]

    result = compute_metrics([0, 0, 0, 0], labels, ALL)

    assert result == {"acc": 0.75, "f1": 0.0, "mcc": 0.0}


def test_no_positives_anywhere() -> None:
    result = compute_metrics([0, 0], [0, 0], ("f1", "mcc", "acc"))

    assert result == {"f1": 0.0, "mcc": 0.0, "acc": 1.0}
    assert list(result) == ["f1", "mcc", "acc"]


def test_multiclass_mcc_and_accuracy() -> None:
    # Gorodkin: c=3 correct of s=4; predicted counts 2,1,1; true 1,2,1.
    # (3*4 - (2*1 + 1*2 + 1*1)) / sqrt((16 - 6) * (16 - 6)) = 7/10.
    result = compute_metrics([0, 1, 2, 0], [0, 1, 2, 1], ("acc", "mcc"))

    assert result["acc"] == pytest.approx(0.75)
    assert result["mcc"] == pytest.approx(0.7)


def test_macro_f1_weighs_every_class_alike() -> None:
    # class 0: TP 2, FP 1, FN 0 -> 4/5; class 1: TP 1, FP 0, FN 2 -> 2/4;
    # class 2: never true, predicted once -> 0; class 3 appears nowhere.
    result = compute_metrics([0, 0, 1, 0, 2], [0, 0, 1, 1, 1],
                             ("f1_macro", "acc"))

    assert result["f1_macro"] == pytest.approx((4 / 5 + 2 / 4 + 0) / 3)
    assert result["acc"] == pytest.approx(3 / 5)
    # the majority label always: accuracy its share, macro F1 far lower
    always = compute_metrics([0] * 10, [0] * 9 + [1], ("acc", "f1_macro"))
    assert always == {"acc": 0.9,
                      "f1_macro": pytest.approx((18 / 19 + 0) / 2)}


def test_macro_f1_matches_scikit_learn() -> None:
    metrics = pytest.importorskip(
        "sklearn.metrics",
        reason="scikit-learn is not installed (it is only the reference)")
    rng = random.Random(3)
    for _ in range(20):
        labels = [rng.randrange(4) for _ in range(30)]
        predictions = [rng.randrange(4) for _ in range(30)]
        want = metrics.f1_score(labels, predictions, average="macro")
        got = compute_metrics(predictions, labels, ("f1_macro",))
        assert got["f1_macro"] == pytest.approx(want)


def test_values_are_plain_floats() -> None:
    result = compute_metrics([1, 0], [1, 1], ALL)

    assert all(type(value) is float for value in result.values())
    assert result["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("predictions", "labels", "names", "message"),
    [
        ([1], [1], ("acc", "auc"), "unknown metric.*auc"),
        ([1, 0], [1], ("acc",), "2 predictions for 1 labels"),
        ([], [], ("acc",), "zero examples"),
    ],
)
def test_bad_input(
    predictions: list[int],
    labels: list[int],
    names: tuple[str, ...],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(predictions, labels, names)
