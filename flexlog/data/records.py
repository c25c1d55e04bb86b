"""Log sequences, the canonical JSON Lines format, and accounting for rejected input.

A canonical sequence file holds one JSON object per line::

    {"id": "UTD-0001", "events": ["open", "read"], "label": 0}
    {"id": "UTD-0002", "events": ["open", "execve"], "label": 1, "group": "web"}

``label`` is optional (1 = anomalous). ``group`` is optional too: the kind of anomaly (for
ADFA-LD the attack type), which inner validation holds out one at a time. Reading never stops at a bad line: every line is
either returned as a :class:`LogSequence` or recorded as a :class:`Rejection` in a
:class:`IngestReport`, so ``accepted + rejected == read`` always holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: A line longer than this (in bytes) is rejected instead of parsed; guards memory.
MAX_LINE_BYTES = 16 * 1024 * 1024
#: Sequences longer than this many events are rejected.
MAX_EVENTS = 1_000_000


@dataclass(frozen=True, slots=True)
class LogSequence:
    """One sequence of template keys (events), with an optional label (0 normal, 1 anomalous)
    and an optional ``group``: the kind of anomaly it belongs to (e.g. an attack type)."""

    id: str
    events: tuple[str, ...]
    label: int | None = None
    group: str | None = None

    @property
    def key(self) -> tuple[str, ...]:
        """The cache key: the template-id tuple."""
        return self.events

    def to_json(self) -> dict:
        record: dict = {"id": self.id, "events": list(self.events)}
        if self.label is not None:
            record["label"] = self.label
        if self.group is not None:
            record["group"] = self.group
        return record


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input item that could not be processed, and why."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"

    def to_json(self) -> dict:
        return {"source": self.source, "line": self.line, "reason": self.reason}


@dataclass
class IngestReport:
    """Counts for one ingestion: every item read is either accepted or rejected."""

    read: int = 0
    accepted: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def accept(self) -> None:
        self.read += 1
        self.accepted += 1

    def reject(self, source: str, line: int, reason: str) -> None:
        self.read += 1
        self.rejections.append(Rejection(source, line, reason))

    def reject_accepted(self, rejection: Rejection) -> None:
        """An item an earlier stage accepted and a later stage rejects (e.g. a parsed log line
        that belongs to no session): it moves from accepted to rejected; ``read`` is unchanged."""
        if self.accepted < 1:
            raise ValueError("no accepted item to reject")
        self.accepted -= 1
        self.rejections.append(rejection)

    def merge(self, other: IngestReport) -> None:
        self.read += other.read
        self.accepted += other.accepted
        self.rejections.extend(other.rejections)

    def summary(self) -> str:
        return f"read {self.read}, accepted {self.accepted}, rejected {self.rejected}"

    def to_json(self) -> dict:
        return {
            "read": self.read,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejections": [r.to_json() for r in self.rejections],
        }


class InputError(ValueError):
    """Input that cannot be used at all (missing file, wrong format); names the source."""


def parse_record(obj: object, *, require_label: bool = False) -> LogSequence:
    """Validate one decoded JSON value as a canonical sequence record.

    Raises ValueError naming the offending field.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise ValueError("missing field 'id'")
    seq_id = obj["id"]
    if isinstance(seq_id, bool) or not isinstance(seq_id, (str, int)):
        raise ValueError("field 'id' must be a string or integer")
    if "events" not in obj:
        raise ValueError("missing field 'events'")
    events = obj["events"]
    if not isinstance(events, list):
        raise ValueError("field 'events' must be a list")
    if not events:
        raise ValueError("field 'events' is empty")
    if len(events) > MAX_EVENTS:
        raise ValueError(f"field 'events' has {len(events)} events, more than {MAX_EVENTS}")
    out = []
    for i, ev in enumerate(events):
        if isinstance(ev, bool) or not isinstance(ev, (str, int)):
            raise ValueError(f"field 'events'[{i}] must be a string or integer")
        ev = str(ev)
        if not ev:
            raise ValueError(f"field 'events'[{i}] is an empty string")
        out.append(ev)
    _check_unicode(str(seq_id), "field 'id'")
    if not is_unicode("".join(out)):
        for i, ev in enumerate(out):
            _check_unicode(ev, f"field 'events'[{i}]")
    label = obj.get("label")
    if label is not None:
        label = parse_label(label)
    elif require_label:
        raise ValueError("missing field 'label'")
    group = obj.get("group")
    if group is not None:
        if isinstance(group, bool) or not isinstance(group, (str, int)):
            raise ValueError(f"field 'group' must be a string or integer, got {group!r}")
        group = str(group)
        _check_unicode(group, "field 'group'")
        if not group:
            raise ValueError("field 'group' is an empty string")
    return LogSequence(str(seq_id), tuple(out), label, group)


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_unicode(text: str, field: str) -> None:
    """ValueError naming the field when ``text`` holds a lone surrogate, which no file,
    database or response could store."""
    if not is_unicode(text):
        raise ValueError(f"{field} is not valid Unicode (it holds a lone surrogate)")


def parse_label(value: object) -> int:
    """Accept 0/1, booleans and the words normal/anomalous; anything else is a ValueError."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str) and value.lower() in ("normal", "anomalous", "0", "1"):
        return 1 if value.lower() in ("anomalous", "1") else 0
    raise ValueError(f"field 'label' must be 0, 1, 'normal' or 'anomalous', got {value!r}")


def iter_text_lines(
    path: str | Path, report: IngestReport, *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` for the non-blank, UTF-8, not-too-long lines of a file.

    Oversized and undecodable lines are rejected into ``report`` (naming file and line); the
    caller accepts or rejects the lines it is given, so one report accounts for every line.
    Raises :class:`InputError` when the file cannot be opened.
    """
    path = Path(path)
    source = str(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise InputError(f"{source}: cannot open: {exc.strerror or exc}") from exc
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if len(raw) > max_line_bytes:
                report.reject(source, lineno, f"line is {len(raw)} bytes, over {max_line_bytes}")
                continue
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                report.reject(source, lineno, f"not valid UTF-8 (byte {exc.start})")
                continue
            yield lineno, text.rstrip("\r\n")


def iter_jsonl(
    path: str | Path,
    report: IngestReport | None = None,
    *,
    require_label: bool = False,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[LogSequence]:
    """Yield the valid sequences of a JSON Lines file; record every bad line in ``report``.

    Blank lines are skipped and not counted. Raises :class:`InputError` only when the file
    itself cannot be opened.
    """
    report = report if report is not None else IngestReport()
    source = str(path)
    for lineno, text in iter_text_lines(path, report, max_line_bytes=max_line_bytes):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            report.reject(source, lineno, f"malformed JSON: {exc.msg} at column {exc.colno}")
            continue
        try:
            seq = parse_record(obj, require_label=require_label)
        except ValueError as exc:
            report.reject(source, lineno, str(exc))
            continue
        report.accept()
        yield seq


def read_jsonl(
    path: str | Path, *, require_label: bool = False
) -> tuple[list[LogSequence], IngestReport]:
    """Read a whole canonical JSONL file: the valid sequences and the report of the rest."""
    report = IngestReport()
    seqs = list(iter_jsonl(path, report, require_label=require_label))
    return seqs, report


def write_jsonl(path: str | Path, sequences: Iterable[LogSequence]) -> int:
    """Write sequences in canonical JSONL; returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for seq in sequences:
            fh.write(json.dumps(seq.to_json(), separators=(",", ":")))
            fh.write("\n")
            n += 1
    return n


def labels_of(sequences: Iterable[LogSequence]) -> list[int]:
    """The labels of labelled sequences; a ValueError names the first unlabelled one."""
    out = []
    for seq in sequences:
        if seq.label is None:
            raise ValueError(f"sequence {seq.id!r} has no label")
        out.append(seq.label)
    return out
