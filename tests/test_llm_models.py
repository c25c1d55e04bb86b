"""Materializing a packaged model: built once, never replaced under a process reading it.

Parallel experiment jobs used to convert SmolLM2 side by side on a fresh machine; the later one
deleted the directory the earlier one was already loading, and that job failed.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from flexlog.llm.models import _MARKER, materialized


def _slow_build(tmp: Path) -> dict:
    log = tmp.parent / "builds.log"
    with log.open("a") as f:
        f.write(f"{tmp.name}\n")
    time.sleep(0.5)
    (tmp / "weights.bin").write_bytes(b"w" * 1000)
    return {"source": "test"}


def _first_use(out: str, seen: multiprocessing.Queue) -> None:
    path = materialized(Path(out), _slow_build)
    seen.put(sorted(p.name for p in path.iterdir()))


def test_concurrent_first_use_builds_once_and_every_process_sees_it_complete(tmp_path):
    out = tmp_path / "models" / "m"
    ctx = multiprocessing.get_context("spawn")
    seen = ctx.Queue()
    procs = [ctx.Process(target=_first_use, args=(str(out), seen)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    listings = [seen.get(timeout=5) for _ in procs]
    assert listings == [[_MARKER, "weights.bin"]] * 3
    assert len((tmp_path / "models" / "builds.log").read_text().splitlines()) == 1
    assert json.loads((out / _MARKER).read_text()) == {"source": "test"}
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".m.")]
    assert leftovers == [".m.lock"] or leftovers == []


def test_a_failed_build_leaves_nothing_and_the_next_one_builds(tmp_path):
    out = tmp_path / "m"

    def broken(tmp: Path) -> dict:
        (tmp / "half").write_text("x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        materialized(out, broken)
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []
    assert (materialized(out, _slow_build) / "weights.bin").is_file()


def test_force_rebuilds(tmp_path):
    out = tmp_path / "m"
    materialized(out, _slow_build)
    (out / "stale").write_text("old")
    materialized(out, _slow_build, force=True)
    assert not (out / "stale").exists()
    assert len((tmp_path / "builds.log").read_text().splitlines()) == 2
