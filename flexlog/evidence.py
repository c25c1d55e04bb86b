"""Why a sequence was flagged: the evidence behind a verdict, pointing back to positions (and,
for raw logs, lines).

Four kinds, each cheap to compute after voting:

* the voters that voted anomalous;
* the events no voter saw in training (an unseen template is the most common sign of a new
  failure after an upgrade);
* the events rare in normal training sequences (an :class:`EventProfile` a bundle keeps: the
  share of normal sequences each event occurs in), which is where count-based voters look;
* the events a next-event voter (DeepLog and any voter with an ``unlikely(X)`` method) found
  outside its top-k predictions for their window.

The strongest evidence comes first: unseen events, then rare ones, then unlikely ones, in
sequence order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flexlog.data.records import LogSequence
from flexlog.detector import Detector, Verdict
from flexlog.ingest import SourceLines

#: Positions listed per kind of evidence at most (the counts are always complete).
MAX_LISTED = 20
#: An event is rare when it occurs in fewer than this share of normal training sequences.
RARE_SHARE = 0.01


@dataclass(frozen=True)
class EventProfile:
    """For each event of the training data, the share of normal sequences it occurs in."""

    normal_share: dict[str, float]

    @classmethod
    def fit(cls, sequences: Sequence[LogSequence]) -> EventProfile:
        normal = [s for s in sequences if s.label == 0]
        counts: dict[str, int] = {}
        for seq in normal:
            for event in set(seq.events):
                counts[event] = counts.get(event, 0) + 1
        for seq in sequences:  # events only anomalous sequences had: share 0
            for event in seq.events:
                counts.setdefault(event, 0)
        n = max(len(normal), 1)
        return cls({e: c / n for e, c in sorted(counts.items())})

    def rare(self, events: Sequence[str], below: float = RARE_SHARE) -> tuple[int, ...]:
        """Positions of known events that occur in fewer than ``below`` of normal sequences."""
        share = self.normal_share
        return tuple(p for p, e in enumerate(events) if e in share and share[e] < below)

    def to_json(self) -> dict[str, float]:
        return dict(self.normal_share)

    @classmethod
    def from_json(cls, data: object) -> EventProfile:
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in data.items()
        ):
            raise ValueError("an event profile maps event keys to shares")
        return cls({k: float(v) for k, v in data.items()})


@dataclass(frozen=True)
class Evidence:
    """The evidence for one verdict: ``flagged_by`` voters, and positions (0-based) of
    ``unseen`` events and of events each next-event voter found ``unlikely``."""

    flagged_by: tuple[str, ...] = ()
    unseen: tuple[int, ...] = ()
    unlikely: dict[str, tuple[int, ...]] = field(default_factory=dict)
    rare: tuple[int, ...] = ()

    def kind(self, position: int) -> str:
        """Why ``position`` is evidence: unseen, rare or unlikely (else "event")."""
        if position in self.unseen:
            return "unseen"
        if position in self.rare:
            return "rare"
        if any(position in ps for ps in self.unlikely.values()):
            return "unlikely"
        return "event"

    def strongest(self, n: int = 5) -> list[int]:
        """Up to ``n`` positions: unseen events, then rare, then unlikely (sequence order)."""
        picked = list(dict.fromkeys(self.unseen))
        picked += [p for p in self.rare if p not in picked]
        for positions in self.unlikely.values():
            picked += [p for p in positions if p not in picked]
        return picked[:n]

    def to_json(self, events: Sequence[str], source: SourceLines | None = None) -> dict[str, Any]:
        """JSON-ready evidence; with ``source``, each listed event also names its line."""

        def item(position: int) -> dict[str, Any]:
            record: dict[str, Any] = {"position": position, "event": events[position]}
            if source is not None and position < len(source.lines):
                record["line"] = source.lines[position]
            return record

        return {
            "flagged_by": list(self.flagged_by),
            "unseen_events": len(self.unseen),
            "unseen": [item(p) for p in self.unseen[:MAX_LISTED]],
            "rare_events": len(self.rare),
            "rare": [item(p) for p in self.rare[:MAX_LISTED]],
            "unlikely": {
                name: {"count": len(ps), "events": [item(p) for p in ps[:MAX_LISTED]]}
                for name, ps in self.unlikely.items()
            },
        }


def known_events(detector: Detector) -> frozenset[str]:
    """The events some voter of the detector saw in training."""
    known: set[str] = set()
    for _, voter in detector.ensemble.voters:
        method = getattr(voter, "known_events", None)
        if method is not None:
            known |= method()
    return frozenset(known)


def explain(
    detector: Detector,
    sequences: Sequence[LogSequence],
    verdicts: Sequence[Verdict],
    *,
    profile: EventProfile | None = None,
    only_anomalous: bool = True,
) -> list[Evidence | None]:
    """The evidence for each verdict (None for normal ones with ``only_anomalous``); rare
    events only with a training ``profile``."""
    known = known_events(detector)
    wanted = [i for i, v in enumerate(verdicts) if v.label == 1 or not only_anomalous]
    unlikely: dict[str, list[list[int]]] = {}
    if wanted:
        batch = [sequences[i].events for i in wanted]
        for name, voter in detector.ensemble.voters:
            method = getattr(voter, "unlikely", None)
            if method is not None:
                unlikely[name] = method(batch)
    out: list[Evidence | None] = [None] * len(verdicts)
    for j, i in enumerate(wanted):
        events, verdict = sequences[i].events, verdicts[i]
        out[i] = Evidence(
            flagged_by=tuple(n for n, vote in verdict.votes.items() if vote == 1),
            unseen=tuple(p for p, e in enumerate(events) if known and e not in known),
            unlikely={n: tuple(ps[j]) for n, ps in unlikely.items() if ps[j]},
            rare=profile.rare(events) if profile is not None else (),
        )
    return out


__all__ = ["MAX_LISTED", "RARE_SHARE", "EventProfile", "Evidence", "explain", "known_events"]
