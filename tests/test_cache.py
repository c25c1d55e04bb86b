"""Tests of flexlog.cache: a real SQLite file in tmp_path, no mocks."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from conftest import cache_location

from flexlog.cache import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    CacheEntry,
    CacheError,
    MemoryStore,
    SequenceCache,
    SQLiteStore,
    Store,
    key_of,
)
from flexlog.cache.eviction import choose_victims, excess, victims_by_recency
from flexlog.cache.memory import MemoryLRU
from flexlog.data.records import InputError
from flexlog.detector import Detector

#: Every store behind SequenceCache: process memory, a SQLite file, a PostgreSQL server.
STORES = ["memory", "sqlite", "postgresql"]

A = ("E5", "E22", "E5")
B = ("E1", "E2")
C = ("E9",)
VOTES = {"llm": 1, "knn": 0, "dt": 1}


def seq(i: int) -> tuple[str, ...]:
    return (f"E{i}", "E0", f"E{i % 7}")


@pytest.fixture(params=STORES)
def cache(request: pytest.FixtureRequest, tmp_path: Path):
    with SequenceCache(cache_location(request, request.param, tmp_path, "cache")) as c:
        yield c


# ---------------------------------------------------------------- keys and validation


def test_key_of_is_stable_hex_sha256() -> None:
    key = key_of(A)
    assert key == key_of(list(A)) and len(key) == 64 and int(key, 16) >= 0
    assert key_of(("E5", "E22")) != key_of(("E5E22",)) != key_of(("E5", "E2", "2"))
    # The encoding stays unambiguous: no empty sequence, no separator inside an event.
    with pytest.raises(ValueError):
        key_of(())
    with pytest.raises(ValueError):
        key_of(("a\x1fb",))
    with pytest.raises(TypeError):
        key_of("E5")  # type: ignore[arg-type]


def test_key_of_matches_documented_encoding() -> None:
    assert key_of(A) == hashlib.sha256(b"E5\x1fE22\x1fE5").hexdigest()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_entries": 0},
        {"max_entries": 1.5},
        {"memory_entries": -1},
        {"timeout": -1},
        {"timeout": float("nan")},
        {"read_only": True},
    ],
)
def test_constructor_validates_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SequenceCache(None, **kwargs)


def test_invalid_items_raise_before_storing(cache: SequenceCache) -> None:
    with pytest.raises(ValueError, match="label"):
        cache.add_many([(A, 1, None), (B, 2, None)])
    with pytest.raises(ValueError, match="vote"):
        cache.add_many([(A, 1, {"llm": 5})])
    with pytest.raises(ValueError, match="hex"):
        cache.get("E5")
    assert cache.get(A) is None and len(cache) == 0


# ---------------------------------------------------------------- operations


def test_query_add_update_delete(cache: SequenceCache) -> None:
    assert cache.get(A) is None
    cache.add(A, 1, VOTES)
    entry = cache.get(A)
    assert entry == CacheEntry(key_of(A), A, 1, "model", VOTES)
    assert cache.get(key_of(A)) == entry  # by hex key too
    assert cache.get(key_of(A).upper()) == entry

    corrected = cache.update(A, 0)
    assert (corrected.label, corrected.source, corrected.votes) == (0, "human", VOTES)
    assert cache.get(A) == corrected

    assert cache.delete(A) is True
    assert cache.get(A) is None
    assert cache.delete(key_of(A)) is False
    assert len(cache) == 0


def test_update_inserts_from_events_but_not_from_bare_key(cache: SequenceCache) -> None:
    entry = cache.update(B, 1)
    assert entry == CacheEntry(key_of(B), B, 1, "human", {})
    with pytest.raises(KeyError, match="pass the events"):
        cache.update(key_of(C), 1)
    assert cache.update(key_of(B), 0).label == 0


def test_human_correction_wins_over_later_model_answers(cache: SequenceCache) -> None:
    cache.add(A, 1, VOTES)
    cache.update(A, 0)
    cache.add_many([(A, 1, VOTES), (B, 1, None)])
    cache.add(A, 1)
    assert (cache.get(A).label, cache.get(A).source) == (0, "human")
    assert cache.get(B).label == 1
    assert cache.stats()["human_entries"] == 1


def test_corrected_lists_the_human_entries_by_key(cache: SequenceCache) -> None:
    cache.add_many([(A, 1, VOTES), (B, 1, None), (C, 0, None)])
    assert cache.corrected() == []
    cache.update(A, 0, comment="false alarm")
    cache.update(("E42", "E43"), 1)  # inserted by the correction
    cache.update(C, 1)
    cache.undo(C)  # back to the model's answer
    cache.update(B, 0)
    cache.delete(B)  # gone: its history stays, but there is no label to learn from
    cache.add(A, 1)  # a later model answer never replaces a correction
    expected = [
        CacheEntry(key_of(A), A, 0, "human", VOTES),
        CacheEntry(key_of(("E42", "E43")), ("E42", "E43"), 1, "human", {}),
    ]
    assert cache.corrected() == sorted(expected, key=lambda e: e.key)
    assert len(cache) == 3  # the model answer of C is not listed


def test_corrected_sees_corrections_made_through_another_instance(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path) as reader, SequenceCache(path) as writer:
        reader.add(A, 1)
        writer.update(A, 0, actor="cli:bob")
        assert [(e.key, e.label) for e in reader.corrected()] == [(key_of(A), 0)]


def test_human_correction_wins_when_not_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path, memory_entries=1) as c:
        c.update(A, 0)
        c.add_many([(seq(i), 1, None) for i in range(5)])  # pushes A out of the LRU
        c.add(A, 1, VOTES)  # the database still knows A is a human answer
        assert (c.get(A).label, c.get(A).source) == (0, "human")
    with SequenceCache(path) as c:
        assert (c.get(A).label, c.get(A).source) == (0, "human")


def test_later_model_answer_replaces_earlier_model_answer(cache: SequenceCache) -> None:
    cache.add(A, 1, VOTES)
    cache.add(A, 0, {"llm": 0})
    assert (cache.get(A).label, cache.get(A).votes) == (0, {"llm": 0})
    cache.add_many([(A, 1, None), (A, 0, None)])  # the last of a batch wins
    assert cache.get(A).label == 0
    assert len(cache) == 1


def test_votes_are_copied_and_normalised(cache: SequenceCache) -> None:
    votes = {"llm": True, "knn": 0}
    cache.add(A, True, votes)  # type: ignore[arg-type]
    votes["llm"] = 0
    entry = cache.get(A)
    assert entry.label == 1 and entry.votes == {"llm": 1, "knn": 0}
    assert type(entry.label) is int and type(entry.votes["llm"]) is int


def test_clear_len_and_close(cache: SequenceCache) -> None:
    cache.add_many([(seq(i), i % 2, None) for i in range(10)])
    assert len(cache) == 10
    cache.clear()
    assert len(cache) == 0 and cache.get(seq(1)) is None
    cache.close()
    cache.close()  # idempotent
    assert cache.closed
    with pytest.raises(CacheError, match="closed"):
        cache.get(A)


def test_drop_model_answers_keeps_human_corrections(cache: SequenceCache) -> None:
    cache.add_many([(A, 1, VOTES), (B, 0, None), (C, 1, None)])
    cache.update(B, 1, comment="a real attack")
    cache.update(("E42",), 0)  # inserted by the correction
    assert cache.drop_model_answers() == 2
    assert cache.get(A) is None and cache.get(C) is None  # neither memory nor store
    assert (cache.get(B).label, cache.get(B).source) == (1, "human")
    assert cache.get(("E42",)).source == "human"
    assert len(cache) == 2 and cache.stats()["human_entries"] == 2
    assert [h.comment for h in cache.history(B)] == ["a real attack"]
    assert cache.drop_model_answers() == 0
    cache.add(A, 0)  # answers of the new model are kept again
    assert cache.get(A).label == 0 and len(cache) == 3


def test_drop_model_answers_drops_answers_held_for_a_retry(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path, timeout=0.05) as c:
        c.add(A, 1)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            c.add_many([(A, 0, None), (B, 1, None)])  # held: the file is locked
            assert c.stats()["unsaved"] == 2
            with pytest.raises(CacheError, match="drop the model answers"):
                c.drop_model_answers()
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert c.drop_model_answers() == 2  # A (stored and held) once, B (held)
        assert c.stats()["unsaved"] == 0 and c.get(A) is None and c.get(B) is None
    with SequenceCache(path) as c:
        assert len(c) == 0


# ---------------------------------------------------------------- persistence


def test_persistence_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.sqlite"  # the directory is created
    with SequenceCache(path) as c:
        c.add_many([(A, 1, VOTES), (B, 0, None)])
        c.update(C, 1)
    with SequenceCache(path) as c:
        assert len(c) == 3
        assert c.get(key_of(A)) == CacheEntry(key_of(A), A, 1, "model", VOTES)
        assert c.get(B).label == 0
        assert c.get(C).source == "human"
        assert c.stats()["human_entries"] == 1
    raw = sqlite3.connect(path)
    row = raw.execute(
        "SELECT n_events, events, source, votes FROM entries WHERE key = ?", (key_of(A),)
    ).fetchone()
    assert row[0] == 3 and row[1] == '["E5","E22","E5"]' and row[2] == "model"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_lru_promotion_and_memory_bound(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path, memory_entries=3) as c:
        c.add_many([(seq(i), 1, None) for i in range(5)])
        assert c.stats()["memory_entries"] == 3
        assert c.stats()["entries"] == 5
    with SequenceCache(path, memory_entries=3) as c:
        assert c.stats()["memory_entries"] == 0
        c.get_many([seq(0), seq(1)])  # both from SQLite, promoted
        s = c.stats()
        assert (s["hits"], s["memory_hits"], s["memory_entries"]) == (2, 0, 2)
        c.get_many([seq(0), seq(1)])
        assert c.stats()["memory_hits"] == 2
        c.get_many([seq(2), seq(3), seq(4)])  # pushes seq(0) and seq(1) out
        s = c.stats()
        assert s["memory_entries"] == 3 and s["memory_evictions"] == 2
        c.get(seq(0))
        assert c.stats()["memory_hits"] == 2  # came from SQLite again


def test_memory_entries_zero_reads_sqlite_every_time(tmp_path: Path) -> None:
    with SequenceCache(tmp_path / "c.sqlite", memory_entries=0) as c:
        c.add(A, 1)
        assert c.get(A).label == 1 and c.get(A).label == 1
        s = c.stats()
        assert (s["hits"], s["memory_hits"], s["memory_entries"]) == (2, 0, 0)


# ---------------------------------------------------------------- eviction


@pytest.mark.parametrize("mode", STORES)
def test_eviction_bound_keeps_human_corrections(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str
) -> None:
    path = cache_location(request, mode, tmp_path)
    with SequenceCache(path, max_entries=10, memory_entries=4) as c:
        humans = [("H", str(i)) for i in range(5)]
        for h in humans:
            c.update(h, 1)
        for i in range(30):
            c.add(seq(i), 0)
            assert len(c) <= 10
        s = c.stats()
        assert s["evictions"] == 30 + 5 - s["entries"]
        assert s["human_entries"] == 5
        assert all(c.get(h).source == "human" for h in humans)
        assert c.get(seq(29)) is not None  # the newest answer stays


@pytest.mark.parametrize("mode", STORES)
def test_eviction_of_humans_only_when_nothing_else_is_left(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str
) -> None:
    path = cache_location(request, mode, tmp_path)
    with SequenceCache(path, max_entries=5, memory_entries=2) as c:
        for i in range(8):
            c.update(("H", str(i)), 1)
        assert len(c) <= 5
        assert c.stats()["human_entries"] == len(c)
        assert c.get(("H", "7")) is not None  # the oldest went first
        assert c.get(("H", "0")) is None


def test_eviction_spares_recently_used_entries(tmp_path: Path) -> None:
    with SequenceCache(tmp_path / "c.sqlite", max_entries=10, memory_entries=2) as c:
        for i in range(10):
            c.add(seq(i), 0)
        assert c.get(seq(0)) is not None  # seq(0) is now the most recently used
        c.add(seq(10), 1)  # over the bound: evict down to 9
        assert len(c) == 9
        assert c.get(seq(0)) is not None
        assert c.get(seq(1)) is None and c.get(seq(2)) is None


def test_recency_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path, max_entries=10) as c:
        for i in range(10):
            c.add(seq(i), 0)
        c.get(seq(0))
    with SequenceCache(path, max_entries=10) as c:
        c.add(seq(10), 1)
        assert c.get(seq(0)) is not None and c.get(seq(1)) is None


# ---------------------------------------------------------------- get_many and stats


def test_get_many_order_with_mixed_hits_misses_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path, memory_entries=2) as c:
        c.add_many([(seq(i), i % 2, {"v": i % 2}) for i in range(6)])
        # seq(4) and seq(5) are in memory, the others only in SQLite.
        query = [seq(5), A, seq(0), seq(5), seq(3), A, seq(0), B, seq(2)]
        got = c.get_many(query)
        assert len(got) == len(query)
        for events, entry in zip(query, got, strict=True):
            if events in (A, B):
                assert entry is None
            else:
                assert entry is not None and entry.events == events
                assert entry.key == key_of(events) and entry.label == int(events[0][1:]) % 2
        s = c.stats()
        assert (s["hits"], s["misses"], s["lookups"]) == (6, 3, 9)
        assert c.get_many([]) == []


def test_get_many_in_chunks_beyond_the_parameter_limit(tmp_path: Path) -> None:
    n = 2000
    path = tmp_path / "c.sqlite"
    with SequenceCache(path) as c:
        c.add_many([(seq(i), i % 2, None) for i in range(n)])
    with SequenceCache(path, memory_entries=10) as c:
        query = [seq(i) for i in range(n + 5)] * 2
        got = c.get_many(query)
        assert [e.label if e else None for e in got[: n + 5]] == [i % 2 for i in range(n)] + [
            None
        ] * 5
        assert got[n + 5 :] == got[: n + 5]
        assert c.stats()["memory_entries"] == 10


def test_stats_add_up(cache: SequenceCache) -> None:
    cache.add_many([(seq(i), 1, VOTES) for i in range(20)])
    lookups = 0
    for _ in range(3):
        cache.get_many([seq(i) for i in range(0, 40, 3)])
        lookups += len(range(0, 40, 3))
    cache.get(seq(1))
    cache.get(key_of(A))
    lookups += 2
    s = cache.stats()
    assert s["hits"] + s["misses"] == s["lookups"] == lookups
    assert s["hit_rate"] == pytest.approx(s["hits"] / lookups)
    assert s["entries"] == 20 and s["errors"] == 0 and s["evictions"] == 0
    assert s["approx_memory_bytes"] > 20 * 100
    if cache.location is None:
        assert s["db_bytes"] == 0 and s["path"] is None
    elif cache.path is None:  # on a server: named without its password
        assert s["path"] == cache.location and s["path"].startswith("postgresql://flexlog@")
    else:
        assert s["db_bytes"] > 0 and s["path"] == str(cache.path)


# ---------------------------------------------------------------- robustness


def test_locked_database_keeps_answers_in_memory(tmp_path: Path, caplog) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path, timeout=0.05) as c:
        c.add(A, 1)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with caplog.at_level(logging.WARNING, logger="flexlog.cache"):
                c.add_many([(B, 1, VOTES), (C, 0, None)])  # must not raise
            assert any(r.name == "flexlog.cache" for r in caplog.records)
            assert c.get(B).label == 1 and c.get(C).label == 0 and c.get(A).label == 1
            s = c.stats()
            assert s["errors"] == 1 and s["unsaved"] == 2
            with pytest.raises(CacheError, match="correction"):
                c.update(A, 0)  # a human correction is never dropped silently
        finally:
            other.execute("ROLLBACK")
            other.close()
        c.add(seq(1), 1)  # the unsaved answers are written with the next call
        assert c.stats()["unsaved"] == 0
    with SequenceCache(path) as c:
        assert len(c) == 4 and c.get(B).votes == VOTES


def test_read_only_mode_serves_from_memory(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path) as c:
        c.add(A, 1)
        c.update(B, 0)
    with SequenceCache(path, read_only=True) as c:
        assert c.get(A).label == 1
        c.add_many([(C, 1, None), (B, 1, None)])  # no error: kept in memory only
        assert c.get(C).label == 1
        assert (c.get(B).label, c.get(B).source) == (0, "human")
        with pytest.raises(CacheError, match="read-only"):
            c.update(A, 0)
        with pytest.raises(CacheError, match="read-only"):
            c.delete(A)
        assert c.stats()["read_only"] is True
    with SequenceCache(path) as c:
        assert len(c) == 2 and c.get(C) is None
    with pytest.raises(InputError, match="does not exist"):
        SequenceCache(tmp_path / "missing.sqlite", read_only=True)


@pytest.mark.parametrize("lock_dir", [False, True])
def test_unwritable_file_keeps_answers_in_memory(tmp_path: Path, lock_dir: bool) -> None:
    folder = tmp_path / "ro"
    path = folder / "c.sqlite"
    with SequenceCache(path) as c:
        c.add(A, 1)
    path.chmod(0o444)
    if lock_dir:
        folder.chmod(0o555)
    try:
        if os.access(path, os.W_OK) or (lock_dir and os.access(folder, os.W_OK)):
            pytest.skip("permissions are not enforced (running as root)")
        with SequenceCache(path, timeout=0.05) as c:
            assert c.get(A).label == 1
            c.add_many([(B, 0, None)])  # must not raise
            assert c.get(B).label == 0
            assert c.stats()["errors"] >= 1
    finally:
        folder.chmod(stat.S_IRWXU)
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_database_error_on_read_falls_back_to_memory(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path, memory_entries=1) as c:
        c.add_many([(A, 1, None), (B, 0, None)])  # only B stays in memory
        raw = sqlite3.connect(path)
        raw.execute("DROP TABLE entries")  # another process breaks the database
        raw.commit()
        raw.close()
        assert c.get_many([A, B]) == [None, c.get(B)]
        c.add(C, 1)  # must not raise
        assert c.get(C).label == 1
        s = c.stats()
        assert s["errors"] >= 2 and s["hits"] + s["misses"] == s["lookups"] == 4


@pytest.mark.parametrize(
    "content",
    [b"this is not a database\n" * 50, b"SQLite format 3\x00" + b"\x07" * 5000],
    ids=["text", "bad-pages"],
)
def test_corrupt_file_is_an_input_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.sqlite"
    path.write_bytes(content)
    with pytest.raises(InputError, match=str(path)):
        SequenceCache(path)


def test_unrelated_or_newer_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    raw = sqlite3.connect(other)
    raw.execute("CREATE TABLE t (x)")
    raw.commit()
    raw.close()
    with pytest.raises(InputError, match="not a flexlog cache"):
        SequenceCache(other)

    newer = tmp_path / "newer.sqlite"
    SequenceCache(newer).close()
    raw = sqlite3.connect(newer)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(InputError, match="newer"):
        SequenceCache(newer)
    with pytest.raises(InputError, match="directory"):
        SequenceCache(tmp_path)


# ---------------------------------------------------------------- threads


@pytest.mark.parametrize("mode", STORES)
def test_thread_safety_smoke(request: pytest.FixtureRequest, tmp_path: Path, mode: str) -> None:
    path = cache_location(request, mode, tmp_path)
    errors: list[BaseException] = []
    lookups = [0] * 4

    with SequenceCache(path, max_entries=300, memory_entries=50) as c:

        def work(t: int) -> None:
            try:
                for i in range(1000):
                    s = seq(t * 1000 + i % 400)
                    op = i % 10
                    if op < 4:
                        c.add_many([(s, i % 2, {"t": t % 2})])
                    elif op < 8:
                        lookups[t] += len(c.get_many([s, seq(i % 50), s]))
                    elif op == 8:
                        c.update(s, 1)
                    else:
                        c.delete(s)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        s = c.stats()
        assert s["lookups"] == s["hits"] + s["misses"] == sum(lookups)
        assert s["entries"] <= 300 and s["errors"] == 0


# ---------------------------------------------------------------- the eviction policy


def test_excess_is_zero_within_the_bound_then_down_to_ninety_percent() -> None:
    assert excess(10, 10) == 0 and excess(0, 1) == 0
    assert excess(11, 10) == 2  # down to 9
    assert excess(1001, 1000) == 101  # down to 900
    assert excess(2, 1) == 1  # tiny bounds: at least one below the bound


def test_choose_victims_takes_model_answers_first_and_lazily() -> None:
    taken: list[str] = []

    def stream(keys: list[str]):
        for key in keys:
            taken.append(key)
            yield key

    model = [f"m{i}" for i in range(5)]
    human = [f"h{i}" for i in range(5)]
    # 11 entries, bound 8: evict down to 7, i.e. 4, all model answers; humans untouched
    assert choose_victims(11, 8, stream(model), stream(human)) == ["m0", "m1", "m2", "m3"]
    assert taken == ["m0", "m1", "m2", "m3"]
    # not enough model answers: then the least recently used humans
    assert choose_victims(12, 5, iter(model), iter(human)) == [*model, "h0", "h1", "h2"]
    assert choose_victims(5, 5, iter(model), iter(human)) == []


def test_victims_by_recency_orders_each_source_by_last_used() -> None:
    entries = [
        ("a", "model", 5.0),
        ("h1", "human", 1.0),
        ("b", "model", 2.0),
        ("c", "model", 9.0),
        ("h2", "human", 0.5),
    ]
    assert victims_by_recency(entries, 5) == []
    assert victims_by_recency(entries, 4) == ["b", "a"]  # down to 3
    assert victims_by_recency(entries, 2) == ["b", "a", "c", "h2"]  # down to 1: humans last


def test_memory_lru_reports_what_it_pushes_out_and_keeps_its_order() -> None:
    pushed: list[str] = []
    lru = MemoryLRU(3, pushed.append)

    def entry(k: str) -> CacheEntry:
        return CacheEntry(k, (k,), 0, "model")

    for k in "abc":
        lru.put(entry(k))
    assert lru.get("a") is not None  # a is now the most recent
    assert [e.key for e in lru.oldest_first()] == ["b", "c", "a"]
    lru.put(entry("d"))
    assert pushed == ["b"] and lru.evictions == 1 and "b" not in lru
    assert lru.peek("c") is not None and [e.key for e in lru.oldest_first()] == ["c", "a", "d"]
    assert [e.key for e in lru.drain()] == ["c", "a", "d"] and len(lru) == 0
    assert pushed == ["b"]  # draining is no eviction
    nothing = MemoryLRU(0, pushed.append)
    nothing.put(entry("x"))
    assert len(nothing) == 0 and pushed == ["b", "x"]


def test_stores_implement_the_protocol(tmp_path: Path) -> None:
    assert isinstance(MemoryStore(10), Store)
    store = SQLiteStore(tmp_path / "s.sqlite", max_entries=10)
    try:
        assert isinstance(store, Store) and not store.in_memory
    finally:
        store.close()


# ---------------------------------------------------------------- refused input


SURROGATE = ("E1", "bad\udfff", "E2")


def test_key_of_refuses_lone_surrogates() -> None:
    with pytest.raises(ValueError, match=r"event 1 contains a lone surrogate"):
        key_of(SURROGATE)
    with pytest.raises(ValueError, match="surrogate"):
        key_of(("\ud800",))
    assert key_of(("é", "日本", "🙂")) == hashlib.sha256("é\x1f日本\x1f🙂".encode()).hexdigest()


def test_surrogate_events_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path) as c:
        for call in (
            lambda: c.update(SURROGATE, 1),
            lambda: c.add(SURROGATE, 1),
            lambda: c.add_many([(A, 1, None), (SURROGATE, 0, None)]),
            lambda: c.get(SURROGATE),
            lambda: c.get_many([A, SURROGATE]),
            lambda: c.delete(SURROGATE),
            lambda: c.history(SURROGATE),
            lambda: c.undo(SURROGATE),
            lambda: c.add(A, 1, {"v\udfff": 1}),
            lambda: c.update(A, 1, actor="x\udfff"),
            lambda: c.update(A, 1, comment="\udfff"),
        ):
            with pytest.raises(ValueError, match=r"surrogate|Unicode"):
                call()
        assert len(c) == 0 and c.stats()["errors"] == 0
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT count(*) FROM entries").fetchone()[0] == 0
        assert raw.execute("SELECT count(*) FROM corrections").fetchone()[0] == 0
    finally:
        raw.close()


# ---------------------------------------------------------------- only CacheError


def test_locked_database_raises_cache_error_on_explicit_edits(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with SequenceCache(path, timeout=0.05) as c:
        c.add(A, 1, VOTES)
        c.update(B, 1)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            for call, what in (
                (lambda: c.update(A, 0), "save the correction"),
                (lambda: c.delete(A), "delete"),
                (lambda: c.undo(B), "undo"),
                (lambda: c.clear(), "clear"),
            ):
                with pytest.raises(CacheError, match=what) as info:
                    call()
                assert not isinstance(info.value, sqlite3.Error)
                assert "locked" in str(info.value) and str(path) in str(info.value)
            assert c.stats()["errors"] == 4
        finally:
            other.execute("ROLLBACK")
            other.close()
        # nothing was changed or recorded by the failed edits
        assert (c.get(A).label, c.get(A).source) == (1, "model")
        assert [h.action for h in c.history(B)] == ["set"] and c.history(A) == []


def test_detector_absorbs_cache_errors(tmp_path: Path) -> None:
    from flexlog.data.records import LogSequence
    from flexlog.detector import make_detector

    cache = SequenceCache(tmp_path / "c.sqlite")
    cache.close()  # every call now raises CacheError
    det = Detector(make_detector(["knn"]).ensemble, cache)
    assert det.lookup([LogSequence("s1", A), LogSequence("s2", B)]) == [None, None]
    det._cache_add([(A, 1, {})])
    assert det.stats.cache_errors == 2


# ---------------------------------------------------------------- schema versions

# The schema of version 1, as flexlog wrote it before the corrections table.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key       TEXT PRIMARY KEY,
    n_events  INTEGER NOT NULL,
    events    TEXT NOT NULL,
    label     INTEGER NOT NULL CHECK (label IN (0, 1)),
    source    TEXT NOT NULL CHECK (source IN ('model', 'human')),
    votes     TEXT NOT NULL DEFAULT '{}',
    created   REAL NOT NULL,
    updated   REAL NOT NULL,
    last_used INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_eviction ON entries (source, last_used);
"""


def _make_v1(path: Path) -> str:
    """A version-1 cache file with A (model) and B (human); the entries table's SQL."""
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.executescript(V1_SCHEMA)
        raw.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        raw.execute("PRAGMA user_version = 1")
        raw.execute("PRAGMA journal_mode = WAL")
        votes = '{"llm":1,"knn":0,"dt":1}'
        rows = [
            (key_of(A), 3, '["E5","E22","E5"]', 1, "model", votes, 1.0, 1.0, 1),
            (key_of(B), 2, '["E1","E2"]', 0, "human", "{}", 2.0, 2.0, 2),
        ]
        raw.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return raw.execute("SELECT sql FROM sqlite_master WHERE name = 'entries'").fetchone()[0]
    finally:
        raw.close()


def _header(path: Path) -> tuple[int, bool]:
    raw = sqlite3.connect(path)
    try:
        version = raw.execute("PRAGMA user_version").fetchone()[0]
        log = raw.execute("SELECT 1 FROM sqlite_master WHERE name = 'corrections'").fetchone()
        return version, log is not None
    finally:
        raw.close()


def test_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    entries_sql = _make_v1(path)
    with SequenceCache(path) as c:
        assert _header(path) == (SCHEMA_VERSION, True) and SCHEMA_VERSION == 2
        assert c.get(A) == CacheEntry(key_of(A), A, 1, "model", VOTES)
        assert (c.get(B).label, c.get(B).source) == (0, "human")
        assert c.history(A) == []
        c.update(A, 0, actor="cli:test", comment="migrated")
    with SequenceCache(path) as c:
        (h,) = c.history(A)
        assert (h.action, h.previous_label, h.new_label, h.comment) == ("set", 1, 0, "migrated")
        assert len(c) == 2
    raw = sqlite3.connect(path)
    try:  # the entries table is unchanged
        sql = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'entries'").fetchone()[0]
        assert sql == entries_sql
    finally:
        raw.close()


def test_version_1_file_read_only_works_without_history(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    _make_v1(path)
    with SequenceCache(path, read_only=True) as c:
        assert c.get(A).label == 1 and c.get(key_of(B)).source == "human"
        assert c.history(A) == [] and c.history(B) == []
        with pytest.raises(CacheError, match="read-only"):
            c.undo(B)
        assert c.stats()["entries"] == 2
    assert _header(path) == (1, False)  # untouched


def test_version_1_file_locked_at_open_is_upgraded_by_the_first_edit(
    tmp_path: Path, caplog
) -> None:
    path = tmp_path / "v1.sqlite"
    _make_v1(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer: readers go on, the upgrade must wait
    try:
        with caplog.at_level(logging.WARNING, logger="flexlog.cache"):
            c = SequenceCache(path, timeout=0.05)
        assert any("upgrade" in r.getMessage() for r in caplog.records)
    finally:
        other.execute("ROLLBACK")
        other.close()
    with c:
        assert c.get(A).label == 1 and c.history(A) == []
        assert _header(path) == (1, False)
        c.update(A, 0)
        assert [h.action for h in c.history(A)] == ["set"]
    assert _header(path) == (SCHEMA_VERSION, True)


@pytest.mark.parametrize("mode", STORES)
def test_answers_evicted_by_their_own_batch_are_not_served(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str
) -> None:
    path = cache_location(request, mode, tmp_path)
    with SequenceCache(path, max_entries=5) as c:
        c.add_many([(seq(i), 1, None) for i in range(10)])
        assert len(c) == 4
        got = c.get_many([seq(i) for i in range(10)])
        assert [e is not None for e in got] == [False] * 6 + [True] * 4  # the newest stay
        assert c.stats()["evictions"] == 6
