"""A cache several processes share: a real PostgreSQL server on loopback (started by the
``postgres`` fixture from Debian's server binaries), the SQLite file for comparison, and two
real ``flexlog serve`` processes on one database. No mocks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import cache_location
from postgres_server import PostgresServer

from flexlog.cache import CacheError, SequenceCache, key_of
from flexlog.cli import main
from flexlog.data.records import InputError

pytest.importorskip("psycopg")

A = ("E5", "E22", "E5")
B = ("E1", "E2")
SHARED = ["sqlite", "postgresql"]


def seq(i: int) -> tuple[str, ...]:
    return (f"E{i}", "E0", f"E{i % 7}")


# ---------------------------------------------------------------- sharing


@pytest.mark.parametrize("mode", SHARED)
def test_a_correction_through_one_cache_is_answered_by_another(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str
) -> None:
    where = cache_location(request, mode, tmp_path)
    with SequenceCache(where) as one, SequenceCache(where) as two:
        one.add(A, 1, {"knn": 1})
        assert two.get(A).label == 1  # now in two's in-memory LRU
        one.update(A, 0, actor="cli:alice", comment="a known job")
        entry = two.get(A)
        assert (entry.label, entry.source) == (0, "human")
        assert [h.actor for h in two.history(A)] == ["cli:alice"]
        # a model answer through two never overwrites the correction made through one
        two.add(A, 1)
        assert one.get(A).label == 0 and two.get(A).label == 0
        one.undo(A)
        assert two.get(A).label == 1 and two.get(A).source == "model"
        one.delete(A)
        assert two.get(A) is None
        two.add(B, 1)
        assert one.get(B).label == 1
        one.clear()
        assert two.get(B) is None  # the LRU is forgotten when the store is cleared


def test_concurrent_writers_on_one_database(postgres_url: str) -> None:
    """Four threads on two caches (two connections): no deadlock, no error, within bound."""
    errors: list[BaseException] = []
    with (
        SequenceCache(postgres_url, max_entries=200, memory_entries=30) as one,
        SequenceCache(postgres_url, max_entries=200, memory_entries=30) as two,
    ):

        def work(cache: SequenceCache, t: int) -> None:
            try:
                for i in range(300):
                    batch = [(seq((t * 7 + i + j) % 500), i % 2, None) for j in range(5)]
                    cache.add_many(list(reversed(batch)) if t % 2 else batch)
                    cache.get_many([s for s, _, _ in batch])
                    if i % 25 == 0:
                        cache.update(seq(i % 50), 1, actor=f"cli:{t}")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=(cache, t))
            for t, cache in enumerate((one, two, one, two))
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert one.stats()["errors"] == two.stats()["errors"] == 0
        assert len(one) <= 200 * 1.1  # each evicts over the bound; one at a time
        for i in range(0, 300, 25):
            assert one.get(seq(i % 50)).source == "human"


# ---------------------------------------------------------------- bad input, failures


def test_an_unreachable_server_is_one_clear_line_without_the_password() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://alice:s3cret@127.0.0.1:{port}/flexlog"
    with pytest.raises(InputError) as caught:
        SequenceCache(url, timeout=1)
    message = str(caught.value)
    assert message.startswith(f"postgresql://alice@127.0.0.1:{port}/flexlog: cannot open")
    assert "s3cret" not in message and "\n" not in message


def test_cli_reports_an_unreachable_cache_before_any_work(
    adfa_demo: Path, tmp_path: Path, capsys
) -> None:
    url = "postgresql://bob:hunter2@127.0.0.1:1/nowhere"
    out = tmp_path / "p.jsonl"
    args = ["score", "--bundle", str(adfa_demo / "bundle"), "--cache", url]
    code = main([*args, "--input", str(adfa_demo / "data" / "test.jsonl"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and not out.exists()
    assert "postgresql://bob@127.0.0.1:1/nowhere" in err and "hunter2" not in err
    assert "Traceback" not in err


def test_tables_of_another_program_or_a_newer_flexlog_are_refused(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE flexlog_cache_entries (id int)")
    with pytest.raises(InputError, match="another program"):
        SequenceCache(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE flexlog_cache_entries")
    SequenceCache(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE flexlog_cache_meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(InputError, match="newer than this flexlog"):
        SequenceCache(postgres_url)


def test_read_only_needs_an_existing_cache_and_refuses_edits(postgres_url: str) -> None:
    with pytest.raises(InputError, match="open it writable"):
        SequenceCache(postgres_url, read_only=True)
    with SequenceCache(postgres_url) as c:
        c.update(A, 1)
    with SequenceCache(postgres_url, read_only=True) as ro:
        assert ro.get(A).label == 1
        ro.add(B, 1)  # served from memory, never written
        assert ro.get(B).label == 1
        with pytest.raises(CacheError, match="read-only"):
            ro.update(A, 0)
    with SequenceCache(postgres_url) as c:
        assert c.get(B) is None and c.get(A).label == 1


def test_a_server_going_away_keeps_answers_and_refuses_edits() -> None:
    """A server of its own, stopped and started again under a live cache."""
    with PostgresServer() as server:
        url = server.url()
        with SequenceCache(url, memory_entries=10, timeout=1) as c:
            c.add(A, 1)
            server.halt()
            c.add_many([(seq(i), 1, None) for i in range(5)])  # held, not lost
            assert c.stats()["unsaved"] == 5 and c.stats()["errors"] >= 1
            assert c.get(seq(3)).label == 1  # answered from memory
            with pytest.raises(CacheError, match="try again"):
                c.update(A, 0)
            server.resume()
            c.add(B, 0)  # the connection is reopened; the held answers are written
            assert c.stats()["unsaved"] == 0
            c.update(A, 0)
        with SequenceCache(url) as again:
            assert len(again) == 7 and again.get(A).source == "human"


# ---------------------------------------------------------------- two service processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(bundle: Path, url: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    argv = [sys.executable, "-m", "flexlog.cli", "serve", "--bundle", str(bundle)]
    argv += ["--port", str(port), "--cache", url, "--api-key", "sk-read"]
    argv += ["--admin-api-key", "sk-admin"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_two_service_processes_share_one_postgresql_cache(
    adfa_demo: Path, postgres_url: str, tmp_path: Path
) -> None:
    import httpx

    read = {"Authorization": "Bearer sk-read"}
    admin = {"Authorization": "Bearer sk-admin"}
    procs = [_serve(adfa_demo / "bundle", postgres_url, tmp_path / f"serve{i}.log") for i in (1, 2)]
    try:
        deadline = time.monotonic() + 120
        for proc, base in procs:
            while True:
                assert proc.poll() is None, (tmp_path / "serve1.log").read_text()
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.3)
        (_, one), (_, two) = procs
        events = ["open", "read", "mmap", "close", "execve"]
        body = {"sequences": [{"id": "s", "events": events}]}
        first = httpx.post(f"{two}/v1/detect", json=body, headers=read, timeout=60).json()
        label = first["results"][0]["label"]
        flipped = "normal" if label == "anomalous" else "anomalous"
        key = key_of(events)
        put = httpx.put(
            f"{one}/v1/cache/{key}",
            json={"label": flipped, "events": events, "comment": "seen by ops"},
            headers=admin,
            timeout=60,
        )
        assert put.status_code == 200, put.text
        again = httpx.post(f"{two}/v1/detect", json=body, headers=read, timeout=60).json()
        assert again["results"][0]["label"] == flipped
        assert again["results"][0]["source"] == "human"
        history = httpx.get(f"{two}/v1/cache/{key}/history", headers=read, timeout=60).json()
        assert [h["comment"] for h in history["data"]] == ["seen by ops"]
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(timeout=30)
