"""The PostgreSQL store: one cache that service replicas and batch workers share.

Selected by a URL, ``SequenceCache("postgresql://user@host/db")`` (``--cache postgresql://...``
on the command line); needs the ``postgres`` extra (psycopg 3). The same contract as the
SQLite store (:mod:`flexlog.cache.store`), with what sharing a server adds:

* Tables ``flexlog_cache_entries``, ``flexlog_cache_corrections`` and ``flexlog_cache_meta``
  (application, schema version, a generation bumped by ``clear``), created on first use under
  an advisory lock, so that processes starting together create them once. Another schema of a
  database keeps caches apart (``?options=-csearch_path%3Dname``).
* Writes are serialised by a transaction-scoped advisory lock, as SQLite serialises its
  writers: the number of rows is kept exact in the meta table (so the bound holds across
  processes without counting rows), writers cannot deadlock, and corrections are committed
  in the order of their ids, so :meth:`PostgresStore.changes` reads the log past the last id
  it saw and misses nothing: that is how every process learns of every other's corrections.
  Reads take no lock. Writes are short and batched (one per scored batch), so they queue
  briefly at most.
* Model answers are upserted in one statement that never overwrites a human row
  (``ON CONFLICT ... WHERE source = 'model'``). Answers that cannot be written (server down)
  are held and retried with the next write, as with SQLite; edits fail with CacheError.
* Recency is a timestamp in microseconds (comparable across processes), written in batches
  with the next write, as with SQLite.
* A broken connection is reopened on the next call; the server being unreachable at opening
  is an InputError naming it (never its password).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

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

__all__ = ["SCHEMAS", "PostgresStore", "describe_url", "is_postgres_url"]

logger = logging.getLogger("flexlog.cache")

#: Version of the tables' schema (the same history as the SQLite file's user_version).
SCHEMA_VERSION = 2
APPLICATION = "flexlog-cache"
URL_SCHEMES = ("postgresql://", "postgres://")

# Advisory lock ids ("FLXC" and its neighbour).
_SCHEMA_LOCK = 0x464C5843
_WRITE_LOCK = _SCHEMA_LOCK + 1
_TOUCH_FLUSH = 65_536

T = TypeVar("T")

E, C, M = "flexlog_cache_entries", "flexlog_cache_corrections", "flexlog_cache_meta"

SCHEMAS = f"""
CREATE TABLE {M} (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE {E} (
    key       text PRIMARY KEY,
    n_events  integer NOT NULL,
    events    text NOT NULL,
    label     smallint NOT NULL CHECK (label IN (0, 1)),
    source    text NOT NULL CHECK (source IN ('model', 'human')),
    votes     text NOT NULL DEFAULT '{{}}',
    created   double precision NOT NULL,
    updated   double precision NOT NULL,
    last_used bigint NOT NULL
);
CREATE INDEX {E}_eviction ON {E} (source, last_used);
CREATE TABLE {C} (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key             text NOT NULL,
    time            double precision NOT NULL,
    actor           text NOT NULL,
    action          text NOT NULL CHECK (action IN ('set', 'delete', 'undo')),
    previous_label  smallint CHECK (previous_label IN (0, 1)),
    previous_source text CHECK (previous_source IN ('model', 'human')),
    previous_votes  text,
    new_label       smallint CHECK (new_label IN (0, 1)),
    new_source      text CHECK (new_source IN ('model', 'human')),
    comment         text,
    undoes          bigint REFERENCES {C} (id),
    events          text NOT NULL
);
CREATE INDEX {C}_key ON {C} (key, id)
"""

_LOG_COLUMNS = (
    "id, key, time, actor, action, previous_label, previous_source, new_label, new_source, "
    "comment, undoes, events, previous_votes"
)


def is_postgres_url(location: object) -> bool:
    """Whether a cache location names a PostgreSQL server rather than a file."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def describe_url(url: str) -> str:
    """The URL as it may be shown: user, host, port and database, never the password."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:  # an unparsable URL: show no part of it that could hold a secret
        return "postgresql://(unparsable URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


def _micros() -> int:
    return time.time_ns() // 1000


class PostgresStore:
    """A cache's entries and corrections in a PostgreSQL database (see the module doc).

    Implements :class:`~flexlog.cache.store.Store`. Opening raises InputError when psycopg is
    missing, the server cannot be reached, or the tables belong to something else or to a
    newer flexlog.
    """

    in_memory = False
    shared = True

    def __init__(
        self,
        url: str,
        *,
        max_entries: int,
        timeout: float = 2.0,
        read_only: bool = False,
        pending_max: int = 10_000,
    ) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise InputError(
                "a postgresql:// cache needs psycopg: pip install 'flexlog[postgres]'"
            ) from exc
        self._psycopg = psycopg
        self.url = url
        self.location = describe_url(url)
        self.max_entries = max_entries
        self.timeout = timeout
        self.read_only = read_only
        self._pending = PendingAnswers(pending_max)
        self._touched: dict[str, int] = {}
        self._count = 0  # as of this process's last write (exact in the meta table)
        self._evictions = 0
        self._conn: Any = None
        self._closed = False
        try:
            self._conn = self._connect()
            self._init_schema()
        except (psycopg.Error, CacheError) as exc:
            if self._conn is not None:
                self._conn.close()
            raise InputError(
                f"{self.location}: cannot open the cache database: {_reason(exc)}"
            ) from None

    # ------------------------------------------------------------------ connection

    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, round(self.timeout)),
                application_name="flexlog",
            )
        except psycopg.Error as exc:
            raise CacheError(_reason(exc)) from exc
        # A statement may wait this long for a lock held by another process, no longer.
        conn.execute(f"SET lock_timeout = {max(1, int(self.timeout * 1000))}")
        return conn

    def _live(self) -> Any:
        if self._closed:
            raise CacheError(f"{self.location}: the cache database is closed")
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _failure(self, exc: Exception) -> CacheError:
        """A CacheError for a driver error; a broken connection is reopened next time."""
        if self._conn is not None and self._conn.broken:
            self._conn.close()
        error = CacheError(_reason(exc))
        error.__cause__ = exc
        return error

    def _write(self, work: Callable[[Any], T]) -> T:
        """Run ``work(conn)`` in a write transaction holding the write lock, with
        ``self._count`` read from and written back to the meta table; if it fails, nothing
        is written and this process's recency queue is kept."""
        touched = dict(self._touched)
        try:
            conn = self._live()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                self._count = int(
                    conn.execute(f"SELECT value FROM {M} WHERE name = 'entries'").fetchone()[0]
                )
                result = work(conn)
                conn.execute(
                    f"UPDATE {M} SET value = %s WHERE name = 'entries'", (str(self._count),)
                )
                return result
        except BaseException:
            self._touched = touched
            raise

    def _init_schema(self) -> None:
        conn = self._conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            meta = self._read_meta(conn)
            if meta is None:
                tables = conn.execute(
                    "SELECT count(*) FROM pg_tables WHERE tablename = ANY(%s) "
                    "AND schemaname = current_schema()",
                    ([E, C],),
                ).fetchone()[0]
                if tables:
                    raise CacheError("tables of another program are in the way (no flexlog meta)")
                if self.read_only:
                    raise CacheError("no flexlog cache there; open it writable first")
                for statement in SCHEMAS.split(";"):
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {M} (name, value) VALUES ('application', %s), "
                    "('schema_version', %s), ('generation', '0'), ('entries', '0')",
                    (APPLICATION, str(SCHEMA_VERSION)),
                )
                return
            if meta.get("application") != APPLICATION:
                raise CacheError(f"not a flexlog cache (application {meta.get('application')!r})")
            version = int(meta.get("schema_version", "0"))
            if version > SCHEMA_VERSION:
                raise CacheError(
                    f"cache schema version {version} is newer than this flexlog supports "
                    f"({SCHEMA_VERSION}); upgrade flexlog"
                )

    @staticmethod
    def _read_meta(conn: Any) -> dict[str, str] | None:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (M,)).fetchone()[0]
        if not exists:
            return None
        return dict(conn.execute(f"SELECT name, value FROM {M}").fetchall())

    # ------------------------------------------------------------------ reads

    def fetch_many(self, wanted: Mapping[str, Sequence[str] | None]) -> dict[str, CacheEntry]:
        if len(self._touched) >= _TOUCH_FLUSH and not self.read_only:
            self._try_flush_touches()
        with_events = any(events is None for events in wanted.values())
        columns = "key, label, source, votes" + (", events" if with_events else "")
        try:
            rows = (
                self._live()
                .execute(f"SELECT {columns} FROM {E} WHERE key = ANY(%s::text[])", (list(wanted),))
                .fetchall()
            )
        except self._psycopg.Error as exc:
            raise self._failure(exc) from exc
        found: dict[str, CacheEntry] = {}
        parsed: dict[str, dict[str, int]] = {}  # entries with equal votes share one dict
        for row in rows:
            key, label, source, votes_text = row[:4]
            votes = parsed.get(votes_text)
            if votes is None:
                votes = parsed[votes_text] = json.loads(votes_text)
            events = wanted[key]
            if events is None:
                events = json.loads(row[4])
            found[key] = CacheEntry(key, intern_events(events), label, source, votes)
        return found

    def history(self, key: str) -> list[Correction]:
        try:
            return [item.correction for item in self._read_log(self._live(), key)]
        except self._psycopg.Error as exc:
            raise self._failure(exc) from exc

    def corrected(self) -> list[CacheEntry]:
        try:
            rows = (
                self._live()
                .execute(
                    f"SELECT key, events, label, votes FROM {E} WHERE source = 'human' "
                    'ORDER BY key COLLATE "C"'
                )
                .fetchall()
            )
        except self._psycopg.Error as exc:
            raise self._failure(exc) from exc
        return [
            CacheEntry(key, intern_events(json.loads(events)), label, "human", json.loads(votes))
            for key, events, label, votes in rows
        ]

    @staticmethod
    def _read_log(conn: Any, key: str) -> list[Logged]:
        rows = conn.execute(
            f"SELECT {_LOG_COLUMNS} FROM {C} WHERE key = %s ORDER BY id", (key,)
        ).fetchall()
        log = []
        for row in rows:
            correction = Correction(*row[:11])
            votes = json.loads(row[12]) if row[12] is not None else None
            log.append(Logged(correction, tuple(json.loads(row[11])), votes))
        return log

    def changes(self, since: Any) -> Changes:
        try:
            conn = self._live()
            generation = conn.execute(
                f"SELECT value FROM {M} WHERE name = 'generation'"
            ).fetchone()[0]
            if since is None:
                last = conn.execute(f"SELECT coalesce(max(id), 0) FROM {C}").fetchone()[0]
                return Changes((generation, last), [])
            seen_generation, seen_id = since
            rows = conn.execute(
                f"SELECT id, key FROM {C} WHERE id >= %s ORDER BY id", (seen_id,)
            ).fetchall()
        except self._psycopg.Error as exc:
            raise self._failure(exc) from exc
        found = changes_after(seen_id, rows)
        if generation != seen_generation:
            return Changes((generation, found.mark), None)
        return Changes((generation, found.mark), found.keys)

    def counts(self) -> tuple[int, int]:
        try:
            n, humans = (
                self._live()
                .execute(f"SELECT count(*), count(*) FILTER (WHERE source = 'human') FROM {E}")
                .fetchone()
            )
        except self._psycopg.Error as exc:
            raise self._failure(exc) from exc
        self._count = n
        return n, humans

    def stats(self) -> dict[str, Any]:
        return {
            "evictions": self._evictions,
            "unsaved": len(self._pending),
            "db_bytes": 0,  # on the server; see pg_total_relation_size there
            "approx_memory_bytes": self._pending.approx_bytes() + 100 * len(self._touched),
        }

    # ------------------------------------------------------------------ writes

    def touch(self, key: str) -> None:
        if not self.read_only:
            self._touched[key] = _micros()

    def put_answers(self, answers: Mapping[str, Answer], recent: Recent) -> WriteResult:
        if self.read_only:
            humans = self._humans_among(list(answers))
            return WriteResult({k: HUMAN if k in humans else UNSAVED for k in answers})
        todo = self._pending.with_new(answers)
        try:
            outcomes, evicted = self._write_answers(todo, recent)
        except (self._psycopg.Error, CacheError) as exc:
            failure = exc if isinstance(exc, CacheError) else self._failure(exc)
            humans = self._humans_among(list(todo))
            return WriteResult(self._pending.hold(todo, humans), error=failure)
        self._pending.clear()
        return WriteResult(outcomes, evicted)

    def _write_answers(
        self, todo: Mapping[str, Answer], recent: Recent
    ) -> tuple[dict[str, str], list[str]]:
        """One transaction: upsert model answers (never over a human row); evict."""
        keys = sorted(todo)  # one lock order for every writer
        now = _micros()
        columns: tuple[list, ...] = ([], [], [], [], [], [])
        for key in keys:
            events, label, votes, created = todo[key]
            for column, value in zip(
                columns,
                (key, len(events), events_json(events), label, votes_json(votes), created),
                strict=True,
            ):
                column.append(value)

        def work(conn: Any) -> tuple[set[str], list[str]]:
            written = conn.execute(
                f"INSERT INTO {E} AS e (key, n_events, events, label, source, votes, created, "
                "updated, last_used) SELECT k, n, ev, l, 'model', v, c, c, %s FROM unnest("
                "%s::text[], %s::int[], %s::text[], %s::smallint[], %s::text[], "
                "%s::float8[]) AS u(k, n, ev, l, v, c) "
                "ON CONFLICT (key) DO UPDATE SET label = EXCLUDED.label, votes = EXCLUDED.votes, "
                "updated = EXCLUDED.updated, last_used = EXCLUDED.last_used "
                "WHERE e.source = 'model' RETURNING e.key, (xmax = 0)",
                (now, *columns),
            ).fetchall()
            saved = {key for key, _ in written}
            self._count += sum(1 for _, inserted in written if inserted)
            self._flush_touches(conn)
            return saved, self._evict(conn, recent, [k for k in todo if k in saved])

        saved, evicted = self._write(work)
        outcomes = {key: SAVED if key in saved else HUMAN for key in todo}
        return outcomes, evicted

    def _humans_among(self, keys: Sequence[str]) -> set[str]:
        """The keys with a human correction stored, as far as the server can be read."""
        try:
            rows = (
                self._live()
                .execute(
                    f"SELECT key FROM {E} WHERE key = ANY(%s::text[]) AND source = 'human'",
                    (list(keys),),
                )
                .fetchall()
            )
        except (self._psycopg.Error, CacheError):
            return set()
        return {key for (key,) in rows}

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

        def work(conn: Any) -> EditResult:
            current = self._read_entry(conn, key)
            in_db = current is not None
            if current is None:
                current = self._pending.entry(key) or memory
            change = decide(current, lambda: self._read_log(conn, key))
            if change is None:
                return EditResult(None, None)
            now = time.time()
            self._apply(conn, key, change.after, in_db, now)
            (correction_id,) = conn.execute(
                f"INSERT INTO {C} ({LOG_ROW_COLUMNS}) VALUES ({', '.join(['%s'] * 12)}) "
                "RETURNING id",
                change.log_row(now, actor, comment),
            ).fetchone()
            correction = change.correction(correction_id, now, actor, comment)
            self._flush_touches(conn)
            evicted = self._evict(conn, recent, [key] if change.after is not None else [])
            return EditResult(change, correction, evicted)

        try:
            result = self._write(work)
        except self._psycopg.Error as exc:
            raise self._failure(exc) from exc
        if result.edit is None:
            return result
        self._pending.pop(key)
        if result.edit.after is None:
            self._touched.pop(key, None)
        return result

    @staticmethod
    def _read_entry(conn: Any, key: str) -> CacheEntry | None:
        row = conn.execute(
            f"SELECT events, label, source, votes FROM {E} WHERE key = %s FOR UPDATE", (key,)
        ).fetchone()
        if row is None:
            return None
        events = intern_events(json.loads(row[0]))
        return CacheEntry(key, events, row[1], row[2], json.loads(row[3]))

    def _apply(
        self, conn: Any, key: str, after: CacheEntry | None, in_db: bool, now: float
    ) -> None:
        """Inside a transaction: make ``key``'s row ``after`` (None: no row)."""
        if after is None:
            if in_db:
                conn.execute(f"DELETE FROM {E} WHERE key = %s", (key,))
                self._count -= 1
            return
        conn.execute(
            f"INSERT INTO {E} (key, n_events, events, label, source, votes, created, updated, "
            "last_used) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE "
            "SET label = EXCLUDED.label, source = EXCLUDED.source, votes = EXCLUDED.votes, "
            "updated = EXCLUDED.updated, last_used = EXCLUDED.last_used",
            (
                key,
                len(after.events),
                events_json(after.events),
                after.label,
                after.source,
                votes_json(after.votes),
                now,
                now,
                _micros(),
            ),
        )
        self._count += not in_db

    def clear(self) -> None:
        if self.read_only:
            raise CacheError("cache opened read-only")

        def work(conn: Any) -> None:
            conn.execute(f"DELETE FROM {E}")
            conn.execute(f"DELETE FROM {C}")
            conn.execute(
                f"UPDATE {M} SET value = (value::bigint + 1)::text WHERE name = 'generation'"
            )
            self._count = 0

        try:
            self._write(work)
        except self._psycopg.Error as exc:
            raise self._failure(exc) from exc
        self._pending.clear()
        self._touched.clear()

    def drop_model_answers(self) -> int:
        if self.read_only:
            raise CacheError("cache opened read-only")
        held = sorted(self._pending.snapshot())

        def work(conn: Any) -> int:
            stored = conn.execute(
                f"SELECT key FROM {E} WHERE key = ANY(%s::text[])", (held,)
            ).fetchall()
            removed = conn.execute(f"DELETE FROM {E} WHERE source = 'model'").rowcount
            self._count -= removed
            known = {key for (key,) in stored}
            return removed + sum(1 for key in held if key not in known)

        try:
            dropped = self._write(work)
        except self._psycopg.Error as exc:
            raise self._failure(exc) from exc
        self._pending.clear()  # held answers are model answers too
        return dropped

    # ------------------------------------------------------------------ eviction, recency

    def _evict(self, conn: Any, recent: Recent, fresh: Sequence[str]) -> list[str]:
        """Inside a write transaction: evict over the bound.

        The same order as the SQLite store: rows by ``last_used`` that are not in the
        in-memory LRU, then the LRU's entries, then ``fresh``, the keys being written.
        """
        if self._count <= self.max_entries:
            return []

        def stored(source: str) -> Iterator[str]:
            with conn.cursor(name=f"flexlog_evict_{source}") as cursor:
                cursor.itersize = 2000
                cursor.execute(
                    f"SELECT key FROM {E} WHERE source = %s ORDER BY last_used", (source,)
                )
                for (key,) in cursor:
                    yield key

        def written(source: str, keys: list[str]) -> set[str]:
            rows = conn.execute(
                f"SELECT key FROM {E} WHERE source = %s AND key = ANY(%s::text[])",
                (source, keys),
            ).fetchall()
            return {key for (key,) in rows}

        victims = evict_from_store(
            self._count,
            self.max_entries,
            stored=stored,
            recent=recent,
            held=self._pending,
            fresh=fresh,
            written=written,
        )
        removed = conn.execute(f"DELETE FROM {E} WHERE key = ANY(%s::text[])", (victims,)).rowcount
        self._count -= removed
        self._evictions += removed
        for key in victims:
            self._touched.pop(key, None)
        return victims

    def _flush_touches(self, conn: Any) -> None:
        """Inside a transaction: write the queued recency stamps (keys in sorted order)."""
        if self._touched:
            keys = sorted(self._touched)
            conn.execute(
                f"UPDATE {E} AS e SET last_used = u.t FROM unnest(%s::text[], %s::bigint[]) "
                "AS u(k, t) WHERE e.key = u.k",
                (keys, [self._touched[k] for k in keys]),
            )
            self._touched.clear()

    def _try_flush_touches(self) -> None:
        """From the read path: flush recency; on failure drop it if it grows too large."""
        try:
            conn = self._live()
            with conn.transaction():
                self._flush_touches(conn)
        except (self._psycopg.Error, CacheError) as exc:
            logger.debug("recency flush skipped: %s", exc)
            if len(self._touched) > 4 * _TOUCH_FLUSH:
                self._touched.clear()  # only some eviction order is lost

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        if self._closed:
            return
        if not self.read_only and (self._touched or len(self._pending)):
            try:
                self._write_answers(self._pending.snapshot(), NO_RECENT)
                self._pending.clear()
            except (self._psycopg.Error, CacheError) as exc:
                logger.warning("sequence cache %s: cannot write on close (%s)", self.location, exc)
                if len(self._pending):
                    logger.warning(
                        "sequence cache %s: %d answers not saved", self.location, len(self._pending)
                    )
        self._closed = True
        if self._conn is not None:
            self._conn.close()


def _reason(exc: BaseException) -> str:
    """The first line of a driver error (psycopg's messages can run over several lines)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
