"""A bounded load test of a running service: requests per second and latency percentiles at
several numbers of concurrent clients, for three paths through it:

* ``cache``: sequences the cache already answers;
* ``ml``: sequences never seen before, voted on by an ML-only bundle;
* ``ensemble``: sequences never seen before, voted on by a bundle with the LLM voter.

Each scenario names the service it runs against (the ML and ensemble paths need different
bundles). Fresh sequences are real ones with one unique extra event, so that nothing answers
them from the cache; run the service with ``--cache memory`` so that they do not stay.
Clients send chat completions with the official request shape, over keep-alive connections,
for a fixed time each. ``flexlog serve-bench`` prints and saves the table.

A fourth measurement, :func:`run_detect_batches`, compares the service with the library: one
client POSTs batches of N fresh sequences to ``/v1/detect`` (N = 1, 100, 1,000 by default)
and the sequences/s it gets stand beside those of :meth:`flexlog.detector.Detector.predict`
on the same batches in this process (the bundle loaded without a cache), so that what HTTP,
JSON and validation cost shows. Request bodies are encoded before the clock starts: the rate
is the service's, not the client's JSON encoder's.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import pydantic_core

from flexlog.data.records import LogSequence

SCENARIOS = ("cache", "ml", "ensemble")
#: Distinct sequences cycled through in the cache scenario.
CACHE_SET = 64
#: Batch sizes of the detect-batch measurement.
DETECT_BATCHES = (1, 100, 1000)
#: Sequences kept from the service's batches to time the library on (memory bound).
KEEP_SEQUENCES = 20_000


@dataclass(frozen=True)
class BenchResult:
    """One scenario at one concurrency."""

    scenario: str
    concurrency: int
    requests: int
    errors: int
    degraded: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float


def run_bench(
    targets: Mapping[str, str],
    sequences: Sequence[LogSequence],
    *,
    concurrency: Sequence[int] = (1, 8, 32),
    duration: float = 10.0,
    model: str = "flexlog",
    api_key: str | None = None,
    timeout: float = 300.0,
    progress: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """Load each scenario's service (``targets``: scenario → base URL such as
    ``http://127.0.0.1:8000``) with each number of clients for ``duration`` seconds."""
    unknown = set(targets) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    if not sequences:
        raise ValueError("the benchmark needs at least one sequence")
    if duration <= 0 or any(c < 1 for c in concurrency):
        raise ValueError("duration and concurrency must be positive")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    results: list[BenchResult] = []
    if not concurrency:
        return results
    for scenario in SCENARIOS:
        url = targets.get(scenario)
        if url is None:
            continue
        if scenario == "cache":
            pool = list(sequences[:CACHE_SET])
            _warm(url, pool, model, headers, timeout)
            payloads: Callable[[], Iterator[tuple[str, ...]]] = _cycle(pool)
        else:
            payloads = _fresh(sequences)
        for clients in concurrency:
            result = _load(url, scenario, payloads(), clients, duration, model, headers, timeout)
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def _cycle(pool: list[LogSequence]) -> Callable[[], Iterator[tuple[str, ...]]]:
    return lambda: itertools.cycle([s.events for s in pool])


def _fresh(sequences: Sequence[LogSequence]) -> Callable[[], Iterator[tuple[str, ...]]]:
    run = uuid.uuid4().hex[:8]

    def fresh() -> Iterator[tuple[str, ...]]:
        for n, seq in enumerate(itertools.cycle(sequences)):
            yield (*seq.events, f"bench-{run}-{n}")

    return fresh


def _warm(url: str, pool: list[LogSequence], model: str, headers: dict, timeout: float) -> None:
    """Vote on the cache scenario's sequences once, so that the cache holds them."""
    body = {"model": model, "sequences": [s.to_json() for s in pool]}
    response = httpx.post(f"{url}/v1/detect", json=body, headers=headers, timeout=timeout)
    response.raise_for_status()


def _load(
    url: str,
    scenario: str,
    payloads: Iterator[tuple[str, ...]],
    clients: int,
    duration: float,
    model: str,
    headers: dict,
    timeout: float,
) -> BenchResult:
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"errors": 0, "degraded": 0}
    deadline = time.monotonic() + duration

    def client() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as http:
            while time.monotonic() < deadline:
                with lock:
                    events = next(payloads)
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": json.dumps(list(events))}],
                }
                t0 = time.perf_counter()
                try:
                    response = http.post("/v1/chat/completions", json=body)
                    ok = response.status_code == 200
                    degraded = ok and bool(response.json()["flexlog"]["degraded"])
                except (httpx.HTTPError, ValueError, KeyError):
                    ok, degraded = False, False
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    counts["errors"] += not ok
                    counts["degraded"] += degraded

    start = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    ms = np.array(latencies) * 1000.0 if latencies else np.zeros(1)
    return BenchResult(
        scenario=scenario,
        concurrency=clients,
        requests=len(latencies),
        errors=counts["errors"],
        degraded=counts["degraded"],
        seconds=round(seconds, 3),
        rps=round(len(latencies) / seconds, 2) if seconds > 0 else 0.0,
        p50_ms=round(float(np.percentile(ms, 50)), 2),
        p99_ms=round(float(np.percentile(ms, 99)), 2),
    )


@dataclass(frozen=True)
class DetectBatchResult:
    """``/v1/detect`` with batches of ``batch`` fresh sequences, one client, and the
    library's :meth:`~flexlog.detector.Detector.predict` on the same batches in-process.

    ``ratio`` compares like with like: the service (run with ``--cache memory``) against the
    detector with an in-memory cache, which looks up and adds every sequence as the service
    does; ``ratio_no_cache`` against the detector without a cache, which skips that work."""

    batch: int
    requests: int
    sequences: int
    errors: int
    seconds: float
    service_rate: float
    p50_ms: float
    inprocess_rate: float | None
    inprocess_cached_rate: float | None
    ratio: float | None
    ratio_no_cache: float | None


def run_detect_batches(
    url: str,
    sequences: Sequence[LogSequence],
    *,
    batches: Sequence[int] = DETECT_BATCHES,
    duration: float = 10.0,
    bundle: str | Path | None = None,
    model: str = "flexlog",
    api_key: str | None = None,
    timeout: float = 300.0,
    progress: Callable[[DetectBatchResult], None] | None = None,
) -> list[DetectBatchResult]:
    """Sequences/s of ``POST {url}/v1/detect`` with each batch size for ``duration`` seconds
    (at least one request), beside ``Detector.predict``'s on the same batches with the
    ``bundle`` loaded here (None: the service's rate alone), without a cache and with an
    in-memory one, which adds and looks up every sequence as the service's does. Run the
    service with ``--cache memory``: the fresh sequences are never in its cache."""
    if not sequences:
        raise ValueError("the benchmark needs at least one sequence")
    if duration <= 0 or any(n < 1 for n in batches):
        raise ValueError("duration and batch sizes must be positive")
    detectors = []
    if bundle is not None:
        from flexlog.bundle import load_bundle
        from flexlog.cache import SequenceCache

        detectors = [
            load_bundle(bundle).detector,
            load_bundle(bundle, cache=SequenceCache(None)).detector,
        ]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    headers["Content-Type"] = "application/json"
    fresh = _fresh_sequences(sequences)
    results = []
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as http:
        _post_batch(http, model, [next(fresh)])  # connect and warm up
        for detector in detectors:
            detector.predict([next(fresh)])
        for n in batches:
            result = _detect_batch(http, detectors, fresh, n, duration, model)
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def _fresh_sequences(sequences: Sequence[LogSequence]) -> Iterator[LogSequence]:
    """Real sequences, each with one unique extra event: no cache has seen them."""
    run = uuid.uuid4().hex[:8]
    for n, seq in enumerate(itertools.cycle(sequences)):
        yield LogSequence(f"{seq.id}-{n}", (*seq.events, f"bench-{run}-{n}"))


def _post_batch(http: httpx.Client, model: str, batch: list[LogSequence]) -> tuple[bool, float]:
    """POST one batch (encoded before the clock starts); whether every sequence was answered,
    and the seconds the request took."""
    body = pydantic_core.to_json({"model": model, "sequences": [s.to_json() for s in batch]})
    t0 = time.perf_counter()
    try:
        response = http.post("/v1/detect", content=body)
    except httpx.HTTPError:
        return False, time.perf_counter() - t0
    elapsed = time.perf_counter() - t0
    try:
        counts = response.json()["counts"] if response.status_code == 200 else {}
    except (ValueError, KeyError, TypeError):
        counts = {}
    return counts.get("answered") == len(batch) and counts.get("errors") == 0, elapsed


def _detect_batch(
    http: httpx.Client,
    detectors: list,
    fresh: Iterator[LogSequence],
    n: int,
    duration: float,
    model: str,
) -> DetectBatchResult:
    latencies: list[float] = []
    kept: list[list[LogSequence]] = []
    errors = answered = 0
    busy = 0.0
    while not latencies or busy < duration:
        batch = [next(fresh) for _ in range(n)]
        ok, elapsed = _post_batch(http, model, batch)
        latencies.append(elapsed)
        busy += elapsed
        errors += not ok
        answered += n if ok else 0
        if (len(kept) + 1) * n <= max(KEEP_SEQUENCES, n):
            kept.append(batch)
    service_rate = answered / busy if busy > 0 else 0.0
    rates = [_library_rate(d, kept, max(answered, n), duration) for d in detectors]
    inprocess, cached = rates if rates else (None, None)
    return DetectBatchResult(
        batch=n,
        requests=len(latencies),
        sequences=answered,
        errors=errors,
        seconds=round(busy, 3),
        service_rate=round(service_rate, 1),
        p50_ms=round(float(np.percentile(np.array(latencies) * 1000.0, 50)), 2),
        inprocess_rate=round(inprocess, 1) if inprocess is not None else None,
        inprocess_cached_rate=round(cached, 1) if cached is not None else None,
        ratio=round(service_rate / cached, 3) if cached else None,
        ratio_no_cache=round(service_rate / inprocess, 3) if inprocess else None,
    )


def _library_rate(detector, batches: list[list[LogSequence]], most: int, limit: float) -> float:
    """Sequences/s of ``detector.predict`` on the batches, in order (again from the first
    when there is time left: a detector with a cache then answers from it, so that one stops
    after a pass), for ``limit`` seconds or ``most`` sequences."""
    done, spent = 0, 0.0
    passes = 1 if detector.cache is not None else None
    for k, batch in enumerate(itertools.cycle(batches)):
        if passes is not None and k >= len(batches) * passes:
            break
        t0 = time.perf_counter()
        detector.predict(batch)
        spent += time.perf_counter() - t0
        done += len(batch)
        if spent >= limit or done >= most:
            break
    return done / spent if spent > 0 else 0.0


def format_detect_table(results: Sequence[DetectBatchResult]) -> str:
    """The detect-batch results as a Markdown table."""
    lines = [
        "| batch | requests | errors | /v1/detect seq/s | p50 ms "
        "| in-process, memory cache (as served) seq/s | ratio | in-process, no cache seq/s "
        "| ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def rate(value: float | None, spec: str = ".1f") -> str:
        return "-" if value is None else format(value, spec)

    for r in results:
        lines.append(
            f"| {r.batch} | {r.requests} | {r.errors} | {r.service_rate:.1f} | {r.p50_ms:.1f} | "
            f"{rate(r.inprocess_cached_rate)} | {rate(r.ratio, '.2f')} | "
            f"{rate(r.inprocess_rate)} | {rate(r.ratio_no_cache, '.2f')} |"
        )
    return "\n".join(lines)


def format_table(results: Sequence[BenchResult]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| path | clients | requests | errors | degraded | req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.concurrency} | {r.requests} | {r.errors} | {r.degraded} | "
            f"{r.rps:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} |"
        )
    return "\n".join(lines)


def save_results(
    results: Sequence[BenchResult],
    out_dir: str | Path,
    detect: Sequence[DetectBatchResult] = (),
) -> Path:
    """Write ``serve-bench.json`` and ``serve-bench.md`` into ``out_dir`` (and, for detect
    batches, ``serve-bench-detect.json``, their table added to the Markdown); returns the
    first JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "serve-bench.json"
    path.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    tables = [format_table(results)] if results or not detect else []
    if detect:
        (out / "serve-bench-detect.json").write_text(
            json.dumps([asdict(r) for r in detect], indent=1) + "\n"
        )
        tables.append(format_detect_table(detect))
    (out / "serve-bench.md").write_text("\n\n".join(tables) + "\n")
    return path
