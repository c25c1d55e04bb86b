"""The templates table: ``EventId,EventTemplate`` CSV mapping event keys to template text."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from flexlog.data.records import InputError


def read_templates(path: str | Path) -> dict[str, str]:
    """Read an ``EventId,EventTemplate`` CSV (loghub's layout; extra columns are ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not valid UTF-8 (byte {exc.start})") from exc
    reader = csv.DictReader(text.splitlines())
    fields = reader.fieldnames or []
    if "EventId" not in fields or "EventTemplate" not in fields:
        raise InputError(f"{path}:1: header must have EventId and EventTemplate, got {fields}")
    table: dict[str, str] = {}
    for lineno, row in enumerate(reader, start=2):
        key, template = (row.get("EventId") or "").strip(), row.get("EventTemplate")
        if not key or template is None:
            raise InputError(f"{path}:{lineno}: empty EventId or EventTemplate")
        if key in table and table[key] != template:
            raise InputError(f"{path}:{lineno}: EventId {key!r} appears twice")
        table[key] = template
    return table


def write_templates(path: str | Path, table: Mapping[str, str]) -> None:
    """Write a templates table in the layout :func:`read_templates` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["EventId", "EventTemplate"])
        for key, template in table.items():
            writer.writerow([key, template])
