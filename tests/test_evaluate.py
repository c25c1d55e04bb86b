"""Metrics and the statistics used to compare detectors."""

from __future__ import annotations

import pytest

from flexlog.evaluate import confusion, mann_whitney, per_voter_scores, scores


def test_scores_hand_made_example() -> None:
    y_true = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    y_pred = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    s = scores(y_true, y_pred)
    assert (s["tp"], s["fp"], s["fn"], s["tn"], s["n"]) == (3, 1, 1, 5, 10)
    assert s["precision"] == pytest.approx(0.75)
    assert s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx(0.75)


def test_scores_uneven_precision_recall() -> None:
    s = scores([1, 1, 1, 1, 0], [1, 0, 0, 0, 0])
    assert s["precision"] == 1.0 and s["recall"] == 0.25
    assert s["f1"] == pytest.approx(2 * 1.0 * 0.25 / 1.25)


def test_scores_undefined_are_zero() -> None:
    s = scores([0, 0, 0], [0, 0, 0])
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)
    assert s["tn"] == 3


def test_confusion_length_mismatch() -> None:
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        confusion([0, 1, 1], [0, 1])


def test_per_voter_scores() -> None:
    y = [1, 0, 1, 0]
    out = per_voter_scores(y, {"a": [1, 0, 1, 0], "b": [0, 0, 0, 0]}, [1, 0, 0, 0])
    assert list(out) == ["ensemble", "a", "b"]
    assert out["a"]["f1"] == 1.0 and out["b"]["f1"] == 0.0
    assert out["ensemble"]["recall"] == 0.5


def test_mann_whitney_identical_samples() -> None:
    res = mann_whitney([0.8] * 5, [0.8] * 5)
    assert res == {"u": 12.5, "p": 1.0, "a12": 0.5}
    same = mann_whitney([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert same["p"] == pytest.approx(1.0) and same["a12"] == pytest.approx(0.5)


def test_mann_whitney_separated_samples() -> None:
    high = [0.91, 0.93, 0.95, 0.92, 0.94]
    low = [0.61, 0.65, 0.60, 0.63, 0.62]
    res = mann_whitney(high, low)
    assert res["p"] < 0.05
    assert res["a12"] == 1.0 and res["u"] == 25.0
    assert mann_whitney(low, high)["a12"] == 0.0


def test_mann_whitney_needs_values() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        mann_whitney([], [0.5])
