"""The sequence cache: answers for log sequences that were seen before.

FlexLog answers a sequence of template keys by majority vote of several models; most
sequences repeat, so their answers are kept here, keyed by the template-id tuple. A human
correction (:meth:`SequenceCache.update`) is stored with ``source="human"`` and is never
overwritten by a later model answer; every correction is recorded, can be read back
(:meth:`~SequenceCache.history`) and undone (:meth:`~SequenceCache.undo`); the corrected
entries are listed by :meth:`~SequenceCache.corrected` (to retrain a model on them).

:class:`SequenceCache` is a thin facade: an in-memory LRU (:mod:`flexlog.cache.memory`) in
front of a store (:mod:`flexlog.cache.store`):

* ``SequenceCache(None)``: a :class:`~flexlog.cache.memory_store.MemoryStore`, bounded by
  ``max_entries``; it is all in memory already, so there is no LRU in front of it.
* ``SequenceCache(path)``: a :class:`~flexlog.cache.sqlite.SQLiteStore` (a SQLite file in WAL
  mode) holding up to ``max_entries`` rows, with an LRU of up to ``memory_entries`` entries
  in front of it.
* ``SequenceCache("postgresql://...")``: a :class:`~flexlog.cache.postgres.PostgresStore`,
  likewise, on a server that several processes and machines share.

A file or a server can be changed by other processes: before answering from its LRU, the
cache asks the store which keys were corrected elsewhere since it last asked, and forgets
them, so a human correction made through one process is answered by all of them.

When a store is over ``max_entries`` it evicts (:mod:`flexlog.cache.eviction`), in one batch
down to 90 % of the bound, the least recently used *model* entries first; human corrections
go only when nothing else is left, again least recently used first. Their history stays.

The database is never allowed to break the hot path: when it is locked by another writer or
not writable, :meth:`~SequenceCache.add_many` keeps the answers in memory (and retries
writing them on the next call), :meth:`~SequenceCache.get_many` answers from memory only,
and both count the failure in ``stats()["errors"]`` and log a warning on the
``flexlog.cache`` logger. Explicit edits (``update``, ``delete``, ``undo``, ``clear``),
``history`` and ``corrected`` raise :class:`CacheError` instead, so a human correction is
never lost silently.
The cache raises no other error of its own (no ``sqlite3.Error``); bad arguments raise
ValueError, TypeError or KeyError.

Recency (``last_used``) costs no database write on a lookup: the entries in the in-memory LRU
are by construction the most recently used, so eviction spares them, and an entry's
``last_used`` is written (batched, with the next write) only when it leaves the LRU, and
for the whole LRU at :meth:`~SequenceCache.close`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from flexlog.data.records import InputError

from .audit import Edit, check_actor, check_comment, plan_delete, plan_set, plan_undo
from .entries import CacheEntry, CacheError, Correction
from .keys import check_label, check_votes, intern_events, key_of, resolve
from .memory import MemoryLRU
from .memory_store import MemoryStore
from .postgres import PostgresStore, describe_url, is_postgres_url
from .sqlite import SQLiteStore
from .store import HUMAN, UNSAVED, Answer, Decide, Store

__all__ = ["SequenceCache"]

logger = logging.getLogger("flexlog.cache")

# A repeated warning of the same kind is logged at most once per this many seconds.
_WARN_EVERY_S = 30.0


class SequenceCache:
    """Cache of answers per event sequence: in memory, or a SQLite file or a PostgreSQL
    database (``location``: a path or a ``postgresql://`` URL) behind an in-memory LRU.

    Thread-safe: one lock guards the LRU and the store, so one instance can be shared by the
    threads of a service. Use as a context manager or call :meth:`close`, which also writes
    pending recency updates and unsaved answers.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        max_entries: int = 1_000_000,
        memory_entries: int = 100_000,
        timeout: float = 2.0,
        read_only: bool = False,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, got {max_entries!r}")
        if (
            isinstance(memory_entries, bool)
            or not isinstance(memory_entries, int)
            or memory_entries < 0
        ):
            raise ValueError(f"memory_entries must be an integer >= 0, got {memory_entries!r}")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout < 0
        ):
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
        if path is not None and not isinstance(path, (str, Path)):
            raise ValueError(f"path must be a str, a Path or None, got {type(path).__name__}")
        if path is not None and str(path) in ("", ":memory:"):
            raise ValueError("use path=None for an in-memory cache")
        if path is None and read_only:
            raise ValueError("read_only needs a path: an in-memory cache is always writable")

        url = path if is_postgres_url(path) else None
        #: The SQLite file (None: in memory, or on a server).
        self.path: Path | None = Path(path) if path is not None and url is None else None
        #: Where the entries are, for messages: the file, the server (no password), or None.
        self.location = describe_url(url) if url is not None else self.path and str(self.path)
        self.max_entries = max_entries
        self.memory_entries = memory_entries
        self.timeout = float(timeout)
        self.read_only = read_only

        store: Store
        if path is None:
            store = MemoryStore(max_entries)
        else:
            kind = PostgresStore if url is not None else SQLiteStore
            store = kind(
                url if url is not None else self.path,
                max_entries=max_entries,
                timeout=self.timeout,
                read_only=read_only,
                pending_max=max(memory_entries, 10_000),
            )
        self._store = store
        self._lock = threading.Lock()
        self._lru = MemoryLRU(0 if store.in_memory else memory_entries, store.touch)
        self._seen: Any = None
        if store.shared:
            try:
                self._seen = store.changes(None).mark
            except CacheError as exc:
                store.close()
                raise InputError(f"{store.location}: cannot read the cache: {exc}") from exc
        self._hits = 0
        self._memory_hits = 0
        self._misses = 0
        self._errors = 0
        self._known_entries = 0  # the last count read, served when the store cannot be read
        self._last_warning: dict[str, float] = {}
        self._closed = False

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError("the sequence cache is closed")

    def _failed(self, what: str, exc: CacheError) -> None:
        """Count a store failure absorbed on the hot path and log it (rate-limited)."""
        self._errors += 1
        where = self._store.location or "memory"
        now = time.monotonic()
        log = logger.debug
        if now - self._last_warning.get(what, -math.inf) >= _WARN_EVERY_S:
            self._last_warning[what] = now
            log = logger.warning
        log("sequence cache %s at %s failed (%s); serving from memory", what, where, exc)

    def _refused(self, what: str, exc: CacheError) -> CacheError:
        """The CacheError of an explicit request the store could not carry out."""
        self._errors += 1
        where = self._store.location or "memory"
        retry = "" if self._store.read_only else "; try again"
        return CacheError(f"{where}: cannot {what} ({exc}){retry}")

    def _sync(self) -> None:
        """Forget what the LRU holds of keys corrected by other processes (see the module
        doc); if the store cannot tell, the LRU answers as it is."""
        if not self._store.shared or not len(self._lru):
            return
        try:
            changes = self._store.changes(self._seen)
        except CacheError as exc:
            self._failed("sync", exc)
            return
        self._seen = changes.mark
        if changes.keys is None:
            self._lru.clear()
        else:
            self._lru.discard_many(changes.keys)

    def _lookup(self, wanted: dict[str, Sequence[str] | None]) -> dict[str, CacheEntry]:
        """Fetch LRU misses from the store (none if it fails) and promote them into the LRU."""
        try:
            found = self._store.fetch_many(wanted)
        except CacheError as exc:
            self._failed("lookup", exc)
            return {}
        for entry in found.values():
            self._lru.put(entry)
        return found

    def _edit(
        self, key: str, decide: Decide, actor: str, comment: str | None, what: str
    ) -> Edit | None:
        """Apply one explicit edit through the store, then mirror it in the LRU."""
        try:
            result = self._store.edit(
                key,
                decide,
                actor=actor,
                comment=comment,
                memory=self._lru.peek(key),
                recent=self._lru,
            )
        except CacheError as exc:
            raise self._refused(what, exc) from exc
        self._lru.discard_many(result.evicted)
        edit = result.edit
        if edit is not None:
            if edit.after is None or key in result.evicted:
                self._lru.discard(key)
            else:
                self._lru.put(edit.after)
        return edit

    # ------------------------------------------------------------------ queries

    def get(self, events_or_key: Sequence[str] | str) -> CacheEntry | None:
        """The cached answer for a sequence (or a hex key), or None. Counts a hit or a miss."""
        key, events = resolve(events_or_key)
        if events is not None:
            return self.get_many([events])[0]
        with self._lock:
            self._check_open()
            self._sync()
            entry = self._lru.get(key)
            if entry is not None:
                self._memory_hits += 1
            else:
                entry = self._lookup({key: None}).get(key)
                if entry is not None and self._store.in_memory:
                    self._memory_hits += 1  # no LRU in front: the store is the memory
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            return entry

    def get_many(self, sequences: Sequence[Sequence[str]]) -> list[CacheEntry | None]:
        """Answers for many sequences, in order (None for a miss); the hot path.

        Looks in the LRU first, then fetches all misses from the store in one read (SQLite:
        one transaction, in chunks of at most ``MAX_PARAMS`` keys) and promotes what it finds
        into the LRU.
        """
        keys = [key_of(events) for events in sequences]
        results: list[CacheEntry | None] = [None] * len(keys)
        with self._lock:
            self._check_open()
            self._sync()
            missing: dict[str, list[int]] = {}
            for i, entry in enumerate(self._lru.get_many(keys)):
                if entry is None:
                    key = keys[i]
                    if key in missing:
                        missing[key].append(i)
                    else:
                        missing[key] = [i]
                else:
                    results[i] = entry
            n_missing = sum(map(len, missing.values()))
            self._memory_hits += len(keys) - n_missing
            found = 0
            if missing:
                wanted = {key: sequences[positions[0]] for key, positions in missing.items()}
                for key, entry in self._lookup(wanted).items():
                    positions = missing[key]
                    for i in positions:
                        results[i] = entry
                    found += len(positions)
                if self._store.in_memory:
                    self._memory_hits += found  # no LRU in front: the store is the memory
            self._hits += len(keys) - n_missing + found
            self._misses += n_missing - found
        return results

    def history(self, events_or_key: Sequence[str] | str) -> list[Correction]:
        """The corrections recorded for a sequence (or a hex key), oldest first; [] if none.

        The history outlives the entry (deleted or evicted); :meth:`clear` erases it.
        """
        key, _ = resolve(events_or_key)
        with self._lock:
            self._check_open()
            try:
                return self._store.history(key)
            except CacheError as exc:
                raise self._refused("read the history", exc) from exc

    def corrected(self) -> list[CacheEntry]:
        """The entries a human corrected (``source="human"``), ordered by key, as the store
        holds them now (corrections made through other processes included): what
        ``flexlog retrain`` learns from. Deleted or evicted corrections are not entries any
        more; their history stays. Raises CacheError when the store cannot be read."""
        with self._lock:
            self._check_open()
            try:
                return self._store.corrected()
            except CacheError as exc:
                raise self._refused("list the corrections", exc) from exc

    # ------------------------------------------------------------------ writes

    def add(self, events: Sequence[str], label: int, votes: dict[str, int] | None = None) -> None:
        """Store one model answer (see :meth:`add_many`)."""
        self.add_many([(events, label, votes)])

    def add_many(self, items: Iterable[tuple[Sequence[str], int, dict[str, int] | None]]) -> None:
        """Store model answers ``(events, label, votes)``; never overwrites a human correction.

        One transaction per call. If the database cannot be written (locked, read-only), the
        answers are kept in memory, retried on the next call, and the error is counted; this
        method then does not raise. Invalid items raise ValueError before anything is stored.
        """
        now = time.time()
        batch: dict[str, Answer] = {}
        for item in items:
            try:
                events, label, votes = item
            except (TypeError, ValueError):
                raise ValueError(
                    f"add_many items must be (events, label, votes) tuples, got {item!r:.80}"
                ) from None
            events = intern_events(events)
            batch[key_of(events)] = Answer(events, check_label(label), check_votes(votes), now)
        with self._lock:
            self._check_open()
            if not batch:
                return
            result = self._store.put_answers(batch, self._lru)
            if result.error is not None:
                self._failed("write", result.error)
            lru = self._lru
            evicted = set(result.evicted)
            lru.discard_many(evicted)
            for key, outcome in result.outcomes.items():
                if outcome == HUMAN:
                    lru.discard(key)  # a human answer is stored: the next lookup fetches it
                    continue
                if key in evicted:
                    continue  # written, then evicted by the bound in the same transaction
                answer = batch.get(key)
                if answer is None:
                    continue  # an earlier answer, written now
                if outcome == UNSAVED:
                    old = lru.peek(key)
                    if old is not None and old.is_human:
                        continue
                lru.put(CacheEntry(key, answer.events, answer.label, "model", answer.votes))

    def update(
        self,
        events_or_key: Sequence[str] | str,
        label: int,
        *,
        actor: str = "api",
        comment: str | None = None,
    ) -> CacheEntry:
        """Record a human correction: set the label and mark the entry ``source="human"``.

        Inserts the entry when it is absent and ``events`` are given; with only a hex key an
        absent entry is a KeyError. The correction is recorded (see :meth:`history`) in the
        same transaction. Raises CacheError when the store cannot be written.
        """
        key, events = resolve(events_or_key)
        events = intern_events(events) if events is not None else None
        label = check_label(label)
        actor, comment = check_actor(actor), check_comment(comment)

        def decide(current: CacheEntry | None, _log: Any) -> Edit:
            return plan_set(key, current, events, label)

        with self._lock:
            self._check_open()
            edit = self._edit(key, decide, actor, comment, "save the correction")
        assert edit is not None and edit.after is not None
        return edit.after

    def delete(
        self,
        events_or_key: Sequence[str] | str,
        *,
        actor: str = "api",
        comment: str | None = None,
    ) -> bool:
        """Remove an entry, recording the deletion; True if there was one (False: nothing is
        recorded). Raises CacheError when the store cannot be written."""
        key, _ = resolve(events_or_key)
        actor, comment = check_actor(actor), check_comment(comment)

        def decide(current: CacheEntry | None, _log: Any) -> Edit | None:
            return plan_delete(key, current)

        with self._lock:
            self._check_open()
            edit = self._edit(key, decide, actor, comment, "delete")
        return edit is not None

    def undo(
        self,
        events_or_key: Sequence[str] | str,
        *,
        actor: str = "api",
        comment: str | None = None,
    ) -> CacheEntry | None:
        """Revert the latest correction of a sequence that is not undone yet, and record it.

        Restores the entry's previous label and source (re-creating an entry that correction
        deleted, or removing one it created); undoing again reverts the correction before.
        Returns the entry as it is now (None: there is none). KeyError when there is nothing
        to undo; CacheError when the store cannot be written.
        """
        key, _ = resolve(events_or_key)
        actor, comment = check_actor(actor), check_comment(comment)

        def decide(current: CacheEntry | None, log: Any) -> Edit:
            return plan_undo(key, current, log())

        with self._lock:
            self._check_open()
            edit = self._edit(key, decide, actor, comment, "undo")
        assert edit is not None
        return edit.after

    def clear(self) -> None:
        """Remove every entry and the history of corrections (memory and database); the
        counters are kept."""
        with self._lock:
            self._check_open()
            try:
                self._store.clear()
            except CacheError as exc:
                raise self._refused("clear", exc) from exc
            self._lru.clear()
            self._known_entries = 0

    def drop_model_answers(self) -> int:
        """Remove every model answer (memory and database, answers held for a retry
        included), keeping the human corrections and their history: for a new model, whose
        answers the old one's must not stand in for. The number of answers removed. Other
        processes sharing the database keep what their LRUs hold. Raises CacheError when the
        store cannot be written."""
        with self._lock:
            self._check_open()
            try:
                dropped = self._store.drop_model_answers()
            except CacheError as exc:
                raise self._refused("drop the model answers", exc) from exc
            for entry in self._lru.drain():  # oldest first: the humans keep their order
                if entry.is_human:
                    self._lru.put(entry)
            return dropped

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        """Number of stored entries (database rows in persistent mode)."""
        with self._lock:
            self._check_open()
            return self._counts()[0]

    def _counts(self) -> tuple[int, int | None]:
        """Entries and human entries; the last known entries and None if unreadable."""
        try:
            entries, humans = self._store.counts()
        except CacheError as exc:
            self._failed("count", exc)
            return self._known_entries, None
        self._known_entries = entries
        return entries, humans

    def stats(self) -> dict[str, Any]:
        """Counters and sizes of this cache.

        ``entries``: stored entries (database rows); ``memory_entries``: entries held in
        memory (the LRU; every entry of an in-memory cache); ``hits``/``misses``/``lookups``/
        ``hit_rate``: lookups made through this instance (``memory_hits`` of them answered
        from memory); ``evictions``: entries removed by the ``max_entries`` bound
        (``memory_evictions``: pushed out of the LRU only); ``errors``: store failures
        (absorbed, or raised as CacheError); ``unsaved``: answers waiting to be written;
        ``approx_memory_bytes``: estimate of the memory held by the LRU and the store's
        buffers or entries (see :func:`flexlog.cache.memory.approx_entries_bytes`);
        ``db_bytes``: database file plus its ``-wal`` file. ``human_entries`` is None if the
        database is unreadable (``entries`` is then the last count read).
        """
        with self._lock:
            self._check_open()
            lookups = self._hits + self._misses
            entries, humans = self._counts()
            store = self._store.stats()
            return {
                "path": self.location,
                "entries": entries,
                "memory_entries": entries if self._store.in_memory else len(self._lru),
                "human_entries": humans,
                "lookups": lookups,
                "hits": self._hits,
                "memory_hits": self._memory_hits,
                "misses": self._misses,
                "hit_rate": self._hits / lookups if lookups else 0.0,
                "evictions": store["evictions"],
                "memory_evictions": self._lru.evictions,
                "errors": self._errors,
                "unsaved": store["unsaved"],
                "approx_memory_bytes": self._lru.approx_bytes() + store["approx_memory_bytes"],
                "db_bytes": store["db_bytes"],
                "read_only": self.read_only,
            }

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Write pending recency updates and unsaved answers (best effort), then close."""
        with self._lock:
            if self._closed:
                return
            for entry in self._lru.drain():  # oldest first: keep the LRU's order on disk
                self._store.touch(entry.key)
            self._store.close()
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SequenceCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.location or "memory"
        return f"SequenceCache({where!r}, max_entries={self.max_entries})"
