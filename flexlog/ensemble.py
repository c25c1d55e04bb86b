"""Majority voting over named voters (FlexLog: a tie is normal).

:meth:`VotingEnsemble.votes` asks every voter and lets any error through. A service that must
keep answering when one voter's backend is down uses :meth:`VotingEnsemble.poll` instead: a
voter that raises one of the given (transient) errors, or that the caller skips, abstains,
and the majority is taken over the voters that did vote.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from flexlog.features import as_event_lists
from flexlog.voters.base import FeatureMemo, check_labels


def majority_vote(votes: Mapping[str, np.ndarray]) -> np.ndarray:
    """Combine 0/1 votes (one array per voter): anomalous only with a strict majority."""
    if not votes:
        raise ValueError("no votes to combine")
    stacked = np.vstack([np.asarray(v, dtype=np.int64) for v in votes.values()])
    return (2 * stacked.sum(axis=0) > stacked.shape[0]).astype(np.int64)


class NoVotersError(RuntimeError):
    """Every voter asked abstained, so there is no majority to take; ``abstained`` maps each
    voter to its reason."""

    def __init__(self, message: str, abstained: Mapping[str, str] | None = None):
        super().__init__(message)
        self.abstained = dict(abstained or {})


@dataclass(frozen=True)
class Poll:
    """The votes of one batch: a 0/1 array per voter that voted, and why the others abstained."""

    votes: dict[str, np.ndarray]
    abstained: dict[str, str] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        """Whether some voter asked did not vote."""
        return bool(self.abstained)

    def labels(self) -> np.ndarray:
        """Majority over the voters that voted (a tie is normal); NoVotersError if none did."""
        if not self.votes:
            reasons = "; ".join(f"{n}: {r}" for n, r in self.abstained.items())
            raise NoVotersError(
                f"no voter could answer ({reasons or 'no voters asked'})", self.abstained
            )
        return majority_vote(self.votes)


class VotingEnsemble:
    """Named voters fitted on the same data and combined by majority vote.

    Each voter is any scikit-learn-style classifier over sequences (see
    :mod:`flexlog.voters.base`); which voters take part is configuration.
    """

    def __init__(self, voters: Sequence[tuple[str, object]]):
        names = [n for n, _ in voters]
        if not voters:
            raise ValueError("an ensemble needs at least one voter")
        if len(set(names)) != len(names):
            raise ValueError(f"voter names must be unique, got {names}")
        self.voters = list(voters)

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
        """Every voter's 0/1 predictions on the same batch, featurized once per vocabulary."""
        batch = X if isinstance(X, FeatureMemo) else FeatureMemo(as_event_lists(X))
        return {name: np.asarray(v.predict(batch), dtype=np.int64) for name, v in self.voters}

    def poll(
        self,
        X,
        *,
        voters: Sequence[str] | None = None,
        skip: Mapping[str, str] | None = None,
        tolerate: tuple[type[BaseException], ...] = (),
    ) -> Poll:
        """Ask the named ``voters`` (default: all) about the same batch.

        A voter named in ``skip`` (name → reason) is not asked; a voter whose ``predict``
        raises one of ``tolerate`` abstains, with the error as its reason. Any other error
        propagates, as in :meth:`votes`.
        """
        members = dict(self.voters)
        names = self.names if voters is None else list(voters)
        unknown = [n for n in names if n not in members]
        if unknown:
            raise ValueError(f"unknown voters {unknown}; this ensemble has {self.names}")
        skip = skip or {}
        batch = X if isinstance(X, FeatureMemo) else FeatureMemo(as_event_lists(X))
        votes: dict[str, np.ndarray] = {}
        abstained: dict[str, str] = {}
        for name in names:
            if name in skip:
                abstained[name] = skip[name]
                continue
            try:
                votes[name] = np.asarray(members[name].predict(batch), dtype=np.int64)
            except tolerate as exc:
                abstained[name] = f"{type(exc).__name__}: {exc}"
        return Poll(votes, abstained)

    def predict(self, X) -> np.ndarray:
        return majority_vote(self.votes(X))


__all__ = ["NoVotersError", "Poll", "VotingEnsemble", "majority_vote"]
