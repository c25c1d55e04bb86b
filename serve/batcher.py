"""Micro-batching: concurrent requests' sequences are voted on together.

The voters are fastest on batches (one matrix product for the ML voters, one concurrent burst
for a vLLM server, which batches it), and one worker thread owning the voters keeps them out
of each other's way. A job waits at most ``max_wait`` seconds for company; while a batch is
being voted on, new jobs queue up and form the next one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from flexlog.data.records import LogSequence
from flexlog.detector import Detector, Verdict


@dataclass
class _Job:
    sequences: Sequence[LogSequence]
    voter: str | None
    future: Future = field(default_factory=Future)


class BatcherClosed(RuntimeError):
    """The batcher was closed; no more jobs are taken."""


class MicroBatcher:
    """Vote on jobs from many threads in batches of up to ``max_batch`` sequences.

    ``voter`` None asks the ensemble (:meth:`Detector.vote`: no cache lookup, complete answers
    are cached); a voter name asks that voter alone. ``on_batch(sequences, seconds)`` is called
    after each batch (metrics). The worker thread starts with the first job. It waits up to
    ``max_wait`` seconds to fill a batch only while jobs come together (the last batch held
    more than one, or another is queued): a lone job is voted on at once.
    """

    def __init__(
        self,
        detector: Detector,
        *,
        max_batch: int = 256,
        max_wait: float = 0.002,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        self.detector = detector
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, sequences: Sequence[LogSequence], voter: str | None = None) -> Future:
        """A future of the verdicts for ``sequences``, in order."""
        job = _Job(list(sequences), voter)
        if not job.sequences:
            job.future.set_result([])
            return job.future
        with self._lock:
            if self._closed:
                raise BatcherClosed("the service is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="flexlog-batcher", daemon=True
                )
                self._thread.start()
            self._queue.put(job)
        return job.future

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the queued jobs, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join(timeout)

    # -- worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        company = False  # whether the last batch held more than one job
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, size, closing = [job], len(job.sequences), False
            # Wait for more jobs only while requests come together: a lone client's job is
            # voted on at once (what is already queued is still taken).
            wait = self.max_wait if company or not self._queue.empty() else 0.0
            deadline = time.monotonic() + wait
            while size < self.max_batch:
                remaining = deadline - time.monotonic()
                try:  # past the deadline, still take what is already queued
                    nxt = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt is None:  # the close() sentinel is the last item ever queued
                    closing = True
                    break
                jobs.append(nxt)
                size += len(nxt.sequences)
            company = len(jobs) > 1
            groups: dict[str | None, list[_Job]] = {}
            for j in jobs:
                groups.setdefault(j.voter, []).append(j)
            for voter, group in groups.items():
                self._process(voter, group)
            if closing:
                return

    def _process(self, voter: str | None, jobs: list[_Job]) -> None:
        """Vote on the jobs together; if that fails, on each alone, so that one bad job
        fails only itself."""
        batch = [s for job in jobs for s in job.sequences]
        start = time.perf_counter()
        try:
            verdicts = self._vote(batch, voter)
        except Exception as exc:
            if len(jobs) == 1:
                _fail(jobs[0], exc)
                return
            for job in jobs:
                self._process(voter, [job])
            return
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - start)
        offset = 0
        for job in jobs:
            n = len(job.sequences)
            with contextlib.suppress(InvalidStateError):  # its caller gave up (cancelled)
                job.future.set_result(verdicts[offset : offset + n])
            offset += n

    def _vote(self, batch: list[LogSequence], voter: str | None) -> list[Verdict]:
        if voter is None:
            return self.detector.vote(batch)
        return self.detector.predict_voter(batch, voter)


def _fail(job: _Job, exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        job.future.set_exception(exc)
