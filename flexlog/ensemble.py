"""Majority voting over named voters (FlexLog: a tie is normal)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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

    def fit(self, X, y, *, progress: bool = False) -> VotingEnsemble:
        seqs = as_event_lists(X)
        y = check_labels(y, len(seqs))
        for name, voter in tqdm(self.voters, desc="training voters", disable=not progress):
            try:
                voter.fit(seqs, y)
            except ValueError as exc:
                raise ValueError(f"voter {name!r}: {exc}") from exc
        return self

    def votes(self, X) -> dict[str, np.ndarray]:
        """Every voter's 0/1 predictions on the same batch, featurized once per vocabulary."""
        batch = X if isinstance(X, FeatureMemo) else FeatureMemo(as_event_lists(X))
        return {name: np.asarray(v.predict(batch), dtype=np.int64) for name, v in self.voters}

    def predict(self, X) -> np.ndarray:
        return majority_vote(self.votes(X))
