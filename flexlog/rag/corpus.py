"""The knowledge corpus: short descriptions of log templates and system calls.

A corpus is a set of :class:`KnowledgeRecord` read from JSONL files, one record a line::

    {"key": "open", "kind": "syscall", "number": 5, "description": "open and possibly create a file"}
    {"key": "E5", "kind": "template", "system": "hdfs", "template": "<*>Receiving block<*>...",
     "description": "DataNode starts receiving a block in a write pipeline ..."}

The shipped files (``knowledge/*.jsonl``, installed as ``flexlog.knowledge``) come first; user
files are read after them, and a user record with the same identity ``(kind, system, key)``
replaces the shipped one. See ``knowledge/README.md`` for the format.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

KNOWLEDGE_PACKAGE = "flexlog.knowledge"
_REQUIRED = ("key", "kind", "description")
_OPTIONAL = ("system", "number", "template")
_FIELDS = frozenset(_REQUIRED + _OPTIONAL)
_PLACEHOLDER = re.compile(r"\s*<\*>\s*")


def normalize_template(text: str) -> str:
    """One space around every ``<*>`` and single spaces elsewhere.

    Loghub writes the same template as ``<*>Receiving block<*>src:<*>`` or
    ``Receiving block <*> src: <*>``; both read the same after this, for the embedder and
    in the prompt.
    """
    return " ".join(_PLACEHOLDER.sub(" <*> ", text).split())


def display_template(text: str) -> str:
    """The template as shown in a prompt: normalised, without the leading header ``<*>``."""
    norm = normalize_template(text)
    return norm.removeprefix("<*> ") if norm != "<*>" else norm


@dataclass(frozen=True)
class KnowledgeRecord:
    """One thing the detector may be told about: a log template or a system call."""

    key: str
    kind: str
    description: str
    system: str | None = None
    number: int | None = None
    template: str | None = None

    @property
    def identity(self) -> tuple[str, str, str]:
        """What a user record must share with a shipped one to replace it."""
        return (self.kind, self.system or "", self.key)

    @property
    def text(self) -> str:
        """The text that is embedded: the template itself, else ``key: description``."""
        if self.template:
            return normalize_template(self.template)
        return f"{self.key}: {self.description}" if self.description else self.key

    def to_dict(self) -> dict:
        """The record as one JSONL object (optional fields left out when unset)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k in _REQUIRED}

    @classmethod
    def from_dict(cls, data: object, *, where: str = "<dict>") -> KnowledgeRecord:
        """Validate one JSON object; ``where`` (``file:line``) prefixes every error."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a record is a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}")
        for name in _REQUIRED:
            if name not in data:
                raise ValueError(f"{where}: missing field {name!r}")
        for name in ("key", "kind"):
            if not isinstance(data[name], str) or not data[name].strip():
                raise ValueError(f"{where}: field {name!r} must be a non-empty string")
        if not isinstance(data["description"], str):
            raise ValueError(f"{where}: field 'description' must be a string")
        for name in ("system", "template"):
            value = data.get(name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{where}: field {name!r} must be a non-empty string or absent")
        number = data.get("number")
        if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
            raise ValueError(f"{where}: field 'number' must be an integer or absent")
        return cls(
            key=data["key"].strip(),
            kind=data["kind"].strip(),
            description=" ".join(data["description"].split()),
            system=data["system"].strip() if data.get("system") else None,
            number=number,
            template=data.get("template"),
        )


def parse_jsonl(text: str, source: str) -> list[KnowledgeRecord]:
    """The records of one JSONL text; blank lines are skipped, errors name ``source:line``."""
    records: list[KnowledgeRecord] = []
    seen: dict[tuple[str, str, str], int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON: {exc.msg}") from exc
        record = KnowledgeRecord.from_dict(data, where=where)
        if record.identity in seen:
            raise ValueError(
                f"{where}: field 'key' {record.key!r} repeats line {seen[record.identity]}"
            )
        seen[record.identity] = lineno
        records.append(record)
    return records


def read_jsonl(path: str | Path) -> list[KnowledgeRecord]:
    """The records of a user JSONL file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read knowledge file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 (byte {exc.start})") from exc
    return parse_jsonl(text, str(path))


def builtin_files() -> list[str]:
    """Names of the shipped ``*.jsonl`` files, sorted."""
    root = resources.files(KNOWLEDGE_PACKAGE)
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".jsonl") and p.is_file())


class KnowledgeCorpus:
    """An ordered set of records, unique by identity; later additions replace earlier ones."""

    def __init__(self, records: Iterable[KnowledgeRecord] = ()) -> None:
        self._records: dict[tuple[str, str, str], KnowledgeRecord] = {}
        self.extend(records)

    @classmethod
    def load(
        cls, extra_paths: Iterable[str | Path] = (), *, include_builtin: bool = True
    ) -> KnowledgeCorpus:
        """The shipped corpus (unless ``include_builtin`` is false) plus user JSONL files."""
        corpus = cls()
        if include_builtin:
            root = resources.files(KNOWLEDGE_PACKAGE)
            for name in builtin_files():
                text = root.joinpath(name).read_text(encoding="utf-8")
                corpus.extend(parse_jsonl(text, f"knowledge/{name}"))
        for path in extra_paths:
            corpus.extend(read_jsonl(path))
        return corpus

    def extend(self, records: Iterable[KnowledgeRecord]) -> None:
        """Add records; one with a known identity replaces the old one in place."""
        for record in records:
            self._records[record.identity] = record

    def add_templates(
        self,
        table: Mapping[str, str],
        system: str,
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        """Add a templates table (EventId → EventTemplate) of ``system``.

        Keys that already have a record of that system keep their description (the shipped
        ones are better than the bare template); new keys are described by their template.
        """
        descriptions = descriptions or {}
        new = []
        for key, template in table.items():
            old = self._records.get(("template", system, key))
            description = descriptions.get(key) or (old.description if old else template)
            new.append(
                KnowledgeRecord(
                    key=key,
                    kind="template",
                    description=" ".join(description.split()),
                    system=system,
                    template=template,
                )
            )
        self.extend(new)

    @classmethod
    def from_templates(
        cls,
        table: Mapping[str, str],
        system: str,
        *,
        base: KnowledgeCorpus | None = None,
        descriptions: Mapping[str, str] | None = None,
    ) -> KnowledgeCorpus:
        """A corpus of ``base`` (or nothing) plus a templates table, see :meth:`add_templates`."""
        corpus = cls(base.records if base is not None else ())
        corpus.add_templates(table, system, descriptions)
        return corpus

    @property
    def records(self) -> list[KnowledgeRecord]:
        """The records in insertion order (shipped files first, then user files)."""
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[KnowledgeRecord]:
        return iter(self.records)

    def get(self, key: str, *, kind: str, system: str | None = None) -> KnowledgeRecord | None:
        """The record with this identity, if any."""
        return self._records.get((kind, system or "", key))

    def fingerprint(self) -> str:
        """sha256 over the sorted records: equal iff the corpus content is equal."""
        h = hashlib.sha256()
        for line in sorted(json.dumps(r.to_dict(), sort_keys=True) for r in self._records.values()):
            h.update(line.encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()
