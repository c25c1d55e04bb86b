"""One ingestion path: raw log lines → header fields → template keys → sequences → keys
aligned to what a detector knows.

The command line (``flexlog parse``, ``train``, ``score``, ``evaluate``), the service's
content reader and the experiments all go through here, so a line is parsed, partitioned and
aligned the same way wherever it comes from:

* :class:`Partitioning` says how parsed lines become sequences (session ids, fixed or sliding
  windows of lines, or windows of time read from the lines' timestamp fields) and travels in a
  bundle's manifest, so scoring reuses training's choice;
* :class:`KeyAligner` maps template keys a detector has never seen onto their closest known
  template (by text), caching what it has worked out;
* :class:`Ingestor` runs a :class:`~flexlog.parsing.TemplateParser` over numbered lines in
  chunks, against an optional deadline, and hands back sequences whose lines are each either
  in a sequence or rejected in an :class:`~flexlog.data.records.IngestReport`, each with the
  lines it came from (:class:`SourceLines`) and, given :class:`LineLabels` or
  :class:`SessionLabels`, its label.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexlog.alignment import TemplateAligner, align_sequences
from flexlog.data.records import IngestReport, InputError, LogSequence, Rejection
from flexlog.parsing import TemplateParser, partition, read_log_lines
from flexlog.parsing.miner import ParsedLine
from flexlog.parsing.partition import MODES as LINE_MODES

#: How lines become sequences: by session id, windows of lines, or windows of time.
MODES = (*LINE_MODES, "time")
_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int) -> int:
    """Seconds in ``90``, ``90s``, ``5m``, ``2h`` or ``1d``; ValueError naming the text."""
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    else:
        value = str(text).strip().lower()
        unit = _DURATION.get(value[-1:])
        number = value[:-1] if unit is not None else value
        if not number.isdigit():
            raise ValueError(f"duration {text!r}: expected seconds or a number with s, m, h or d")
        seconds = int(number) * (unit or 1)
    if seconds < 1:
        raise ValueError(f"duration {text!r} must be at least one second")
    return seconds


#: Lines parsed between two looks at the deadline.
CHUNK = 256


class IngestTimeout(TimeoutError):
    """Parsing did not finish before its deadline."""


@dataclass(frozen=True)
class Partitioning:
    """How parsed lines become sequences: ``session`` (the preset's session id, or the first
    match of ``session_pattern``), ``fixed`` windows of ``window`` lines, ``sliding`` windows
    moved ``step`` lines at a time (default 1), or ``time`` windows of ``window`` seconds
    starting every ``step`` seconds (default ``window``: back to back), read from the header
    fields
    ``time_fields`` (joined by a space) with the strptime ``time_format`` (``%s``: seconds
    since the epoch)."""

    mode: str = "session"
    window: int = 20
    step: int | None = None
    session_pattern: str | None = None
    time_fields: tuple[str, ...] = ()
    time_format: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"partition must be one of {', '.join(MODES)}, got {self.mode!r}")
        object.__setattr__(self, "time_fields", tuple(self.time_fields))
        if self.mode == "time" and not (self.time_fields and self.time_format):
            raise ValueError(
                "time windows need the timestamp's fields and format (--time-fields, "
                "--time-format; the built-in presets have their own)"
            )
        for name in ("window", "step"):
            value = getattr(self, name)
            if name == "step" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Partitioning:
        """From a manifest's ``partitioning`` object; ValueError naming a bad field."""
        if not isinstance(data, dict):
            raise ValueError("partitioning must be an object")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"partitioning has unknown fields {unknown}")
        return cls(**data)

    def split(
        self, parsed: Sequence[ParsedLine], *, source: str, report: IngestReport
    ) -> list[LogSequence]:
        """The sequences of one source's parsed lines; lines that fit none (no session id)
        move from accepted to rejected in ``report``."""
        stage = IngestReport()
        seqs = self._partition(parsed, source, stage)
        for rejection in stage.rejections:
            report.reject_accepted(rejection)
        return seqs

    def line_numbers(self, parsed: Sequence[ParsedLine], *, source: str) -> list[tuple[int, ...]]:
        """For each sequence :meth:`split` makes of ``parsed``, its line numbers (the same
        partition run over line numbers instead of event keys)."""
        numbered = [dataclasses.replace(p, event=str(p.line)) for p in parsed]
        return [
            tuple(map(int, s.events)) for s in self._partition(numbered, source, IngestReport())
        ]

    def _partition(
        self, parsed: Sequence[ParsedLine], source: str, stage: IngestReport
    ) -> list[LogSequence]:
        if self.mode == "time":
            return self._time_windows(parsed, source, stage)
        kw: dict[str, Any] = {}
        if self.mode == "session":
            kw.update(pattern=self.session_pattern, report=stage)
        else:
            kw["size"] = self.window
            if self.mode == "sliding":
                kw["step"] = self.step or 1
        return partition(parsed, self.mode, source=source, **kw)

    def timestamp(self, line: ParsedLine) -> float | None:
        """Seconds of a line's timestamp fields, or None when missing or unparsable."""
        import datetime as dt

        parts = [line.fields.get(f) for f in self.time_fields]
        if any(p is None for p in parts):
            return None
        text = " ".join(p.strip() for p in parts)  # type: ignore[union-attr]
        try:
            if self.time_format == "%s":
                return float(text)
            stamp = dt.datetime.strptime(text, self.time_format or "")
        except ValueError:
            return None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.timezone.utc)
        return stamp.timestamp()

    def _time_windows(
        self, parsed: Sequence[ParsedLine], source: str, stage: IngestReport
    ) -> list[LogSequence]:
        """Windows of ``window`` seconds every ``step`` seconds (aligned to multiples of the
        step), events in line order; a line without a readable timestamp is rejected."""
        step = self.step or self.window
        windows: dict[int, list[str]] = {}
        for line in parsed:
            t = self.timestamp(line)
            if t is None:
                shown = " ".join(line.fields.get(f, "?") for f in self.time_fields)
                stage.reject(
                    source, line.line, f"unparsable timestamp {shown!r} ({self.time_format})"
                )
                continue
            stage.accept()
            last = int(t // step)
            first = int((t - self.window) // step) + 1
            for k in range(first, last + 1):
                windows.setdefault(k, []).append(line.event)
        return [
            LogSequence(f"{source}:t{k * step}", tuple(events))
            for k, events in sorted(windows.items())
        ]


@dataclass(frozen=True)
class SourceLines:
    """Where a sequence came from: its file (or stream) and its line numbers, in order."""

    source: str
    lines: tuple[int, ...]

    def to_json(self, max_lines: int = 64) -> dict[str, Any]:
        """``file``, ``first``, ``last`` and, for up to ``max_lines`` lines, ``lines``."""
        record: dict[str, Any] = {"file": self.source}
        if self.lines:
            record.update(first=min(self.lines), last=max(self.lines))
            if len(self.lines) <= max_lines:
                record["lines"] = list(self.lines)
        return record


@dataclass(frozen=True)
class LineLabels:
    """Labels written on every line (BGL, Thunderbird): the header field ``field`` holds
    ``normal_value`` on normal lines; a sequence is anomalous when any of its lines is."""

    field: str
    normal_value: str = "-"

    def of(self, line: ParsedLine) -> int | None:
        value = line.fields.get(self.field)
        return None if value is None else int(value != self.normal_value)

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "normal_value": self.normal_value}


@dataclass(frozen=True)
class SessionLabels:
    """Labels per session id (HDFS's ``anomaly_label.csv``: ``BlockId,Label`` with
    ``Normal``/``Anomaly``; 0/1 and normal/anomalous are read too)."""

    labels: Mapping[str, int]
    source: str = "<labels>"

    @classmethod
    def read(cls, path: str | Path) -> SessionLabels:
        """The label file; InputError naming the file and line of anything unreadable."""
        import csv

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read the label file ({exc})") from exc
        rows = csv.reader(text.splitlines())
        header = next(rows, None)
        if not header or len(header) < 2:
            raise InputError(f"{path}:1: expected a header such as BlockId,Label")
        column = next((i for i, h in enumerate(header) if h.strip().lower() == "label"), 1)
        labels: dict[str, int] = {}
        for n, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) <= column:
                raise InputError(f"{path}:{n}: expected {len(header)} columns")
            word = row[column].strip().lower()
            if word not in _LABEL_WORDS:
                raise InputError(
                    f"{path}:{n}: label {row[column]!r} is not Normal/Anomaly (or 0/1)"
                )
            labels[row[0].strip()] = _LABEL_WORDS[word]
        if not labels:
            raise InputError(f"{path}: no labelled sessions")
        return cls(labels, str(path))


_LABEL_WORDS = {"normal": 0, "anomaly": 1, "anomalous": 1, "0": 0, "1": 1}


@dataclass
class Ingested:
    """Sequences with the lines each came from; ``unlabelled`` sequences were dropped for
    want of a label (their lines rejected); ``unused_labels`` sessions of the label file
    never appeared in the logs."""

    sequences: list[LogSequence]
    sources: list[SourceLines]
    unlabelled: int = 0
    unused_labels: int = 0


class KeyAligner:
    """Maps template keys a detector never saw onto its closest known template by text
    (see :class:`~flexlog.alignment.TemplateAligner`); a no-op without known templates.
    Thread-safe; the similarity model is built on first use."""

    def __init__(self, known: Mapping[str, str] | None = None, threshold: float = 0.5):
        self.known = dict(known or {})
        self.threshold = threshold
        self._aligner = None
        self._lock = threading.Lock()

    def mapping(self, templates: Mapping[str, str]) -> dict[str, str]:
        """Unseen key → known key, for the keys of ``templates`` (key → text) that move."""
        unseen = {k: t for k, t in templates.items() if k not in self.known}
        if not self.known or not unseen:
            return {}
        with self._lock:
            if self._aligner is None:
                self._aligner = TemplateAligner(self.known, self.threshold)
            aligner = self._aligner
        return aligner.mapping(unseen)

    def align(
        self, sequences: Sequence[LogSequence], templates: Mapping[str, str] | None
    ) -> tuple[list[LogSequence], int]:
        """The sequences with unseen keys replaced, and how many distinct keys moved."""
        mapping = self.mapping(templates) if templates else {}
        return align_sequences(sequences, mapping), len(mapping)


class Ingestor:
    """Raw lines to aligned sequences with one parser, one partitioning and one aligner.

    ``lock``: held around each chunk parsed by a shared parser (one that remembers unseen
    templates across callers, as the service's is).
    """

    def __init__(
        self,
        parser: TemplateParser,
        partitioning: Partitioning | None = None,
        aligner: KeyAligner | None = None,
        *,
        lock: contextlib.AbstractContextManager[Any] | None = None,
    ):
        self.parser = parser
        self.partitioning = partitioning or Partitioning()
        self.aligner = aligner or KeyAligner()
        self._lock = lock if lock is not None else contextlib.nullcontext()

    def fit(self, numbered: Sequence[tuple[int, str]], *, deadline: float | None = None) -> None:
        """Learn templates from the lines (in chunks: fitting adds up)."""
        for chunk in _chunks(numbered):
            check_deadline(deadline)
            with self._lock:
                self.parser.fit(chunk)

    def parse(
        self,
        numbered: Sequence[tuple[int, str]],
        *,
        source: str,
        report: IngestReport,
        deadline: float | None = None,
    ) -> list[ParsedLine]:
        """Each line parsed (accepted) or rejected in ``report``; an unfitted parser is
        first fitted on all of them, as one call would."""
        if not self.parser.fitted:
            self.fit(numbered, deadline=deadline)
        parsed: list[ParsedLine] = []
        for chunk in _chunks(numbered):
            check_deadline(deadline)
            with self._lock:
                parsed += self.parser.parse(chunk, source=source, report=report)
        return parsed

    def keys(
        self,
        numbered: Sequence[tuple[int, str]],
        *,
        source: str,
        report: IngestReport,
        deadline: float | None = None,
    ) -> list[ParsedLine]:
        """The parsed lines with their event keys aligned to the known templates."""
        parsed = self.parse(numbered, source=source, report=report, deadline=deadline)
        mapping = self.aligner.mapping({p.event: p.template for p in parsed})
        if not mapping:
            return parsed
        return [
            dataclasses.replace(p, event=mapping[p.event]) if p.event in mapping else p
            for p in parsed
        ]

    def sequences(
        self,
        sources: Iterable[tuple[str, Sequence[tuple[int, str]]]],
        report: IngestReport,
        *,
        deadline: float | None = None,
    ) -> list[LogSequence]:
        """The sequences of several sources (``(name, numbered lines)``), each partitioned on
        its own; every line ends up in a sequence or rejected in ``report``."""
        sources = list(sources)
        if not self.parser.fitted:
            self.fit([line for _, lines in sources for line in lines], deadline=deadline)
        seqs: list[LogSequence] = []
        for source, lines in sources:
            parsed = self.keys(lines, source=source, report=report, deadline=deadline)
            seqs += self.partitioning.split(parsed, source=source, report=report)
        return seqs

    def ingest(
        self,
        sources: Iterable[tuple[str, Sequence[tuple[int, str]]]],
        report: IngestReport,
        *,
        labels: LineLabels | SessionLabels | None = None,
        deadline: float | None = None,
    ) -> Ingested:
        """:meth:`sequences` with the lines of each sequence and, given ``labels``, its label.

        Per-line labels: a line without the label field is rejected. Session labels: a
        sequence whose id the file does not name is dropped and its lines rejected. Either
        way every line read is in a sequence or rejected in ``report``.
        """
        if isinstance(labels, LineLabels):
            fields = self.parser.preset.header_regex.groupindex
            if labels.field not in fields or labels.field == "Content":
                known = ", ".join(f for f in fields if f != "Content")
                raise InputError(
                    f"--label-field {labels.field!r} is not a field of the log format "
                    f"{self.parser.preset.log_format!r} (its fields: {known or 'none'})"
                )
        if self.partitioning.mode == "time":
            fields = self.parser.preset.header_regex.groupindex
            missing = [f for f in self.partitioning.time_fields if f not in fields]
            if missing:
                raise InputError(
                    f"time windows read the fields {', '.join(missing)}, which the log format "
                    f"{self.parser.preset.log_format!r} lacks (give --time-fields and "
                    "--time-format)"
                )
        sources = list(sources)
        if not self.parser.fitted:
            self.fit([line for _, lines in sources for line in lines], deadline=deadline)
        out = Ingested([], [])
        seen: set[str] = set()
        for source, lines in sources:
            parsed = self.keys(lines, source=source, report=report, deadline=deadline)
            flags: dict[int, int] = {}
            if isinstance(labels, LineLabels):
                kept = []
                for p in parsed:
                    flag = labels.of(p)
                    if flag is None:
                        report.reject_accepted(
                            Rejection(source, p.line, f"no {labels.field} field on the line")
                        )
                    else:
                        flags[p.line] = flag
                        kept.append(p)
                parsed = kept
            seqs = self.partitioning.split(parsed, source=source, report=report)
            numbers = self.partitioning.line_numbers(parsed, source=source)
            for seq, lines_of in zip(seqs, numbers, strict=True):
                if isinstance(labels, LineLabels):
                    seq = dataclasses.replace(seq, label=max(flags[n] for n in lines_of))
                elif isinstance(labels, SessionLabels):
                    seen.add(seq.id)
                    label = labels.labels.get(seq.id)
                    if label is None:
                        out.unlabelled += 1
                        reason = f"session {seq.id} has no label in {labels.source}"
                        for n in lines_of:
                            report.reject_accepted(Rejection(source, n, reason))
                        continue
                    seq = dataclasses.replace(seq, label=label)
                out.sequences.append(seq)
                out.sources.append(SourceLines(source, lines_of))
        if isinstance(labels, SessionLabels):
            out.unused_labels = sum(sid not in seen for sid in labels.labels)
        return out

    def files(
        self,
        paths: Iterable[str | Path],
        report: IngestReport,
        *,
        labels: LineLabels | SessionLabels | None = None,
    ) -> Ingested:
        """The sequences of raw log files (undecodable and over-long lines rejected)."""
        sources = [(str(p), list(read_log_lines(p, report))) for p in paths]
        return self.ingest(sources, report, labels=labels)


def check_deadline(deadline: float | None) -> None:
    """IngestTimeout once ``time.monotonic()`` is past ``deadline`` (None: no deadline)."""
    if deadline is not None and time.monotonic() > deadline:
        raise IngestTimeout("the raw log lines took too long to parse")


def _chunks(numbered: Sequence[tuple[int, str]]) -> Iterable[Sequence[tuple[int, str]]]:
    for start in range(0, len(numbered), CHUNK):
        yield numbered[start : start + CHUNK]


__all__ = [
    "CHUNK",
    "MODES",
    "IngestTimeout",
    "Ingested",
    "Ingestor",
    "KeyAligner",
    "LineLabels",
    "Partitioning",
    "SessionLabels",
    "SourceLines",
    "check_deadline",
    "parse_duration",
]
