"""Prometheus metrics of one service instance, in a registry of its own (so that several
apps in one process, e.g. in tests, do not collide).

Counted as events happen: HTTP requests and their latency, answers by source, votes, degraded
answers, micro-batches, bundle reloads. Read from the detector and the cache at scrape time:
voter errors (the LLM backend's failures), voter availability, cache errors and size (after a
reload, the detector's counters start again from zero).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flexlog.detector import Detector, Verdict

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

logger = logging.getLogger("flexlog.serve")


class _DetectorCollector(Collector):
    """Voter errors and availability, and cache counters, read when scraped."""

    def __init__(self, detector: Callable[[], Detector | None]):
        self._detector = detector

    def collect(self) -> Iterable[Metric]:
        detector = self._detector()
        if detector is None:
            return
        stats = detector.stats
        errors = CounterMetricFamily(
            "flexlog_voter_errors",
            "Voter failures (e.g. the LLM backend unreachable or timed out) that made it abstain",
            labels=["voter"],
        )
        up = GaugeMetricFamily(
            "flexlog_voter_up", "1 if the voter is answering, 0 if it failed last", labels=["voter"]
        )
        asked = CounterMetricFamily(
            "flexlog_voter_asked",
            "Distinct sequences each voter was asked about (short-circuit voting skips the "
            "rest; compare with flexlog_sequences_voted)",
            labels=["voter"],
        )
        down = detector.unavailable()
        for name in detector.voter_names:
            errors.add_metric([name], stats.voter_errors.get(name, 0))
            up.add_metric([name], 0 if name in down else 1)
            asked.add_metric([name], stats.asked.get(name, 0))
        yield errors
        yield up
        yield asked
        yield CounterMetricFamily(
            "flexlog_sequences_voted", "Distinct sequences the ensemble voted on", value=stats.voted
        )
        cache_errors = stats.cache_errors
        cache = detector.cache
        if cache is not None and not cache.closed:
            try:
                cstats = cache.stats()
            except Exception as exc:  # a metrics scrape must not fail on the cache
                logger.warning("cannot read the cache statistics: %s", exc)
                cstats = {}
            cache_errors += int(cstats.get("errors", 0))
            for key, help_text in (
                ("entries", "Entries in the sequence cache"),
                ("memory_entries", "Entries in the cache's in-memory LRU"),
                ("unsaved", "Answers waiting to be written to the cache database"),
            ):
                if isinstance(cstats.get(key), int):
                    yield GaugeMetricFamily(f"flexlog_cache_{key}", help_text, value=cstats[key])
        yield CounterMetricFamily(
            "flexlog_cache_errors",
            "Cache reads or writes that failed (the answers were served anyway)",
            value=cache_errors,
        )


class Metrics:
    """The service's metrics; :meth:`render` is the ``/metrics`` body."""

    def __init__(self, detector: Callable[[], Detector | None] = lambda: None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "flexlog_http_requests",
            "HTTP requests by route, method and status code",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "flexlog_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.answers = Counter(
            "flexlog_answers",
            "Sequences answered, by model, source (ensemble, cache, human, voter) and label",
            ["model", "source", "label"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "flexlog_cache_lookups",
            "Ensemble answers looked up in the cache, by result",
            ["result"],
            registry=r,
        )
        self.votes = Counter(
            "flexlog_votes", "Votes cast, by voter and label", ["voter", "label"], registry=r
        )
        self.degraded = Counter(
            "flexlog_degraded_answers",
            "Answers given without every voter (some voter unavailable)",
            registry=r,
        )
        self.batch_size = Histogram(
            "flexlog_batch_sequences",
            "Sequences per micro-batch voted on",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_latency = Histogram(
            "flexlog_batch_duration_seconds",
            "Time to vote on one micro-batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "flexlog_errors", "Error answers by type", ["type", "code"], registry=r
        )
        self.reloads = Counter(
            "flexlog_bundle_reloads",
            "Bundle reloads (POST /v1/admin/reload, SIGHUP) by outcome: changed, unchanged "
            "(same fingerprint), failed (the previous bundle still serves), busy (another "
            "reload was running)",
            ["outcome"],
            registry=r,
        )
        r.register(_DetectorCollector(detector))

    def observe_answers(self, model: str, verdicts: Iterable[Verdict]) -> None:
        """Count answers, cache results, votes and degraded answers."""
        for v in verdicts:
            self.answers.labels(model, v.source, v.verdict).inc()
            if v.source != "voter":
                self.cache_lookups.labels("hit" if v.cached else "miss").inc()
            if not v.cached:
                for voter, vote in v.votes.items():
                    self.votes.labels(voter, "anomalous" if vote else "normal").inc()
            if v.degraded:
                self.degraded.inc()

    def observe_batch(self, sequences: int, seconds: float) -> None:
        self.batch_size.observe(sequences)
        self.batch_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
