"""Retrieval on the shipped corpus with the real all-MiniLM-L6-v2 model and a real FAISS index."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

from flexlog.rag import (
    Embedder,
    KnowledgeCorpus,
    KnowledgeIndex,
    KnowledgeRecord,
    Retrieved,
    default_model_dir,
    format_knowledge,
)

try:
    default_model_dir()
except RuntimeError as exc:  # the llm extra is installed but not the model package
    pytest.skip(str(exc), allow_module_level=True)

E5_TEXT = "<*>Receiving block<*>src:<*>dest:<*>"
EVOLVED = {  # E5's text with a word added, removed, replaced
    "E5~add": "Receiving new block <*> src: <*> dest: <*>",
    "E5~del": "Receiving <*> src: <*> dest: <*>",
    "E5~rep": "Receiving chunk <*> src: <*> dest: <*>",
}


class CountingEmbedder(Embedder):
    """The real embedder, counting its ``encode`` calls (to check batching and caching)."""

    calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return super().encode(texts)


@pytest.fixture(scope="module")
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture(scope="module")
def corpus() -> KnowledgeCorpus:
    return KnowledgeCorpus.load()


@pytest.fixture(scope="module")
def index(corpus: KnowledgeCorpus, embedder: CountingEmbedder) -> KnowledgeIndex:
    return KnowledgeIndex.build(corpus, embedder)


def _small_corpus(tmp_path: Path, e5_description: str = "receives a block") -> KnowledgeCorpus:
    """A few records in a user file, for tests that build indexes repeatedly."""
    path = tmp_path / "small.jsonl"
    rows = [
        {"key": "E5", "kind": "template", "system": "hdfs", "template": E5_TEXT},
        {"key": "E21", "kind": "template", "system": "hdfs", "template": "<*>Deleting block<*>"},
        {"key": "open", "kind": "syscall", "number": 5},
    ]
    rows[0]["description"] = e5_description
    rows[1]["description"] = "deletes a block"
    rows[2]["description"] = "open a file"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return KnowledgeCorpus.load([path], include_builtin=False)


def test_embedder_gives_unit_float32_vectors(embedder: CountingEmbedder):
    vectors = embedder.encode(["open a file", "Receiving block <*>"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.name == "all-MiniLM-L6-v2"


def test_exact_lookup_of_syscalls(index: KnowledgeIndex):
    found = index.lookup(["open", "execve", "open", "read"], kind="syscall")
    assert [(r.query_key, r.matched, r.score) for r in found] == [
        ("open", "exact", 1.0),
        ("execve", "exact", 1.0),
        ("read", "exact", 1.0),
    ]
    assert found[0].line() == "open: open and possibly create a file"
    assert found[1].line() == "execve: execute program"


def test_exact_lookup_of_hdfs_templates(index: KnowledgeIndex):
    found = index.lookup(["E5", "E22", "E5"], system="hdfs")
    assert [r.record.key for r in found] == ["E5", "E22"]
    assert (
        found[0]
        .line()
        .startswith(
            "E5 (Receiving block <*> src: <*> dest: <*>): DataNode starts receiving a block"
        )
    )


def test_evolved_templates_retrieve_their_origin_in_one_encode(
    index: KnowledgeIndex, embedder: CountingEmbedder
):
    templates = {"E5": E5_TEXT, **EVOLVED}
    batch = [["E5", key] for key in EVOLVED]
    before = embedder.calls
    results = index.lookup_many(batch, templates, system="hdfs")
    assert embedder.calls == before + 1  # every unknown text of the batch in one call
    for (_, key), found in zip(batch, results, strict=True):
        exact, nearest = found
        assert exact.matched == "exact" and exact.record.key == "E5"
        assert nearest.matched == "nearest" and nearest.record.key == "E5", key
        assert 0.5 <= nearest.score < 1.0
        assert nearest.line().startswith(f"{key} ≈ E5 (Receiving block <*> src: <*> dest: <*>):")
    again = index.lookup(["E5~add"], templates, system="hdfs")
    assert embedder.calls == before + 1  # a text is embedded once per index
    assert again == [results[0][1]]


def test_loghub_2k_templates_find_the_same_events(index: KnowledgeIndex, datasets_dir: Path):
    """loghub's HDFS_2k templates are written and numbered differently from the shipped ones
    (``blk_<*>``, ``/<*>:<*>``, E13 for our E5): each must still find its event."""
    path = datasets_dir / "hdfs" / "HDFS_2k.log_templates.csv"
    with path.open(encoding="utf-8") as fh:
        table = {f"2k-{row['EventId']}": row["EventTemplate"] for row in csv.DictReader(fh)}
    expected = {"2k-E1": "E3", "2k-E2": "E18", "2k-E3": "E4", "2k-E4": "E30", "2k-E5": "E25"}
    expected |= {"2k-E6": "E26", "2k-E7": "E22", "2k-E8": "E23", "2k-E9": "E21"}
    expected |= {"2k-E10": "E11", "2k-E11": "E9", "2k-E12": "E6", "2k-E13": "E5", "2k-E14": "E2"}
    found = index.lookup(list(table), table, system="hdfs")
    assert {r.query_key: r.record.key for r in found} == expected
    assert all(r.matched == "nearest" and r.score >= 0.5 for r in found)


def test_unrelated_text_stays_below_min_score(index: KnowledgeIndex):
    templates = {"X1": "the quick brown fox jumps over the lazy dog"}
    assert index.lookup(["X1"], templates, system="hdfs") == []
    (best,) = index.lookup(["X1"], templates, system="hdfs", min_score=-1.0)
    assert best.score < 0.5
    assert index.lookup(["X2"], system="hdfs") == []  # unknown and no text: nothing


def test_scope_keeps_systems_apart(index: KnowledgeIndex, corpus: KnowledgeCorpus):
    assert index.lookup(["open"], system="hdfs") == []
    assert index.lookup(["E5"], kind="syscall") == []
    (near,) = index.lookup(["E5~add"], EVOLVED, kind="syscall", min_score=-1.0)
    assert near.record.kind == "syscall"
    assert [r.record.key for r in index.lookup(["E5", "open"])] == ["E5", "open"]
    other = KnowledgeRecord("E5", "template", "a BGL event", system="bgl", template="<*>")
    mixed = KnowledgeIndex(
        [*index.records, other],
        _with_vector(index, other),
        index.embedder,
    )
    with pytest.raises(ValueError, match="'E5' is in several scopes"):
        mixed.lookup(["E5"])
    assert mixed.lookup(["E5"], system="bgl")[0].record.description == "a BGL event"
    assert mixed.lookup(["E5"], system="hdfs")[0].record.system == "hdfs"


def _with_vector(index: KnowledgeIndex, record: KnowledgeRecord):
    import faiss

    flat = faiss.IndexFlatIP(index.dim)
    flat.add(index.index.reconstruct_n(0, index.index.ntotal))
    flat.add(index.embedder.encode([record.text]))
    return flat


def test_save_and_load_give_identical_results(index: KnowledgeIndex, tmp_path: Path):
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        "index.json",
        "knowledge.faiss",
        "records.jsonl",
    ]
    loaded = KnowledgeIndex.load(tmp_path / "idx")
    assert loaded.source == "loaded" and loaded.embedder.name == index.embedder.name
    assert loaded.records == index.records and loaded.fingerprint == index.fingerprint
    keys = ["E5", *EVOLVED, "E22", "X1"]
    texts = {**EVOLVED, "X1": "the quick brown fox"}
    assert loaded.lookup(keys, texts, system="hdfs") == index.lookup(keys, texts, system="hdfs")


def test_load_or_build_rebuilds_only_when_the_corpus_changes(
    tmp_path: Path, embedder: CountingEmbedder
):
    where = tmp_path / "cache"
    first = KnowledgeIndex.load_or_build(where, _small_corpus(tmp_path), embedder)
    again = KnowledgeIndex.load_or_build(where, _small_corpus(tmp_path), embedder)
    assert (first.source, again.source) == ("built", "loaded")
    changed = KnowledgeIndex.load_or_build(where, _small_corpus(tmp_path, "changed"), embedder)
    assert changed.source == "built"
    assert changed.lookup(["E5"])[0].record.description == "changed"
    assert KnowledgeIndex.load_or_build(where, _small_corpus(tmp_path, "changed")).source == (
        "loaded"
    )
    other = Embedder(default_model_dir())  # same weights, another name: vectors may differ
    assert KnowledgeIndex.load_or_build(where, _small_corpus(tmp_path), other).source == "built"


def test_user_file_overrides_and_adds(tmp_path: Path, corpus: KnowledgeCorpus):
    user = tmp_path / "mine.jsonl"
    rows = [
        {
            "key": "E5",
            "kind": "template",
            "system": "hdfs",
            "template": E5_TEXT,
            "description": "X",
        },
        {"key": "E31", "kind": "template", "system": "hdfs", "description": "a new event"},
        {"key": "open", "kind": "syscall", "number": 5, "description": "Y"},
    ]
    user.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    merged = KnowledgeCorpus.load([user])
    assert len(merged) == len(corpus) + 1
    assert merged.get("E5", kind="template", system="hdfs").description == "X"
    assert merged.get("open", kind="syscall").description == "Y"
    assert merged.get("E31", kind="template", system="hdfs").text == "E31: a new event"
    assert merged.fingerprint() != corpus.fingerprint()
    assert KnowledgeCorpus(reversed(corpus.records)).fingerprint() == corpus.fingerprint()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"key": "E1", "kind": "template"', "not valid JSON"),
        ('{"key": "E1", "kind": "template"}', "missing field 'description'"),
        ('{"key": "", "kind": "template", "description": "d"}', "field 'key'"),
        ('{"key": "a", "kind": "syscall", "number": "5", "description": "d"}', "field 'number'"),
        ('{"key": "a", "kind": "syscall", "descripton": "d"}', "unknown field"),
        ('["a"]', "a record is a JSON object"),
        ('{"key": "open", "kind": "syscall", "description": "d"}', "repeats line 1"),
    ],
)
def test_bad_user_file_names_file_line_and_field(tmp_path: Path, line: str, message: str):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "open", "kind": "syscall", "description": "ok"}\n' + line + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: ") as err:
        KnowledgeCorpus.load([bad])
    assert message in str(err.value)


def test_missing_user_file_is_a_value_error(tmp_path: Path):
    with pytest.raises(ValueError, match=r"nope\.jsonl: cannot read"):
        KnowledgeCorpus.load([tmp_path / "nope.jsonl"])


def test_corrupt_or_missing_index_files_are_value_errors(
    tmp_path: Path, embedder: CountingEmbedder
):
    corpus = _small_corpus(tmp_path)
    where = KnowledgeIndex.build(corpus, embedder).save(tmp_path / "idx")
    faiss_file = where / "knowledge.faiss"
    good = faiss_file.read_bytes()
    faiss_file.write_bytes(b"not a faiss index")
    with pytest.raises(ValueError, match=r"knowledge\.faiss: not a readable FAISS index"):
        KnowledgeIndex.load(where, embedder)
    faiss_file.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"knowledge\.faiss"):
        KnowledgeIndex.load(where, embedder)
    rebuilt = KnowledgeIndex.load_or_build(where, corpus, embedder)
    assert rebuilt.source == "built"
    assert KnowledgeIndex.load(where, embedder).records == corpus.records
    records = where / "records.jsonl"
    records.write_text(records.read_text().replace("deletes a block", "tampered"))
    with pytest.raises(ValueError, match=r"records\.jsonl: records do not match"):
        KnowledgeIndex.load(where)
    (where / "index.json").write_text("{")
    with pytest.raises(ValueError, match=r"index\.json: unreadable"):
        KnowledgeIndex.load(where)
    (where / "index.json").unlink()
    with pytest.raises(ValueError, match=r"index\.json: missing"):
        KnowledgeIndex.load(where)


def test_templates_table_and_prompt_lines(index: KnowledgeIndex, corpus: KnowledgeCorpus):
    table = {"E5": "Receiving block <*> src: <*> dest: <*>", "E40": "<*>Quota exceeded for<*>"}
    extended = KnowledgeCorpus.from_templates(table, "hdfs", base=corpus)
    assert len(extended) == len(corpus) + 1
    e5 = extended.get("E5", kind="template", system="hdfs")
    assert e5.description.startswith("DataNode starts receiving")  # shipped text kept
    e40 = extended.get("E40", kind="template", system="hdfs")
    assert Retrieved("E40", e40, 1.0, "exact").line() == "E40: Quota exceeded for <*>"

    undescribed = next(r for r in corpus.records if r.kind == "syscall" and not r.description)
    found = [
        *index.lookup(["E5~add"], EVOLVED, system="hdfs"),
        *index.lookup(["open", undescribed.key, "execve"], kind="syscall"),
    ]
    lines = format_knowledge(found)
    assert lines[:2] == ["open: open and possibly create a file", "execve: execute program"]
    assert lines[2].startswith("E5~add ≈ E5") and len(lines) == 3  # nothing said of the undescribed
    assert format_knowledge(found, max_items=1) == lines[:1]
