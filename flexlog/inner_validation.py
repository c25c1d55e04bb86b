"""ULAD-style inner validation: tune an ensemble for anomalies it has not seen.

The test of an unstable-log detector holds a kind of anomaly that training did not (ADFA-U
holds out an attack type). Tuning weights and thresholds by ordinary cross-validation would
tune them for anomalies the voters have seen. Here each fold holds out one anomaly *group*
(the ``group`` field of the training records; where there is none, clusters of the anomalous
sequences) together with a share of the normal sequences, fits fresh voters on the rest and
scores the held-out part, so every validation score is out-of-fold and out-of-group. The
validation data are then re-weighted to the normal:anomalous ratio expected in deployment
before a rule is fitted on them (:func:`fit_rule`).

Identical sequences always fall in the same fold (a training set sampled with replacement
repeats them), and each distinct sequence is validated once, as the ULAD test set is
de-duplicated against training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from flexlog.data.records import LogSequence
from flexlog.ensemble import VotingEnsemble, voter_scores
from flexlog.thresholds import best_f1_threshold, rate_weights
from flexlog.vote_rules import RULES, MajorityRule, StackedRule, VoteRule, WeightedRule
from flexlog.voters.base import FeatureMemo

#: Fewest anomaly groups a group-holdout validation needs; with fewer, clusters are used.
MIN_GROUPS = 2
MAX_FOLDS = 8
#: Inverse regularization strength of the stacked rule's logistic combiner.
STACKING_C = 0.1


@dataclass
class InnerValidation:
    """Out-of-fold scores of every voter on the distinct training sequences."""

    scores: dict[str, np.ndarray]
    y: np.ndarray
    folds: np.ndarray
    scheme: str
    fold_names: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "scheme": self.scheme,
            "folds": self.fold_names,
            "sequences": len(self.y),
            "anomalous": int(self.y.sum()),
        }


def anomaly_groups(
    sequences: Sequence[LogSequence], *, seed: int = 0, max_folds: int = MAX_FOLDS
) -> tuple[np.ndarray, str, list[str]]:
    """A fold index per anomalous sequence (-1 for normal ones), how they were formed, and
    the folds' names.

    The records' ``group`` field when the anomalous sequences carry at least two groups
    (groups beyond ``max_folds`` share folds); otherwise k-means clusters of their
    template-count vectors; with too few distinct anomalies for that, random folds.
    """
    anomalous = [i for i, s in enumerate(sequences) if s.label == 1]
    fold = np.full(len(sequences), -1, dtype=np.int64)
    if not anomalous:
        raise ValueError("training needs anomalous sequences (label 1) to validate on")
    missing = [sequences[i].id for i in anomalous if sequences[i].group is None]
    names = sorted({sequences[i].group for i in anomalous if sequences[i].group is not None})
    if not missing and len(names) >= MIN_GROUPS:
        index = {g: k % max_folds for k, g in enumerate(names)}
        for i in anomalous:
            fold[i] = index[sequences[i].group]
        labels = [
            "+".join(g for g in names if index[g] == k) for k in range(min(len(names), max_folds))
        ]
        return fold, f"group holdout ({len(names)} groups)", labels
    distinct = {sequences[i].events for i in anomalous}
    k = min(5, len(distinct))
    if k < MIN_GROUPS:
        raise ValueError(
            "inner validation needs at least two distinct anomalous sequences "
            f"(got {len(distinct)})"
        )
    from sklearn.cluster import KMeans

    from flexlog.features import TemplateCounter

    counter = TemplateCounter(scaling="l1").fit([sequences[i].events for i in anomalous])
    M = counter.transform([sequences[i].events for i in anomalous])
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(M)
    sizes = np.bincount(km.labels_, minlength=k)
    why = "no group field" if missing or not names else "a single group"
    if (sizes < 2).sum() > k // 2:
        rng = np.random.default_rng(seed)
        fold[anomalous] = rng.permutation(len(anomalous)) % k
        return (
            fold,
            f"random folds ({k}; {why}, too few anomalies to cluster)",
            [f"fold {j}" for j in range(k)],
        )
    fold[anomalous] = km.labels_
    return fold, f"clusters of the anomalies ({k}; {why})", [f"cluster {j}" for j in range(k)]


def out_of_fold_scores(
    make_ensemble: Callable[[], VotingEnsemble],
    sequences: Sequence[LogSequence],
    *,
    templates: Mapping[str, str] | None = None,
    seed: int = 0,
    soft: bool = True,
    progress: bool = False,
) -> InnerValidation:
    """Fit a fresh ensemble per fold (one anomaly group and a share of the normal sequences
    held out) and score the held-out distinct sequences."""
    from tqdm.auto import tqdm

    labels = np.array([s.label for s in sequences], dtype=np.int64)
    group_fold, scheme, fold_names = anomaly_groups(sequences, seed=seed)
    k = len(fold_names)
    # each distinct sequence once; its fold: its group's for anomalies, a random one for normals
    first: dict[tuple[str, ...], int] = {}
    for i, s in enumerate(sequences):
        first.setdefault(s.events, i)
    distinct = list(first.values())
    rng = np.random.default_rng(seed)
    fold_of_key: dict[tuple[str, ...], int] = {}
    normal_folds = rng.permutation(len(distinct)) % k
    for j, i in enumerate(distinct):
        seq = sequences[i]
        fold_of_key[seq.events] = group_fold[i] if labels[i] == 1 else int(normal_folds[j])
    # a sequence labelled both ways keeps its first label; it is validated once
    row_fold = np.array([fold_of_key[sequences[i].events] for i in distinct])
    y = labels[distinct]
    names: list[str] | None = None
    scores: dict[str, np.ndarray] = {}
    for f in tqdm(range(k), desc="inner validation", disable=not progress):
        train = [s for s in sequences if fold_of_key[s.events] != f]
        held = [j for j in range(len(distinct)) if row_fold[j] == f]
        ytrain = [s.label for s in train]
        if not held or len(set(ytrain)) < 2:
            continue
        ens = make_ensemble()
        ens.fit([s.events for s in train], ytrain, templates=templates)
        batch = FeatureMemo([sequences[distinct[j]].events for j in held])
        names = ens.names
        for name, voter in ens.voters:
            col = scores.setdefault(name, np.full(len(distinct), np.nan))
            col[held] = voter_scores(voter, batch, soft)
    if names is None:
        raise ValueError("inner validation found no fold with both classes to train on")
    scored = ~np.isnan(scores[names[0]])
    return InnerValidation(
        {n: v[scored] for n, v in scores.items()}, y[scored], row_fold[scored], scheme, fold_names
    )


def fit_rule(
    kind: str,
    validation: InnerValidation,
    *,
    anomaly_rate: float | None = None,
    weights: Mapping[str, float] | None = None,
) -> tuple[VoteRule, dict]:
    """Fit the vote rule ``kind`` on out-of-fold scores re-weighted to ``anomaly_rate``:
    per-voter thresholds for every rule but ``majority`` (the paper's, kept as published);
    for ``weighted``, voter weights (each voter's average precision above chance, unless
    ``weights`` are given) and the cut on the weighted mean; for ``stacked``, a logistic
    combiner and its cut. Returns the rule and a report for the manifest."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, f1_score

    from flexlog.evaluate import scores

    if kind not in RULES:
        raise ValueError(f"vote rule must be one of {', '.join(RULES)}, got {kind!r}")
    y = validation.y
    w = rate_weights(y, anomaly_rate)
    names = list(validation.scores)
    S = np.column_stack([validation.scores[n] for n in names])
    report: dict = {"validation": validation.to_json(), "anomaly_rate": anomaly_rate}
    per_voter = {}
    thresholds = {}
    for j, n in enumerate(names):
        cut, f1 = best_f1_threshold(S[:, j], y, sample_weight=w)
        ap = float(average_precision_score(y, S[:, j], sample_weight=w))
        thresholds[n] = min(max(cut, 0.0), 1.0)
        per_voter[n] = {"threshold": thresholds[n], "f1": f1, "average_precision": ap}
    report["voters"] = per_voter
    if kind == "majority":
        rule: VoteRule = MajorityRule()
    elif kind == "weighted":
        base = float(np.average(y, weights=w))
        if weights is None:
            weights = {n: max(per_voter[n]["average_precision"] - base, 0.0) for n in names}
            if not any(v > 0 for v in weights.values()):
                weights = dict.fromkeys(names, 1.0)
        total = sum(weights.get(n, 0.0) for n in names) or 1.0
        wts = {n: weights.get(n, 0.0) / total for n in names}
        mean = S @ np.array([wts[n] for n in names]) / (sum(wts.values()) or 1.0)
        cut, _ = best_f1_threshold(mean, y, sample_weight=w)
        rule = WeightedRule(
            thresholds=thresholds,
            weights=wts,
            threshold=min(max(cut, 0.0), 0.999),
            default_weight=float(np.median(list(wts.values()))),
        )
    else:
        # log-odds of the voters, a strongly regularized combiner: the validation set is
        # small and the voters are correlated
        link = StackedRule(coef=dict.fromkeys(names, 1.0))
        L = link.transform(S)
        lr = LogisticRegression(C=STACKING_C, max_iter=1000).fit(L, y, sample_weight=w)
        z = lr.decision_function(L)
        cut, _ = best_f1_threshold(z, y, sample_weight=w)
        rule = StackedRule(
            thresholds=thresholds,
            coef={n: float(c) for n, c in zip(names, lr.coef_[0], strict=True)},
            bias=float(lr.intercept_[0] - cut),
            fill={n: float(np.average(S[:, j], weights=w)) for j, n in enumerate(names)},
            link=link.link,
            smoothing=link.smoothing,
        )
    pred = rule.combine(validation.scores)
    # the rule's F1 on the validation data, at the deployment's rate and as it is
    report["validation_f1"] = float(f1_score(y, pred, sample_weight=w, zero_division=0.0))
    report["validation_scores"] = scores(y, pred)
    return rule, report


__all__ = ["InnerValidation", "anomaly_groups", "fit_rule", "out_of_fold_scores"]
