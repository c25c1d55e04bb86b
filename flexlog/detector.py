"""The detection pipeline: cache lookups, de-duplicated misses, one batched call per voter,
majority vote, cache fill, answers in input order."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

from flexlog.data.records import LogSequence
from flexlog.ensemble import VotingEnsemble, majority_vote

if TYPE_CHECKING:
    from flexlog.cache import SequenceCache

LABEL_NAMES = ("normal", "anomalous")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one sequence: its label, every voter's vote, and where it came from.

    ``source`` is "ensemble" (voted now), "cache" (a model answer seen before) or "human"
    (a label corrected through the cache, which wins over the models).
    """

    id: str
    label: int
    votes: dict[str, int] = field(default_factory=dict)
    cached: bool = False
    source: str = "ensemble"

    @property
    def verdict(self) -> str:
        return LABEL_NAMES[self.label]

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "label": self.label,
            "verdict": self.verdict,
            "votes": self.votes,
            "cached": self.cached,
            "source": self.source,
        }


@dataclass
class DetectorStats:
    """Counters over a detector's lifetime, for reports and the service's metrics."""

    sequences: int = 0
    cache_hits: int = 0
    voted: int = 0
    vote_seconds: float = 0.0


class Detector:
    """An ensemble of voters behind an optional sequence cache."""

    def __init__(self, ensemble: VotingEnsemble, cache: SequenceCache | None = None):
        self.ensemble = ensemble
        self.cache = cache
        self.stats = DetectorStats()

    @property
    def voter_names(self) -> list[str]:
        return self.ensemble.names

    def fit(self, sequences: Sequence[LogSequence], *, progress: bool = False) -> Detector:
        """Fit every voter on labelled sequences."""
        labels = []
        for seq in sequences:
            if seq.label is None:
                raise ValueError(f"training sequence {seq.id!r} has no label")
            labels.append(seq.label)
        self.ensemble.fit([s.events for s in sequences], labels, progress=progress)
        return self

    def predict(self, batch: Sequence[LogSequence]) -> list[Verdict]:
        """Answer a batch in input order; each distinct unseen sequence is voted on once."""
        n = len(batch)
        if n == 0:
            return []
        keys = [seq.events for seq in batch]
        entries = self.cache.get_many(keys) if self.cache is not None else [None] * n
        pending: dict[tuple[str, ...], list[int]] = {}
        answers: list[Verdict | None] = [None] * n
        for i, (seq, entry) in enumerate(zip(batch, entries, strict=True)):
            if entry is None:
                pending.setdefault(keys[i], []).append(i)
            else:
                source = "human" if entry.source == "human" else "cache"
                answers[i] = Verdict(seq.id, entry.label, dict(entry.votes), True, source)
        if pending:
            unique = list(pending)
            start = time.perf_counter()
            votes = self.ensemble.votes(unique)
            labels = majority_vote(votes)
            self.stats.vote_seconds += time.perf_counter() - start
            names = list(votes)
            columns = [votes[name].tolist() for name in names]
            fresh = []
            for j, key in enumerate(unique):
                vote = {name: col[j] for name, col in zip(names, columns, strict=True)}
                label = int(labels[j])
                fresh.append((key, label, vote))
                for i in pending[key]:
                    answers[i] = Verdict(batch[i].id, label, vote, False, "ensemble")
            if self.cache is not None:
                self.cache.add_many(fresh)
        self.stats.sequences += n
        self.stats.voted += len(pending)
        self.stats.cache_hits += n - sum(len(v) for v in pending.values())
        return answers  # type: ignore[return-value]

    def predict_stream(
        self, sequences: Iterable[LogSequence], batch_size: int = 4096
    ) -> Iterator[Verdict]:
        """Answer an arbitrarily long stream in batches, keeping memory bounded."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        it = iter(sequences)
        while batch := list(islice(it, batch_size)):
            yield from self.predict(batch)


def make_detector(
    voters: Sequence[str], params: dict[str, dict] | None = None, seed: int | None = 0
) -> Detector:
    """A fresh detector with the named registered voters; each voter that takes a
    ``random_state`` gets ``seed`` unless ``params`` sets it."""
    from flexlog.voters.registry import make_voter, voter_class

    members = []
    for name in voters:
        p = dict((params or {}).get(name, {}))
        if "random_state" in voter_class(name)().get_params() and "random_state" not in p:
            p["random_state"] = seed
        members.append((name, make_voter(name, **p)))
    return Detector(VotingEnsemble(members))
