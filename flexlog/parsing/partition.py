"""Group parsed lines into :class:`~flexlog.data.records.LogSequence` objects.

Three ways: by session id (HDFS block ids and the like), fixed windows of ``size`` lines, and
sliding windows of ``size`` lines moved ``step`` lines at a time. Sequences carry the lines'
event keys and no label (labels come from elsewhere, e.g. HDFS's anomaly_label.csv).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence

from flexlog.data.records import IngestReport, LogSequence
from flexlog.parsing.miner import ParsedLine
from flexlog.parsing.regex import compile_linear

MODES = ("session", "fixed", "sliding")


def by_session(
    parsed: Sequence[ParsedLine],
    pattern: str | re.Pattern[str] | object | None = None,
    *,
    report: IngestReport | None = None,
    source: str = "<lines>",
) -> list[LogSequence]:
    """One sequence per session id, in order of first appearance; events keep line order.

    The session id is each line's ``session`` (set by the parser's preset), or, if ``pattern``
    is given, its first match in the line's content (group 1 if the pattern has groups). Lines
    without one are rejected into ``report`` with reason "no session id"; the others are
    accepted. Use a report of its own: the parser already counted these lines in its report.
    ``pattern`` is RE2 syntax (linear time); a compiled Python pattern is recompiled with RE2,
    and a :class:`~flexlog.parsing.regex.PatternError` (a ``ValueError``) names a bad one.
    """
    if isinstance(pattern, re.Pattern):
        if pattern.flags & ~re.UNICODE:
            raise ValueError(f"session pattern {pattern.pattern!r}: flags are not supported")
        pattern = pattern.pattern
    regex = compile_linear(pattern, what="session pattern") if isinstance(pattern, str) else pattern
    report = report if report is not None else IngestReport()
    sessions: dict[str, list[str]] = {}
    for p in parsed:
        if regex is None:
            sid = p.session
        else:
            try:
                m = regex.search(p.content)
            except UnicodeEncodeError:  # a lone surrogate: no id
                m = None
            sid = None if m is None else (m.group(1) if regex.groups else m.group(0))
        if not sid:
            report.reject(source, p.line, "no session id")
            continue
        report.accept()
        sessions.setdefault(sid, []).append(p.event)
    return [LogSequence(sid, tuple(events)) for sid, events in sessions.items()]


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def fixed_window(
    parsed: Sequence[ParsedLine], size: int, *, source: str = "<lines>"
) -> list[LogSequence]:
    """Consecutive, non-overlapping windows of ``size`` lines; the last may be shorter.

    ``n`` lines give ``ceil(n / size)`` windows, with ids ``"<source>:w0"``, ``"<source>:w1"``...
    """
    size = _check_int("size", size)
    events = [p.event for p in parsed]
    return [
        LogSequence(f"{source}:w{i}", tuple(events[start : start + size]))
        for i, start in enumerate(range(0, len(events), size))
    ]


def sliding_window(
    parsed: Sequence[ParsedLine], size: int, step: int, *, source: str = "<lines>"
) -> list[LogSequence]:
    """Windows of ``size`` lines starting every ``step`` lines.

    Only full windows are made, so ``n >= size`` lines give ``(n - size) // step + 1`` windows
    (lines after the last full window are left out when ``(n - size) % step != 0``); fewer
    than ``size`` lines (but at least one) give one short window so short inputs are not lost.
    """
    size = _check_int("size", size)
    step = _check_int("step", step)
    events = [p.event for p in parsed]
    if not events:
        return []
    if len(events) < size:
        return [LogSequence(f"{source}:w0", tuple(events))]
    return [
        LogSequence(f"{source}:w{i}", tuple(events[start : start + size]))
        for i, start in enumerate(range(0, len(events) - size + 1, step))
    ]


def partition(parsed: Sequence[ParsedLine], mode: str, **kw: object) -> list[LogSequence]:
    """Dispatch on ``mode``: "session" (:func:`by_session`), "fixed" (:func:`fixed_window`,
    needs ``size``) or "sliding" (:func:`sliding_window`, needs ``size`` and ``step``)."""
    functions = {"session": by_session, "fixed": fixed_window, "sliding": sliding_window}
    fn = functions.get(mode)
    if fn is None:
        raise ValueError(f"unknown partition mode {mode!r}; known modes: {', '.join(MODES)}")
    try:
        inspect.signature(fn).bind(parsed, **kw)
    except TypeError as exc:
        raise ValueError(f"partition mode {mode!r}: {exc}") from exc
    return fn(parsed, **kw)
