"""The one threshold search of flexlog: the cut on anomaly scores with the best F1 on labelled
validation data (never the test set).

Voters (the neural voters' reconstruction or next-event scores, the LLM's log-probability
margin) and vote rules (per-voter thresholds, the weighted and stacked combiners) all tune
their cut here. ``sample_weight`` re-weights the validation data to the normal:anomalous ratio
expected in deployment, so a cut tuned on a balanced set does not flood an imbalanced one with
false alarms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def best_f1_threshold(
    scores: Sequence[float],
    y: Sequence[int],
    *,
    sample_weight: Sequence[float] | None = None,
    prefer: float | None = None,
) -> tuple[float, float]:
    """The threshold (anomalous when ``score > threshold``) with the best F1 of the anomalous
    class, and that F1.

    Candidates are the midpoints between neighbouring distinct scores, one below the lowest
    (everything anomalous) and ``prefer`` when given. Among equally good cuts, the one nearest
    ``prefer`` wins, or without it the highest (fewest false alarms). With no anomalous
    example, the highest score is returned with F1 0.
    """
    s = np.asarray(scores, dtype=float)
    t = np.asarray(y, dtype=np.int64)
    if s.shape != t.shape or s.ndim != 1:
        raise ValueError(f"need as many labels as scores, got {t.size} and {s.size}")
    if s.size == 0:
        raise ValueError("no scores to choose a threshold from")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    w = np.ones_like(s) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    if w.shape != s.shape or (w < 0).any():
        raise ValueError("sample_weight must be one non-negative weight per score")
    positives = float(w[t == 1].sum())
    if positives <= 0:
        return float(s.max()), 0.0
    # distinct scores, highest first; predicting "score >= v_k" for each
    values, inverse = np.unique(-s, return_inverse=True)
    tp = np.cumsum(np.bincount(inverse, weights=w * (t == 1), minlength=len(values)))
    fp = np.cumsum(np.bincount(inverse, weights=w * (t == 0), minlength=len(values)))
    f1 = 2 * tp / (2 * tp + fp + (positives - tp))
    v = -values
    cuts = np.concatenate([(v[:-1] + v[1:]) / 2, [v[-1] - 1.0]])
    if prefer is not None:
        pred = s > prefer
        tp_p = float(w[pred & (t == 1)].sum())
        fp_p = float(w[pred & (t == 0)].sum())
        f1_p = 2 * tp_p / (2 * tp_p + fp_p + (positives - tp_p))
        cuts = np.append(cuts, float(prefer))
        f1 = np.append(f1, f1_p)
    top = f1.max()
    best = np.flatnonzero(f1 >= top - 1e-12)
    if prefer is not None:
        choice = best[np.argmin(np.abs(cuts[best] - prefer))]
    else:
        choice = best[np.argmax(cuts[best])]
    return float(cuts[choice]), float(f1[choice])


def rate_weights(y: Sequence[int], anomaly_rate: float | None) -> np.ndarray | None:
    """Sample weights that make labelled data ``y`` look as if ``anomaly_rate`` of it were
    anomalous (None: leave it as it is)."""
    if anomaly_rate is None:
        return None
    if not 0 < anomaly_rate < 1:
        raise ValueError(f"anomaly_rate must be in (0, 1), got {anomaly_rate!r}")
    t = np.asarray(y, dtype=np.int64)
    n_pos, n_neg = int((t == 1).sum()), int((t == 0).sum())
    if not n_pos or not n_neg:
        return None
    return np.where(t == 1, anomaly_rate / n_pos, (1 - anomaly_rate) / n_neg) * len(t)


__all__ = ["best_f1_threshold", "rate_weights"]
