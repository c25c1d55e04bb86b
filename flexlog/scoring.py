"""Scoring a batch of sequences: the records ``flexlog score`` writes, in one place for every
engine (the local batch path, ``--follow``, and the Ray actors of :mod:`flexlog.ray_engine`).

A record is a verdict (:meth:`~flexlog.detector.Verdict.to_json`) with, for raw logs, the
``origin`` of its sequence (file, first and last line, the lines) and, for an anomalous one,
its ``evidence`` (:mod:`flexlog.evidence`). :func:`record_line` is the one serialisation of a
record as a JSON line, so two engines that score the same sequences write the same bytes.

:class:`RecordWriter` writes records to JSON Lines, or to Parquet when the path ends in
``.parquet`` (needs pyarrow, which the ``ray`` extra brings): one row per record in the same
order, ``id`` as text, the nested fields (``votes``, ``origin``, ``evidence``) as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexlog.data.records import LogSequence
from flexlog.ingest import SourceLines

if TYPE_CHECKING:
    from flexlog.detector import Detector, Verdict
    from flexlog.evidence import EventProfile, Evidence

#: Suffix of --out that selects Parquet instead of JSON Lines.
PARQUET_SUFFIX = ".parquet"


@dataclass(frozen=True)
class Scored:
    """One answered sequence: its verdict, evidence (None for a normal one), the lines it
    came from (None for canonical sequences) and the record written for it."""

    sequence: LogSequence
    verdict: Verdict
    evidence: Evidence | None
    source: SourceLines | None
    record: dict[str, Any]

    @property
    def anomalous(self) -> bool:
        return self.verdict.label == 1

    @property
    def line(self) -> str:
        """The record as one JSON line (no newline)."""
        return record_line(self.record)


def score_batch(
    detector: Detector,
    sequences: Sequence[LogSequence],
    sources: Sequence[SourceLines | None] | None = None,
    *,
    profile: EventProfile | None = None,
) -> list[Scored]:
    """Answer a batch with ``detector`` and explain the anomalous verdicts (``profile``: the
    bundle's event profile, for rare events); ``sources``: where each sequence came from,
    which adds its ``origin`` to the record and line numbers to its evidence."""
    from flexlog.evidence import explain

    if sources is not None and len(sources) != len(sequences):
        raise ValueError(f"{len(sources)} sources for {len(sequences)} sequences")
    verdicts = detector.predict(sequences)
    evidence = explain(detector, sequences, verdicts, profile=profile)
    scored = []
    for i, (seq, verdict, ev) in enumerate(zip(sequences, verdicts, evidence, strict=True)):
        source = sources[i] if sources is not None else None
        record = verdict.to_json()
        if source is not None:
            record["origin"] = source.to_json()
        if ev is not None:
            record["evidence"] = ev.to_json(seq.events, source)
        scored.append(Scored(seq, verdict, ev, source, record))
    return scored


def record_line(record: dict[str, Any]) -> str:
    """A record as the one JSON line every engine writes (compact, keys in record order)."""
    return json.dumps(record, separators=(",", ":"))


class OutputError(ValueError):
    """An output that cannot be written as asked (e.g. Parquet without pyarrow)."""


class RecordWriter:
    """Records to ``path``: JSON Lines, or Parquet when it ends in ``.parquet`` (rows are
    written in groups of ``row_group`` records; :meth:`flush` writes what is pending, which
    for Parquet closes a row group early). Use as a context manager."""

    def __init__(self, path: str | Path, *, row_group: int = 4096):
        self.path = Path(path)
        self.parquet = self.path.suffix.lower() == PARQUET_SUFFIX
        self.row_group = row_group
        self.written = 0
        self._rows: list[dict[str, Any]] = []
        self._fh = self._pa = self._pq = self._schema = self._writer = None
        if self.parquet:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise OutputError(
                    f"{self.path}: writing Parquet needs pyarrow: pip install 'flexlog[ray]'"
                ) from None
            self._pa, self._pq, self._schema = pa, pq, _parquet_schema(pa)
        else:
            self._fh = self.path.open("w", encoding="utf-8")

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(record_line(record) + "\n")
        else:
            self._rows.append(_parquet_row(record))
            if len(self._rows) >= self.row_group:
                self._write_rows()
        self.written += 1

    def write_line(self, line: str) -> None:
        """A record already serialised by :func:`record_line`."""
        if self._fh is not None:
            self._fh.write(line + "\n")
            self.written += 1
        else:
            self.write(json.loads(line))

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
        elif self._rows:
            self._write_rows()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            return
        if self._pq is None:
            return
        if self._rows or self._writer is None:  # an empty file still has the schema
            self._write_rows()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._pq = None

    def _write_rows(self) -> None:
        table = self._pa.Table.from_pylist(self._rows, schema=self._schema)
        if self._writer is None:
            self._writer = self._pq.ParquetWriter(str(self.path), self._schema)
        self._writer.write_table(table)
        self._rows = []


#: Parquet columns: (name, kind) with kind "text", "int", "bool", "list" or "json".
_PARQUET_COLUMNS = (
    ("id", "text"),
    ("label", "int"),
    ("verdict", "text"),
    ("votes", "json"),
    ("cached", "bool"),
    ("source", "text"),
    ("degraded", "bool"),
    ("abstained", "list"),
    ("not_asked", "list"),
    ("origin", "json"),
    ("evidence", "json"),
)


def _parquet_schema(pa):
    types = {
        "text": pa.string(),
        "int": pa.int64(),
        "bool": pa.bool_(),
        "list": pa.list_(pa.string()),
        "json": pa.string(),
    }
    return pa.schema([(name, types[kind]) for name, kind in _PARQUET_COLUMNS])


def _parquet_row(record: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, kind in _PARQUET_COLUMNS:
        value = record.get(name)
        if value is not None:
            if kind == "text":
                value = str(value)
            elif kind == "json":
                value = json.dumps(value, separators=(",", ":"))
        row[name] = value
    return row


__all__ = [
    "PARQUET_SUFFIX",
    "OutputError",
    "RecordWriter",
    "Scored",
    "record_line",
    "score_batch",
]
