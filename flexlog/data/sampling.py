"""De-duplication and the two limited-training-set strategies of the FlexLog protocol."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from flexlog.data.records import LogSequence


def unique_by_events(sequences: Iterable[LogSequence]) -> list[LogSequence]:
    """The first sequence of each distinct event tuple, in input order."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for seq in sequences:
        if seq.events not in seen:
            seen.add(seq.events)
            out.append(seq)
    return out


def dedup_against(
    train: Iterable[LogSequence], test: Sequence[LogSequence]
) -> tuple[list[LogSequence], float]:
    """Remove from ``test`` every sequence whose events also occur in ``train``.

    Returns the kept test sequences and the duplication ratio (removed / original test size).
    """
    seen = {seq.events for seq in train}
    kept = [seq for seq in test if seq.events not in seen]
    ratio = (len(test) - len(kept)) / len(test) if test else 0.0
    return kept, ratio


def limited_balanced(
    train: Sequence[LogSequence], per_class: int = 500, seed: int = 0
) -> list[LogSequence]:
    """FlexLog's ADFA strategy: ``per_class`` normal + ``per_class`` anomalous sequences,
    sampled with replacement (the anomalous class is smaller than that on ADFA-U)."""
    if per_class < 1:
        raise ValueError(f"per_class must be positive, got {per_class}")
    rng = random.Random(seed)
    out = []
    for label in (0, 1):
        pool = [s for s in train if s.label == label]
        if not pool:
            raise ValueError(f"no training sequences with label {label} to sample from")
        out.extend(rng.choices(pool, k=per_class))
    rng.shuffle(out)
    return out


def limited_fraction(
    train: Sequence[LogSequence], normal_fraction: float = 0.2, seed: int = 0
) -> list[LogSequence]:
    """FlexLog's strategy for the other datasets: every unique anomaly and a random
    ``normal_fraction`` of the unique normal sequences."""
    if not 0 < normal_fraction <= 1:
        raise ValueError(f"normal_fraction must be in (0, 1], got {normal_fraction}")
    rng = random.Random(seed)
    unique = unique_by_events(train)
    anomalies = [s for s in unique if s.label == 1]
    normals = [s for s in unique if s.label == 0]
    if not anomalies or not normals:
        raise ValueError("the training set needs unique sequences of both labels")
    k = max(1, round(len(normals) * normal_fraction))
    out = anomalies + rng.sample(normals, k)
    rng.shuffle(out)
    return out
