"""Streaming ingestion: raw log lines as they arrive → sequences as they close.

:class:`SequenceStream` is the streaming counterpart of :class:`~flexlog.ingest.Ingestor`:
it is fed numbered raw lines (one at a time or in small batches) with the time they were
read, parses them with the same (fitted) parser, aligns their keys with the same
:class:`~flexlog.ingest.KeyAligner` and hands back each sequence as soon as it is complete:

* ``fixed`` windows: each time ``window`` lines are collected (the last, shorter one on
  :meth:`~SequenceStream.close`), with the ids and lines the batch :class:`Ingestor` gives;
* ``sliding`` windows: each full window, every ``step`` lines (as in batch, lines after the
  last full window are in none; a stream shorter than one window gives one short window);
* ``session``: one open sequence per session id, closed when it has been idle for
  ``idle_timeout`` seconds, when it reaches ``max_events`` events (a new one with the same id
  then starts), or when more than ``max_open`` sessions are open (the least recently active
  closes first), so memory stays bounded.

Time is whatever clock the caller passes (``now``), so tests need no sleeping. Every line is
counted in an :class:`~flexlog.data.records.IngestReport`: accepted (and then in a sequence)
or rejected (it does not fit the format, or has no session id), so
``read == accepted + rejected`` at any moment, and for fixed windows and sessions the lines of
the sequences handed back, plus those still open, are exactly the accepted ones.

:class:`LineSplitter`, :func:`follow_file` and :func:`follow_pipe` turn bytes (a growing file,
standard input) into numbered lines the way :func:`~flexlog.parsing.read_log_lines` reads a
file, waiting for a partly written last line's newline; :class:`StreamReport` keeps the
accounting of an endless stream in bounded memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from flexlog.data.records import IngestReport, InputError, LogSequence, Rejection
from flexlog.ingest import Ingestor, KeyAligner, Partitioning, SourceLines
from flexlog.parsing import TemplateParser
from flexlog.parsing.miner import MAX_LOG_LINE_BYTES, ParsedLine

#: Why a sequence was handed back: its window filled, it reached ``max_events`` ("full"), it
#: was idle too long, it was the least recently active of too many open sessions
#: ("evicted"), or the stream was closed ("flush").
CLOSE_REASONS = ("window", "full", "idle", "evicted", "flush")
#: Defaults of :class:`SequenceStream` (and of ``flexlog score --follow``).
IDLE_TIMEOUT = 60.0
MAX_OPEN = 10_000
MAX_EVENTS = 10_000
#: Bytes read from a file or pipe at a time.
READ_BYTES = 1 << 16


@dataclass(frozen=True)
class Closed:
    """A sequence handed back by a :class:`SequenceStream`: the sequence, the lines it came
    from, why it closed (one of :data:`CLOSE_REASONS`) and, when the stream keeps text, the
    raw text of its lines (in the order of ``source.lines``)."""

    sequence: LogSequence
    source: SourceLines
    reason: str
    text: tuple[str, ...] = ()

    def line(self, number: int) -> str:
        """The raw text of line ``number`` ("" when the stream kept no text)."""
        for n, text in zip(self.source.lines, self.text, strict=False):
            if n == number:
                return text
        return ""


@dataclass
class StreamReport(IngestReport):
    """An :class:`IngestReport` for an endless stream: only the first ``retain`` rejections
    stay in ``rejections`` (the others are counted in ``dropped``), and each rejection is
    first handed to ``sink`` (e.g. written to a file), so the counts stay exact in bounded
    memory: ``rejected == dropped + len(rejections)``."""

    retain: int = 20
    sink: Callable[[Rejection], Any] | None = field(default=None, repr=False, compare=False)
    dropped: int = 0

    @property
    def rejected(self) -> int:
        return self.dropped + len(self.rejections)

    def reject(self, source: str, line: int, reason: str) -> None:
        super().reject(source, line, reason)
        self._spill()

    def reject_accepted(self, rejection: Rejection) -> None:
        super().reject_accepted(rejection)
        self._spill()

    def merge(self, other: IngestReport) -> None:
        self.read += other.read
        self.accepted += other.accepted
        self.dropped += other.rejected - len(other.rejections)
        for rejection in other.rejections:
            self.rejections.append(rejection)
            self._spill()

    def _spill(self) -> None:
        if self.sink is not None:
            self.sink(self.rejections[-1])
        if len(self.rejections) > self.retain:
            self.rejections.pop()
            self.dropped += 1


@dataclass
class _Open:
    """An open session: its events, line numbers, texts, and when it was last active."""

    events: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    last: float = 0.0


class SequenceStream:
    """Numbered raw lines in, closed sequences out (see the module docstring).

    ``parser``: a fitted :class:`TemplateParser` (a bundle's), used with ``parse``, which
    never refits it; an unfitted one learns from the lines as they come (``learn``, default:
    whether the parser is unfitted), so templates, and keys, may generalise along the way.
    ``aligner``: maps keys the detector never saw onto known ones, as
    :meth:`Ingestor.keys` does. ``source``: the name the sequences' :class:`SourceLines`
    and rejections carry. ``report``: where each line is accepted or rejected (default a new
    :class:`IngestReport`). ``keep_text``: keep each line's raw text with its sequence (for
    explanations); memory stays bounded by ``max_open * max_events`` lines either way.
    """

    def __init__(
        self,
        parser: TemplateParser,
        partitioning: Partitioning | None = None,
        aligner: KeyAligner | None = None,
        *,
        source: str = "<stream>",
        report: IngestReport | None = None,
        idle_timeout: float | None = IDLE_TIMEOUT,
        max_events: int = MAX_EVENTS,
        max_open: int = MAX_OPEN,
        keep_text: bool = False,
        learn: bool | None = None,
    ):
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 seconds, got {idle_timeout!r}")
        for name, value in (("max_events", max_events), ("max_open", max_open)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.ingestor = Ingestor(parser, partitioning, aligner)
        self.partitioning = self.ingestor.partitioning
        if self.partitioning.mode == "session" and not (
            self.partitioning.session_pattern or parser.preset.session_pattern
        ):
            raise ValueError(
                f"log format {parser.preset.name!r} has no session id: partition by fixed or "
                "sliding windows, or give a session pattern"
            )
        self.source = source
        self.report = report if report is not None else IngestReport()
        self.idle_timeout = idle_timeout
        self.max_events = max_events
        self.max_open = max_open
        self.keep_text = keep_text
        self.learn = (not parser.fitted) if learn is None else learn
        #: Sequences handed back so far, by :data:`CLOSE_REASONS`.
        self.closed: dict[str, int] = dict.fromkeys(CLOSE_REASONS, 0)
        self._sessions: OrderedDict[str, _Open] = OrderedDict()  # least recently active first
        size = self.partitioning.window if self.partitioning.mode == "sliding" else None
        self._window: deque[tuple[int, str, str]] = deque(maxlen=size)
        self._windows = 0  # windows handed back (the next one's index)
        self._counted = 0  # accepted lines seen by the windows
        self._done = False

    # -- state ---------------------------------------------------------------------------
    @property
    def open_sessions(self) -> int:
        """Sessions open now (0 for windows)."""
        return len(self._sessions)

    @property
    def open_lines(self) -> int:
        """Accepted lines held in sequences not handed back yet."""
        return len(self._window) + sum(len(s.lines) for s in self._sessions.values())

    # -- feeding -------------------------------------------------------------------------
    def feed(self, lines: Iterable[tuple[int, str]], now: float) -> list[Closed]:
        """Take ``(line number, text)`` lines read at time ``now``; hand back the sequences
        that closed: first the sessions idle since before the lines came, then those the
        lines completed (in the order they closed)."""
        if self._done:
            raise RuntimeError("the stream is closed")
        closed = self.expire(now)
        numbered = [(int(n), t) for n, t in lines]
        if not numbered:
            return closed
        if self.learn:
            self.ingestor.fit(numbered)
        parsed = self.ingestor.keys(numbered, source=self.source, report=self.report)
        texts = dict(numbered) if self.keep_text else None
        if self.partitioning.mode == "session":
            closed += self._add_to_sessions(parsed, now, texts)
        else:
            closed += self._add_to_window(parsed, texts)
        return closed

    def expire(self, now: float) -> list[Closed]:
        """Close the sessions idle for ``idle_timeout`` seconds or more at time ``now``."""
        closed: list[Closed] = []
        if self.idle_timeout is None:
            return closed
        cutoff = now - self.idle_timeout
        while self._sessions:
            sid, session = next(iter(self._sessions.items()))
            if session.last > cutoff:
                break
            del self._sessions[sid]
            closed.append(self._emit(sid, session, "idle"))
        return closed

    def close(self) -> list[Closed]:
        """Hand back everything still open (sessions least recently active first); the
        stream takes no more lines."""
        if self._done:
            return []
        self._done = True
        closed = [self._emit(sid, s, "flush") for sid, s in self._sessions.items()]
        self._sessions.clear()
        window = self._window
        if window and (self.partitioning.mode == "fixed" or self._windows == 0):
            closed.append(self._emit_window("flush"))
        window.clear()
        return closed

    # -- internals -----------------------------------------------------------------------
    def _add_to_sessions(
        self, parsed: list[ParsedLine], now: float, texts: dict[int, str] | None
    ) -> list[Closed]:
        # The batch partitioning, on this batch: the same session ids, and the lines without
        # one rejected the same way; then each session's part joins its open sequence, the
        # one whose last line came last becoming the most recently active.
        split = self.partitioning.split(parsed, source=self.source, report=self.report)
        numbers = self.partitioning.line_numbers(parsed, source=self.source)
        parts = sorted(zip(split, numbers, strict=True), key=lambda part: part[1][-1])
        closed: list[Closed] = []
        sessions = self._sessions
        for seq, lines in parts:
            sid = seq.id
            for event, number in zip(seq.events, lines, strict=True):
                session = sessions.get(sid)
                if session is None:
                    session = sessions[sid] = _Open()
                session.events.append(event)
                session.lines.append(number)
                if texts is not None:
                    session.text.append(texts[number])
                if len(session.events) >= self.max_events:
                    del sessions[sid]
                    closed.append(self._emit(sid, session, "full"))
            session = sessions.get(sid)
            if session is not None:
                session.last = now
                sessions.move_to_end(sid)
            while len(sessions) > self.max_open:
                old, session = sessions.popitem(last=False)
                closed.append(self._emit(old, session, "evicted"))
        return closed

    def _add_to_window(
        self, parsed: list[ParsedLine], texts: dict[int, str] | None
    ) -> list[Closed]:
        closed: list[Closed] = []
        window, size = self._window, self.partitioning.window
        fixed = self.partitioning.mode == "fixed"
        step = self.partitioning.step
        for p in parsed:
            window.append((p.line, p.event, texts[p.line] if texts is not None else ""))
            self._counted += 1
            if fixed:
                if len(window) == size:
                    closed.append(self._emit_window("window"))
                    window.clear()
            elif self._counted >= size and (self._counted - size) % step == 0:
                closed.append(self._emit_window("window"))
        return closed

    def _emit_window(self, reason: str) -> Closed:
        lines, events, text = zip(*self._window, strict=True)
        sequence = LogSequence(f"{self.source}:w{self._windows}", tuple(events))
        self._windows += 1
        return self._closed(sequence, tuple(lines), tuple(text) if self.keep_text else (), reason)

    def _emit(self, sid: str, session: _Open, reason: str) -> Closed:
        sequence = LogSequence(sid, tuple(session.events))
        return self._closed(sequence, tuple(session.lines), tuple(session.text), reason)

    def _closed(
        self, sequence: LogSequence, lines: tuple[int, ...], text: tuple[str, ...], reason: str
    ) -> Closed:
        self.closed[reason] += 1
        return Closed(sequence, SourceLines(self.source, lines), reason, text)


# -- bytes to lines ----------------------------------------------------------------------
class LineSplitter:
    """Bytes as they arrive → ``(line number, text)`` for each complete line, as
    :func:`~flexlog.parsing.read_log_lines` reads a file: lines numbered from 1 (blank ones
    included), blank lines skipped and not counted, lines over ``max_line_bytes`` or not
    valid UTF-8 rejected into ``report``. A partly received line waits for its newline (an
    over-long one is not kept while it waits); :meth:`finish` ends the last one."""

    def __init__(
        self, source: str, report: IngestReport, *, max_line_bytes: int = MAX_LOG_LINE_BYTES
    ):
        self.source = source
        self.report = report
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._skipped = 0  # bytes of an over-long line not kept
        self._number = 0  # the last line's number

    @property
    def pending(self) -> bool:
        """Whether part of a line waits for its newline."""
        return bool(self._buffer) or self._skipped > 0

    def feed(self, data: bytes) -> list[tuple[int, str]]:
        """The lines ``data`` completes."""
        lines: list[tuple[int, str]] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._end_line(data[start : end + 1], lines)
            start = end + 1
        rest = data[start:]
        if self._skipped:
            self._skipped += len(rest)
        elif rest:
            self._buffer += rest
            if len(self._buffer) > self.max_line_bytes:
                self._skipped = len(self._buffer)
                self._buffer = bytearray()
        return lines

    def finish(self) -> list[tuple[int, str]]:
        """The last line, when the input ended without its newline."""
        lines: list[tuple[int, str]] = []
        if self.pending:
            self._end_line(b"", lines)
        return lines

    def _end_line(self, tail: bytes, lines: list[tuple[int, str]]) -> None:
        self._number += 1
        if self._skipped:
            size, self._skipped = self._skipped + len(tail), 0
            self._reject(f"line is {size} bytes, over {self.max_line_bytes}")
            return
        raw = bytes(self._buffer) + tail if self._buffer else tail
        self._buffer = bytearray()
        if len(raw) > self.max_line_bytes:
            self._reject(f"line is {len(raw)} bytes, over {self.max_line_bytes}")
        elif raw.strip():
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._reject(f"not valid UTF-8 (byte {exc.start})")
                return
            lines.append((self._number, text.rstrip("\r\n")))

    def _reject(self, reason: str) -> None:
        self.report.reject(self.source, self._number, reason)


def follow_file(
    path: str | Path,
    report: IngestReport,
    *,
    poll: float = 0.5,
    until_idle: float | None = None,
    stop: threading.Event | None = None,
    read_bytes: int = READ_BYTES,
) -> Iterator[list[tuple[int, str]]]:
    """Tail a growing file from its start: yield the lines each read completes and, when
    there is nothing new, ``[]`` before waiting ``poll`` seconds (so the caller can close
    idle sessions). Ends when ``stop`` is set or after ``until_idle`` seconds spent waiting
    for new data (time the caller spends between two lines does not count); the last line,
    if it never got its newline, comes last. InputError if the file cannot be opened."""
    _check_waits(poll, until_idle)
    path = Path(path)
    source = str(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise InputError(f"{source}: cannot open: {exc.strerror or exc}") from exc
    splitter = LineSplitter(source, report)
    stop = stop if stop is not None else threading.Event()
    waited = 0.0
    with fh:
        while not stop.is_set():
            data = fh.read(read_bytes)
            if data:
                waited = 0.0
                lines = splitter.feed(data)
                if lines:
                    yield lines
                continue
            if until_idle is not None and waited >= until_idle:
                break
            yield []
            start = time.monotonic()
            stop.wait(poll)
            waited += time.monotonic() - start
    last = splitter.finish()
    if last:
        yield last


def follow_pipe(
    fh: BinaryIO,
    report: IngestReport,
    *,
    source: str = "<stdin>",
    poll: float = 0.5,
    until_idle: float | None = None,
    stop: threading.Event | None = None,
    read_bytes: int = READ_BYTES,
) -> Iterator[list[tuple[int, str]]]:
    """Read a pipe (standard input) to its end: yield the lines as they arrive and ``[]``
    each ``poll`` seconds nothing does. A reader thread does the blocking reads (a few
    chunks ahead at most). Ends at end of input, when ``stop`` is set, or after
    ``until_idle`` seconds spent waiting for data."""
    _check_waits(poll, until_idle)
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
    read = getattr(fh, "read1", fh.read)

    def reader() -> None:
        try:
            while data := read(read_bytes):
                chunks.put(data)
        except BaseException as exc:  # handed to the consumer, which raises it
            chunks.put(exc)
            return
        chunks.put(None)

    threading.Thread(target=reader, name="flexlog-stdin", daemon=True).start()
    splitter = LineSplitter(source, report)
    stop = stop if stop is not None else threading.Event()
    waited = 0.0
    while not stop.is_set():
        start = time.monotonic()
        try:
            item = chunks.get(timeout=poll)
        except queue.Empty:
            waited += time.monotonic() - start
            if until_idle is not None and waited >= until_idle:
                break
            yield []
            continue
        waited = 0.0
        if item is None:
            break
        if isinstance(item, BaseException):
            raise InputError(f"{source}: cannot read: {item}") from item
        lines = splitter.feed(item)
        if lines:
            yield lines
    last = splitter.finish()
    if last:
        yield last


def _check_waits(poll: float, until_idle: float | None) -> None:
    if not poll > 0:
        raise ValueError(f"poll must be > 0 seconds, got {poll!r}")
    if until_idle is not None and not until_idle > 0:
        raise ValueError(f"until_idle must be > 0 seconds, got {until_idle!r}")


__all__ = [
    "CLOSE_REASONS",
    "IDLE_TIMEOUT",
    "MAX_EVENTS",
    "MAX_OPEN",
    "Closed",
    "LineSplitter",
    "SequenceStream",
    "StreamReport",
    "follow_file",
    "follow_pipe",
]
