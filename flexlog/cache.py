"""The sequence cache: answers for log sequences that were seen before.

FlexLog answers a sequence of template keys by majority vote of several models; most
sequences repeat, so their answers are kept here, keyed by the template-id tuple. A human
correction (:meth:`SequenceCache.update`) is stored with ``source="human"`` and is never
overwritten by a later model answer.

Two modes:

* ``SequenceCache(None)``: purely in memory, an LRU-ordered dict bounded by ``max_entries``.
* ``SequenceCache(path)``: a SQLite file (WAL mode) holding up to ``max_entries`` rows, with
  an in-memory LRU of up to ``memory_entries`` entries in front of it.

When the store is over ``max_entries`` it evicts, in one batch down to 90 % of the bound,
the least recently used *model* entries first; human corrections go only when nothing else
is left, again least recently used first.

The database is never allowed to break the hot path: when it is locked by another writer or
not writable, :meth:`~SequenceCache.add_many` keeps the answers in memory (and retries
writing them on the next call), :meth:`~SequenceCache.get_many` answers from memory only,
and both count the failure in ``stats()["errors"]`` and log a warning on the
``flexlog.cache`` logger. Explicit edits (``update``, ``delete``, ``clear``) raise
:class:`CacheError` instead, so a human correction is never lost silently.

Recency (``last_used``) costs no database write on a lookup: the entries in the in-memory LRU
are by construction the most recently used, so eviction spares them, and an entry's
``last_used`` is written (batched, with the next write) only when it leaves the LRU, and
for the whole LRU at :meth:`~SequenceCache.close`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from flexlog.data.records import InputError

__all__ = ["SCHEMA_VERSION", "CacheEntry", "CacheError", "SequenceCache", "key_of"]

logger = logging.getLogger("flexlog.cache")

#: Version of the on-disk schema, stored in ``PRAGMA user_version``.
SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a flexlog cache ("FLXC"); tells our files from other databases.
APPLICATION_ID = 0x464C5843
#: SQLite's default limit on host parameters is 999 in old builds; stay under it.
MAX_PARAMS = 900

_SEP = "\x1f"
_json_str = json.encoder.encode_basestring_ascii  # C-accelerated string escaping
_HEX = frozenset("0123456789abcdef")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BINARY = frozenset((0, 1))
_ONLY_STR = frozenset((str,))
_ONLY_INT = frozenset((int,))
# Write recency updates from the read path once this many keys are pending.
_TOUCH_FLUSH = 65_536
# A repeated warning of the same kind is logged at most once per this many seconds.
_WARN_EVERY_S = 30.0
# Entries sampled by stats() to estimate the memory footprint.
_SIZE_SAMPLE = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key       TEXT PRIMARY KEY,
    n_events  INTEGER NOT NULL,
    events    TEXT NOT NULL,
    label     INTEGER NOT NULL CHECK (label IN (0, 1)),
    source    TEXT NOT NULL CHECK (source IN ('model', 'human')),
    votes     TEXT NOT NULL DEFAULT '{}',
    created   REAL NOT NULL,
    updated   REAL NOT NULL,
    last_used INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_eviction ON entries (source, last_used);
"""


class CacheError(RuntimeError):
    """An explicit cache edit could not be carried out (database locked or read-only, closed)."""


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


def key_of(events: Sequence[str]) -> str:
    """The stable cache key of an event sequence: hex SHA-256 of the events joined by U+001F.

    The encoding is unambiguous because an empty sequence and events containing U+001F are
    rejected (ValueError).
    """
    if isinstance(events, (str, bytes)):
        raise TypeError("events must be a sequence of strings, not a single string")
    joined = _SEP.join(events)
    if not events or joined.count(_SEP) != len(events) - 1:
        raise ValueError(
            "events must be a non-empty sequence of strings without the U+001F separator"
        )
    return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()


def _check_label(label: object) -> int:
    if type(label) is int and (label == 0 or label == 1):
        return label
    if isinstance(label, bool) or label in (0, 1):
        return int(label)  # type: ignore[call-overload]
    raise ValueError(f"label must be 0 or 1, got {label!r}")


def _check_votes(votes: object) -> dict[str, int]:
    if votes is None:
        return {}
    if (
        type(votes) is dict
        and _ONLY_STR.issuperset(map(type, votes))
        and _ONLY_INT.issuperset(map(type, votes.values()))
        and _BINARY.issuperset(votes.values())
    ):
        return votes.copy()  # fast path; a copy, so the caller may reuse its dict
    if not isinstance(votes, dict):
        raise ValueError(f"votes must be a dict of voter name to 0/1, got {type(votes).__name__}")
    out = {}
    for name, vote in votes.items():
        if not isinstance(name, str):
            raise ValueError(f"voter names must be strings, got {name!r}")
        try:
            out[name] = _check_label(vote)
        except ValueError:
            raise ValueError(f"vote of {name!r} must be 0 or 1, got {vote!r}") from None
    return out


def _events_json(events: Sequence[str]) -> str:
    """JSON array text of the events (json.dumps builds an encoder per call: too slow here)."""
    return "[" + ",".join(map(_json_str, events)) + "]"


def _votes_json(votes: dict[str, int]) -> str:
    """JSON object text of normalised votes (int values)."""
    return "{" + ",".join([f"{_json_str(k)}:{v}" for k, v in votes.items()]) + "}"


def _intern(events: Iterable[str]) -> tuple[str, ...]:
    """The events as a tuple of interned strings: template keys repeat across entries."""
    try:
        return tuple(map(sys.intern, events))
    except TypeError:  # a str subclass cannot be interned
        return tuple(events)


def _is_unwritable(exc: sqlite3.Error) -> bool:
    """Whether an error means the file or its directory cannot be written."""
    name = getattr(exc, "sqlite_errorname", "")  # Python >= 3.11
    if name:
        return name.startswith("SQLITE_READONLY") or name.startswith("SQLITE_CANTOPEN")
    text = str(exc)
    return "readonly" in text or "unable to open" in text


def _chunks(seq: Sequence[Any], size: int = MAX_PARAMS) -> Iterable[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


class SequenceCache:
    """Cache of answers per event sequence: in memory, or SQLite behind an in-memory LRU.

    Thread-safe: one lock guards the memory structures and the connection, so one instance
    can be shared by the threads of a service. Use as a context manager or call
    :meth:`close`, which also writes pending recency updates and unsaved answers.
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

        self.path: Path | None = Path(path) if path is not None else None
        self.max_entries = max_entries
        self.memory_entries = memory_entries
        self.timeout = float(timeout)
        self.read_only = read_only

        self._lock = threading.Lock()
        self._lru: OrderedDict[str, CacheEntry] = OrderedDict()
        # Persistent mode only: recency ticks not yet written, and answers not yet saved.
        self._track = path is not None and not read_only
        self._touched: dict[str, int] = {}
        self._pending: OrderedDict[str, tuple[tuple[str, ...], int, dict[str, int], float]] = (
            OrderedDict()
        )
        self._pending_max = max(memory_entries, 10_000)
        self._tick = 0
        self._count = 0  # persistent rows, kept exact for this process's own writes
        self._mem_humans = 0  # human entries, in-memory mode only
        self._hits = 0
        self._memory_hits = 0
        self._misses = 0
        self._evictions = 0
        self._memory_evictions = 0
        self._errors = 0
        self._last_warning: dict[str, float] = {}
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        if self.path is not None:
            self._conn = self._open(self.path)

    # ------------------------------------------------------------------ opening

    def _open(self, path: Path) -> sqlite3.Connection:
        """Open (and if new, initialise) the database; InputError for anything unusable."""
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not a cache database")
        if path.exists():
            try:
                with path.open("rb") as fh:
                    header = fh.read(len(_SQLITE_MAGIC))
            except OSError as exc:
                raise InputError(f"{path}: cannot read cache database: {exc.strerror}") from exc
            if header and header != _SQLITE_MAGIC:
                raise InputError(f"{path}: not a SQLite database (corrupt or another kind of file)")
        elif self.read_only:
            raise InputError(f"{path}: cache database does not exist")
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"{path}: cannot create the cache directory: {exc}") from exc

        conn = self._connect(path, read_only=self.read_only)
        try:
            self._init_schema(conn, path, writable=not self.read_only)
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            wal = path.with_name(path.name + "-wal")
            if not _is_unwritable(exc) or wal.exists():
                raise InputError(f"{path}: cannot open cache database: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise InputError(f"{path}: not a usable SQLite database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        # A WAL database in a read-only directory cannot even be read normally (its -shm file
        # cannot be created). Nobody can be writing it, so read it as an immutable snapshot;
        # writes then fail, and are counted and logged like any other write failure.
        conn = self._connect(path, read_only=True, immutable=True)
        try:
            self._init_schema(conn, path, writable=False)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise InputError(f"{path}: cannot open cache database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        if not self.read_only:
            logger.warning("%s: cache database is not writable; new answers stay in memory", path)
        return conn

    def _connect(
        self, path: Path, *, read_only: bool, immutable: bool = False
    ) -> sqlite3.Connection:
        if read_only:
            target = path.resolve().as_uri() + ("?immutable=1" if immutable else "?mode=ro")
        else:
            target = str(path)
        try:
            return sqlite3.connect(
                target,
                uri=read_only,
                timeout=self.timeout,
                check_same_thread=False,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise InputError(f"{path}: cannot open cache database: {exc}") from exc

    def _init_schema(self, conn: sqlite3.Connection, path: Path, *, writable: bool) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        version = self._read_header(conn, path)
        if version == 0:
            if not writable:
                raise InputError(f"{path}: not a flexlog cache (no cache schema); open it writable")
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = self._read_header(conn, path)  # another process may have won
                if version == 0:
                    tables = conn.execute(
                        "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                    ).fetchone()[0]
                    if tables:
                        raise InputError(
                            f"{path}: not a flexlog cache (an unrelated SQLite database)"
                        )
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if writable:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    self._warn("wal", "%s: cannot use WAL journal (got %r)", path, mode)
            except sqlite3.OperationalError as exc:
                self._warn("wal", "%s: cannot switch to WAL journal: %s", path, exc)
        self._count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        self._tick = conn.execute("SELECT coalesce(max(last_used), 0) FROM entries").fetchone()[0]

    @staticmethod
    def _read_header(conn: sqlite3.Connection, path: Path) -> int:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id not in (0, APPLICATION_ID):
            raise InputError(f"{path}: not a flexlog cache (application_id {app_id:#x})")
        if version > SCHEMA_VERSION:
            raise InputError(
                f"{path}: cache schema version {version} is newer than this flexlog supports "
                f"({SCHEMA_VERSION}); upgrade flexlog or use another cache path"
            )
        if version and app_id != APPLICATION_ID:
            raise InputError(f"{path}: not a flexlog cache (user_version {version}, no app id)")
        return version

    # ------------------------------------------------------------------ helpers

    def _warn(self, kind: str, msg: str, *args: object) -> None:
        """Log a warning, at most once per ``_WARN_EVERY_S`` per kind (debug otherwise)."""
        now = time.monotonic()
        if now - self._last_warning.get(kind, -math.inf) >= _WARN_EVERY_S:
            self._last_warning[kind] = now
            logger.warning(msg, *args)
        else:
            logger.debug(msg, *args)

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError("the sequence cache is closed")

    def _resolve(self, events_or_key: Sequence[str] | str) -> tuple[str, tuple[str, ...] | None]:
        """Key and events (None when given a bare hex key)."""
        if isinstance(events_or_key, str):
            key = events_or_key.lower()
            if len(key) != 64 or not _HEX.issuperset(key):
                raise ValueError(
                    "a bare string must be a 64-digit hex cache key; pass events as a tuple "
                    f"of strings (got {events_or_key[:80]!r})"
                )
            return key, None
        events = tuple(events_or_key)
        return key_of(events), events

    def _remember(self, entry: CacheEntry) -> None:
        """Put an entry in the LRU as most recent, within the memory bound (persistent mode).

        An entry pushed out of the LRU gets its recency tick queued for the database.
        """
        key = entry.key
        if self.memory_entries == 0:
            if self._track:
                self._touched[key] = self._next_tick()
            return
        lru = self._lru
        lru[key] = entry
        lru.move_to_end(key)
        while len(lru) > self.memory_entries:
            old_key, _ = lru.popitem(last=False)
            self._memory_evictions += 1
            if self._track:
                self._touched[old_key] = self._next_tick()

    def _set_memory_entry(self, entry: CacheEntry) -> None:
        """Store an entry in in-memory mode, keeping the human count and the bound."""
        old = self._lru.get(entry.key)
        self._mem_humans += entry.is_human - (old is not None and old.is_human)
        self._lru[entry.key] = entry
        self._lru.move_to_end(entry.key)
        if len(self._lru) > self.max_entries:
            self._evict_memory()

    def _evict_target(self, count: int) -> int:
        """How many to evict: down to 90 % of the bound (at least to the bound)."""
        target = max(1, self.max_entries * 9 // 10)
        return max(0, count - target)

    def _evict_memory(self) -> None:
        n = self._evict_target(len(self._lru))
        victims = list(itertools.islice((k for k, e in self._lru.items() if not e.is_human), n))
        if len(victims) < n:
            victims += itertools.islice(
                (k for k, e in self._lru.items() if e.is_human), n - len(victims)
            )
        for key in victims:
            if self._lru.pop(key).is_human:
                self._mem_humans -= 1
        self._evictions += len(victims)

    def _evict_db(self, conn: sqlite3.Connection, fresh: Sequence[str] = ()) -> None:
        """Inside a write transaction: evict LRU model rows (then humans) when over the bound.

        Rows in the in-memory LRU are more recent than any other (their ``last_used`` is only
        written when they leave it), and ``fresh`` (the keys being written) more recent still,
        so those go last, in that order.
        """
        if self._count <= self.max_entries:
            return
        self._flush_touches(conn)
        self._count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        n = self._evict_target(self._count)
        victims: list[str] = []
        lru = self._lru
        spared = set(fresh)
        for source in ("model", "human"):
            if len(victims) >= n:
                break
            cursor = conn.execute(
                "SELECT key FROM entries WHERE source = ? ORDER BY last_used", (source,)
            )
            for (key,) in cursor:
                if key not in lru and key not in spared:
                    victims.append(key)
                    if len(victims) >= n:
                        break
            cursor.close()
            if len(victims) < n:
                victims += itertools.islice(
                    (
                        k
                        for k, e in lru.items()
                        if e.source == source and k not in self._pending and k not in spared
                    ),
                    n - len(victims),
                )
            if len(victims) < n:  # the fresh keys themselves, oldest first
                fresh_of_source = [
                    r[0]
                    for chunk in _chunks(list(spared))
                    for r in conn.execute(
                        f"SELECT key FROM entries WHERE source = ? AND key IN "
                        f"({','.join('?' * len(chunk))})",
                        (source, *chunk),
                    )
                ]
                order = {k: i for i, k in enumerate(fresh)}
                fresh_of_source.sort(key=order.__getitem__)
                victims += fresh_of_source[: n - len(victims)]
        removed = conn.executemany(
            "DELETE FROM entries WHERE key = ?", [(k,) for k in victims]
        ).rowcount
        self._count -= removed
        self._evictions += removed
        for key in victims:
            lru.pop(key, None)
            self._touched.pop(key, None)

    def _flush_touches(self, conn: sqlite3.Connection) -> None:
        """Inside a write transaction: write the queued recency ticks."""
        if self._touched:
            conn.executemany(
                "UPDATE entries SET last_used = ? WHERE key = ?",
                [(t, k) for k, t in self._touched.items()],
            )
            self._touched.clear()

    def _try_flush_touches(self) -> None:
        """From the read path: flush recency without waiting for a lock; drop it if it grows."""
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._flush_touches(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        except sqlite3.DatabaseError as exc:
            logger.debug("recency flush skipped: %s", exc)
            if len(self._touched) > 4 * _TOUCH_FLUSH:
                self._touched.clear()  # only some eviction order is lost

    def _db_failed(self, what: str, exc: sqlite3.Error) -> None:
        self._errors += 1
        self._warn(
            what, "sequence cache %s at %s failed (%s); serving from memory", what, self.path, exc
        )

    def _sources(self, conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, str]:
        """The source ("model"/"human") of each given key that is in the database."""
        found: dict[str, str] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            found.update(
                conn.execute(f"SELECT key, source FROM entries WHERE key IN ({marks})", chunk)
            )
        return found

    # ------------------------------------------------------------------ queries

    def get(self, events_or_key: Sequence[str] | str) -> CacheEntry | None:
        """The cached answer for a sequence (or a hex key), or None. Counts a hit or a miss."""
        key, events = self._resolve(events_or_key)
        if events is not None:
            return self.get_many([events])[0]
        with self._lock:
            self._check_open()
            entry = self._lru.get(key)
            if entry is not None:
                self._lru.move_to_end(key)
                self._memory_hits += 1
            elif self._conn is not None:
                try:
                    row = self._conn.execute(
                        "SELECT events, label, source, votes FROM entries WHERE key = ?", (key,)
                    ).fetchone()
                except sqlite3.DatabaseError as exc:
                    self._db_failed("lookup", exc)
                    row = None
                if row is not None:
                    entry = CacheEntry(
                        key, _intern(json.loads(row[0])), row[1], row[2], json.loads(row[3])
                    )
                    self._remember(entry)
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            return entry

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick

    def get_many(self, sequences: Sequence[Sequence[str]]) -> list[CacheEntry | None]:
        """Answers for many sequences, in order (None for a miss); the hot path.

        Looks in the LRU first, then fetches all misses from SQLite in one read transaction
        (chunks of at most ``MAX_PARAMS`` keys) and promotes what it finds into the LRU.
        """
        keys = [key_of(events) for events in sequences]
        results: list[CacheEntry | None] = [None] * len(keys)
        with self._lock:
            self._check_open()
            missing: dict[str, list[int]] = {}
            lookup, move = self._lru.get, self._lru.move_to_end
            for i, key in enumerate(keys):
                entry = lookup(key)
                if entry is None:
                    if key in missing:
                        missing[key].append(i)
                    else:
                        missing[key] = [i]
                else:
                    move(key)
                    results[i] = entry
            n_missing = sum(map(len, missing.values()))
            self._memory_hits += len(keys) - n_missing
            found = 0
            if missing and self._conn is not None:
                found = self._fetch_missing(sequences, missing, results)
            self._hits += len(keys) - n_missing + found
            self._misses += n_missing - found
            if self._track and len(self._touched) >= _TOUCH_FLUSH:
                self._try_flush_touches()
        return results

    def _fetch_missing(
        self,
        sequences: Sequence[Sequence[str]],
        missing: dict[str, list[int]],
        results: list[CacheEntry | None],
    ) -> int:
        """Fill ``results`` for the LRU misses from SQLite; the number of positions found."""
        conn = self._conn
        assert conn is not None
        rows: list[tuple[str, int, str, str]] = []
        try:
            conn.execute("BEGIN")
            try:
                for chunk in _chunks(list(missing)):
                    marks = ",".join("?" * len(chunk))
                    rows += conn.execute(
                        f"SELECT key, label, source, votes FROM entries WHERE key IN ({marks})",
                        chunk,
                    ).fetchall()
            finally:
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._db_failed("lookup", exc)
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            return 0
        found = 0
        loads = json.loads
        parsed: dict[str, dict[str, int]] = {}  # entries with equal votes share one dict
        for key, label, source, votes_text in rows:
            votes = parsed.get(votes_text)
            if votes is None:
                votes = parsed[votes_text] = loads(votes_text)
            positions = missing[key]
            entry = CacheEntry(key, _intern(sequences[positions[0]]), label, source, votes)
            for i in positions:
                results[i] = entry
            found += len(positions)
            self._remember(entry)
        return found

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
        batch: dict[str, tuple[tuple[str, ...], int, dict[str, int], float]] = {}
        for item in items:
            try:
                events, label, votes = item
            except (TypeError, ValueError):
                raise ValueError(
                    f"add_many items must be (events, label, votes) tuples, got {item!r:.80}"
                ) from None
            events = _intern(events)
            batch[key_of(events)] = (events, _check_label(label), _check_votes(votes), now)
        with self._lock:
            self._check_open()
            if not batch:
                return
            if self._conn is None:
                for key, (events, label, votes, _) in batch.items():
                    old = self._lru.get(key)
                    if old is None or not old.is_human:
                        self._set_memory_entry(CacheEntry(key, events, label, "model", votes))
                return
            if self.read_only:
                self._keep_in_memory(batch, pending=False)
                return
            # Earlier unsaved answers go first, so this call's answers win for the same key.
            todo = OrderedDict(self._pending)
            todo.update(batch)
            try:
                saved = self._write_model_rows(todo)
            except sqlite3.DatabaseError as exc:
                self._db_failed("write", exc)
                self._keep_in_memory(todo, pending=True)
                return
            self._pending.clear()
            for key, (events, label, votes, _) in todo.items():
                if saved.get(key):
                    self._remember(CacheEntry(key, events, label, "model", votes))
                else:
                    self._lru.pop(key, None)  # human in the database: next lookup fetches it

    def _write_model_rows(
        self, todo: dict[str, tuple[tuple[str, ...], int, dict[str, int], float]]
    ) -> dict[str, bool]:
        """One transaction: insert new keys, update model rows, skip humans. key -> written."""
        conn = self._conn
        assert conn is not None
        tick = self._next_tick()
        count_before = self._count
        conn.execute("BEGIN IMMEDIATE")
        try:
            existing = self._sources(conn, list(todo))
            inserts, updates, saved = [], [], {}
            for key, (events, label, votes, created) in todo.items():
                source = existing.get(key)
                if source is None:
                    inserts.append(
                        (
                            key,
                            len(events),
                            _events_json(events),
                            label,
                            _votes_json(votes),
                            created,
                            created,
                            tick,
                        )
                    )
                elif source == "model":
                    updates.append((label, _votes_json(votes), created, tick, key))
                saved[key] = source != "human"
            conn.executemany(
                "INSERT INTO entries (key, n_events, events, label, source, votes, created, "
                "updated, last_used) VALUES (?, ?, ?, ?, 'model', ?, ?, ?, ?)",
                inserts,
            )
            conn.executemany(
                "UPDATE entries SET label = ?, votes = ?, updated = ?, last_used = ? "
                "WHERE key = ? AND source = 'model'",
                updates,
            )
            self._flush_touches(conn)
            self._count += len(inserts)
            self._evict_db(conn, [k for k, ok in saved.items() if ok])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._count = count_before
            raise
        return saved

    def _keep_in_memory(
        self, todo: dict[str, tuple[tuple[str, ...], int, dict[str, int], float]], *, pending: bool
    ) -> None:
        """Serve answers that could not be written from the LRU (not over known humans)."""
        try:
            humans = {k for k, s in self._sources(self._conn, list(todo)).items() if s == "human"}
        except sqlite3.DatabaseError:
            humans = set()
        for key, value in todo.items():
            old = self._lru.get(key)
            if key in humans or (old is not None and old.is_human):
                self._pending.pop(key, None)
                continue
            events, label, votes, _ = value
            self._remember(CacheEntry(key, events, label, "model", votes))
            if pending:
                self._pending[key] = value
                self._pending.move_to_end(key)
        while len(self._pending) > self._pending_max:
            self._pending.popitem(last=False)

    def update(self, events_or_key: Sequence[str] | str, label: int) -> CacheEntry:
        """Record a human correction: set the label and mark the entry ``source="human"``.

        Inserts the entry when it is absent and ``events`` are given; with only a hex key an
        absent entry is a KeyError. Raises CacheError when the database cannot be written.
        """
        key, events = self._resolve(events_or_key)
        events = _intern(events) if events is not None else None
        label = _check_label(label)
        with self._lock:
            self._check_open()
            old = self._lru.get(key)
            pending = self._pending.get(key)
            if self._conn is None:
                if old is None and events is None:
                    raise KeyError(f"no cache entry for key {key}; pass the events to insert one")
                if old is None:
                    entry = CacheEntry(key, events, label, "human", {})  # type: ignore[arg-type]
                else:
                    entry = CacheEntry(key, old.events, label, "human", old.votes)
                self._set_memory_entry(entry)
                return entry
            if self.read_only:
                raise CacheError(f"{self.path}: cache opened read-only; correction not saved")
            conn = self._conn
            now = time.time()
            tick = self._next_tick()
            count_before = self._count
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT events, votes FROM entries WHERE key = ?", (key,)
                    ).fetchone()
                    if row is not None:
                        conn.execute(
                            "UPDATE entries SET label = ?, source = 'human', updated = ?, "
                            "last_used = ? WHERE key = ?",
                            (label, now, tick, key),
                        )
                        entry = CacheEntry(
                            key, _intern(json.loads(row[0])), label, "human", json.loads(row[1])
                        )
                    else:
                        if events is None and pending is not None:
                            events = pending[0]
                        if events is None:
                            raise KeyError(
                                f"no cache entry for key {key}; pass the events to insert one"
                            )
                        votes = pending[2] if pending is not None else {}
                        conn.execute(
                            "INSERT INTO entries (key, n_events, events, label, source, votes, "
                            "created, updated, last_used) VALUES (?, ?, ?, ?, 'human', ?, ?, ?, ?)",
                            (
                                key,
                                len(events),
                                _events_json(events),
                                label,
                                _votes_json(votes),
                                now,
                                now,
                                tick,
                            ),
                        )
                        self._count += 1
                        entry = CacheEntry(key, events, label, "human", votes)
                    self._flush_touches(conn)
                    self._evict_db(conn, [key])
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    self._count = count_before
                    raise
            except sqlite3.DatabaseError as exc:
                self._errors += 1
                raise CacheError(
                    f"{self.path}: cannot save the correction ({exc}); try again"
                ) from exc
            self._pending.pop(key, None)
            self._remember(entry)
            return entry

    def delete(self, events_or_key: Sequence[str] | str) -> bool:
        """Remove an entry; True if there was one. Raises CacheError if the db is not writable."""
        key, _ = self._resolve(events_or_key)
        with self._lock:
            self._check_open()
            old = self._lru.pop(key, None)
            unsaved = self._pending.pop(key, None) is not None
            self._touched.pop(key, None)
            if self._conn is None:
                if old is not None and old.is_human:
                    self._mem_humans -= 1
                return old is not None
            if self.read_only:
                raise CacheError(f"{self.path}: cache opened read-only; cannot delete")
            try:
                removed = self._conn.execute("DELETE FROM entries WHERE key = ?", (key,)).rowcount
            except sqlite3.DatabaseError as exc:
                self._errors += 1
                raise CacheError(f"{self.path}: cannot delete ({exc}); try again") from exc
            self._count = max(0, self._count - removed)
            return bool(removed) or old is not None or unsaved

    def clear(self) -> None:
        """Remove every entry (memory and database); the counters are kept."""
        with self._lock:
            self._check_open()
            if self._conn is not None:
                if self.read_only:
                    raise CacheError(f"{self.path}: cache opened read-only; cannot clear")
                try:
                    self._conn.execute("DELETE FROM entries")
                except sqlite3.DatabaseError as exc:
                    self._errors += 1
                    raise CacheError(f"{self.path}: cannot clear ({exc}); try again") from exc
            self._lru.clear()
            self._pending.clear()
            self._touched.clear()
            self._count = 0
            self._mem_humans = 0

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        """Number of stored entries (database rows in persistent mode)."""
        with self._lock:
            self._check_open()
            return self._entry_count()

    def _entry_count(self) -> int:
        if self._conn is None:
            return len(self._lru)
        try:
            self._count = self._conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self._db_failed("count", exc)
        return self._count

    def _approx_memory_bytes(self) -> int:
        """Estimate of the memory held by the LRU and the pending/recency buffers.

        Method: ``sys.getsizeof`` of the OrderedDict (its hash table) plus 32 bytes per entry
        for its linked-list node; plus the entry count times the mean size of up to
        ``_SIZE_SAMPLE`` entries (from the least recent end), where an entry is its key
        string, the CacheEntry, its votes dict and its events tuple; plus, once, the distinct
        event and voter-name strings seen in the sample: the cache interns event strings, so
        they are shared by all entries rather than owned by one.
        """
        lru = self._lru
        total = sys.getsizeof(lru) + 32 * len(lru)
        sample = list(itertools.islice(lru.items(), _SIZE_SAMPLE))
        if sample:
            size = 0
            shared: dict[int, int] = {}
            for key, e in sample:
                size += sys.getsizeof(key) + sys.getsizeof(e) + sys.getsizeof(e.votes)
                size += sys.getsizeof(e.events)
                for s in itertools.chain(e.events, e.votes):
                    shared[id(s)] = sys.getsizeof(s)
            total += size * len(lru) // len(sample) + sum(shared.values())
        total += sys.getsizeof(self._touched) + sys.getsizeof(self._pending)
        return total

    def stats(self) -> dict[str, Any]:
        """Counters and sizes of this cache.

        ``entries``: stored entries (database rows); ``memory_entries``: LRU size;
        ``hits``/``misses``/``lookups``/``hit_rate``: lookups made through this instance
        (``memory_hits`` of them answered from the LRU); ``evictions``: entries removed by the
        ``max_entries`` bound (``memory_evictions``: pushed out of the LRU only);
        ``errors``: database failures absorbed; ``unsaved``: answers waiting to be written;
        ``approx_memory_bytes``: see :meth:`_approx_memory_bytes`; ``db_bytes``: database
        file plus its ``-wal`` file. ``human_entries`` is None if the database is unreadable.
        """
        with self._lock:
            self._check_open()
            lookups = self._hits + self._misses
            if self._conn is None:
                humans = self._mem_humans
            else:
                try:
                    humans = self._conn.execute(
                        "SELECT count(*) FROM entries WHERE source = 'human'"
                    ).fetchone()[0]
                except sqlite3.DatabaseError as exc:
                    self._db_failed("count", exc)
                    humans = None
            db_bytes = 0
            if self.path is not None:
                for p in (self.path, self.path.with_name(self.path.name + "-wal")):
                    with contextlib.suppress(OSError):
                        db_bytes += p.stat().st_size
            return {
                "path": str(self.path) if self.path is not None else None,
                "entries": self._entry_count(),
                "memory_entries": len(self._lru),
                "human_entries": humans,
                "lookups": lookups,
                "hits": self._hits,
                "memory_hits": self._memory_hits,
                "misses": self._misses,
                "hit_rate": self._hits / lookups if lookups else 0.0,
                "evictions": self._evictions,
                "memory_evictions": self._memory_evictions,
                "errors": self._errors,
                "unsaved": len(self._pending),
                "approx_memory_bytes": self._approx_memory_bytes(),
                "db_bytes": db_bytes,
                "read_only": self.read_only,
            }

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Write pending recency updates and unsaved answers (best effort), then close."""
        with self._lock:
            if self._closed:
                return
            conn = self._conn
            if conn is not None and self._track:
                for key in self._lru:  # oldest first: keep the LRU's order on disk
                    self._touched[key] = self._next_tick()
            if conn is not None and self._track and (self._touched or self._pending):
                try:
                    self._write_model_rows(OrderedDict(self._pending))
                    self._pending.clear()
                except sqlite3.DatabaseError as exc:
                    self._db_failed("write", exc)
                    if self._pending:
                        logger.warning(
                            "sequence cache %s: %d answers not saved",
                            self.path,
                            len(self._pending),
                        )
            if conn is not None:
                conn.close()
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
        where = str(self.path) if self.path is not None else "memory"
        return f"SequenceCache({where!r}, max_entries={self.max_entries})"
