"""The audit trail of human corrections: what ``update``, ``delete`` and ``undo`` do to an
entry, decided by pure functions that every store applies the same way.

A store applies an edit in one transaction: it reads the key's current entry, asks one of the
``plan_*`` functions what to do (an :class:`Edit`, or None for nothing), writes the new state
and records the edit as a :class:`~flexlog.cache.entries.Correction`; so a correction is
recorded exactly when its change is made.

Undo reverts the latest ``set`` or ``delete`` of the key that is not undone yet, restoring the
entry as it was before (label, source, votes, and the entry itself if that correction deleted
it; no entry if that correction created it), and is recorded as an ``undo`` correction. Undo
corrections are not themselves undone: undoing again walks further back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .entries import CacheEntry, Correction

__all__ = [
    "MAX_ACTOR",
    "MAX_COMMENT",
    "Edit",
    "Logged",
    "check_actor",
    "check_comment",
    "plan_delete",
    "plan_set",
    "plan_undo",
]

MAX_ACTOR = 200
MAX_COMMENT = 1000
ACTIONS = ("set", "delete", "undo")


@dataclass(frozen=True, slots=True)
class Edit:
    """One planned edit of ``key``: its entry ``before`` and ``after`` (None: no entry)."""

    action: str
    key: str
    before: CacheEntry | None
    after: CacheEntry | None
    events: tuple[str, ...]  # the key's events, kept with the correction (to re-create it)
    undoes: int | None = None

    def log_row(self, time: float, actor: str, comment: str | None) -> tuple:
        """The values a store writes to record this edit (``LOG_ROW_COLUMNS``)."""
        from .keys import events_json, votes_json

        before, after = self.before, self.after
        return (
            self.key,
            time,
            actor,
            self.action,
            None if before is None else before.label,
            None if before is None else before.source,
            None if before is None else votes_json(before.votes),
            None if after is None else after.label,
            None if after is None else after.source,
            comment,
            self.undoes,
            events_json(self.events),
        )

    def correction(self, id: int, time: float, actor: str, comment: str | None) -> Correction:
        """The record of this edit, once a store has given it an id."""
        before, after = self.before, self.after
        return Correction(
            id=id,
            key=self.key,
            time=time,
            actor=actor,
            action=self.action,
            previous_label=None if before is None else before.label,
            previous_source=None if before is None else before.source,
            new_label=None if after is None else after.label,
            new_source=None if after is None else after.source,
            comment=comment,
            undoes=self.undoes,
        )


#: The columns of a stored correction, in the order of :meth:`Edit.log_row` (both stores).
LOG_ROW_COLUMNS = (
    "key, time, actor, action, previous_label, previous_source, previous_votes, new_label, "
    "new_source, comment, undoes, events"
)


class Logged(NamedTuple):
    """A recorded correction with what a store keeps to undo it."""

    correction: Correction
    events: tuple[str, ...]
    previous_votes: dict[str, int] | None  # the votes of the entry before (None: no entry)

    def previous_entry(self) -> CacheEntry | None:
        c = self.correction
        if c.previous_label is None or c.previous_source is None:
            return None
        votes = self.previous_votes or {}
        return CacheEntry(c.key, self.events, c.previous_label, c.previous_source, votes)


def plan_set(
    key: str, current: CacheEntry | None, events: tuple[str, ...] | None, label: int
) -> Edit:
    """A human label for ``key``: the entry (created from ``events`` if absent) becomes
    ``source="human"`` with ``label``; its events and votes are kept. KeyError when there is
    no entry and no events to create one."""
    if current is None:
        if events is None:
            raise KeyError(f"no cache entry for key {key}; pass the events to insert one")
        after = CacheEntry(key, events, label, "human", {})
    else:
        after = CacheEntry(key, current.events, label, "human", current.votes)
    return Edit("set", key, current, after, after.events)


def plan_delete(key: str, current: CacheEntry | None) -> Edit | None:
    """Removal of the entry; None (nothing to do, nothing recorded) when there is none."""
    if current is None:
        return None
    return Edit("delete", key, current, None, current.events)


def latest_undoable(log: Sequence[Logged]) -> Logged | None:
    """The latest ``set``/``delete`` of a key's log (oldest first) not undone yet."""
    undone = {item.correction.undoes for item in log if item.correction.action == "undo"}
    for item in reversed(log):
        c = item.correction
        if c.action != "undo" and c.id not in undone:
            return item
    return None


def plan_undo(key: str, current: CacheEntry | None, log: Sequence[Logged]) -> Edit:
    """Revert the latest correction of ``key`` not undone yet (see the module docstring).

    KeyError when there is none.
    """
    target = latest_undoable(log)
    if target is None:
        what = "every correction of it is undone already" if log else "it has no corrections"
        raise KeyError(f"nothing to undo for cache key {key}: {what}")
    return Edit(
        "undo",
        key,
        current,
        target.previous_entry(),
        current.events if current is not None else target.events,
        undoes=target.correction.id,
    )


def check_actor(actor: object) -> str:
    """Who makes a correction: a non-empty string of at most ``MAX_ACTOR`` characters."""
    if not isinstance(actor, str):
        raise TypeError(f"actor must be a string, got {type(actor).__name__}")
    if not actor.strip():
        raise ValueError("actor must not be empty")
    if len(actor) > MAX_ACTOR:
        raise ValueError(f"actor must be at most {MAX_ACTOR} characters, got {len(actor)}")
    _check_text(actor, "actor")
    return actor


def check_comment(comment: object) -> str | None:
    """Why a correction was made: None or a string of at most ``MAX_COMMENT`` characters."""
    if comment is None:
        return None
    if not isinstance(comment, str):
        raise TypeError(f"comment must be a string or None, got {type(comment).__name__}")
    if len(comment) > MAX_COMMENT:
        raise ValueError(f"comment must be at most {MAX_COMMENT} characters, got {len(comment)}")
    _check_text(comment, "comment")
    return comment


def _check_text(value: str, name: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name} contains a lone surrogate {value[exc.start]!r}: it must be valid Unicode text"
        ) from None
