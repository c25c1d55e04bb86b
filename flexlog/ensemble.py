"""An ensemble of named voters combined by a vote rule, asked cheapest first.

:meth:`VotingEnsemble.poll` asks the voters in order of cost and, with ``short_circuit``
(the default), asks each one only about the sequences whose label the voters still to come
could change under the rule (:mod:`flexlog.vote_rules`): when the three count-vector voters
agree, the LLM is not asked. The labels are those of asking every voter; a vote not asked is
reported as such. A voter that raises one of the given (transient) errors, or that the caller
skips, abstains, and the rule decides over the voters that did vote.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from flexlog.features import as_event_lists
from flexlog.vote_rules import MajorityRule, VoteRule
from flexlog.voters.base import FeatureMemo, check_labels

#: In :attr:`Poll.votes`, a voter that was not asked about that sequence.
NOT_ASKED = -1


def majority_vote(votes: Mapping[str, np.ndarray]) -> np.ndarray:
    """Combine 0/1 votes (one array per voter): anomalous only with a strict majority."""
    if not votes:
        raise ValueError("no votes to combine")
    stacked = np.vstack([np.asarray(v, dtype=np.int64) for v in votes.values()])
    return (2 * stacked.sum(axis=0) > stacked.shape[0]).astype(np.int64)


def voter_cost(voter: object) -> float:
    """A voter's rough cost per sequence (its class's ``cost``; 1 where it declares none):
    the order in which an ensemble asks its voters."""
    cost = getattr(voter, "cost", 1.0)
    return float(cost) if isinstance(cost, (int, float)) else 1.0


def voter_scores(voter: object, batch, soft: bool) -> np.ndarray:
    """A voter's anomaly scores on a batch: ``predict_proba`` of the anomalous class when
    ``soft`` and it has one, its 0/1 predictions otherwise."""
    if soft and hasattr(voter, "predict_proba"):
        return np.asarray(voter.predict_proba(batch), dtype=float)[:, 1]
    return np.asarray(voter.predict(batch), dtype=np.int64)


class NoVotersError(RuntimeError):
    """Every voter asked abstained, so there is no majority to take; ``abstained`` maps each
    voter to its reason."""

    def __init__(self, message: str, abstained: Mapping[str, str] | None = None):
        super().__init__(message)
        self.abstained = dict(abstained or {})


@dataclass(frozen=True)
class Poll:
    """The answers about one batch: per voter that voted, a 0/1 vote per sequence
    (:data:`NOT_ASKED` where the rule no longer needed it), why the others abstained and on
    which sequences their vote was missed (``missed``: a boolean mask per abstaining voter),
    and the labels (None when no voter voted)."""

    votes: dict[str, np.ndarray]
    abstained: dict[str, str] = field(default_factory=dict)
    decided: np.ndarray | None = None
    asked: dict[str, int] = field(default_factory=dict)
    missed: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        """Whether some voter asked did not vote."""
        return bool(self.abstained)

    def labels(self) -> np.ndarray:
        """The rule's labels; NoVotersError if no voter voted."""
        if self.decided is None:
            reasons = "; ".join(f"{n}: {r}" for n, r in self.abstained.items())
            raise NoVotersError(
                f"no voter could answer ({reasons or 'no voters asked'})", self.abstained
            )
        return self.decided


class VotingEnsemble:
    """Named voters fitted on the same data and combined by ``rule`` (majority by default).

    Each voter is any scikit-learn-style classifier over sequences (see
    :mod:`flexlog.voters.base`); which voters take part is configuration. ``order`` is the
    order in which they are asked (default: by :func:`voter_cost`, cheapest first, ties in
    the given order).
    """

    def __init__(
        self,
        voters: Sequence[tuple[str, object]],
        rule: VoteRule | None = None,
        *,
        order: Sequence[str] | None = None,
    ):
        names = [n for n, _ in voters]
        if not voters:
            raise ValueError("an ensemble needs at least one voter")
        if len(set(names)) != len(names):
            raise ValueError(f"voter names must be unique, got {names}")
        self.voters = list(voters)
        self.rule = rule if rule is not None else MajorityRule()
        if order is not None and not (
            isinstance(order, (list, tuple)) and all(isinstance(n, str) for n in order)
        ):
            raise ValueError(f"order must be a list of voter names, got {order!r}")
        if order is None:
            order = [
                n for _, _, n in sorted((voter_cost(v), i, n) for i, (n, v) in enumerate(voters))
            ]
        if sorted(order) != sorted(names):
            raise ValueError(f"order must name every voter once, got {list(order)} for {names}")
        self.order = list(order)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.voters]

    def fit(
        self, X, y, *, templates: Mapping[str, str] | None = None, progress: bool = False
    ) -> VotingEnsemble:
        """Fit every voter on the same data; ``templates`` (event key → template text) go to
        the voters whose ``fit`` takes them. Each voter's wall time is kept in
        ``fit_seconds_``."""
        seqs = as_event_lists(X)
        y = check_labels(y, len(seqs))
        self.fit_seconds_: dict[str, float] = {}
        for name, voter in tqdm(self.voters, desc="training voters", disable=not progress):
            extra = {}
            if templates is not None and "templates" in inspect.signature(voter.fit).parameters:
                extra["templates"] = dict(templates)
            start = time.perf_counter()
            try:
                voter.fit(seqs, y, **extra)
            except ValueError as exc:
                raise ValueError(f"voter {name!r}: {exc}") from exc
            self.fit_seconds_[name] = time.perf_counter() - start
        return self

    def votes(self, X) -> dict[str, np.ndarray]:
        """Every voter's 0/1 votes on the same batch (under the rule's per-voter thresholds),
        featurized once per vocabulary."""
        batch = X if isinstance(X, FeatureMemo) else FeatureMemo(as_event_lists(X))
        soft = self.rule.needs_scores()
        return {name: self.rule.vote(name, voter_scores(v, batch, soft)) for name, v in self.voters}

    def poll(
        self,
        X,
        *,
        voters: Sequence[str] | None = None,
        skip: Mapping[str, str] | None = None,
        tolerate: tuple[type[BaseException], ...] = (),
        short_circuit: bool = True,
    ) -> Poll:
        """Ask the named ``voters`` (default: all), in the ensemble's order, about a batch.

        With ``short_circuit`` a voter is asked only about the sequences the rule has not
        settled yet. A voter named in ``skip`` (name → reason) is not asked; one whose
        ``predict`` raises one of ``tolerate`` abstains, with the error as its reason. Any
        other error propagates.
        """
        members = dict(self.voters)
        wanted = self.names if voters is None else list(voters)
        unknown = [n for n in wanted if n not in members]
        if unknown:
            raise ValueError(f"unknown voters {unknown}; this ensemble has {self.names}")
        names = [n for n in self.order if n in set(wanted)]
        skip = skip or {}
        seqs = X if isinstance(X, FeatureMemo) else FeatureMemo(as_event_lists(X))
        n = len(seqs)
        rule = self.rule
        soft = rule.needs_scores()
        acc = rule.start(n)
        votes: dict[str, np.ndarray] = {}
        abstained: dict[str, str] = {}
        missed: dict[str, np.ndarray] = {}
        asked: dict[str, int] = {}
        open_ = np.arange(n)
        # a label only settles once some voter has voted on it (not on abstentions alone)
        voted = np.zeros(n, dtype=bool)
        for pos, name in enumerate(names):
            if short_circuit and pos:
                settled, _ = rule.settled(acc, names[pos:])
                open_ = np.flatnonzero(~(settled & voted))
            if len(open_) == 0:
                continue
            if name in skip:
                abstained[name] = skip[name]
                missed[name] = np.isin(np.arange(n), open_)
                rule.abstain(acc, open_, name)
                continue
            batch = seqs if len(open_) == n else FeatureMemo([seqs[i] for i in open_])
            try:
                scores = voter_scores(members[name], batch, soft)
            except tolerate as exc:
                abstained[name] = f"{type(exc).__name__}: {exc}"
                missed[name] = np.isin(np.arange(n), open_)
                rule.abstain(acc, open_, name)
                continue
            rule.add(acc, open_, name, scores)
            voted[open_] = True
            column = np.full(n, NOT_ASKED, dtype=np.int64)
            column[open_] = rule.vote(name, scores)
            votes[name] = column
            asked[name] = len(open_)
        decided = rule.labels(acc) if votes else None
        return Poll({k: votes[k] for k in names if k in votes}, abstained, decided, asked, missed)

    def predict(self, X) -> np.ndarray:
        return self.poll(X).labels()


__all__ = [
    "NOT_ASKED",
    "NoVotersError",
    "Poll",
    "VotingEnsemble",
    "majority_vote",
    "voter_cost",
    "voter_scores",
]
