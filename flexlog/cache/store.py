"""What a store must do: the :class:`Store` protocol behind :class:`SequenceCache`.

A store keeps the entries of one cache (model answers and human corrections) within a bound,
evicting by :mod:`flexlog.cache.eviction`, and the audit trail of corrections, applying the
edits planned by :mod:`flexlog.cache.audit`. Three implement it: :class:`MemoryStore` (this
process's memory), :class:`SQLiteStore` (a file) and :class:`PostgresStore` (a server several
processes and machines share).

Contract, for every store:

* Calls come one at a time (the cache holds its lock): a store need not be thread-safe.
* Failures of the backing storage raise :class:`~flexlog.cache.entries.CacheError`, never the
  driver's own exceptions; :meth:`Store.put_answers` reports them in its result instead, and
  :meth:`Store.close` only logs them. KeyError raised by an edit's planner passes through.
* ``recent`` is the in-memory LRU in front of the store: its entries are more recent than any
  the store holds (their recency reaches the store by :meth:`Store.touch` when they leave it),
  so eviction takes them only after the rest, and the keys being written last of all.
* A ``shared`` store can be changed by other processes. Before answering from its LRU, the
  cache asks :meth:`Store.changes` which keys were corrected since it last asked and drops
  them from the LRU, so a correction made through one process is answered by every other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .audit import Edit, Logged
from .entries import CacheEntry, CacheError, Correction

__all__ = [
    "HUMAN",
    "NO_RECENT",
    "SAVED",
    "UNSAVED",
    "Answer",
    "Changes",
    "EditResult",
    "Recent",
    "Store",
    "WriteResult",
    "changes_after",
]

#: put_answers outcomes: written; not written because a human correction is stored for the
#: key; not written (yet): the store could not be written, or is read-only.
SAVED, HUMAN, UNSAVED = "saved", "human", "unsaved"

#: decide(current entry or None, read the key's log) -> the edit to make, or None.
Decide = Callable[[CacheEntry | None, Callable[[], list[Logged]]], Edit | None]


class Answer(NamedTuple):
    """A model answer to store: the events, the 0/1 label, the votes, and when (epoch s)."""

    events: tuple[str, ...]
    label: int
    votes: dict[str, int]
    time: float


@dataclass(slots=True)
class WriteResult:
    """What :meth:`Store.put_answers` did: an outcome per key it tried to write (the answers
    given, and any earlier ones it was still holding), the keys it evicted, and the failure
    it absorbed, if any."""

    outcomes: dict[str, str]
    evicted: list[str] = field(default_factory=list)
    error: CacheError | None = None


@dataclass(slots=True)
class EditResult:
    """What :meth:`Store.edit` did: the edit made and its correction (both None: nothing to
    do), and the keys evicted."""

    edit: Edit | None
    correction: Correction | None
    evicted: list[str] = field(default_factory=list)


class Changes(NamedTuple):
    """What :meth:`Store.changes` saw: a mark to pass next time, and the keys corrected (set,
    deleted or undone) since the mark given; ``keys`` is None when anything may have changed
    (the store was cleared)."""

    mark: Any
    keys: list[str] | None


def changes_after(since: int, rows: Sequence[tuple[int, str]]) -> Changes:
    """:meth:`Store.changes` from the log's rows ``(id, key)`` with ``id >= since``, by id.

    Corrections are only ever removed all at once (``clear``): when the one seen last
    (``since``) is gone, the log was cleared.
    """
    if since and (not rows or rows[0][0] != since):
        return Changes(rows[-1][0] if rows else 0, None)
    keys = [key for id_, key in rows if id_ != since]
    return Changes(rows[-1][0] if rows else since, keys)


class Recent(Protocol):
    """The in-memory LRU as a store sees it."""

    def __contains__(self, key: object) -> bool: ...

    def oldest_first(self) -> list[CacheEntry]: ...


class _NoRecent:
    """An empty LRU (for writes made with nothing in memory, such as on closing)."""

    def __contains__(self, key: object) -> bool:
        return False

    def oldest_first(self) -> list[CacheEntry]:
        return []


NO_RECENT: Recent = _NoRecent()


@runtime_checkable
class Store(Protocol):
    """Where the entries of a :class:`SequenceCache` and their corrections are kept."""

    #: Where the entries live, for messages and stats (a path); None for process memory.
    location: str | None
    #: True when the store only serves what it holds (edits raise, answers are not kept).
    read_only: bool
    #: True when the store lives in this process's memory: no LRU is put in front of it.
    in_memory: bool
    #: True when other processes may change the store (see :meth:`changes`).
    shared: bool

    def fetch_many(self, wanted: Mapping[str, Sequence[str] | None]) -> dict[str, CacheEntry]:
        """The stored entries of the keys of ``wanted`` that are present. Each key maps to its
        events when the caller knows them (the store may use them instead of reading its
        own), else None. Reads only: recency is reported separately (:meth:`touch`)."""
        ...

    def put_answers(self, answers: Mapping[str, Answer], recent: Recent) -> WriteResult:
        """Store model answers, in one transaction, never over a human correction; evict over
        the bound. Must not raise for a storage failure: keep what could not be written (and
        retry it with the next call, if the store buffers writes) and report the failure."""
        ...

    def edit(
        self,
        key: str,
        decide: Decide,
        *,
        actor: str,
        comment: str | None,
        memory: CacheEntry | None,
        recent: Recent,
    ) -> EditResult:
        """Apply one explicit edit and record it, in one transaction: read ``key``'s entry
        (``memory``, the LRU's copy, when the store has none), ``decide`` what to do (it may
        read the key's log, oldest first), write the new state, record the correction, evict
        over the bound. Nothing is written or recorded if anything fails."""
        ...

    def history(self, key: str) -> list[Correction]:
        """The corrections recorded for ``key``, oldest first ([] if none)."""
        ...

    def corrected(self) -> list[CacheEntry]:
        """The stored entries that a human corrected (``source == "human"``), ordered by key:
        what a retraining learns from. Raises CacheError when the storage cannot be read."""
        ...

    def changes(self, since: Any) -> Changes:
        """The keys corrected by anyone since the mark ``since`` (None: none, just the mark
        to start from). Raises CacheError when the storage cannot be read."""
        ...

    def touch(self, key: str) -> None:
        """``key`` was just used (it left the in-memory LRU): record its recency, lazily."""
        ...

    def counts(self) -> tuple[int, int]:
        """The number of stored entries, and of human corrections among them."""
        ...

    def clear(self) -> None:
        """Remove every entry and the history of corrections."""
        ...

    def drop_model_answers(self) -> int:
        """Remove every model answer, stored or held for a retry, in one transaction; human
        corrections and the history of corrections stay. The number of answers removed.
        Other processes sharing the store are not told (their LRUs keep their copies)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters without touching the storage: ``evictions``, ``unsaved`` (answers held
        for a retry), ``db_bytes`` (size on disk), ``approx_memory_bytes`` (of the store's own
        buffers or entries)."""
        ...

    def close(self) -> None:
        """Write what is buffered (best effort: failures are logged) and release the storage."""
        ...
