"""Training a detector: its voters on the training set, its vote rule on inner validation.

``majority`` (the paper's rule) needs no tuning. ``weighted`` and ``stacked`` are fitted on
out-of-fold, out-of-group scores (:mod:`flexlog.inner_validation`) at the anomaly rate of
deployment, then the voters are refitted on the whole training set. What was done, including
any fallback, is returned as a report that the bundle manifest records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from flexlog.data.records import LogSequence
from flexlog.detector import Detector, make_detector, make_voters
from flexlog.ensemble import VotingEnsemble
from flexlog.inner_validation import fit_rule, out_of_fold_scores
from flexlog.vote_rules import RULES, MajorityRule, WeightedRule


def training_anomaly_rate(sequences: Sequence[LogSequence]) -> float:
    """The share of anomalous sequences in a labelled training set."""
    labelled = [s.label for s in sequences if s.label is not None]
    return sum(labelled) / len(labelled) if labelled else 0.0


def pool_size(draws: int, distinct: int) -> float | None:
    """How many items a pool holds when ``draws`` draws with replacement gave ``distinct``
    different ones: the N with ``N·(1 - (1 - 1/N)^draws) = distinct`` (the expected number
    of distinct items); None when nothing repeated (the pool could be any size)."""
    if distinct >= draws or distinct < 1:
        return None
    from scipy.optimize import brentq

    def gap(n: float) -> float:
        return n * -np.expm1(draws * np.log1p(-1.0 / n)) - distinct

    if distinct == 1:
        return 1.0
    hi = float(distinct) * 2
    while gap(hi) < 0:
        hi *= 2
    return float(brentq(gap, float(distinct), hi))


def deployment_anomaly_rate(sequences: Sequence[LogSequence]) -> tuple[float, str]:
    """The anomaly rate a training set stands for, and how it was found.

    A limited training set drawn *with replacement* from a larger one (FlexLog's ADFA sets:
    500 normal + 500 anomalous) is balanced by construction, not by the world: its records
    repeat (the same ``id`` more than once). Then the size of each class's pool is estimated
    from how often its ids repeat (:func:`pool_size`) and the pool's rate is returned: the
    full training set's. Otherwise it is the training set's own rate.
    """
    rate = training_anomaly_rate(sequences)
    pools = {}
    for label in (0, 1):
        ids = [s.id for s in sequences if s.label == label]
        if len(set(ids)) == len(ids):
            return rate, "the training set's rate"
        pools[label] = pool_size(len(ids), len(set(ids)))
    if pools[0] is None or pools[1] is None:
        return rate, "the training set's rate"
    estimate = pools[1] / (pools[0] + pools[1])
    return (
        float(estimate),
        "estimated for the set the training set was drawn from with replacement "
        f"(about {pools[0]:.0f} normal and {pools[1]:.0f} anomalous, from repeated ids)",
    )


def check_anomaly_rate(value: object) -> float:
    """``--anomaly-rate``: a number strictly between 0 and 1, or a ValueError naming it."""
    try:
        rate = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"anomaly rate must be a number in (0, 1), got {value!r}") from None
    if not 0 < rate < 1:
        raise ValueError(f"anomaly rate must be in (0, 1), got {value!r}")
    return rate


def train_detector(
    sequences: Sequence[LogSequence],
    voters: Sequence[str],
    *,
    params: Mapping[str, dict] | None = None,
    seed: int | None = 0,
    rule: str = "majority",
    anomaly_rate: float | None = None,
    weights: Mapping[str, float] | None = None,
    templates: Mapping[str, str] | None = None,
    progress: bool = False,
) -> tuple[Detector, dict]:
    """A detector with the named voters fitted on ``sequences`` and combined by ``rule``.

    ``anomaly_rate``: the share of anomalies expected where the detector will run (default:
    :func:`deployment_anomaly_rate`); the weighted and stacked rules are tuned for it. ``weights`` fixes
    the weighted rule's voter weights instead of fitting them. Returns the detector and a
    report of how its rule was chosen.
    """
    if rule not in RULES:
        raise ValueError(f"vote rule must be one of {', '.join(RULES)}, got {rule!r}")
    labels = []
    for seq in sequences:
        if seq.label is None:
            raise ValueError(f"training sequence {seq.id!r} has no label")
        labels.append(seq.label)
    if len(set(labels)) < 2:
        raise ValueError("training needs both normal (0) and anomalous (1) sequences")
    if anomaly_rate is None:
        rate, how = deployment_anomaly_rate(sequences)
    else:
        rate, how = check_anomaly_rate(anomaly_rate), "given"
    if weights is not None:
        unknown = sorted(set(weights) - set(voters))
        if unknown:
            raise ValueError(f"weights name voters not in the ensemble: {unknown}")
    report: dict = {"rule": rule, "anomaly_rate": rate, "anomaly_rate_from": how}
    if rule == "majority" or (rule == "weighted" and weights is not None):
        fitted = (
            MajorityRule() if rule == "majority" else WeightedRule(weights=dict(weights), soft=True)  # type: ignore[arg-type]
        )
        if rule == "weighted":
            report["weights"] = "given"
    else:

        def fresh() -> VotingEnsemble:
            return VotingEnsemble(make_voters(voters, params, seed))

        try:
            validation = out_of_fold_scores(
                fresh, sequences, templates=templates, seed=seed or 0, progress=progress
            )
        except ValueError as exc:
            # documented fallback: too little variety among the anomalies to hold any out
            report.update(rule="majority", fallback=f"{rule} → majority: {exc}")
            fitted = MajorityRule()
        else:
            fitted, fit_report = fit_rule(rule, validation, anomaly_rate=rate)
            report.update(fit_report)
    detector = make_detector(voters, params, seed, fitted)
    detector.fit(sequences, templates=templates, progress=progress)
    return detector, report


__all__ = [
    "check_anomaly_rate",
    "deployment_anomaly_rate",
    "pool_size",
    "train_detector",
    "training_anomaly_rate",
]
