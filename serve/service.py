"""The service's state: the loaded bundle, its cache, the micro-batcher, the sequence reader,
the metrics and (optionally) the vLLM server, with the operations the HTTP layer calls."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from flexlog import __version__
from flexlog.bundle import Bundle, load_bundle, read_manifest
from flexlog.cache import CacheEntry, CacheError, SequenceCache
from flexlog.data.records import LogSequence
from flexlog.detector import Verdict, transient_errors
from flexlog.ensemble import NoVotersError
from flexlog.evidence import explain
from flexlog.parsing import Preset

from .batcher import BatcherClosed, MicroBatcher
from .content import SequenceReader
from .errors import APIError
from .metrics import Metrics
from .settings import Settings
from .vllm import (
    LaunchConfig,
    llm_voter_names,
    llm_voters,
    load_launch_config,
    prepare_server,
    server_url,
)

if TYPE_CHECKING:
    from flexlog.cache import Correction
    from flexlog.llm.vllm_server import VLLMServer

logger = logging.getLogger("flexlog.serve")

#: Seconds a readiness probe waits for an LLM server.
PROBE_TIMEOUT = 2.0


class Service:
    """Everything a request needs, built once per app.

    The bundle is loaded with its detector complete: the cache, the resilience settings
    (transient voter errors, see :func:`flexlog.detector.transient_errors`, make a voter
    abstain and rest ``settings.retry_after`` seconds) and the LLM voter's server.
    """

    def __init__(self, bundle_path: str | Path, settings: Settings):
        path = Path(bundle_path)
        self.settings = settings
        manifest = read_manifest(path)  # checked again by load_bundle; fails early here
        launch = load_launch_config(settings.vllm) if settings.vllm else None
        cache = None
        if settings.cache != "off":
            cache = SequenceCache(settings.cache_location(path), timeout=settings.cache_timeout)
        try:
            self.bundle: Bundle = load_bundle(
                path,
                cache=cache,
                voter_params=_llm_params(llm_voter_names(manifest), settings, launch),
                tolerate=transient_errors(),
                retry_after=settings.retry_after,
                short_circuit=not settings.all_votes,
            )
            self.detector = self.bundle.detector
            self.vllm: VLLMServer | None = None
            if launch is not None:
                self.vllm = prepare_server(self.detector, launch, log_path=settings.vllm_log)
        except BaseException:
            if cache is not None:
                cache.close()
            raise
        bundle = self.bundle
        self.profile = bundle.event_profile
        self.metrics = Metrics(lambda: self.detector)
        self.batcher = MicroBatcher(
            self.detector,
            max_batch=settings.batch_size,
            max_wait=settings.batch_wait_ms / 1000.0,
            on_batch=self.metrics.observe_batch,
        )
        self.reader = SequenceReader(
            bundle.parser_state,
            bundle.templates,
            max_events=settings.max_events,
            max_lines=settings.max_lines,
            max_line_chars=settings.max_line_chars,
            default_preset=Preset.from_dict(settings.log_preset) if settings.log_preset else None,
        )
        manifest = json.dumps(bundle.manifest, sort_keys=True).encode()
        self.fingerprint = f"flexlog-{__version__}-{hashlib.sha256(manifest).hexdigest()[:12]}"
        self.created = _epoch(bundle.manifest.get("created"))
        self._vllm_thread: threading.Thread | None = None

    @classmethod
    def load(cls, bundle_path: str | Path, settings: Settings) -> Service:
        """Load the bundle (checked against its manifest) with the settings' detector."""
        return cls(bundle_path, settings)

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the vLLM server in the background, if configured (answers are degraded
        until it is up)."""
        if self.vllm is not None and self._vllm_thread is None:
            self._vllm_thread = threading.Thread(
                target=self._run_vllm, name="flexlog-vllm-start", daemon=True
            )
            self._vllm_thread.start()

    def _run_vllm(self) -> None:
        server = self.vllm
        assert server is not None
        logger.info("starting vLLM on %s (log %s)", server.base_url, server.log_path or "temp")
        try:
            server.start(wait=True)
        except Exception as exc:  # the service keeps answering without the LLM voter
            logger.error("the vLLM server did not start: %s", exc)
            return
        logger.info("vLLM is ready at %s after %.0f s", server.base_url, server.start_seconds)

    def close(self) -> None:
        """Finish queued work, stop vLLM, close the cache (if this service opened it)."""
        self.batcher.close()
        if self.vllm is not None:
            self.vllm.stop()
        if self.detector.cache is not None:
            self.detector.cache.close()

    # -- models ----------------------------------------------------------------------------
    @property
    def model_ids(self) -> list[str]:
        return [self.settings.model_name, *self.detector.voter_names]

    def resolve_model(self, model: str | None) -> str | None:
        """None for the ensemble, else the voter's name; 404 for an unknown model."""
        if model is None or model == self.settings.model_name:
            return None
        if model in self.detector.voter_names:
            return model
        raise APIError(
            404,
            f"The model '{model}' does not exist; available: {', '.join(self.model_ids)}",
            code="model_not_found",
            param="model",
        )

    # -- answering -------------------------------------------------------------------------
    async def answer(self, sequences: list[LogSequence], voter: str | None) -> list[Verdict]:
        """Verdicts in order: the ensemble (:meth:`Detector.predict`, whose misses are voted
        on in micro-batches pooled across requests) or one voter."""
        try:
            if voter is not None:
                verdicts = await self._vote(sequences, voter)
            else:
                verdicts = await run_in_threadpool(
                    self.detector.predict, sequences, vote=self._vote_pooled
                )
        except NoVotersError as exc:
            self.metrics.errors.labels("service_unavailable", "voters_unavailable").inc()
            names = ", ".join(exc.abstained) or "all"
            raise APIError(
                503,
                f"No voter can answer right now (unavailable: {names}); try again later",
                code="voters_unavailable",
            ) from exc
        self.metrics.observe_answers(voter or self.settings.model_name, verdicts)
        return verdicts

    def _vote_pooled(self, sequences: list[LogSequence]) -> list[Verdict]:
        """The ensemble's votes through the micro-batcher (called in a worker thread)."""
        future = self._submit(sequences, None)
        try:
            return future.result(timeout=self.settings.request_timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise self._timed_out() from exc

    async def _vote(self, sequences: list[LogSequence], voter: str | None) -> list[Verdict]:
        future = self._submit(sequences, voter)
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(future), timeout=self.settings.request_timeout
            )
        except asyncio.TimeoutError as exc:
            raise self._timed_out() from exc

    def _submit(self, sequences: list[LogSequence], voter: str | None) -> concurrent.futures.Future:
        try:
            return self.batcher.submit(sequences, voter)
        except BatcherClosed as exc:
            raise APIError(503, "The service is shutting down", code="shutting_down") from exc

    def _timed_out(self) -> APIError:
        self.metrics.errors.labels("service_unavailable", "timeout").inc()
        return APIError(
            503,
            f"No answer within {self.settings.request_timeout:g} s; try again later",
            code="timeout",
        )

    def explain(self, sequences: list[LogSequence], verdicts: list[Verdict]) -> list:
        """The evidence for each anomalous verdict (None for the others)."""
        return explain(self.detector, sequences, verdicts, profile=self.profile)

    # -- readiness -------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether the bundle is loaded and every LLM backend answers, with each check."""
        checks = {"bundle": f"ok ({len(self.detector.voter_names)} voters)"}
        ready = True
        for name, voter in llm_voters(self.detector):
            params = voter.get_params()
            if params["backend"] != "openai":
                checks[f"voter:{name}"] = f"ok (in-process {params['backend']} backend)"
                continue
            problem = _probe(str(params["base_url"]), params.get("api_key"))
            checks[f"voter:{name}"] = "ok" if problem is None else problem
            ready = ready and problem is None
        return ready, checks

    # -- cache -----------------------------------------------------------------------------
    def _cache(self) -> SequenceCache:
        cache = self.detector.cache
        if cache is None:
            raise APIError(400, "This service runs without a sequence cache", code="cache_disabled")
        return cache

    def cache_get(self, key: str) -> CacheEntry:
        entry = self._cache().get(key)
        if entry is None:
            raise APIError(404, f"No cache entry with key {key}", code="cache_entry_not_found")
        return entry

    def cache_update(
        self,
        key: str,
        label: int,
        events: list[str] | None,
        actor: str,
        comment: str | None = None,
    ) -> CacheEntry:
        """A human correction by ``actor`` (recorded in the entry's history)."""
        cache = self._cache()
        with _cache_errors():
            try:
                return cache.update(
                    tuple(events) if events else key, label, actor=actor, comment=comment
                )
            except KeyError as exc:
                raise APIError(
                    404,
                    f"No cache entry with key {key}; send its 'events' to add one",
                    code="cache_entry_not_found",
                ) from exc

    def cache_delete(self, key: str, actor: str, comment: str | None = None) -> None:
        with _cache_errors():
            deleted = self._cache().delete(key, actor=actor, comment=comment)
        if not deleted:
            raise APIError(404, f"No cache entry with key {key}", code="cache_entry_not_found")

    def cache_history(self, key: str) -> list[Correction]:
        with _cache_errors():
            return self._cache().history(key)

    def cache_undo(self, key: str, actor: str, comment: str | None = None) -> list[Correction]:
        """Undo the key's latest correction not undone yet; the history after it."""
        cache = self._cache()
        with _cache_errors():
            try:
                cache.undo(key, actor=actor, comment=comment)
            except KeyError as exc:
                raise APIError(
                    409,
                    f"No correction of {key} left to undo",
                    code="nothing_to_undo",
                ) from exc
            return cache.history(key)

    def cache_stats(self) -> dict:
        """The cache's counters, without where its database lives."""
        with _cache_errors():
            stats = dict(self._cache().stats())
        stats["persistent"] = stats.pop("path", None) is not None
        return stats


@contextlib.contextmanager
def _cache_errors() -> Iterator[None]:
    """The cache's errors as API errors: 503 when its database is busy or read-only, 400
    for a value it refuses."""
    try:
        yield
    except CacheError as exc:
        raise APIError(
            503, "The cache database is busy or read-only; try again", code="cache_unavailable"
        ) from exc
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_request") from exc


def _llm_params(
    names: list[str], settings: Settings, launch: LaunchConfig | None
) -> dict[str, dict[str, object]]:
    """Parameters of the LLM voters that the settings override: the server they talk to
    (``--llm-base-url``, or the vLLM server ``--vllm`` starts) and their timeout."""
    params: dict[str, object] = {}
    if launch is not None:
        if len(names) != 1:
            raise ValueError(f"--vllm needs a bundle with one LLM voter (found: {names or 'none'})")
        params.update(backend="openai", base_url=server_url(launch))
    elif settings.llm_base_url:
        params.update(backend="openai", base_url=settings.llm_base_url)
    if settings.llm_timeout is not None:
        params["timeout"] = settings.llm_timeout
    return {name: dict(params) for name in names} if params else {}


def _probe(base_url: str, api_key: str | None) -> str | None:
    """None if ``GET {base_url}/models`` answers 200, else what went wrong."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT) as response:
            return None if response.status == 200 else f"unavailable (HTTP {response.status})"
    except urllib.error.HTTPError as exc:
        return f"unavailable (HTTP {exc.code})"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"unreachable ({type(reason).__name__})"


def _epoch(created: object) -> int:
    """A manifest's ISO ``created`` time as seconds since the epoch (0 if absent)."""
    if isinstance(created, str):
        try:
            return int(datetime.fromisoformat(created).timestamp())
        except ValueError:
            return 0
    return 0
