"""The service's recent verdicts, kept for people to review (``/review``).

A bounded SQLite log of what the service answered: each verdict with its votes, where it came
from, its evidence, the raw lines it was read from (when it came from raw logs), and the
events of its sequence (stored once per sequence). It keeps the latest ``keep`` verdicts and
survives a restart when it lives in a file.

Answers are queued by the request path and written by one background thread in batches, so
recording costs a request no disk write; past ``max_pending`` queued verdicts new ones are
dropped and counted rather than held (the review log must never slow or stall detection).
At most ``rate`` verdicts a second are kept (bursts of twice that): nobody reviews thousands
of verdicts a second, and writing them all would cost a busy service a fifth of its rate. Over
the budget, anomalous and human verdicts are kept before normal ones; the rest are counted
(``skipped``) and the page says so.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexlog.cache.sqlite import transaction

logger = logging.getLogger("flexlog.serve")

#: Events and raw lines kept per sequence (the rest are counted, not stored).
MAX_EVENTS_KEPT = 2_000
MAX_LINES_KEPT = 200
#: Characters kept per raw line.
MAX_LINE_CHARS_KEPT = 2_000
#: Time windows the review page filters by, in seconds.
WINDOWS = {"15m": 900, "1h": 3_600, "24h": 86_400, "7d": 604_800}
LABELS = {"normal": 0, "anomalous": 1}
#: Joins a sequence's events in the database: no event key holds a control character.
SEP = "\x1f"
SOURCES = ("ensemble", "cache", "human", "voter")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    time      REAL NOT NULL,
    key       TEXT NOT NULL,
    seq_id    TEXT NOT NULL,
    model     TEXT NOT NULL,
    label     INTEGER NOT NULL,
    source    TEXT NOT NULL,
    votes     TEXT NOT NULL,
    not_asked TEXT NOT NULL,
    abstained TEXT NOT NULL,
    lines     TEXT,
    evidence  TEXT
);
CREATE INDEX IF NOT EXISTS verdicts_key ON verdicts (key, id);
CREATE INDEX IF NOT EXISTS verdicts_order ON verdicts (label, id);
CREATE TABLE IF NOT EXISTS sequences (
    key    TEXT PRIMARY KEY,
    events TEXT NOT NULL,
    length INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Recorded:
    """One answer to record: the sequence, its verdict, and what it was read from."""

    key: str
    seq_id: str
    model: str
    label: int
    source: str
    votes: dict[str, int]
    events: Sequence[str]
    not_asked: Sequence[str] = ()
    abstained: Sequence[str] = ()
    lines: Sequence[tuple[int, str]] | None = None
    evidence: dict[str, Any] | None = None
    time: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Reviewed:
    """A recorded verdict as the review page shows it."""

    id: int
    time: float
    key: str
    seq_id: str
    model: str
    label: int
    source: str
    votes: dict[str, int]
    not_asked: list[str]
    abstained: list[str]
    lines: list[tuple[int, str]] | None
    evidence: dict[str, Any] | None
    events: list[str]
    length: int

    @property
    def verdict(self) -> str:
        return "anomalous" if self.label else "normal"


@dataclass(frozen=True, slots=True)
class Page:
    """One page of verdicts, and how many match the filter."""

    items: list[Reviewed]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


class VerdictLog:
    """The latest ``keep`` verdicts in a SQLite file (``None``: in memory, lost at exit)."""

    def __init__(
        self,
        path: str | Path | None,
        *,
        keep: int = 10_000,
        rate: float = 500.0,
        max_pending: int = 100_000,
        flush_every: float = 0.2,
    ):
        if keep < 1:
            raise ValueError("keep must be at least 1")
        if not rate > 0:
            raise ValueError("rate must be positive")
        self.path = Path(path) if path is not None else None
        self.keep = keep
        self.rate = rate
        self.max_pending = max_pending
        self.dropped = 0
        self.skipped = 0
        self._tokens = 2.0 * rate
        self._refilled = time.monotonic()
        self._flush_every = flush_every
        self._lock = threading.Lock()
        self._conn = self._open()
        # keys whose events are stored (only the writer thread touches it): their events
        # are not joined again; orphaned sequences are removed once they outnumber `keep`
        self._stored: set[str] = set()
        (self._sequences,) = self._conn.execute("SELECT count(*) FROM sequences").fetchone()
        self._queue: queue.Queue[list[Recorded] | None] = queue.Queue()
        self._pending = 0
        self._written = threading.Condition()
        self._closed = False
        self._writer = threading.Thread(target=self._run, name="flexlog-verdicts", daemon=True)
        self._writer.start()

    def _open(self) -> sqlite3.Connection:
        target = ":memory:" if self.path is None else str(self.path)
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 2000")
            if self.path is not None:
                conn.execute("PRAGMA journal_mode = WAL")
                # a crash may lose the last batch, never corrupt the file: enough for a log
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ValueError(f"{target}: cannot open the verdict log ({exc})") from exc
        return conn

    # -- writing -----------------------------------------------------------------------------
    def record(self, items: Sequence[Recorded], *, always: bool = False) -> None:
        """Queue answers to be written (never blocks; drops and counts past ``max_pending``);
        ``always``: outside the rate budget (a correction made on the page)."""
        if not items or self._closed:
            return
        with self._written:
            now = time.monotonic()
            self._tokens = min(2.0 * self.rate, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            budget = len(items) if always else int(self._tokens)
            if budget < len(items):
                # anomalous and human verdicts first, each kind in the order given
                ranked = sorted(
                    range(len(items)),
                    key=lambda i: items[i].label == 0 and items[i].source != "human",
                )
                chosen = sorted(ranked[:budget])
                self.skipped += len(items) - len(chosen)
                items = [items[i] for i in chosen]
                if not items:
                    return
            if self._pending + len(items) > self.max_pending:
                self.dropped += len(items)
                return
            if not always:
                self._tokens -= len(items)
            self._pending += len(items)
        self._queue.put(list(items))

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            items = list(batch)
            deadline = time.monotonic() + self._flush_every
            stop = False
            while len(items) < 5_000:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                items.extend(more)
            try:
                self._write(items)
            except sqlite3.Error as exc:
                logger.error("could not record %d verdicts: %s", len(items), exc)
                self.dropped += len(items)
            with self._written:
                self._pending -= len(items)
                self._written.notify_all()
            if stop:
                return

    def _write(self, items: list[Recorded]) -> None:
        rows, sequences = [], {}
        for r in items:
            if r.key not in self._stored and r.key not in sequences:
                events = r.events[:MAX_EVENTS_KEPT]
                sequences[r.key] = (r.key, SEP.join(events), len(r.events))
            lines = None
            if r.lines is not None:
                lines = json.dumps(
                    [[n, text[:MAX_LINE_CHARS_KEPT]] for n, text in r.lines[:MAX_LINES_KEPT]]
                )
            rows.append(
                (
                    r.time,
                    r.key,
                    r.seq_id,
                    r.model,
                    r.label,
                    r.source,
                    json.dumps(r.votes),
                    SEP.join(r.not_asked),
                    SEP.join(r.abstained),
                    lines,
                    None if r.evidence is None else json.dumps(r.evidence),
                )
            )
        with self._lock:
            conn = self._conn
            try:
                with transaction(conn):
                    added = conn.executemany(
                        "INSERT OR IGNORE INTO sequences (key, events, length) VALUES (?, ?, ?)",
                        list(sequences.values()),
                    ).rowcount
                    conn.executemany(
                        "INSERT INTO verdicts (time, key, seq_id, model, label, source, votes, "
                        "not_asked, abstained, lines, evidence) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        rows,
                    )
                    (last,) = conn.execute("SELECT max(id) FROM verdicts").fetchone()
                    conn.execute("DELETE FROM verdicts WHERE id <= ?", (last - self.keep,))
                    self._sequences += max(added, 0)
                    pruned = self._sequences > 2 * self.keep
                    if pruned:
                        conn.execute(
                            "DELETE FROM sequences WHERE key NOT IN (SELECT key FROM verdicts)"
                        )
            except BaseException:
                self._stored.clear()
                raise
        if pruned:
            self._stored.clear()
            with self._lock:
                (self._sequences,) = conn.execute("SELECT count(*) FROM sequences").fetchone()
        else:
            self._stored.update(sequences)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued verdict is written; whether that happened in time."""
        deadline = time.monotonic() + timeout
        with self._written:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._written.wait(left)
        return True

    def close(self) -> None:
        """Write what is queued, stop the writer, close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=30)
        with self._lock:
            self._conn.close()

    # -- reading -----------------------------------------------------------------------------
    def page(
        self,
        *,
        label: str | None = None,
        source: str | None = None,
        window: str | None = None,
        page: int = 1,
        per_page: int = 50,
        now: float | None = None,
    ) -> Page:
        """The verdicts that match, anomalous first, then latest first."""
        where, params = [], []
        if label is not None:
            where.append("v.label = ?")
            params.append(LABELS[label])
        if source is not None:
            where.append("v.source = ?")
            params.append(source)
        if window is not None:
            where.append("v.time >= ?")
            params.append((now if now is not None else time.time()) - WINDOWS[window])
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            (total,) = self._conn.execute(
                f"SELECT count(*) FROM verdicts v {clause}", params
            ).fetchone()
            rows = self._conn.execute(
                f"{_SELECT} {clause} ORDER BY v.label DESC, v.id DESC LIMIT ? OFFSET ?",
                [*params, per_page, (page - 1) * per_page],
            ).fetchall()
        return Page([_reviewed(r) for r in rows], total, page, per_page)

    def of_key(self, key: str, limit: int = 20) -> list[Reviewed]:
        """The latest verdicts on one sequence, latest first."""
        with self._lock:
            rows = self._conn.execute(
                f"{_SELECT} WHERE v.key = ? ORDER BY v.id DESC LIMIT ?", (key, limit)
            ).fetchall()
        return [_reviewed(r) for r in rows]

    def events(self, key: str) -> tuple[list[str], int] | None:
        """The stored events of a sequence and its length, or None if none is recorded."""
        with self._lock:
            row = self._conn.execute(
                "SELECT events, length FROM sequences WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else (row[0].split(SEP), int(row[1]))

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM verdicts").fetchone()[0])


_SELECT = (
    "SELECT v.id, v.time, v.key, v.seq_id, v.model, v.label, v.source, v.votes, v.not_asked, "
    "v.abstained, v.lines, v.evidence, s.events, s.length "
    "FROM verdicts v JOIN sequences s ON s.key = v.key"
)


def _reviewed(row: tuple) -> Reviewed:
    lines = json.loads(row[10]) if row[10] is not None else None
    return Reviewed(
        id=row[0],
        time=row[1],
        key=row[2],
        seq_id=row[3],
        model=row[4],
        label=row[5],
        source=row[6],
        votes=json.loads(row[7]),
        not_asked=row[8].split(SEP) if row[8] else [],
        abstained=row[9].split(SEP) if row[9] else [],
        lines=[(int(n), str(t)) for n, t in lines] if lines is not None else None,
        evidence=json.loads(row[11]) if row[11] is not None else None,
        events=row[12].split(SEP),
        length=row[13],
    )
