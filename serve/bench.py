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

from flexlog.data.records import LogSequence

SCENARIOS = ("cache", "ml", "ensemble")
#: Distinct sequences cycled through in the cache scenario.
CACHE_SET = 64


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
    results = []
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


def save_results(results: Sequence[BenchResult], out_dir: str | Path) -> Path:
    """Write ``serve-bench.json`` and ``serve-bench.md`` into ``out_dir``; returns the JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "serve-bench.json"
    path.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    (out / "serve-bench.md").write_text(format_table(results) + "\n")
    return path
