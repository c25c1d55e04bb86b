"""The audit trail of human corrections: history, undo, and the ``flexlog cache history`` /
``flexlog cache undo`` commands. Real SQLite files in tmp_path (and the in-memory store)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import cache_location

from flexlog.cache import CacheEntry, CacheError, Correction, SequenceCache, key_of
from flexlog.cli import main

#: Every store behind SequenceCache: process memory, a SQLite file, a PostgreSQL server.
STORES = ["memory", "sqlite", "postgresql"]

A = ("E5", "E22", "E5")
B = ("E1", "E2")
VOTES = {"llm": 1, "knn": 0, "dt": 1}


def seq(i: int) -> tuple[str, ...]:
    return (f"E{i}", "E0", f"E{i % 7}")


@pytest.fixture(params=STORES)
def cache(request: pytest.FixtureRequest, tmp_path: Path):
    with SequenceCache(cache_location(request, request.param, tmp_path, "cache")) as c:
        yield c


def _changes(history: list[Correction]) -> list[tuple]:
    return [
        (h.action, h.previous_label, h.previous_source, h.new_label, h.new_source, h.undoes)
        for h in history
    ]


# ---------------------------------------------------------------- recording


def test_set_and_delete_are_recorded_with_previous_and_new_labels(cache: SequenceCache) -> None:
    start = time.time()
    cache.add(A, 1, VOTES)
    cache.update(A, 0, actor="key:3f2a", comment="false alarm")
    cache.update(key_of(A), 1, actor="cli:alice")
    assert cache.delete(A, actor="cli:bob", comment="stale") is True
    history = cache.history(A)
    assert _changes(history) == [
        ("set", 1, "model", 0, "human", None),
        ("set", 0, "human", 1, "human", None),
        ("delete", 1, "human", None, None, None),
    ]
    assert [h.actor for h in history] == ["key:3f2a", "cli:alice", "cli:bob"]
    assert [h.comment for h in history] == ["false alarm", None, "stale"]
    assert all(h.key == key_of(A) for h in history)
    ids = [h.id for h in history]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert start <= history[0].time <= history[-1].time <= time.time()
    assert cache.history(key_of(A).upper()) == history  # by events or by key
    assert cache.history(B) == []
    assert history[0].to_dict() == {
        "id": history[0].id,
        "key": key_of(A),
        "time": history[0].time,
        "actor": "key:3f2a",
        "action": "set",
        "previous_label": 1,
        "previous_source": "model",
        "new_label": 0,
        "new_source": "human",
        "comment": "false alarm",
        "undoes": None,
    }
    json.dumps([h.to_dict() for h in history])


def test_what_does_not_happen_is_not_recorded(cache: SequenceCache) -> None:
    assert cache.delete(A) is False
    with pytest.raises(KeyError, match="pass the events"):
        cache.update(key_of(B), 1)
    cache.add(B, 1)  # model answers are not corrections
    assert cache.history(A) == [] and cache.history(B) == []


def test_actor_and_comment_are_bounded(cache: SequenceCache) -> None:
    with pytest.raises(ValueError, match="actor"):
        cache.update(A, 1, actor="x" * 201)
    with pytest.raises(ValueError, match="actor"):
        cache.update(A, 1, actor=" ")
    with pytest.raises(ValueError, match="comment"):
        cache.delete(A, comment="x" * 1001)
    with pytest.raises(TypeError, match="actor"):
        cache.undo(A, actor=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="comment"):
        cache.update(A, 1, comment=5)  # type: ignore[arg-type]
    assert len(cache) == 0 and cache.history(A) == []
    cache.update(A, 1, actor="a" * 200, comment="c" * 1000)
    assert cache.history(A)[0].comment == "c" * 1000


# ---------------------------------------------------------------- undo


def test_undo_of_an_update_restores_the_model_answer(cache: SequenceCache) -> None:
    cache.add(A, 1, VOTES)
    cache.update(A, 0, actor="key:1")
    restored = cache.undo(A, actor="key:2", comment="my mistake")
    assert restored == CacheEntry(key_of(A), A, 1, "model", VOTES)
    assert cache.get(A) == restored
    *_, last = cache.history(A)
    assert (last.action, last.actor, last.comment) == ("undo", "key:2", "my mistake")
    assert _changes([last]) == [("undo", 0, "human", 1, "model", cache.history(A)[0].id)]
    cache.add(A, 0, {"llm": 0})  # a model answer again: later model answers replace it
    assert (cache.get(A).label, cache.get(A).source) == (0, "model")
    assert cache.stats()["human_entries"] == 0


def test_undo_of_a_created_entry_removes_it(cache: SequenceCache) -> None:
    created = cache.update(B, 1)
    assert cache.undo(key_of(B)) is None
    assert cache.get(B) is None and len(cache) == 0
    first, undo = cache.history(B)
    assert _changes([undo]) == [("undo", 1, "human", None, None, first.id)]
    assert cache.update(B, 0).events == created.events  # and it can be set again


def test_undo_of_a_delete_recreates_the_entry_with_its_events(cache: SequenceCache) -> None:
    cache.add(A, 1, VOTES)
    cache.update(A, 0)
    cache.delete(A)
    assert cache.get(A) is None
    restored = cache.undo(key_of(A))  # by key: the events come from the history
    assert restored == CacheEntry(key_of(A), A, 0, "human", VOTES)
    assert cache.get(key_of(A)) == restored
    cache.add(A, 1)  # the restored human correction still wins over model answers
    assert (cache.get(A).label, cache.get(A).source) == (0, "human")


def test_undo_walks_back_then_has_nothing_left(cache: SequenceCache) -> None:
    cache.add(A, 1, VOTES)
    cache.update(A, 0)
    cache.update(A, 1)
    assert (cache.undo(A).label, cache.get(A).source) == (0, "human")
    assert cache.undo(A) == CacheEntry(key_of(A), A, 1, "model", VOTES)
    with pytest.raises(KeyError, match=r"nothing to undo .* every correction of it is undone"):
        cache.undo(A)
    with pytest.raises(KeyError, match=r"nothing to undo .* no corrections"):
        cache.undo(B)
    h = cache.history(A)
    assert [c.action for c in h] == ["set", "set", "undo", "undo"]
    assert [c.undoes for c in h[2:]] == [h[1].id, h[0].id]
    # a new correction after the undos is the next one undone
    cache.update(A, 0)
    cache.undo(A)
    assert cache.history(A)[-1].undoes == cache.history(A)[-2].id


def test_clear_drops_the_history(cache: SequenceCache) -> None:
    cache.update(A, 1)
    cache.clear()
    assert cache.history(A) == [] and len(cache) == 0
    with pytest.raises(KeyError):
        cache.undo(A)
    assert cache.update(A, 0).label == 0  # ids go on after a clear
    assert len(cache.history(A)) == 1


# ---------------------------------------------------------------- persistence, eviction


def test_history_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path) as c:
        c.add(A, 1, VOTES)
        c.update(A, 0, actor="key:9", comment="checked by hand")
        c.delete(A)
        before = c.history(A)
    with SequenceCache(path) as c:
        assert c.history(A) == before
        assert c.undo(A, actor="cli:x") == CacheEntry(key_of(A), A, 0, "human", VOTES)
    with SequenceCache(path, read_only=True) as c:
        assert [h.action for h in c.history(A)] == ["set", "delete", "undo"]
        assert c.get(A).source == "human"


@pytest.mark.parametrize("mode", STORES)
def test_history_survives_eviction_and_undo_recreates(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str
) -> None:
    path = cache_location(request, mode, tmp_path)
    with SequenceCache(path, max_entries=5, memory_entries=2) as c:
        c.update(A, 1)
        c.update(A, 0)
        for i in range(12):  # humans go only when nothing else is left: A goes first
            c.update(seq(i), 1)
        assert c.get(A) is None and len(c) <= 5 and c.stats()["evictions"] >= 8
        assert _changes(c.history(A)) == [
            ("set", None, None, 1, "human", None),
            ("set", 1, "human", 0, "human", None),
        ]
        second = c.history(A)[1].id
        assert c.undo(A) == CacheEntry(key_of(A), A, 1, "human", {})
        assert c.get(A).label == 1 and len(c) <= 5
        assert _changes(c.history(A))[-1] == ("undo", None, None, 1, "human", second)


def test_edits_of_read_only_cache_raise_cache_error(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path) as c:
        c.update(A, 1)
    with SequenceCache(path, read_only=True) as c:
        for call in (lambda: c.undo(A), lambda: c.update(A, 0), lambda: c.delete(A)):
            with pytest.raises(CacheError, match="read-only"):
                call()
        assert len(c.history(A)) == 1
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT count(*) FROM corrections").fetchone()[0] == 1
    finally:
        raw.close()


# ---------------------------------------------------------------- the command line


def _run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _error(rc: int, err: str, needle: str) -> None:
    assert rc == 2 and "Traceback" not in err
    assert any(line.startswith("error: ") and needle in line for line in err.splitlines()), err


def test_cli_history_and_undo_on_a_sqlite_file(capsys, tmp_path: Path) -> None:
    db = tmp_path / "cache.sqlite"
    with SequenceCache(db) as c:
        c.add(A, 0, VOTES)
    key = key_of(A)
    rc, out, _ = _run(
        capsys, "cache", "update", "--cache", db, "--events", "E5 E22 E5", "--label", "anomalous",
        "--comment", "seen in the incident",
    )  # fmt: skip
    assert rc == 0 and "anomalous" in out
    rc, out, _ = _run(capsys, "cache", "delete", key, "--cache", db, "--comment", "wrong [red]")
    assert rc == 0 and "deleted" in out

    rc, out, _ = _run(capsys, "cache", "history", key, "--cache", db)
    assert rc == 0
    assert "seen in the incident" in out and "wrong [red]" in out  # markup is not interpreted
    assert out.count("cli:") == 2 and "delete" in out and "normal (model)" in out

    rc, out, _ = _run(capsys, "cache", "history", "--cache", db, "--events", "E5,E22,E5", "--json")
    assert rc == 0
    history = json.loads(out)
    assert [(h["action"], h["previous_label"], h["new_label"]) for h in history] == [
        ("set", 0, 1),
        ("delete", 1, None),
    ]
    assert history[0]["actor"].startswith("cli") and history[0]["comment"] == "seen in the incident"

    rc, out, _ = _run(capsys, "cache", "undo", key, "--cache", db, "--comment", "oops")
    assert rc == 0 and f"undid correction #{history[1]['id']}" in out and "anomalous (human)" in out
    rc, out, _ = _run(capsys, "cache", "undo", "--key", key, "--cache", db, "--json")
    assert rc == 0
    undo = json.loads(out)
    assert (undo["action"], undo["undoes"], undo["new_label"]) == ("undo", history[0]["id"], 0)
    rc, _, err = _run(capsys, "cache", "undo", key, "--cache", db)
    _error(rc, err, "nothing to undo")

    with SequenceCache(db) as c:  # the CLI's edits are the cache's, on the same file
        assert c.get(A) == CacheEntry(key, A, 0, "model", VOTES)
        assert [h.action for h in c.history(A)] == ["set", "delete", "undo", "undo"]
        assert c.history(A)[2].comment == "oops"

    rc, out, _ = _run(capsys, "cache", "history", key_of(B), "--cache", db)
    assert rc == 0 and "no corrections" in out
    rc, out, _ = _run(capsys, "cache", "history", key_of(B), "--cache", db, "--json")
    assert rc == 0 and json.loads(out) == []


def test_cli_cache_errors_are_one_line(capsys, tmp_path: Path) -> None:
    db = tmp_path / "cache.sqlite"
    SequenceCache(db).close()
    rc, _, err = _run(capsys, "cache", "history", "--cache", db)
    _error(rc, err, "exactly one of --events or --key")
    rc, _, err = _run(capsys, "cache", "history", "abc", "--cache", db)
    _error(rc, err, "64-digit hex")
    rc, _, err = _run(capsys, "cache", "stats", key_of(A), "--cache", db)
    _error(rc, err, "takes no KEY")
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:  # a locked database is a one-line error, not a traceback
        rc, _, err = _run(
            capsys, "cache", "update", "--cache", db, "--events", "E1", "--label", "normal"
        )
        _error(rc, err, "locked")
    finally:
        other.execute("ROLLBACK")
        other.close()
