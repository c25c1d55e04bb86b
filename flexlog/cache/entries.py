"""What the cache hands out: answers (:class:`CacheEntry`), corrections (:class:`Correction`),
and its one error type (:class:`CacheError`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class CacheError(RuntimeError):
    """The cache could not carry out an explicit request: its store is locked, read-only,
    broken or closed. The only error the cache raises apart from bad arguments."""


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached answer. ``votes`` maps voter name to its 0/1 vote.

    Entries are shared (between callers, and equal ``votes`` dicts between entries): treat
    ``votes`` as read-only.
    """

    key: str
    events: tuple[str, ...]
    label: int
    source: str
    votes: dict[str, int] = field(default_factory=dict)

    @property
    def is_human(self) -> bool:
        return self.source == "human"


@dataclass(frozen=True, slots=True)
class Correction:
    """One recorded human edit of a cache entry (see :meth:`SequenceCache.history`).

    ``previous_*`` describe the entry before the edit and ``new_*`` after it; None means there
    was no entry (before) or the entry is gone (after). ``undoes`` is, for ``action="undo"``,
    the id of the correction it reverted.
    """

    id: int
    key: str
    time: float  # epoch seconds
    actor: str  # who: an API key id like "key:3f2a…" or "cli:alice"
    action: str  # "set" | "delete" | "undo"
    previous_label: int | None
    previous_source: str | None
    new_label: int | None
    new_source: str | None
    comment: str | None
    undoes: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "previous_label": self.previous_label,
            "previous_source": self.previous_source,
            "new_label": self.new_label,
            "new_source": self.new_source,
            "comment": self.comment,
            "undoes": self.undoes,
        }
