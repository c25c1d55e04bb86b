"""Retraining a bundle's detector on the human corrections of its cache.

A person corrects an answer through the cache (``flexlog cache update``, ``PUT
/v1/cache/{key}``); the corrected entries (:meth:`flexlog.cache.SequenceCache.corrected`)
should then teach the next detector too, not only the cache. Here:

* :func:`merge_corrections` adds each corrected sequence to the training set with its human
  label, ``repeat`` times (see :data:`DEFAULT_REPEAT`), and relabels training sequences with
  the same events; a correction none of whose events occur in the training data is skipped,
  since no voter could learn anything from it.
* :func:`retrain_detector` trains with the bundle's own configuration (voters, parameters,
  seed, vote rule, anomaly rate: :func:`training_options`), so that the new detector differs
  from the old one by the corrections alone.
* :func:`without_keys` keeps the corrected sequences out of the held-out evaluation, which
  would otherwise reward the new detector for having been shown the answers, and
  :func:`better` says which detector the evaluation favours.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flexlog.cache import CacheEntry, key_of
from flexlog.data.records import LogSequence
from flexlog.detector import Detector
from flexlog.training import check_anomaly_rate, train_detector

#: How many times a correction enters the training set. Measured on ADFA-U (the demo's
#: limited training set): 5 false alarms drawn from the 112 the default bundle raises on 1,500
#: unseen ADFA-LD normal traces, corrected, retrained, 10 draws per weight. Every usable
#: correction turned normal from 1 copy on; 10 copies reached more of what resembles them:
#: near-copies (5 % of events dropped) answered normal 191/196 (knn, dt, slfn; 170 with 1
#: copy), other false alarms of the same model fixed 26 % (21 % with 1 copy), for 1 % fewer
#: unseen attacks caught (388 of 453 against 393; 384 with 30 copies). See the README,
#: "Retraining from corrections".
DEFAULT_REPEAT = 10
#: The anomaly group of anomalous corrections when the training anomalies carry groups, so
#: that inner validation (weighted and stacked rules) keeps holding out one group at a time.
CORRECTION_GROUP = "human-corrections"


@dataclass
class Merge:
    """The training set with the usable corrections merged in, and what happened to each."""

    #: The training sequences, those with corrected events relabelled.
    training: list[LogSequence]
    #: One sequence per usable correction, with its human label.
    corrections: list[LogSequence]
    #: Copies of each correction in :attr:`sequences`.
    repeat: int
    #: Corrections that cannot be used: key → why.
    skipped: dict[str, str] = field(default_factory=dict)
    #: Training sequences per usable correction's key that have its events.
    matched: dict[str, int] = field(default_factory=dict)
    #: Usable corrections with events unseen in training: key → how many such events.
    unknown_events: dict[str, int] = field(default_factory=dict)
    #: Training sequences whose label a correction changed.
    overridden: int = 0

    @property
    def sequences(self) -> list[LogSequence]:
        """What the detector is trained on: the training set and ``repeat`` copies of each
        correction."""
        return self.training + self.corrections * self.repeat

    @property
    def keys(self) -> list[str]:
        """The keys of the usable corrections, in order."""
        return [key_of(s.events) for s in self.corrections]


def _key(events: Sequence[str]) -> str | None:
    try:
        return key_of(events)
    except ValueError:  # events no cache could hold (an empty one, a separator inside)
        return None


def merge_corrections(
    training: Sequence[LogSequence], corrections: Sequence[CacheEntry], *, repeat: int
) -> Merge:
    """Merge human-corrected cache entries into a labelled training set.

    A training sequence with the events of a correction takes its label (counted in
    ``overridden`` when that changes it). A correction none of whose events occur in the
    training set is skipped, with the reason: to the count-vector voters it is all zeros,
    the same as any other sequence of unseen events, whose label it would then decide. One
    with some unseen events is used, and how many it has is counted: voters handle events
    they have not seen.
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an integer >= 1, got {repeat!r}")
    vocabulary = {event for seq in training for event in seq.events}
    anomalous = [s for s in training if s.label == 1]
    grouped = bool(anomalous) and all(s.group is not None for s in anomalous)

    def group_of(label: int, group: str | None) -> str | None:
        """An anomaly's group: its own, else the corrections' (when the others have one)."""
        if label == 0:
            return None
        return group or (CORRECTION_GROUP if grouped else None)

    merge = Merge([], [], repeat)
    usable: dict[str, CacheEntry] = {}
    for entry in corrections:
        unseen = sum(1 for e in entry.events if e not in vocabulary)
        if unseen == len(entry.events):
            merge.skipped[entry.key] = (
                f"none of its {len(entry.events)} events occur in the training data"
            )
            continue
        if unseen:
            merge.unknown_events[entry.key] = unseen
        usable[entry.key] = entry
    groups: dict[str, str | None] = {}
    for seq in training:
        entry = usable.get(_key(seq.events) or "")
        if entry is not None:
            merge.matched[entry.key] = merge.matched.get(entry.key, 0) + 1
            groups.setdefault(entry.key, seq.group)
            if seq.label != entry.label:
                merge.overridden += 1
                seq = LogSequence(seq.id, seq.events, entry.label, group_of(entry.label, seq.group))
        merge.training.append(seq)
    merge.corrections = [
        LogSequence(
            f"correction:{key[:16]}",
            entry.events,
            entry.label,
            group_of(entry.label, groups.get(key)),
        )
        for key, entry in usable.items()
    ]
    return merge


def training_options(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`~flexlog.training.train_detector` that train as the
    bundle of ``manifest`` was trained: its voters and their parameters, the seed, the vote
    rule asked for (with its weights, if they were given rather than fitted) and the anomaly
    rate it was tuned for.

    The anomaly rate is the bundle's (given, or estimated from its training set), not
    estimated again: the repeated corrections would skew an estimate from the merged set,
    and the deployment the rate describes has not changed. ValueError when the manifest does
    not say how the bundle was trained, or the bundle holds a voter added after training.
    """
    config = manifest.get("config")
    if not isinstance(config, Mapping) or not config.get("voters"):
        raise ValueError(
            "the manifest records no training configuration (config.voters); retrain needs a "
            "bundle written by `flexlog train`"
        )
    data = manifest.get("data")
    if isinstance(data, Mapping) and "finetune" in data:
        raise ValueError(
            "its LLM voter was fine-tuned and added after training (data.finetune), which "
            "retrain cannot repeat; retrain the bundle it was added to, then fine-tune again"
        )
    training = config.get("training")
    training = training if isinstance(training, Mapping) else {}
    weights = None
    if training.get("weights") == "given":
        ensemble = manifest.get("ensemble")
        rule = ensemble.get("rule") if isinstance(ensemble, Mapping) else None
        weights = rule.get("weights") if isinstance(rule, Mapping) else None
        if not isinstance(weights, Mapping):
            raise ValueError("the manifest says the weights were given but records none")
        weights = dict(weights)
    try:
        rate: float | None = check_anomaly_rate(training.get("anomaly_rate"))
    except ValueError:
        rate = None  # not recorded: estimated from the merged set, as flexlog train would
    params = config.get("params")
    return {
        "voters": list(config["voters"]),
        "params": dict(params) if isinstance(params, Mapping) else {},
        "seed": config.get("seed", 0),
        "rule": config.get("rule", training.get("rule", "majority")),
        "weights": weights,
        "anomaly_rate": rate,
    }


def retrain_detector(
    manifest: Mapping[str, Any],
    merge: Merge,
    *,
    templates: Mapping[str, str] | None = None,
    progress: bool = False,
) -> tuple[Detector, dict]:
    """A detector trained on ``merge`` with the configuration of the bundle of ``manifest``
    (see :func:`training_options`), and the training report for its manifest."""
    options = training_options(manifest)
    detector, report = train_detector(
        merge.sequences, **options, templates=templates, progress=progress
    )
    before = manifest["config"].get("training") or {}
    if options["anomaly_rate"] is not None and before.get("anomaly_rate_from") != "given":
        report["anomaly_rate_from"] = (
            f"kept from the bundle retrained ({before.get('anomaly_rate_from')})"
        )
    return detector, report


def without_keys(
    sequences: Sequence[LogSequence], keys: Collection[str]
) -> tuple[list[LogSequence], int]:
    """The sequences whose cache key is not among ``keys``, and how many were left out."""
    wanted = set(keys)
    kept = [s for s in sequences if _key(s.events) not in wanted]
    return kept, len(sequences) - len(kept)


def better(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Which scores are better by F1: ``"new"``, ``"old"`` or ``"no change"``."""
    if abs(new["f1"] - old["f1"]) < 1e-12:
        return "no change"
    return "new" if new["f1"] > old["f1"] else "old"


__all__ = [
    "CORRECTION_GROUP",
    "DEFAULT_REPEAT",
    "Merge",
    "better",
    "merge_corrections",
    "retrain_detector",
    "training_options",
    "without_keys",
]
