"""Metrics of a detector on labelled data, and the statistics used to compare detectors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import mannwhitneyu


def confusion(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, int]:
    """tp / fp / fn / tn with 1 = anomalous as the positive class."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"{len(t)} labels but {len(p)} predictions")
    return {
        "tp": int(((t == 1) & (p == 1)).sum()),
        "fp": int(((t == 0) & (p == 1)).sum()),
        "fn": int(((t == 1) & (p == 0)).sum()),
        "tn": int(((t == 0) & (p == 0)).sum()),
    }


def scores(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float | int]:
    """Precision, recall, F1 (0 where undefined) and the confusion counts."""
    c = confusion(y_true, y_pred)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, **c, "n": sum(c.values())}


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Two-sided Mann-Whitney U test of two samples (e.g. F1 over seeds), with the
    Vargha-Delaney A12 effect size (probability that a draw from ``a`` beats one from ``b``)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("both samples need at least one value")
    if np.ptp(np.concatenate([a, b])) == 0:  # all equal: scipy would warn and return nan
        return {"u": float(len(a) * len(b) / 2), "p": 1.0, "a12": 0.5}
    res = mannwhitneyu(a, b, alternative="two-sided")
    u = float(res.statistic)
    return {"u": u, "p": float(res.pvalue), "a12": u / (len(a) * len(b))}


def per_voter_scores(
    y_true: Sequence[int], votes: Mapping[str, Sequence[int]], ensemble: Sequence[int]
) -> dict[str, dict]:
    """Scores of the ensemble and of each voter alone on the same data."""
    out = {"ensemble": scores(y_true, ensemble)}
    for name, v in votes.items():
        out[name] = scores(y_true, v)
    return out
