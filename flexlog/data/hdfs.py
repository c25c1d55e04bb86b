"""HDFS block sessions in DeepLog's format: one session per line, space-separated template ids."""

from __future__ import annotations

from pathlib import Path

from flexlog.data.records import IngestReport, InputError, LogSequence


def load_hdfs_sessions(
    path: str | Path,
    label: int,
    report: IngestReport | None = None,
    *,
    id_prefix: str | None = None,
) -> list[LogSequence]:
    """Read a DeepLog session file; id ``k`` becomes event key ``Ek`` (``HDFS_templates.csv``).

    Lines with a non-integer id are rejected into ``report`` (naming the line).
    """
    path = Path(path)
    report = report if report is not None else IngestReport()
    prefix = id_prefix if id_prefix is not None else path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    out = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        tokens = line.split()
        bad = next((t for t in tokens if not t.isdigit()), None)
        if bad is not None:
            shown = bad[:20].decode("utf-8", "replace")
            report.reject(str(path), lineno, f"template id {shown!r} is not an integer")
            continue
        report.accept()
        out.append(LogSequence(f"{prefix}-{lineno}", tuple(f"E{int(t)}" for t in tokens), label))
    return out
