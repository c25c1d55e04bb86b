"""The service's micro-batcher with a real detector (the demo bundle): every job answered in
order, as the detector answers it alone; a lone job is not held back for company."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from flexlog.bundle import load_bundle
from flexlog.data.records import read_jsonl
from flexlog.serve.batcher import BatcherClosed, MicroBatcher


@pytest.fixture(scope="module")
def detector(adfa_demo: Path):
    return load_bundle(adfa_demo / "bundle").detector


@pytest.fixture(scope="module")
def sequences(adfa_demo: Path):
    seqs, _ = read_jsonl(adfa_demo / "data" / "test.jsonl")
    return seqs[:40]


def test_a_lone_job_is_voted_on_at_once(detector, sequences) -> None:
    """With a 60 s wait for company, a single client's job still comes back at once."""
    batcher = MicroBatcher(detector, max_wait=60.0)
    try:
        verdicts = batcher.submit(sequences[:3]).result(timeout=30)
        assert [v.label for v in verdicts] == [v.label for v in detector.vote(sequences[:3])]
    finally:
        batcher.close()


def test_concurrent_jobs_are_all_answered_in_order(detector, sequences) -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(detector, max_batch=16, on_batch=lambda n, _s: sizes.append(n))
    expected = [v.label for v in detector.vote(sequences)]
    futures = [None] * 10

    def client(i: int) -> None:
        futures[i] = batcher.submit(sequences[4 * i : 4 * i + 4])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answered = [v.label for f in futures for v in f.result(timeout=60)]
    assert answered == expected
    assert sum(sizes) == len(sequences) and max(sizes) <= 16
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(sequences[:1])
