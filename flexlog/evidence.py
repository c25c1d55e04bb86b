"""Why a sequence was flagged: the evidence behind a verdict, pointing back to positions (and,
for raw logs, lines).

Three kinds, each cheap to compute after voting:

* the voters that voted anomalous;
* the events no voter saw in training (an unseen template is the most common sign of a new
  failure after an upgrade);
* the events a next-event voter (DeepLog and any voter with an ``unlikely(X)`` method) found
  outside its top-k predictions for their window.

The strongest evidence comes first: unseen events, then unlikely ones, in sequence order.
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


@dataclass(frozen=True)
class Evidence:
    """The evidence for one verdict: ``flagged_by`` voters, and positions (0-based) of
    ``unseen`` events and of events each next-event voter found ``unlikely``."""

    flagged_by: tuple[str, ...] = ()
    unseen: tuple[int, ...] = ()
    unlikely: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def strongest(self, n: int = 5) -> list[int]:
        """Up to ``n`` positions, unseen events first, then unlikely ones (sequence order)."""
        picked = list(dict.fromkeys(self.unseen))
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
    only_anomalous: bool = True,
) -> list[Evidence | None]:
    """The evidence for each verdict (None for normal ones with ``only_anomalous``)."""
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
        )
    return out


__all__ = ["MAX_LISTED", "Evidence", "explain", "known_events"]
