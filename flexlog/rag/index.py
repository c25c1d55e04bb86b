"""Retrieval of knowledge for a prompt: exact key lookup first, then semantic nearest neighbour.

A known key (``E5``, ``open``) gets its own record. An unknown key that comes with a text, such
as an evolved template ``E5~add`` = ``Receiving new block <*> src: <*> dest: <*>``, gets the
record whose embedding is closest (cosine, via ``faiss.IndexFlatIP`` over unit vectors) if it
is close enough; otherwise nothing, since a wrong description misleads more than none.

An index is saved as three plain files (no pickle): ``knowledge.faiss`` (the vectors, written
by ``faiss.write_index``), ``records.jsonl`` (the records, in vector order) and ``index.json``
(format, corpus fingerprint, embedder name, dimension, count). ``index.json`` is written last,
so a save that was cut off is never mistaken for a complete one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flexlog.rag.corpus import (
    KnowledgeCorpus,
    KnowledgeRecord,
    display_template,
    normalize_template,
    parse_jsonl,
)
from flexlog.rag.embeddings import DEFAULT_MODEL_NAME, Embedder

log = logging.getLogger(__name__)

INDEX_FILE = "knowledge.faiss"
RECORDS_FILE = "records.jsonl"
MANIFEST_FILE = "index.json"
# Bump when the embedded text of a record or the file layout changes: old indexes rebuild.
FORMAT = 1
DEFAULT_MIN_SCORE = 0.5
_CACHE_LIMIT = 100_000  # remembered nearest neighbours of unknown texts
_MANIFEST_KEYS = ("format", "fingerprint", "embedder", "dim", "count")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise RuntimeError("retrieval needs faiss (pip install faiss-cpu)") from exc
    return faiss


@dataclass(frozen=True)
class Retrieved:
    """One piece of knowledge found for a key of the input sequence."""

    query_key: str
    record: KnowledgeRecord
    score: float
    matched: str  # "exact" or "nearest"

    def line(self) -> str:
        """One line for the prompt's relevant-information part.

        ``E5 (Receiving block <*> src: <*> dest: <*>): DataNode starts receiving ...``,
        ``open: open and possibly create a file``, or for a nearest match
        ``E5~add ≈ E5 (...): ...`` (the unknown key, and the known one it resembles).
        """
        rec = self.record
        head = rec.key if self.matched == "exact" else f"{self.query_key} ≈ {rec.key}"
        if rec.template:
            template = display_template(rec.template)
            if normalize_template(rec.description) == normalize_template(rec.template):
                return f"{head}: {template}"  # described by its own text (from_templates)
            head = f"{head} ({template})"
        return f"{head}: {rec.description}" if rec.description else head


def format_knowledge(retrieved: Sequence[Retrieved], max_items: int | None = None) -> list[str]:
    """Prompt lines, most relevant first (the prompt drops from the end when it must shrink).

    Exact matches keep their order of appearance ahead of nearest ones (by falling score);
    records with nothing to say (a system call without a man page) are left out.
    """
    ranked = sorted(retrieved, key=lambda r: -r.score)  # stable: ties keep appearance order
    lines: list[str] = []
    for item in ranked:
        if not item.record.description and not item.record.template:
            continue
        line = item.line()
        if line not in lines:
            lines.append(line)
    return lines if max_items is None else lines[: max(0, max_items)]


def _distinct(keys: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(keys))


class KnowledgeIndex:
    """Records, their unit-vector embeddings in a FAISS inner-product index, and the embedder."""

    def __init__(
        self,
        records: Sequence[KnowledgeRecord],
        index: Any,
        embedder: Embedder,
        *,
        fingerprint: str | None = None,
        source: str = "built",
    ) -> None:
        if index.ntotal != len(records):
            raise ValueError(f"index holds {index.ntotal} vectors for {len(records)} records")
        self.records = list(records)
        self.index = index
        self.embedder = embedder
        self.fingerprint = fingerprint or KnowledgeCorpus(self.records).fingerprint()
        self.source = source  # "built" or "loaded": what load_or_build did
        self._by_key: dict[str, list[int]] = {}
        for i, rec in enumerate(self.records):
            self._by_key.setdefault(rec.key, []).append(i)
        self._nearest: dict[tuple[str, str | None, str | None], tuple[int, float]] = {}

    # -- building and persistence -------------------------------------------------------

    @classmethod
    def build(cls, corpus: KnowledgeCorpus, embedder: Embedder | None = None) -> KnowledgeIndex:
        """Embed every record of ``corpus`` (one batched ``encode``) and index the vectors."""
        faiss = _faiss()
        embedder = embedder or Embedder()
        records = corpus.records
        vectors = embedder.encode([r.text for r in records])
        index = faiss.IndexFlatIP(vectors.shape[1])
        if len(records):
            index.add(vectors)
        return cls(records, index, embedder, fingerprint=corpus.fingerprint(), source="built")

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return len(self.records)

    def save(self, directory: str | Path) -> Path:
        """Write the three files (each via a temporary file, the manifest last)."""
        faiss = _faiss()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "embedder": self.embedder.name,
            "dim": self.dim,
            "count": len(self.records),
        }
        (directory / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until rewritten
        tmp = directory / f"{INDEX_FILE}.tmp"
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, directory / INDEX_FILE)
        lines = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in self.records)
        _write_text(directory / RECORDS_FILE, lines)
        _write_text(directory / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        return directory

    @staticmethod
    def read_manifest(directory: str | Path) -> dict:
        """The validated ``index.json`` of a saved index."""
        path = Path(directory) / MANIFEST_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path}: missing (no saved knowledge index here)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable index manifest: {exc}") from exc
        if not isinstance(data, dict) or any(k not in data for k in _MANIFEST_KEYS):
            raise ValueError(f"{path}: index manifest must have the keys {list(_MANIFEST_KEYS)}")
        if data["format"] != FORMAT:
            raise ValueError(
                f"{path}: index format {data['format']!r}, this flexlog reads {FORMAT}"
            )
        for name in ("dim", "count"):
            if not isinstance(data[name], int) or isinstance(data[name], bool) or data[name] < 0:
                raise ValueError(f"{path}: {name!r} must be a non-negative integer")
        return data

    @classmethod
    def load(cls, directory: str | Path, embedder: Embedder | None = None) -> KnowledgeIndex:
        """A saved index. ``embedder`` defaults to the one named in the manifest and must
        match it; any missing, corrupt or inconsistent file raises ValueError naming it."""
        faiss = _faiss()
        directory = Path(directory)
        manifest = cls.read_manifest(directory)
        if embedder is None:
            name = manifest["embedder"]
            embedder = Embedder(None if name == DEFAULT_MODEL_NAME else name)
        elif embedder.name != manifest["embedder"]:
            raise ValueError(
                f"{directory / MANIFEST_FILE}: index was built with embedder "
                f"{manifest['embedder']!r}, not {embedder.name!r}"
            )
        rec_path = directory / RECORDS_FILE
        try:
            text = rec_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{rec_path}: cannot read index records: {exc}") from exc
        records = parse_jsonl(text, str(rec_path))
        if len(records) != manifest["count"]:
            raise ValueError(
                f"{rec_path}: {len(records)} records, manifest says {manifest['count']}"
            )
        fingerprint = KnowledgeCorpus(records).fingerprint()
        if fingerprint != manifest["fingerprint"]:
            raise ValueError(f"{rec_path}: records do not match the manifest's fingerprint")
        idx_path = directory / INDEX_FILE
        if not idx_path.is_file():
            raise ValueError(f"{idx_path}: missing")
        try:
            index = faiss.read_index(str(idx_path))
        except Exception as exc:  # faiss raises RuntimeError with a C++ trace
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{idx_path}: not a readable FAISS index: {first}") from exc
        if (
            index.ntotal != manifest["count"]
            or index.d != manifest["dim"]
            or index.metric_type != faiss.METRIC_INNER_PRODUCT
        ):
            raise ValueError(
                f"{idx_path}: holds {index.ntotal} vectors of dimension {index.d}, "
                f"manifest says {manifest['count']} of {manifest['dim']} (inner product)"
            )
        return cls(records, index, embedder, fingerprint=fingerprint, source="loaded")

    @classmethod
    def load_or_build(
        cls, directory: str | Path, corpus: KnowledgeCorpus, embedder: Embedder | None = None
    ) -> KnowledgeIndex:
        """The saved index if it was built from this corpus with this embedder, else a new
        one (saved over it). ``.source`` of the result says which: "loaded" or "built"."""
        directory = Path(directory)
        embedder = embedder or Embedder()
        fingerprint = corpus.fingerprint()
        try:
            manifest = cls.read_manifest(directory)
        except ValueError as exc:
            reason = str(exc)
        else:
            if manifest["fingerprint"] != fingerprint:
                reason = "the knowledge corpus changed"
            elif manifest["embedder"] != embedder.name:
                reason = f"embedder changed ({manifest['embedder']} → {embedder.name})"
            else:
                try:
                    index = cls.load(directory, embedder)
                except ValueError as exc:
                    reason = str(exc)
                else:
                    log.info("knowledge index loaded from %s (%d records)", directory, len(index))
                    return index
        log.info("building knowledge index in %s: %s", directory, reason)
        index = cls.build(corpus, embedder)
        index.save(directory)
        return index

    # -- lookup ---------------------------------------------------------------------------

    @staticmethod
    def _in_scope(rec: KnowledgeRecord, system: str | None, kind: str | None) -> bool:
        return (system is None or rec.system == system) and (kind is None or rec.kind == kind)

    def exact(
        self, key: str, *, system: str | None = None, kind: str | None = None
    ) -> KnowledgeRecord | None:
        """The record with this key in scope; ValueError if the key is ambiguous there."""
        hits = [
            self.records[i]
            for i in self._by_key.get(key, ())
            if self._in_scope(self.records[i], system, kind)
        ]
        if len(hits) > 1:
            where = sorted(f"{r.kind}/{r.system or '-'}" for r in hits)
            raise ValueError(f"key {key!r} is in several scopes {where}; pass system= or kind=")
        return hits[0] if hits else None

    def _search(
        self, texts: list[str], system: str | None, kind: str | None
    ) -> list[tuple[int, float]]:
        """Top-1 (record position, cosine) for each text, among the records in scope."""
        faiss = _faiss()
        vectors = self.embedder.encode(texts)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"embedder gives {vectors.shape[1]} dimensions, index has {self.dim}")
        params = None
        if system is not None or kind is not None:
            ids = [i for i, r in enumerate(self.records) if self._in_scope(r, system, kind)]
            if not ids:
                return [(-1, -1.0)] * len(texts)
            params = faiss.SearchParameters()
            params.sel = faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))
        scores, idx = self.index.search(vectors, 1, params=params)
        return [(int(i), float(s)) for i, s in zip(idx[:, 0], scores[:, 0], strict=True)]

    def lookup_many(
        self,
        sequences: Sequence[Sequence[str]],
        templates: Mapping[str, str] | None = None,
        *,
        min_score: float = DEFAULT_MIN_SCORE,
        system: str | None = None,
        kind: str | None = None,
    ) -> list[list[Retrieved]]:
        """:meth:`lookup` for a batch; the unknown texts of the whole batch are embedded in
        one ``encode`` call (and remembered, so a text is embedded once per index)."""
        templates = templates or {}
        pending: dict[str, None] = {}
        for keys in sequences:
            for key in _distinct(keys):
                if self.exact(key, system=system, kind=kind) is None:
                    text = normalize_template(templates.get(key) or "")
                    if text and (text, system, kind) not in self._nearest:
                        pending[text] = None
        if pending and len(self.records):
            if len(self._nearest) + len(pending) > _CACHE_LIMIT:
                self._nearest.clear()  # bounded memory on endless streams of new templates
            texts = list(pending)
            for text, hit in zip(texts, self._search(texts, system, kind), strict=True):
                self._nearest[(text, system, kind)] = hit
        results: list[list[Retrieved]] = []
        for keys in sequences:
            found: list[Retrieved] = []
            for key in _distinct(keys):
                rec = self.exact(key, system=system, kind=kind)
                if rec is not None:
                    found.append(Retrieved(key, rec, 1.0, "exact"))
                    continue
                text = normalize_template(templates.get(key) or "")
                pos, score = self._nearest.get((text, system, kind), (-1, -1.0))
                if text and pos >= 0 and score >= min_score:
                    found.append(Retrieved(key, self.records[pos], score, "nearest"))
            results.append(found)
        return results

    def lookup(
        self,
        keys: Sequence[str],
        templates: Mapping[str, str] | None = None,
        *,
        min_score: float = DEFAULT_MIN_SCORE,
        system: str | None = None,
        kind: str | None = None,
    ) -> list[Retrieved]:
        """Knowledge for the distinct keys of one sequence, in order of first appearance.

        A key with a record in scope (``system``/``kind``) is an exact match (score 1.0).
        Otherwise, if ``templates`` gives its text, the nearest record in scope is returned
        when its cosine similarity is at least ``min_score``; else the key gets nothing.
        """
        return self.lookup_many([keys], templates, min_score=min_score, system=system, kind=kind)[0]


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
