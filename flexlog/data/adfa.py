"""ADFA-LD loader: the original directory layout (or its zip) into named system-call sequences.

Traces are i386 system-call numbers; they are mapped to names ("open", "mmap2") with the table
generated from the kernel headers, so that templates read as words for the LLM and retrieval.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flexlog.data.records import IngestReport, InputError, LogSequence
from flexlog.resources import syscalls_i386

#: The six attack types of the FlexLog paper's ADFA-U, keyed by the paper's short names.
ATTACK_TYPES = {
    "adduser": "Adduser",
    "hydraFTP": "Hydra_FTP",
    "hydraSSH": "Hydra_SSH",
    "java": "Java_Meterpreter",
    "meter": "Meterpreter",
    "web": "Web_Shell",
}
#: Attack folder → the paper's short name, the ``group`` of its traces.
_GROUPS = {folder: name for name, folder in ATTACK_TYPES.items()}
_ATTACK_DIR = re.compile(r"^(?P<kind>.+)_(?P<run>\d+)$")
MAX_TRACE_BYTES = 8 * 1024 * 1024


@dataclass
class AdfaCorpus:
    """ADFA-LD split by folder: normal training/validation traces and attacks by type."""

    training: list[LogSequence] = field(default_factory=list)
    validation: list[LogSequence] = field(default_factory=list)
    attacks: dict[str, list[LogSequence]] = field(default_factory=dict)
    report: IngestReport = field(default_factory=IngestReport)

    @property
    def normal(self) -> list[LogSequence]:
        return self.training + self.validation


def decode_trace(text: str, table: dict[int, str] | None = None) -> tuple[str, ...]:
    """Turn ``"6 6 63 ..."`` into ``("close", "close", "dup2", ...)``.

    Raises ValueError naming the position of a token that is not a known i386 number.
    """
    table = table if table is not None else syscalls_i386()
    out = []
    for i, tok in enumerate(text.split()):
        if not tok.isdigit():
            raise ValueError(f"token {i + 1} {tok[:20]!r} is not a system-call number")
        name = table.get(int(tok))
        if name is None:
            raise ValueError(f"token {i + 1}: unknown i386 system-call number {tok}")
        out.append(name)
    if not out:
        raise ValueError("empty trace")
    return tuple(out)


def _entries(root: Path) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) of every .txt file under a directory or inside a zip."""
    if root.is_dir():
        for path in sorted(root.rglob("*.txt")):
            if path.stat().st_size > MAX_TRACE_BYTES:
                yield path.relative_to(root).as_posix(), b""
                continue
            yield path.relative_to(root).as_posix(), path.read_bytes()
    elif zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir() or not info.filename.endswith(".txt"):
                    continue
                if info.file_size > MAX_TRACE_BYTES:
                    yield info.filename, b""
                    continue
                yield info.filename, zf.read(info)
    else:
        raise InputError(f"{root}: not an ADFA-LD directory or zip file")


def load_adfa(root: str | Path) -> AdfaCorpus:
    """Load ADFA-LD from its original layout; bad traces are reported, not fatal.

    Folders: ``Training_Data_Master/``, ``Validation_Data_Master/`` (normal) and
    ``Attack_Data_Master/<Type>_<run>/`` (anomalous). Sequence ids are the file stems.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or directory")
    corpus = AdfaCorpus()
    table = syscalls_i386()
    for rel, data in _entries(root):
        parts = rel.split("/")
        source = f"{root}/{rel}"
        if "Training_Data_Master" in parts:
            bucket, label, group = corpus.training, 0, None
        elif "Validation_Data_Master" in parts:
            bucket, label, group = corpus.validation, 0, None
        elif "Attack_Data_Master" in parts:
            i = parts.index("Attack_Data_Master")
            m = _ATTACK_DIR.match(parts[i + 1]) if i + 2 < len(parts) else None
            if not m:
                corpus.report.reject(source, 1, "attack trace outside an <Type>_<run> folder")
                continue
            bucket, label = corpus.attacks.setdefault(m.group("kind"), []), 1
            group = _GROUPS.get(m.group("kind"), m.group("kind"))
        else:
            continue  # README files and the like are not traces
        if not data:
            corpus.report.reject(source, 1, f"empty or larger than {MAX_TRACE_BYTES} bytes")
            continue
        try:
            events = decode_trace(data.decode("ascii"), table)
        except UnicodeDecodeError as exc:
            corpus.report.reject(source, 1, f"not ASCII text (byte {exc.start})")
            continue
        except ValueError as exc:
            corpus.report.reject(source, 1, str(exc))
            continue
        corpus.report.accept()
        bucket.append(LogSequence(Path(rel).stem, events, label, group))
    if corpus.report.accepted == 0:
        raise InputError(f"{root}: no ADFA-LD traces found (expected *_Data_Master folders)")
    return corpus
