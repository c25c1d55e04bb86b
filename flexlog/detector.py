"""The detection pipeline: cache lookups, de-duplicated misses, one batched call per voter,
majority vote, cache fill, answers in input order.

By default any voter error propagates. A detector given ``tolerate`` (for a service, usually
:func:`transient_errors`) keeps answering when a voter fails with one of those errors: the
voter abstains, the majority is taken over the others, the answer is marked degraded (and is
not cached), and the voter rests for ``retry_after`` seconds before it is asked again, so a
dead backend costs one timeout per rest period rather than one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

from flexlog.data.records import LogSequence
from flexlog.ensemble import Poll, VotingEnsemble
from flexlog.vote_rules import VoteRule

if TYPE_CHECKING:
    from flexlog.cache import SequenceCache

LABEL_NAMES = ("normal", "anomalous")

logger = logging.getLogger("flexlog.detector")


def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean a voter is unavailable for now rather than wrong: its LLM backend is
    unreachable, timed out or answered garbage (BackendError), or a connection was lost."""
    from flexlog.llm.backends.base import BackendError

    return (BackendError, TimeoutError, ConnectionError)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one sequence: its label, every voter's vote, and where it came from.

    ``source`` is "ensemble" (voted now), "cache" (a model answer seen before), "human"
    (a label corrected through the cache, which wins over the models) or "voter" (one voter
    asked alone, see :meth:`Detector.predict_voter`). ``abstained`` names the voters that
    could not vote on a degraded answer; ``not_asked`` the voters whose vote could no longer
    change the label, so the ensemble did not ask them (short-circuit voting).
    """

    id: str
    label: int
    votes: dict[str, int] = field(default_factory=dict)
    cached: bool = False
    source: str = "ensemble"
    abstained: tuple[str, ...] = ()
    not_asked: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        return LABEL_NAMES[self.label]

    @property
    def degraded(self) -> bool:
        """Whether some voter could not vote on this answer."""
        return bool(self.abstained)

    def to_json(self) -> dict:
        record = {
            "id": self.id,
            "label": self.label,
            "verdict": self.verdict,
            "votes": self.votes,
            "cached": self.cached,
            "source": self.source,
        }
        if self.abstained:
            record["degraded"] = True
            record["abstained"] = list(self.abstained)
        if self.not_asked:
            record["not_asked"] = list(self.not_asked)
        return record


@dataclass
class DetectorStats:
    """Counters over a detector's lifetime, for reports and the service's metrics.

    ``degraded``: distinct sequences voted on without every voter; ``voter_errors``: failures
    per voter that made it abstain; ``cache_errors``: cache reads or writes that failed (the
    answers were served anyway); ``asked``: distinct sequences each voter was asked about
    (short-circuit voting asks the later voters about fewer than ``voted``).
    """

    sequences: int = 0
    cache_hits: int = 0
    voted: int = 0
    vote_seconds: float = 0.0
    degraded: int = 0
    cache_errors: int = 0
    voter_errors: dict[str, int] = field(default_factory=dict)
    asked: dict[str, int] = field(default_factory=dict)


class Detector:
    """An ensemble of voters behind an optional sequence cache.

    ``tolerate``: voter errors that make the voter abstain instead of failing the batch
    (default none; see :func:`transient_errors`). ``retry_after``: seconds a voter that failed
    so rests before it is asked again. ``short_circuit``: ask each voter only about the
    sequences whose label it can still change (same labels, fewer questions to the slow
    voters). Safe to call from several threads.
    """

    def __init__(
        self,
        ensemble: VotingEnsemble,
        cache: SequenceCache | None = None,
        *,
        tolerate: Iterable[type[BaseException]] = (),
        retry_after: float = 30.0,
        short_circuit: bool = True,
    ):
        self.ensemble = ensemble
        self.short_circuit = short_circuit
        self.cache = cache
        self.stats = DetectorStats()
        self.tolerate = tuple(tolerate)
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._down: dict[str, tuple[float, str]] = {}

    @property
    def voter_names(self) -> list[str]:
        return self.ensemble.names

    def asked_share(self) -> dict[str, float]:
        """The share of the distinct sequences voted on that reached each voter."""
        voted = self.stats.voted
        return {n: self.stats.asked.get(n, 0) / voted for n in self.voter_names} if voted else {}

    def unavailable(self) -> dict[str, str]:
        """Voters whose last attempt failed with a tolerated error (name → error); each is
        asked again once its rest is over, and leaves this list when it answers."""
        with self._lock:
            return {name: reason for name, (_, reason) in self._down.items()}

    def fit(
        self,
        sequences: Sequence[LogSequence],
        *,
        templates: Mapping[str, str] | None = None,
        progress: bool = False,
    ) -> Detector:
        """Fit every voter on labelled sequences (``templates``: for the voters that read
        template texts)."""
        labels = []
        for seq in sequences:
            if seq.label is None:
                raise ValueError(f"training sequence {seq.id!r} has no label")
            labels.append(seq.label)
        self.ensemble.fit(
            [s.events for s in sequences], labels, templates=templates, progress=progress
        )
        return self

    def predict(
        self,
        batch: Sequence[LogSequence],
        *,
        vote: Callable[[Sequence[LogSequence]], list[Verdict]] | None = None,
    ) -> list[Verdict]:
        """Answer a batch in input order; each distinct unseen sequence is voted on once.

        ``vote`` answers the sequences the cache does not know (default :meth:`vote`); a
        service passes one that pools the misses of concurrent requests into micro-batches.
        """
        answers = self.lookup(batch)
        missing = [i for i, answer in enumerate(answers) if answer is None]
        if missing:
            voted = (vote or self.vote)([batch[i] for i in missing])
            for i, verdict in zip(missing, voted, strict=True):
                answers[i] = verdict
        return answers  # type: ignore[return-value]

    def lookup(self, batch: Sequence[LogSequence]) -> list[Verdict | None]:
        """The cached answers of a batch, in order; None where there is none (or no cache).

        A cache that cannot be read counts as all misses (``stats.cache_errors`` + 1).
        """
        n = len(batch)
        if self.cache is None or n == 0:
            return [None] * n
        from flexlog.cache import CacheError

        try:
            entries = self.cache.get_many([seq.events for seq in batch])
        except CacheError as exc:
            self._cache_failed("lookup", exc)
            return [None] * n
        answers: list[Verdict | None] = []
        for seq, entry in zip(batch, entries, strict=True):
            if entry is None:
                answers.append(None)
            else:
                source = "human" if entry.source == "human" else "cache"
                answers.append(Verdict(seq.id, entry.label, dict(entry.votes), True, source))
        hits = n - answers.count(None)
        with self._lock:
            self.stats.sequences += hits
            self.stats.cache_hits += hits
        return answers

    def vote(self, batch: Sequence[LogSequence]) -> list[Verdict]:
        """Vote on a batch without looking in the cache; each distinct sequence is voted on
        once. Complete answers are added to the cache, degraded ones are not.

        Raises :class:`~flexlog.ensemble.NoVotersError` when no voter could vote.
        """
        if not batch:
            return []
        pending = self._distinct(batch)
        unique = list(pending)
        start = time.perf_counter()
        poll = self._poll(unique)
        labels = poll.labels()
        elapsed = time.perf_counter() - start
        names = list(poll.votes)
        columns = [poll.votes[name].tolist() for name in names]
        missed = {name: mask.tolist() for name, mask in poll.missed.items()}
        answers: list[Verdict | None] = [None] * len(batch)
        fresh, degraded = [], 0
        for j, key in enumerate(unique):
            vote = {name: col[j] for name, col in zip(names, columns, strict=True) if col[j] >= 0}
            # a voter that failed only degrades the answers it was needed for
            abstained = tuple(name for name, rows in missed.items() if rows[j])
            not_asked = tuple(n for n in self.voter_names if n not in vote and n not in abstained)
            label = int(labels[j])
            if abstained:
                degraded += 1
            else:
                fresh.append((key, label, vote))
            for i in pending[key]:
                answers[i] = Verdict(
                    batch[i].id, label, vote, False, "ensemble", abstained, not_asked
                )
        if self.cache is not None and fresh:
            self._cache_add(fresh)
        with self._lock:
            self.stats.sequences += len(batch)
            self.stats.voted += len(unique)
            self.stats.vote_seconds += elapsed
            for name, k in poll.asked.items():
                self.stats.asked[name] = self.stats.asked.get(name, 0) + k
            self.stats.degraded += degraded
        return answers  # type: ignore[return-value]

    def predict_voter(self, batch: Sequence[LogSequence], name: str) -> list[Verdict]:
        """Answer a batch with one voter alone (no cache: it holds the ensemble's answers).

        Raises ValueError for an unknown voter and
        :class:`~flexlog.ensemble.NoVotersError` when the voter is unavailable.
        """
        if name not in self.voter_names:
            raise ValueError(f"unknown voter {name!r}; this detector has {self.voter_names}")
        if not batch:
            return []
        pending = self._distinct(batch)
        unique = list(pending)
        poll = self._poll(unique, voters=[name])
        poll.labels()  # NoVotersError when the voter could not answer
        labels = poll.votes[name]
        answers: list[Verdict | None] = [None] * len(batch)
        for j, key in enumerate(unique):
            label = int(labels[j])
            for i in pending[key]:
                answers[i] = Verdict(batch[i].id, label, {name: label}, False, "voter")
        with self._lock:
            self.stats.sequences += len(batch)
            self.stats.voted += len(unique)
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

    # -- internals -------------------------------------------------------------------------
    @staticmethod
    def _distinct(batch: Sequence[LogSequence]) -> dict[tuple[str, ...], list[int]]:
        """Each distinct event sequence of the batch → the positions where it occurs."""
        pending: dict[tuple[str, ...], list[int]] = {}
        for i, seq in enumerate(batch):
            pending.setdefault(seq.events, []).append(i)
        return pending

    def _poll(self, events: list[tuple[str, ...]], voters: Sequence[str] | None = None) -> Poll:
        """Ask the voters, skipping those resting after an error; record who failed."""
        now = time.monotonic()
        asked = set(self.voter_names if voters is None else voters)
        with self._lock:
            skip = {
                name: f"{reason} (resting; asked again in {until - now:.0f} s)"
                for name, (until, reason) in self._down.items()
                if until > now and name in asked
            }
        poll = self.ensemble.poll(
            events,
            voters=voters,
            skip=skip,
            tolerate=self.tolerate,
            short_circuit=self.short_circuit,
        )
        with self._lock:
            for name, reason in poll.abstained.items():
                if name in skip:
                    continue
                if name not in self._down:
                    logger.warning(
                        "voter %s is unavailable, answering without it: %s", name, reason
                    )
                self._down[name] = (time.monotonic() + self.retry_after, reason)
                self.stats.voter_errors[name] = self.stats.voter_errors.get(name, 0) + 1
            for name in poll.votes:
                if self._down.pop(name, None) is not None:
                    logger.warning("voter %s is answering again", name)
        return poll

    def _cache_add(self, fresh: list[tuple[tuple[str, ...], int, dict[str, int]]]) -> None:
        from flexlog.cache import CacheError

        try:
            self.cache.add_many(fresh)  # type: ignore[union-attr]
        except CacheError as exc:
            self._cache_failed("write", exc)

    def _cache_failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            self.stats.cache_errors += 1
        logger.warning("sequence cache %s failed, answering without it: %s", what, exc)


def make_voters(
    voters: Sequence[str], params: dict[str, dict] | None = None, seed: int | None = 0
) -> list[tuple[str, object]]:
    """Fresh (unfitted) registered voters by name; each voter that takes a ``random_state``
    gets ``seed`` unless ``params`` sets it."""
    from flexlog.voters.registry import make_voter, voter_class

    members = []
    for name in voters:
        p = dict((params or {}).get(name, {}))
        if "random_state" in voter_class(name)().get_params() and "random_state" not in p:
            p["random_state"] = seed
        members.append((name, make_voter(name, **p)))
    return members


def make_detector(
    voters: Sequence[str],
    params: dict[str, dict] | None = None,
    seed: int | None = 0,
    rule: VoteRule | None = None,
) -> Detector:
    """A fresh detector with the named registered voters combined by ``rule`` (majority by
    default); see :func:`make_voters`."""
    return Detector(VotingEnsemble(make_voters(voters, params, seed), rule))
