"""The service's state: the loaded bundle, its cache, the micro-batcher, the sequence reader,
the metrics and (optionally) the vLLM server, with the operations the HTTP layer calls.

The parts built from a bundle (its detector, the micro-batcher, the sequence reader, the
event profile, the fingerprint) live in one immutable :class:`Loaded`, which
:meth:`Service.reload` builds off to the side and swaps in as a whole; the cache, the metrics
and the vLLM server belong to the service and outlive reloads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from flexlog import __version__
from flexlog.bundle import Bundle, load_bundle, read_manifest
from flexlog.cache import CacheEntry, CacheError, SequenceCache
from flexlog.data.records import LogSequence
from flexlog.detector import Detector, Verdict, transient_errors
from flexlog.ensemble import NoVotersError
from flexlog.evidence import EventProfile, explain
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
#: Seconds a reload waits for the requests in flight to finish before it gives up (the old
#: bundle then stays); requests that arrive meanwhile wait that long at most.
DRAIN_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Loaded:
    """One bundle with everything built from it: what a reload swaps as a whole."""

    bundle: Bundle
    batcher: MicroBatcher
    reader: SequenceReader
    profile: EventProfile | None
    fingerprint: str
    created: int

    @property
    def detector(self) -> Detector:
        return self.bundle.detector


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: the fingerprints before and after, the voters serving now, the
    model answers dropped from the cache (only when the fingerprint changed), and the time
    it took."""

    previous: str
    fingerprint: str
    voters: tuple[str, ...]
    dropped: int
    seconds: float

    @property
    def changed(self) -> bool:
        return self.previous != self.fingerprint


class Service:
    """Everything a request needs, built once per app.

    The bundle is loaded with its detector complete: the cache, the resilience settings
    (transient voter errors, see :func:`flexlog.detector.transient_errors`, make a voter
    abstain and rest ``settings.retry_after`` seconds) and the LLM voter's server.

    :meth:`reload` swaps in the bundle at the same path, loaded again; requests hold the
    bundle they started with through :meth:`serving`, so none is answered by two bundles.
    """

    def __init__(self, bundle_path: str | Path, settings: Settings):
        path = Path(bundle_path)
        self.settings = settings
        #: The configured bundle path (a reload reads it again: it may be a symlink).
        self.path = path
        manifest = read_manifest(path)  # checked again by load_bundle; fails early here
        launch = load_launch_config(settings.vllm) if settings.vllm else None
        self._launch = launch
        # Computed once: with --vllm it picks the server's port, which reloads keep.
        self._llm = _llm_overrides(settings, launch)
        self.metrics = Metrics(lambda: self.detector)
        self.cache: SequenceCache | None = None
        if settings.cache != "off":
            self.cache = SequenceCache(
                settings.cache_location(path), timeout=settings.cache_timeout
            )
        try:
            self._state = self._load(path, manifest)
            self.vllm: VLLMServer | None = None
            if launch is not None:
                self.vllm = prepare_server(self.detector, launch, log_path=settings.vllm_log)
        except BaseException:
            if self.cache is not None:
                self.cache.close()
            raise
        self._served = _served_llm(self._state.bundle, launch) if launch is not None else {}
        self._vllm_thread: threading.Thread | None = None
        self._reloading = threading.Lock()  # one reload at a time
        self._guard = threading.Condition()  # guards _active and _paused
        self._active = 0  # requests holding the bundle (see serving)
        self._paused: concurrent.futures.Future[None] | None = None  # set while swapping
        self._closed = False

    def _load(self, path: Path, manifest: dict | None = None) -> Loaded:
        """The bundle at ``path`` (``manifest``: its manifest, if read already) with
        everything built from it, complete (nothing runs until the batcher gets its first
        job)."""
        names = llm_voter_names(manifest if manifest is not None else read_manifest(path))
        bundle = load_bundle(
            path,
            cache=self.cache,
            voter_params=_llm_params(names, self._llm, vllm=self._launch is not None),
            tolerate=transient_errors(),
            retry_after=self.settings.retry_after,
            short_circuit=not self.settings.all_votes,
        )
        settings = self.settings
        reader = SequenceReader(
            bundle.parser_state,
            bundle.templates,
            max_events=settings.max_events,
            max_lines=settings.max_lines,
            max_line_chars=settings.max_line_chars,
            default_preset=Preset.from_dict(settings.log_preset) if settings.log_preset else None,
        )
        digest = hashlib.sha256(json.dumps(bundle.manifest, sort_keys=True).encode()).hexdigest()
        return Loaded(
            bundle=bundle,
            batcher=self._batcher(bundle.detector),
            reader=reader,
            profile=bundle.event_profile,
            fingerprint=f"flexlog-{__version__}-{digest[:12]}",
            created=_epoch(bundle.manifest.get("created")),
        )

    def _batcher(self, detector: Detector) -> MicroBatcher:
        settings = self.settings
        return MicroBatcher(
            detector,
            max_batch=settings.batch_size,
            max_wait=settings.batch_wait_ms / 1000.0,
            on_batch=self.metrics.observe_batch,
        )

    # -- the loaded bundle -----------------------------------------------------------------
    @property
    def loaded(self) -> Loaded:
        """The bundle being served and everything built from it."""
        return self._state

    @property
    def bundle(self) -> Bundle:
        return self._state.bundle

    @property
    def detector(self) -> Detector:
        return self._state.detector

    @property
    def batcher(self) -> MicroBatcher:
        return self._state.batcher

    @property
    def reader(self) -> SequenceReader:
        return self._state.reader

    @property
    def profile(self) -> EventProfile | None:
        return self._state.profile

    @property
    def fingerprint(self) -> str:
        return self._state.fingerprint

    @property
    def created(self) -> int:
        return self._state.created

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
        """Finish queued work, stop vLLM, close the cache (after a reload in progress)."""
        with self._reloading:
            self._closed = True
        self._state.batcher.close()
        if self.vllm is not None:
            self.vllm.stop()
        if self.cache is not None:
            self.cache.close()

    # -- reloading -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Loaded]:
        """Hold the bundle being served for one request: a reload swaps it only when no
        request holds it, and requests that arrive while it swaps wait for it."""
        while True:
            with self._guard:
                paused = self._paused
                if paused is None:
                    self._active += 1
                    state = self._state
                    break
            # shielded: a client that goes away must not cancel the others' wait
            await asyncio.shield(asyncio.wrap_future(paused))
        try:
            yield state
        finally:
            with self._guard:
                self._active -= 1
                if not self._active:
                    self._guard.notify_all()

    def reload(self, *, wait: bool = False, drain_timeout: float = DRAIN_TIMEOUT) -> ReloadResult:
        """Serve the bundle at the configured path, loaded again (a symlink is followed
        anew), and log what happened.

        The new bundle is built complete while the old one serves. Then new requests wait,
        those in flight finish on the old bundle (for ``drain_timeout`` seconds at most),
        the old micro-batcher finishes its work and closes, the cache forgets the old
        model's answers (only when the fingerprint changed), and the new bundle is swapped
        in. An unchanged bundle (same fingerprint) is not swapped.

        One reload at a time: with ``wait`` False another one running is a 409
        ``reload_in_progress``. A failed reload leaves the old bundle serving: 409
        ``reload_failed`` (the bundle on disk is missing, corrupt or unusable),
        ``restart_required`` (``--vllm`` serves another model or adapter than the new
        bundle's LLM voter needs), ``reload_busy`` (requests did not finish in time); 503
        when the cache cannot be written or the service is shutting down.
        """
        if not self._reloading.acquire(blocking=wait):
            self.metrics.reloads.labels("busy").inc()
            raise APIError(
                409,
                "Another reload is running; try again when it is done",
                code="reload_in_progress",
            )
        try:
            try:
                result = self._reload(drain_timeout)
            except APIError as exc:
                self.metrics.reloads.labels("failed").inc()
                logger.error("reload of %s failed: %s", self.path, exc.message)
                raise
        finally:
            self._reloading.release()
        self.metrics.reloads.labels("changed" if result.changed else "unchanged").inc()
        if result.changed:
            logger.info(
                "reloaded %s in %.2f s: %s -> %s, %d cached model answers dropped",
                self.path,
                result.seconds,
                result.previous,
                result.fingerprint,
                result.dropped,
            )
        else:
            logger.info("reloaded %s: the same bundle (%s)", self.path, result.fingerprint)
        return result

    def _reload(self, drain_timeout: float) -> ReloadResult:
        """:meth:`reload`, holding the reload lock."""
        start = time.perf_counter()
        if self._closed:
            raise APIError(503, "The service is shutting down", code="shutting_down")
        old = self._state
        new = self._load_again()
        if self._launch is not None:
            needed = _served_llm(new.bundle, self._launch)
            differ = [what for what, value in needed.items() if value != self._served[what]]
            if differ:
                raise APIError(
                    409,
                    f"The new bundle's LLM voter needs another {' and '.join(differ)} than the "
                    "vLLM server started with this service serves; the previous bundle still "
                    "serves; restart flexlog serve to serve the new one",
                    code="restart_required",
                )
        dropped = 0
        if new.fingerprint != old.fingerprint:
            dropped = self._swap(old, new, drain_timeout)
        return ReloadResult(
            previous=old.fingerprint,
            fingerprint=self._state.fingerprint,
            voters=tuple(self._state.detector.voter_names),
            dropped=dropped,
            seconds=time.perf_counter() - start,
        )

    def _load_again(self) -> Loaded:
        """:meth:`_load` of the directory the configured path names now (resolved once, so
        a symlink repointed meanwhile cannot mix two bundles); 409 ``reload_failed`` with
        the reason, which names paths by the configured one."""
        resolved = Path(os.path.realpath(self.path))
        try:
            return self._load(resolved)
        except (ValueError, OSError) as exc:  # InputError, BundleError: the bundle on disk
            reason = str(exc).replace(str(resolved), str(self.path))
        except Exception as exc:
            logger.exception("loading %s failed", self.path)
            reason = f"{self.path}: {type(exc).__name__} while loading it (see the server log)"
        raise APIError(
            409,
            f"The bundle was not reloaded, the previous one still serves: {reason}",
            code="reload_failed",
        )

    def _swap(self, old: Loaded, new: Loaded, drain_timeout: float) -> int:
        """Swap ``new`` in for ``old`` once no request holds ``old``; the cached model
        answers dropped."""
        with self._guard:
            self._paused = concurrent.futures.Future()
            drained = self._guard.wait_for(lambda: not self._active, drain_timeout)
            busy = self._active
        try:
            if not drained:
                raise APIError(
                    409,
                    f"{busy} requests did not finish within {drain_timeout:g} s; the previous "
                    "bundle still serves; try again",
                    code="reload_busy",
                )
            # Nothing holds the old bundle: its batcher's queue only has the work of
            # requests that gave up waiting, whose answers it caches before it stops.
            old.batcher.close()
            dropped = 0
            if self.cache is not None:
                try:
                    dropped = self.cache.drop_model_answers()
                except CacheError as exc:
                    # the old bundle serves on, with a batcher of its own again
                    self._state = dataclasses.replace(old, batcher=self._batcher(old.detector))
                    raise APIError(
                        503,
                        "The cache could not forget the previous model's answers; the previous "
                        "bundle still serves; try again",
                        code="cache_unavailable",
                    ) from exc
            self._state = new
            return dropped
        finally:
            with self._guard:
                paused, self._paused = self._paused, None
            paused.set_result(None)

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
        state = self._state  # one bundle for the whole answer
        try:
            if voter is not None:
                verdicts = await self._vote(state, sequences, voter)
            else:
                verdicts = await run_in_threadpool(
                    state.detector.predict,
                    sequences,
                    vote=functools.partial(self._vote_pooled, state),
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

    def _vote_pooled(self, state: Loaded, sequences: list[LogSequence]) -> list[Verdict]:
        """The ensemble's votes through the micro-batcher (called in a worker thread)."""
        future = self._submit(state, sequences, None)
        try:
            return future.result(timeout=self.settings.request_timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise self._timed_out() from exc

    async def _vote(
        self, state: Loaded, sequences: list[LogSequence], voter: str | None
    ) -> list[Verdict]:
        future = self._submit(state, sequences, voter)
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(future), timeout=self.settings.request_timeout
            )
        except asyncio.TimeoutError as exc:
            raise self._timed_out() from exc

    def _submit(
        self, state: Loaded, sequences: list[LogSequence], voter: str | None
    ) -> concurrent.futures.Future:
        try:
            return state.batcher.submit(sequences, voter)
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
        cache = self.cache
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


def _llm_overrides(settings: Settings, launch: LaunchConfig | None) -> dict[str, object]:
    """Parameters of the LLM voters that the settings override: the server they talk to
    (``--llm-base-url``, or the vLLM server ``--vllm`` starts, on a port picked here) and
    their timeout."""
    params: dict[str, object] = {}
    if launch is not None:
        params.update(backend="openai", base_url=server_url(launch))
    elif settings.llm_base_url:
        params.update(backend="openai", base_url=settings.llm_base_url)
    if settings.llm_timeout is not None:
        params["timeout"] = settings.llm_timeout
    return params


def _llm_params(
    names: list[str], overrides: Mapping[str, object], *, vllm: bool
) -> dict[str, dict[str, object]]:
    """``voter_params`` for :func:`load_bundle`: the overrides for each LLM voter (with
    ``vllm``, the bundle must have exactly one)."""
    if vllm and len(names) != 1:
        raise ValueError(f"--vllm needs a bundle with one LLM voter (found: {names or 'none'})")
    return {name: dict(overrides) for name in names} if overrides else {}


def _served_llm(bundle: Bundle, launch: LaunchConfig) -> dict[str, object]:
    """What the vLLM server of ``launch`` serves for the bundle's LLM voter: the base model,
    the adapter (by its files' hashes when it is in the bundle, so that the same adapter in
    another bundle is the same) and the served name."""
    ((name, voter),) = llm_voters(bundle.detector)
    adapter: object = None
    if voter.adapter is not None:
        prefix = f"voters/{name}/adapter/"
        files = sorted(
            (rel.removeprefix(prefix), digest)
            for rel, digest in bundle.manifest["files"].items()
            if rel.startswith(prefix)
        )
        adapter = tuple(files) if files else os.path.realpath(voter.adapter)
    return {
        "base model": launch.model or voter.model,
        "adapter": adapter,
        "served name": voter.served_model,
    }


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
