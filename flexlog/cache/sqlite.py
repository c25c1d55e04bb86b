"""The SQLite store: the entries of a persistent cache, and their corrections, in one file.

* WAL mode, so readers never wait for the writer; ``synchronous=NORMAL``.
* ``PRAGMA application_id`` tells a flexlog cache from other SQLite files and
  ``PRAGMA user_version`` is the schema version: a newer file is refused, a version-1 file
  (before the ``corrections`` table) is upgraded in place when it can be written, and read as
  it is otherwise (its history is then empty).
* Busy handling: a write waits up to ``timeout`` seconds for another writer.
* Write-behind: model answers that cannot be written (locked, unwritable) are held in memory
  and written with the next write (:meth:`SQLiteStore.put_answers` reports the failure but
  does not raise); human edits are never held back, they fail with CacheError instead.
* Recency (``last_used``, an increasing tick) is written in batches: a key's tick is queued
  when it leaves the in-memory LRU (:meth:`SQLiteStore.touch`) and written with the next
  write transaction, or from the read path once many are queued (never waiting for a lock).

The ``entries`` table is the same as in schema version 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from flexlog.data.records import InputError

from .audit import LOG_ROW_COLUMNS, Logged
from .entries import CacheEntry, CacheError, Correction
from .eviction import evict_from_store
from .keys import events_json, intern_events, votes_json
from .pending import PendingAnswers
from .store import (
    HUMAN,
    NO_RECENT,
    SAVED,
    UNSAVED,
    Answer,
    Changes,
    Decide,
    EditResult,
    Recent,
    WriteResult,
    changes_after,
)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SQLiteStore", "transaction"]

logger = logging.getLogger("flexlog.cache")

#: Version of the on-disk schema, stored in ``PRAGMA user_version``. 1: entries; 2: and the
#: corrections (audit trail).
SCHEMA_VERSION = 2
#: ``PRAGMA application_id`` of a flexlog cache ("FLXC"); tells our files from other databases.
APPLICATION_ID = 0x464C5843
#: SQLite's default limit on host parameters is 999 in old builds; stay under it.
MAX_PARAMS = 900

_SQLITE_MAGIC = b"SQLite format 3\x00"
# Write recency updates from the read path once this many keys are pending.
_TOUCH_FLUSH = 65_536

_ENTRIES_SCHEMA = """
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

# Version 2. A correction keeps the key's events and the previous votes, so that undo can
# re-create an entry that was deleted or evicted since.
_CORRECTIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS corrections (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    key             TEXT NOT NULL,
    time            REAL NOT NULL,
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL CHECK (action IN ('set', 'delete', 'undo')),
    previous_label  INTEGER CHECK (previous_label IN (0, 1)),
    previous_source TEXT CHECK (previous_source IN ('model', 'human')),
    previous_votes  TEXT,
    new_label       INTEGER CHECK (new_label IN (0, 1)),
    new_source      TEXT CHECK (new_source IN ('model', 'human')),
    comment         TEXT,
    undoes          INTEGER REFERENCES corrections (id),
    events          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS corrections_key ON corrections (key, id);
"""

_LOG_COLUMNS = (
    "id, key, time, actor, action, previous_label, previous_source, new_label, new_source, "
    "comment, undoes, events, previous_votes"
)


def _statements(script: str) -> Iterator[str]:
    return (s for s in script.split(";") if s.strip())


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


def _failure(exc: sqlite3.Error) -> CacheError:
    error = CacheError(str(exc) or type(exc).__name__)
    error.__cause__ = exc
    return error


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """A transaction on ``conn``: committed when the block ends (a ``return`` in it too),
    rolled back when it raises."""
    conn.execute(begin)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


class SQLiteStore:
    """A cache's entries and corrections in the SQLite file ``path`` (see the module doc).

    Implements :class:`~flexlog.cache.store.Store`. Opening raises InputError for anything
    that is not a usable flexlog cache (a directory, another kind of file, an unrelated or
    newer database, a missing file opened ``read_only``). ``pending_max`` bounds the model
    answers held for a retry (the oldest are dropped beyond it).
    """

    in_memory = False
    shared = True  # other processes may open the same file

    def __init__(
        self,
        path: Path,
        *,
        max_entries: int,
        timeout: float = 2.0,
        read_only: bool = False,
        pending_max: int = 10_000,
    ) -> None:
        self.path = path
        self.location = str(path)
        self.max_entries = max_entries
        self.timeout = timeout
        self.read_only = read_only
        self._pending = PendingAnswers(pending_max)
        self._touched: dict[str, int] = {}  # recency ticks not yet written
        self._tick = 0
        self._count = 0  # rows, kept exact for this process's own writes
        self._evictions = 0
        self._has_log = False  # the corrections table exists (schema version 2)
        self._conn: sqlite3.Connection | None = None
        self._conn = self._open(path)

    # ------------------------------------------------------------------ opening

    def _open(self, path: Path) -> sqlite3.Connection:
        """Open (and if new, initialise; if old, upgrade) the database."""
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
            with transaction(conn):
                version = self._read_header(conn, path)  # another process may have won
                if version == 0:
                    tables = conn.execute(
                        "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                    ).fetchone()[0]
                    if tables:
                        raise InputError(
                            f"{path}: not a flexlog cache (an unrelated SQLite database)"
                        )
                    for statement in _statements(_ENTRIES_SCHEMA + _CORRECTIONS_SCHEMA):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    version = SCHEMA_VERSION
        if writable:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    logger.warning("%s: cannot use WAL journal (got %r)", path, mode)
            except sqlite3.OperationalError as exc:
                logger.warning("%s: cannot switch to WAL journal: %s", path, exc)
        self._has_log = version >= 2
        if not self._has_log and writable:
            self._upgrade(conn, path)
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

    def _upgrade(self, conn: sqlite3.Connection, path: Path) -> None:
        """Upgrade a version-1 file in place (best effort: retried by the first edit)."""
        try:
            with transaction(conn):
                self._migrate(conn)
        except sqlite3.OperationalError as exc:
            logger.warning(
                "%s: cannot upgrade the cache schema to version %d now (%s); the history of "
                "corrections is unavailable until it can be",
                path,
                SCHEMA_VERSION,
                exc,
            )
            return
        self._has_log = True
        logger.info("%s: cache schema upgraded to version %d", path, SCHEMA_VERSION)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Inside a write transaction: bring the schema to ``SCHEMA_VERSION``."""
        if conn.execute("PRAGMA user_version").fetchone()[0] < 2:
            for statement in _statements(_CORRECTIONS_SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _log_exists(self, conn: sqlite3.Connection) -> bool:
        if self._has_log:
            return True
        return (
            conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'corrections'"
            ).fetchone()
            is not None
        )

    # ------------------------------------------------------------------ reads

    @contextlib.contextmanager
    def _writing(self, conn: sqlite3.Connection) -> Iterator[None]:
        """A write transaction whose failure also restores the store's row count."""
        count = self._count
        try:
            with transaction(conn):
                yield
        except BaseException:
            self._count = count
            raise

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CacheError(f"{self.location}: the cache database is closed")
        return self._conn

    def fetch_many(self, wanted: Mapping[str, Sequence[str] | None]) -> dict[str, CacheEntry]:
        conn = self._live()
        if len(self._touched) >= _TOUCH_FLUSH and not self.read_only:
            self._try_flush_touches(conn)
        keys = list(wanted)
        with_events = any(events is None for events in wanted.values())
        columns = "key, label, source, votes" + (", events" if with_events else "")
        rows: list[tuple] = []
        try:
            with transaction(conn, "BEGIN"):  # one snapshot for every chunk
                for chunk in _chunks(keys):
                    marks = ",".join("?" * len(chunk))
                    rows += conn.execute(
                        f"SELECT {columns} FROM entries WHERE key IN ({marks})", chunk
                    ).fetchall()
        except sqlite3.Error as exc:
            raise _failure(exc) from exc
        found: dict[str, CacheEntry] = {}
        loads = json.loads
        parsed: dict[str, dict[str, int]] = {}  # entries with equal votes share one dict
        for row in rows:
            key, label, source, votes_text = row[:4]
            votes = parsed.get(votes_text)
            if votes is None:
                votes = parsed[votes_text] = loads(votes_text)
            events = wanted[key]
            if events is None:
                events = loads(row[4])
            found[key] = CacheEntry(key, intern_events(events), label, source, votes)
        return found

    def history(self, key: str) -> list[Correction]:
        conn = self._live()
        try:
            if not self._log_exists(conn):
                return []  # a version-1 file that could not be upgraded: nothing recorded
            return [item.correction for item in self._read_log(conn, key)]
        except sqlite3.Error as exc:
            raise _failure(exc) from exc

    def corrected(self) -> list[CacheEntry]:
        try:
            rows = (
                self._live()
                .execute(
                    "SELECT key, events, label, votes FROM entries WHERE source = 'human' "
                    "ORDER BY key"
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise _failure(exc) from exc
        return [
            CacheEntry(key, intern_events(json.loads(events)), label, "human", json.loads(votes))
            for key, events, label, votes in rows
        ]

    @staticmethod
    def _read_log(conn: sqlite3.Connection, key: str) -> list[Logged]:
        rows = conn.execute(
            f"SELECT {_LOG_COLUMNS} FROM corrections WHERE key = ? ORDER BY id", (key,)
        ).fetchall()
        log = []
        for row in rows:
            correction = Correction(*row[:11])
            votes = json.loads(row[12]) if row[12] is not None else None
            log.append(Logged(correction, tuple(json.loads(row[11])), votes))
        return log

    def changes(self, since: Any) -> Changes:
        conn = self._live()
        try:
            if not self._log_exists(conn):
                return Changes(0, [])
            if since is None:
                last = conn.execute("SELECT coalesce(max(id), 0) FROM corrections").fetchone()[0]
                return Changes(last, [])
            rows = conn.execute(
                "SELECT id, key FROM corrections WHERE id >= ? ORDER BY id", (since,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise _failure(exc) from exc
        return changes_after(since, rows)

    def counts(self) -> tuple[int, int]:
        conn = self._live()
        try:
            n, humans = conn.execute(
                "SELECT count(*), coalesce(sum(source = 'human'), 0) FROM entries"
            ).fetchone()
        except sqlite3.Error as exc:
            raise _failure(exc) from exc
        self._count = n
        return n, humans

    def stats(self) -> dict[str, Any]:
        db_bytes = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(OSError):
                db_bytes += p.stat().st_size
        return {
            "evictions": self._evictions,
            "unsaved": len(self._pending),
            "db_bytes": db_bytes,
            "approx_memory_bytes": sys.getsizeof(self._touched) + self._pending.approx_bytes(),
        }

    # ------------------------------------------------------------------ writes

    def touch(self, key: str) -> None:
        if not self.read_only:
            self._tick += 1
            self._touched[key] = self._tick

    def put_answers(self, answers: Mapping[str, Answer], recent: Recent) -> WriteResult:
        if self.read_only:
            humans = self._humans_among(list(answers))
            return WriteResult({k: HUMAN if k in humans else UNSAVED for k in answers})
        todo = self._pending.with_new(answers)
        try:
            outcomes, evicted, removed = self._write_answers(todo, recent)
        except sqlite3.Error as exc:
            humans = self._humans_among(list(todo))
            return WriteResult(self._pending.hold(todo, humans), error=_failure(exc))
        self._pending.clear()
        self._evictions += removed
        return WriteResult(outcomes, evicted)

    def _write_answers(
        self, todo: Mapping[str, Answer], recent: Recent
    ) -> tuple[dict[str, str], list[str], int]:
        """One transaction: insert new keys, update model rows, skip humans; evict."""
        conn = self._live()
        self._tick += 1
        tick = self._tick
        with self._writing(conn):
            existing = self._sources(conn, list(todo))
            inserts, updates, outcomes = [], [], {}
            for key, (events, label, votes, created) in todo.items():
                source = existing.get(key)
                if source is None:
                    inserts.append(
                        (
                            key,
                            len(events),
                            events_json(events),
                            label,
                            votes_json(votes),
                            created,
                            created,
                            tick,
                        )
                    )
                elif source == "model":
                    updates.append((label, votes_json(votes), created, tick, key))
                outcomes[key] = HUMAN if source == "human" else SAVED
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
            fresh = [k for k, outcome in outcomes.items() if outcome == SAVED]
            evicted, removed = self._evict(conn, recent, fresh)
        return outcomes, evicted, removed

    def _humans_among(self, keys: Sequence[str]) -> set[str]:
        """The keys with a human correction stored, as far as the file can be read."""
        try:
            return {k for k, s in self._sources(self._live(), keys).items() if s == "human"}
        except (sqlite3.Error, CacheError):
            return set()

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
        if self.read_only:
            raise CacheError("cache opened read-only")
        conn = self._live()
        try:
            with self._writing(conn):
                if not self._has_log:
                    self._migrate(conn)
                current = self._read_entry(conn, key)
                in_db = current is not None
                if current is None:
                    current = self._pending.entry(key) or memory
                change = decide(current, lambda: self._read_log(conn, key))
                if change is None:
                    self._has_log = True
                    return EditResult(None, None)
                now = time.time()
                self._apply(conn, key, change.after, in_db, now)
                cursor = conn.execute(
                    f"INSERT INTO corrections ({LOG_ROW_COLUMNS}) VALUES ({', '.join('?' * 12)})",
                    change.log_row(now, actor, comment),
                )
                correction = change.correction(cursor.lastrowid, now, actor, comment)
                self._flush_touches(conn)
                fresh = [key] if change.after is not None else []
                evicted, removed = self._evict(conn, recent, fresh)
        except sqlite3.Error as exc:
            raise _failure(exc) from exc
        self._has_log = True
        self._evictions += removed
        self._pending.pop(key)
        if change.after is None:
            self._touched.pop(key, None)
        return EditResult(change, correction, evicted)

    @staticmethod
    def _read_entry(conn: sqlite3.Connection, key: str) -> CacheEntry | None:
        row = conn.execute(
            "SELECT events, label, source, votes FROM entries WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        events = intern_events(json.loads(row[0]))
        return CacheEntry(key, events, row[1], row[2], json.loads(row[3]))

    def _apply(
        self, conn: sqlite3.Connection, key: str, after: CacheEntry | None, in_db: bool, now: float
    ) -> None:
        """Inside a write transaction: make ``key``'s row ``after`` (None: no row)."""
        if after is None:
            if in_db:
                conn.execute("DELETE FROM entries WHERE key = ?", (key,))
                self._count -= 1
            return
        self._tick += 1
        if in_db:
            conn.execute(
                "UPDATE entries SET label = ?, source = ?, votes = ?, updated = ?, "
                "last_used = ? WHERE key = ?",
                (after.label, after.source, votes_json(after.votes), now, self._tick, key),
            )
        else:
            conn.execute(
                "INSERT INTO entries (key, n_events, events, label, source, votes, created, "
                "updated, last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    len(after.events),
                    events_json(after.events),
                    after.label,
                    after.source,
                    votes_json(after.votes),
                    now,
                    now,
                    self._tick,
                ),
            )
            self._count += 1

    def clear(self) -> None:
        if self.read_only:
            raise CacheError("cache opened read-only")
        conn = self._live()
        try:
            with transaction(conn):
                conn.execute("DELETE FROM entries")
                if self._log_exists(conn):
                    conn.execute("DELETE FROM corrections")
        except sqlite3.Error as exc:
            raise _failure(exc) from exc
        self._pending.clear()
        self._touched.clear()
        self._count = 0

    def drop_model_answers(self) -> int:
        if self.read_only:
            raise CacheError("cache opened read-only")
        conn = self._live()
        held = list(self._pending.snapshot())
        try:
            with self._writing(conn):
                stored = self._sources(conn, held)
                removed = conn.execute("DELETE FROM entries WHERE source = 'model'").rowcount
                self._count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        except sqlite3.Error as exc:
            raise _failure(exc) from exc
        self._pending.clear()  # held answers are model answers too
        return removed + sum(1 for key in held if key not in stored)

    # ------------------------------------------------------------------ eviction, recency

    def _evict(
        self, conn: sqlite3.Connection, recent: Recent, fresh: Sequence[str]
    ) -> tuple[list[str], int]:
        """Inside a write transaction: evict over the bound; the victims and rows removed.

        Recency, oldest first: rows by ``last_used`` that are not in the in-memory LRU; then
        the LRU's entries (their ``last_used`` is only written when they leave it), least
        recent first, except answers not saved yet; then ``fresh``, the keys being written.
        """
        if self._count <= self.max_entries:
            return [], 0
        self._flush_touches(conn)
        self._count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]

        def stored(source: str) -> Iterator[str]:
            cursor = conn.execute(
                "SELECT key FROM entries WHERE source = ? ORDER BY last_used", (source,)
            )
            try:
                for (key,) in cursor:
                    yield key
            finally:
                cursor.close()

        def written(source: str, keys: list[str]) -> set[str]:
            return {
                r[0]
                for chunk in _chunks(keys)
                for r in conn.execute(
                    f"SELECT key FROM entries WHERE source = ? AND key IN "
                    f"({','.join('?' * len(chunk))})",
                    (source, *chunk),
                )
            }

        victims = evict_from_store(
            self._count,
            self.max_entries,
            stored=stored,
            recent=recent,
            held=self._pending,
            fresh=fresh,
            written=written,
        )
        removed = conn.executemany(
            "DELETE FROM entries WHERE key = ?", [(k,) for k in victims]
        ).rowcount
        self._count -= removed
        for key in victims:
            self._touched.pop(key, None)
        return victims, removed

    def _flush_touches(self, conn: sqlite3.Connection) -> None:
        """Inside a write transaction: write the queued recency ticks."""
        if self._touched:
            conn.executemany(
                "UPDATE entries SET last_used = ? WHERE key = ?",
                [(t, k) for k, t in self._touched.items()],
            )
            self._touched.clear()

    def _try_flush_touches(self, conn: sqlite3.Connection) -> None:
        """From the read path: flush recency without waiting for a lock; drop it if it grows."""
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                with transaction(conn):
                    self._flush_touches(conn)
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        except sqlite3.Error as exc:
            logger.debug("recency flush skipped: %s", exc)
            if len(self._touched) > 4 * _TOUCH_FLUSH:
                self._touched.clear()  # only some eviction order is lost

    @staticmethod
    def _sources(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, str]:
        """The source ("model"/"human") of each given key that is in the database."""
        found: dict[str, str] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            found.update(
                conn.execute(f"SELECT key, source FROM entries WHERE key IN ({marks})", chunk)
            )
        return found

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if not self.read_only and (self._touched or self._pending):
            try:
                self._write_answers(self._pending.snapshot(), NO_RECENT)
                self._pending.clear()
            except sqlite3.Error as exc:
                logger.warning("sequence cache %s: cannot write on close (%s)", self.path, exc)
                if self._pending:
                    logger.warning(
                        "sequence cache %s: %d answers not saved", self.path, len(self._pending)
                    )
        self._conn = None
        conn.close()
