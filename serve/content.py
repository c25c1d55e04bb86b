"""Reading log sequences out of requests.

A chat message or completion prompt holds one log sequence, written as

* a JSON list: ``["open", "read", "close"]``,
* a bracketed list, as in the FlexLog prompt: ``[open, read x3, close]`` (an optional
  ``log sequence:`` before it is ignored), or
* raw log lines, one per line.

Each item of a list, and each line, is an *event key* when it is 1 to 256 characters without
whitespace or control characters (``"read x3"`` is the key ``read`` three times); anything else
is a *raw log line*, which the bundle's Drain parser (or a fresh one for the request's
``format``) maps to its template's key. So free text never reaches a voter, or the LLM's
prompt, as text: it becomes a template key such as ``T1a2b3c4d``.

Parsing is bounded: raw lines longer than ``max_line_chars`` are refused (a message) or
rejected (a batch of lines), the parser's regular expressions run in linear time, and the lines
are parsed in chunks against a deadline, so a request that would take too long gets a
:class:`ParseTimeout` instead of holding a worker.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

from flexlog.data.records import IngestReport, LogSequence
from flexlog.ingest import Ingestor, IngestTimeout, KeyAligner, Partitioning, SourceLines
from flexlog.parsing import Preset, TemplateParser, get_preset

#: What an event key looks like; anything else is a raw log line.
KEY = re.compile(r"[^\s\x00-\x1f\x7f]{1,256}")
#: The longest event key, and a character no event key holds (the complement of ``KEY``).
MAX_KEY_CHARS = 256
_NOT_KEY_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")
_RUN = re.compile(r"([^\s\x00-\x1f\x7f]{1,256}) x([1-9][0-9]{0,6})")
_PREFIX = re.compile(r"log sequence:\s*", re.IGNORECASE)
_SOURCE = "request"


class ContentError(ValueError):
    """Content that is no usable log sequence; the message says why and is safe to show."""


class ParseTimeout(ContentError):
    """The raw log lines of a request took longer to parse than its deadline allows."""


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a sequence: an event key repeated ``repeat`` times, or a raw log line."""

    text: str
    raw: bool
    repeat: int = 1


def is_key(text: str) -> bool:
    """Whether ``text`` is an event key (not a raw log line)."""
    return KEY.fullmatch(text) is not None


def all_keys(events: Collection[object]) -> bool:
    """Whether every item of ``events`` is an event key: ``all(map(is_key, events))`` for
    strings, False when one is anything else. One pass over their joined text instead of a
    match per event (lengths 1 to ``MAX_KEY_CHARS``, no character that ``KEY`` excludes);
    callers pass the distinct events of a sequence, which are few."""
    if not events:
        return True
    try:
        text = "".join(events)  # type: ignore[arg-type]  # TypeError: an item is not a str
    except TypeError:
        return False
    lengths = list(map(len, events))  # type: ignore[arg-type]
    return (
        min(lengths) >= 1 and max(lengths) <= MAX_KEY_CHARS and _NOT_KEY_CHAR.search(text) is None
    )


def split_items(content: str) -> list[Item]:
    """The items of one message: a JSON or bracketed list, else its non-blank lines."""
    text = _PREFIX.sub("", content.strip(), count=1).strip()
    if not text:
        raise ContentError("the message holds no log sequence")
    values: list[str] | None = None
    if text.startswith("["):
        try:
            decoded = json.loads(text)
        except (ValueError, RecursionError):  # ValueError: also integers over 4,300 digits
            decoded = None
        if isinstance(decoded, list):
            if not decoded:
                raise ContentError("the list holds no events")
            values = []
            for i, v in enumerate(decoded):
                if isinstance(v, bool) or not isinstance(v, (str, int)):
                    raise ContentError(f"item {i} of the list is not a string or integer")
                values.append(str(v))
        elif text.endswith("]") and "\n" not in text:
            values = [v.strip() for v in text[1:-1].split(",")]
    if values is None:
        return [Item(line.strip(), raw=not is_key(line.strip())) for line in _lines(text)]
    items = []
    for i, value in enumerate(values):
        if not value.strip():
            raise ContentError(f"item {i} of the list is empty")
        run = _RUN.fullmatch(value.strip())
        if run is not None:
            items.append(Item(run.group(1), raw=False, repeat=int(run.group(2))))
        else:
            items.append(Item(value.strip(), raw=not is_key(value.strip())))
    return items


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


class SequenceReader:
    """Builds :class:`LogSequence` objects from request content with a bundle's parser.

    ``parser_state`` is the bundle's saved Drain parser (None: raw lines are parsed by a fresh
    parser per request, with ``default_preset`` (``generic`` if None) unless the request names
    a format); ``templates`` are the bundle's template texts, used to map unseen templates onto
    their closest known one. Thread-safe.
    """

    def __init__(
        self,
        parser_state: dict | None = None,
        templates: Mapping[str, str] | None = None,
        *,
        max_events: int = 100_000,
        max_lines: int = 100_000,
        max_line_chars: int = 65_536,
        default_preset: Preset | None = None,
    ):
        self._saved = TemplateParser.from_dict(parser_state) if parser_state else None
        if self._saved is not None and default_preset is not None:
            raise ValueError(
                f"the bundle parses raw lines with its own {self._saved.preset.name!r} format; "
                "a log format for the service would give other template keys"
            )
        self._default = self._saved.preset if self._saved is not None else default_preset
        self._lock = threading.Lock()
        self._aligner = KeyAligner(templates)
        self.max_events = max_events
        self.max_lines = max_lines
        self.max_line_chars = max_line_chars

    @property
    def default_format(self) -> str:
        return self._default.name if self._default is not None else "generic"

    def _preset(self, fmt: str | None) -> Preset:
        return get_preset(fmt) if fmt is not None else self._default or get_preset("generic")

    def check_format(self, fmt: str | None) -> None:
        """ContentError for an unknown log preset name."""
        if fmt is not None:
            try:
                get_preset(fmt)
            except ValueError as exc:
                raise ContentError(str(exc)) from exc

    # -- one sequence per message ------------------------------------------------------------
    def sequence(
        self,
        content: str,
        seq_id: str,
        fmt: str | None = None,
        *,
        deadline: float | None = None,
    ) -> LogSequence:
        """The log sequence written in one message (see the module docstring); raw lines are
        parsed before ``deadline`` (``time.monotonic()``) or :class:`ParseTimeout`."""
        self.check_format(fmt)
        items = split_items(content)
        total = sum(item.repeat for item in items)
        if total > self.max_events:
            raise ContentError(f"the sequence has {total} events, over the limit {self.max_events}")
        raw = [item.text for item in items if item.raw]
        if len(raw) > self.max_lines:
            raise ContentError(f"{len(raw)} raw log lines, over the limit {self.max_lines}")
        for i, line in enumerate(raw, start=1):
            if len(line) > self.max_line_chars:
                raise ContentError(
                    f"raw log line {i} has {len(line)} characters, over the limit "
                    f"{self.max_line_chars}"
                )
        keys = iter(self._parse_items(raw, fmt, deadline) if raw else [])
        events: list[str] = []
        for item in items:
            events.extend([next(keys) if item.raw else item.text] * item.repeat)
        return LogSequence(seq_id, tuple(events))

    def _parse_items(self, raw: list[str], fmt: str | None, deadline: float | None) -> list[str]:
        """Event keys of raw log lines; ContentError naming the first line that fails."""
        report = IngestReport()
        with _timeout():
            parsed = self._ingestor(fmt).keys(
                list(enumerate(raw, start=1)), source=_SOURCE, report=report, deadline=deadline
            )
        if report.rejections:
            first = report.rejections[0]
            raise ContentError(f"raw log line {first.line}: {first.reason}")
        return [p.event for p in parsed]

    # -- raw lines, partitioned into many sequences ------------------------------------------
    def partition(
        self,
        lines: Sequence[str],
        fmt: str | None,
        mode: str,
        *,
        window: int = 20,
        step: int = 1,
        deadline: float | None = None,
    ) -> tuple[list[LogSequence], IngestReport, list[SourceLines]]:
        """Parse raw log lines and group them into sequences (by session id, or fixed or
        sliding windows), each with the request's line numbers it came from. Every non-blank
        line is accepted or rejected in the report (a line over ``max_line_chars`` is
        rejected unparsed); :class:`ParseTimeout` past ``deadline``."""
        self.check_format(fmt)
        if len(lines) > self.max_lines:
            raise ContentError(f"{len(lines)} lines, over the limit {self.max_lines}")
        preset = self._preset(fmt)
        if mode == "session" and preset.session_pattern is None:
            raise ContentError(
                f"log format {preset.name!r} has no session id; use partition 'fixed' or 'sliding'"
            )
        report = IngestReport()
        numbered = []
        for i, line in enumerate(lines, start=1):
            if len(line) > self.max_line_chars:
                report.reject(
                    _SOURCE, i, f"{len(line)} characters, over the limit {self.max_line_chars}"
                )
            elif line.strip():
                numbered.append((i, line))
        if mode == "time":
            if not preset.timestamp_fields:
                raise ContentError(
                    f"log format {preset.name!r} has no timestamp fields for time windows"
                )
            partitioning = Partitioning(
                "time",
                window,
                step if step > 1 else None,
                time_fields=preset.timestamp_fields,
                time_format=preset.timestamp_format,
            )
        else:
            partitioning = Partitioning(mode, window, step)
        ingestor = self._ingestor(fmt, partitioning)
        with _timeout():
            ingested = ingestor.ingest([(_SOURCE, numbered)], report, deadline=deadline)
        seqs = ingested.sequences
        too_long = [s.id for s in seqs if len(s.events) > self.max_events]
        if too_long:
            raise ContentError(
                f"sequence {too_long[0]!r} has more than {self.max_events} events; "
                "use a smaller window"
            )
        return seqs, report, ingested.sources

    # -- parsing -------------------------------------------------------------------------------
    def _ingestor(self, fmt: str | None, partitioning: Partitioning | None = None) -> Ingestor:
        """The bundle's parser (shared: it remembers unseen templates, so one chunk at a time
        holds it) when the request names no other format, else a fresh one."""
        saved = self._saved
        if saved is not None and (fmt is None or get_preset(fmt).name == saved.preset.name):
            return Ingestor(saved, partitioning, self._aligner, lock=self._lock)
        return Ingestor(TemplateParser(self._preset(fmt)), partitioning, self._aligner)


@contextlib.contextmanager
def _timeout() -> Iterator[None]:
    try:
        yield
    except IngestTimeout as exc:
        raise ParseTimeout("the raw log lines took too long to parse; send fewer lines") from exc
