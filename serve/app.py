"""The HTTP service: an OpenAI-compatible API in front of a flexlog bundle.

``create_app(bundle_or_path, settings)`` builds the FastAPI app; ``flexlog serve`` runs it
with uvicorn. Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (the user content is a log sequence, the answer ``normal`` or
``anomalous``), ``POST /v1/detect`` (native batch), ``GET|PUT|DELETE /v1/cache/{key}``,
``GET /v1/cache/{key}/history``, ``POST /v1/cache/{key}/undo`` and ``GET /v1/cache/stats``
(audited human corrections, see :mod:`flexlog.serve.auth` for the roles), ``GET /healthz``,
``GET /readyz`` and ``GET /metrics``; the review page ``/review`` (:mod:`flexlog.serve.review`),
which shows the answers recorded in the verdict log (:mod:`flexlog.serve.verdicts`);
``POST /v1/admin/reload`` (admin key; SIGHUP does the same): serve the bundle at the
configured ``--bundle`` path loaded again, e.g. after pointing a symlink at a retrained one,
without dropping a request (:meth:`Service.reload`).

Every error is an OpenAI error object with a 4xx status for anything a client sent (5xx only
for the service's own faults, never with a stack trace), and the connection stays usable.
Request bodies are parsed by pydantic-core's JSON parser, which refuses invalid Unicode
(lone surrogates) and numbers out of range before any handler sees them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flexlog import __version__
from flexlog.cache import key_of
from flexlog.data.records import MAX_EVENTS, LogSequence, is_unicode, parse_record
from flexlog.detector import Verdict
from flexlog.ingest import SourceLines

from .auth import Caller, KeyRing, Role, Sessions
from .content import ContentError, ParseTimeout, all_keys, is_key, split_items
from .errors import APIError
from .metrics import CONTENT_TYPE
from .review import STATIC, review_router
from .schemas import (
    CACHE_KEY_PATTERN,
    MAX_COMMENT,
    AssistantMessage,
    CacheCorrectionOut,
    CacheDeleted,
    CacheEntryOut,
    CacheHistory,
    CacheUndo,
    CacheUpdate,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChunkChoice,
    ChunkDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    DetectCounts,
    DetectError,
    DetectRequest,
    DetectResponse,
    DetectVerdict,
    ErrorResponse,
    FlexlogInfo,
    Health,
    LineCounts,
    ModelCard,
    ModelList,
    RejectedLine,
    ReloadResponse,
    Usage,
)
from .service import Service
from .settings import Settings
from .verdicts import Recorded, VerdictLog

logger = logging.getLogger("flexlog.serve")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Invalid request"),
        (401, "Missing or wrong API key"),
        (403, "The key's role may not do this (cache corrections need an admin key)"),
        (404, "Unknown model or cache entry"),
        (408, "The request body or its raw log lines took too long"),
        (413, "Request or batch too large"),
        (422, "Request body does not match the schema"),
        (503, "No voter can answer, or the service is busy"),
    )
}
CacheKey = Annotated[str, PathParam(pattern=CACHE_KEY_PATTERN, description="64 hex digits")]


def _cache_links(key: str, *, correct: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI links from a 200 answer that names a cache key (``key``, a runtime expression)
    to the cache operations on that key (``correct``: the PUT too): documentation for
    clients, and the transitions a stateful tester (schemathesis) chains."""
    targets = {
        "GetCacheEntry": ("get", "/v1/cache/{key}", "The cached answer"),
        "CorrectCacheEntry": ("put", "/v1/cache/{key}", "Correct the label (admin)"),
        "GetCacheHistory": ("get", "/v1/cache/{key}/history", "Its corrections"),
        "UndoCacheCorrection": ("post", "/v1/cache/{key}/undo", "Undo the latest one (admin)"),
        "DeleteCacheEntry": ("delete", "/v1/cache/{key}", "Forget the answer (admin)"),
    }
    links = {
        name: {
            "operationRef": "#/paths/" + path.replace("/", "~1") + "/" + method,
            "parameters": {"key": key},
            "description": text,
        }
        for name, (method, path, text) in targets.items()
        if correct or method != "put"
    }
    return {200: {"links": links}}


def create_app(bundle: str | Path, settings: Settings | None = None) -> FastAPI:
    """The service for a bundle directory (loaded and checked here, so a bad bundle fails at
    once)."""
    settings = settings or Settings()
    service = Service.load(bundle, settings)
    keys = KeyRing(settings.api_keys, settings.admin_api_keys)
    protect_ops = keys.required and not settings.public_metrics
    verdicts = None
    if settings.verdict_log != "off":
        try:
            verdicts = VerdictLog(
                settings.verdict_log_location(Path(bundle)),
                keep=settings.review_keep,
                rate=settings.review_rate,
            )
        except ValueError:
            service.close()
            raise

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.close)
            if verdicts is not None:
                await run_in_threadpool(verdicts.close)

    app = FastAPI(
        title="flexlog",
        version=__version__,
        summary="Log anomaly detection behind an OpenAI-compatible API",
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would echo the Host header
        docs_url=None if protect_ops else "/docs",
        redoc_url=None if protect_ops else "/redoc",
        openapi_url=None if protect_ops else "/openapi.json",
    )
    app.state.service = service
    app.state.settings = settings
    app.state.verdicts = verdicts
    _install_errors(app)
    app.add_middleware(HoldBundle, service=service)  # inside BodyLimit: bodies are in
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_request_bytes, timeout=settings.body_timeout
    )
    app.add_middleware(RequestMetrics, service=service)
    app.add_middleware(ContainErrors)
    app.include_router(_api_router(service, settings, keys, verdicts))
    app.include_router(
        review_router(service, settings, keys, verdicts, Sessions(settings.session_ttl))
    )
    app.mount("/review/static", StaticFiles(directory=STATIC), name="review-static")
    ops = [Depends(keys.dependency(Role.READ))] if protect_ops else []
    app.include_router(_ops_router(service, ops))
    app.include_router(_admin_router(service, keys))
    if protect_ops:
        _protected_docs(app, ops)
    return app


def _protected_docs(app: FastAPI, dependencies: list) -> None:
    """The OpenAPI schema and Swagger UI behind a key (``--public-metrics`` opens them)."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=dependencies)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=dependencies)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="flexlog")


# -- request bodies ----------------------------------------------------------------------------
class StrictJSONRequest(Request):
    """A request whose JSON body is parsed by pydantic-core: faster than ``json.loads`` and
    strict where ``json.loads`` is not (lone surrogates, which no response could encode, and
    integers too large to convert are refused as invalid JSON)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError as exc:
                raise json.JSONDecodeError(str(exc), "", 0) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """Routes that hand their endpoints a :class:`StrictJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return route


# -- errors ------------------------------------------------------------------------------------
def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return APIError(
                400, "The request body is not valid JSON", code="invalid_json"
            ).response()
        parts = []
        for e in errors[:5]:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
        if len(errors) > 5:
            parts.append(f"and {len(errors) - 5} more")
        first = errors[0].get("loc", ()) if errors else ()
        param = ".".join(str(p) for p in first if p not in ("body", "path", "query")) or None
        return APIError(422, "; ".join(parts), code="invalid_request", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Request failed"
        if exc.status_code == 404:
            message = f"No such endpoint: {request.method} {request.url.path}"
        return APIError(exc.status_code, message, headers=exc.headers).response()


# -- middleware --------------------------------------------------------------------------------
class ContainErrors:
    """Answer an unexpected error with an OpenAI-style 500 here, so it does not reach
    uvicorn, which would close the connection without telling the client."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise
            logger.error("%s %s failed", scope.get("method"), scope.get("path"), exc_info=exc)
            error = APIError(500, "The server had an error processing the request")
            await error.response()(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whether or not they declare a
    Content-Length, and bodies that do not arrive within ``timeout`` seconds with 408 (and
    close that connection); the body is read here and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await APIError(400, "Invalid Content-Length header").response()(
                    scope, receive, send
                )
                return
            if too_big:
                await self._refuse(scope, receive, send)
                return
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
            except asyncio.TimeoutError:
                error = APIError(
                    408,
                    f"The request body did not arrive within {self.timeout:g} s",
                    code="request_timeout",
                    headers={"Connection": "close"},
                )
                await error.response()(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = APIError(
            413,
            f"The request body is over the limit of {self.max_bytes} bytes",
            code="request_too_large",
        )
        await error.response()(scope, receive, send)


class RequestMetrics:
    """Count requests by route template, method and status, and time them."""

    def __init__(self, app: ASGIApp, service: Service):
        self.app = app
        self.metrics = service.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


# -- the OpenAI-compatible and native API ------------------------------------------------------
def _api_router(
    service: Service, settings: Settings, keys: KeyRing, verdicts: VerdictLog | None
) -> APIRouter:
    router = APIRouter(
        prefix="/v1",
        dependencies=[Depends(keys.dependency(Role.READ))],
        responses=_ERRORS,
        route_class=StrictJSONRoute,
    )
    admin = Depends(keys.dependency(Role.ADMIN))
    ensemble = settings.model_name

    def card(model: str) -> ModelCard:
        voters = service.detector.voter_names if model == ensemble else [model]
        kind = "ensemble" if model == ensemble else "voter"
        return ModelCard(id=model, created=service.created, kind=kind, voters=voters)

    @router.get("/models", response_model=ModelList, tags=["openai"])
    async def list_models() -> ModelList:
        """The ensemble and each of its voters."""
        return ModelList(data=[card(m) for m in service.model_ids])

    @router.get("/models/{model}", response_model=ModelCard, tags=["openai"])
    async def get_model(model: str) -> ModelCard:
        voter = service.resolve_model(model)
        return card(voter or ensemble)

    async def read_sequences(prompts: list[str], ids: list[str], fmt: str | None, param: str):
        deadline = time.monotonic() + settings.parse_timeout
        try:
            return await run_in_threadpool(
                lambda: [
                    service.reader.sequence(p, i, fmt, deadline=deadline)
                    for p, i in zip(prompts, ids, strict=True)
                ]
            )
        except ParseTimeout as exc:
            raise _parse_timeout(exc, param) from exc
        except ContentError as exc:
            raise APIError(400, str(exc), code="invalid_log_sequence", param=param) from exc

    @router.post(
        "/chat/completions",
        response_model=ChatCompletion,
        tags=["openai"],
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        """The last user message is a log sequence; the answer is normal or anomalous."""
        voter = service.resolve_model(body.model)
        start = time.perf_counter()
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        fmt = body.flexlog.format if body.flexlog else None
        (seq,) = await read_sequences([_user_text(body.messages)], [completion_id], fmt, "messages")
        (verdict,) = await service.answer([seq], voter)
        info = _info(seq, verdict, start)
        if verdicts is not None:
            verdicts.record([_recorded(seq, verdict, body.model, _user_text(body.messages))])
        created = int(time.time())
        usage = Usage(prompt_tokens=info.events, completion_tokens=1, total_tokens=info.events + 1)
        common = {"id": completion_id, "created": created, "model": body.model}
        common["system_fingerprint"] = service.fingerprint
        if not body.stream:
            message = AssistantMessage(content=verdict.verdict)
            return ChatCompletion(
                **common,
                choices=[ChatChoice(index=0, message=message)],
                usage=usage,
                flexlog=info,
            )
        chunks = [
            ChatCompletionChunk(
                **common,
                choices=[ChunkChoice(index=0, delta=ChunkDelta(role="assistant", content=""))],
            ),
            ChatCompletionChunk(
                **common, choices=[ChunkChoice(index=0, delta=ChunkDelta(content=verdict.verdict))]
            ),
            ChatCompletionChunk(
                **common,
                choices=[ChunkChoice(index=0, delta=ChunkDelta(), finish_reason="stop")],
                flexlog=info,
            ),
        ]
        if body.stream_options and body.stream_options.include_usage:
            chunks.append(ChatCompletionChunk(**common, choices=[], usage=usage))
        return _event_stream(chunks)

    @router.post(
        "/completions",
        response_model=Completion,
        tags=["openai"],
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def completions(body: CompletionRequest) -> Any:
        """Each prompt is a log sequence; one choice per prompt, in order."""
        voter = service.resolve_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) > settings.max_batch:
            raise _batch_too_large(len(prompts), settings.max_batch, "prompt")
        start = time.perf_counter()
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        ids = [f"{completion_id}-{i}" for i in range(len(prompts))]
        fmt = body.flexlog.format if body.flexlog else None
        seqs = await read_sequences(prompts, ids, fmt, "prompt")
        answers = await service.answer(seqs, voter)
        infos = [_info(s, v, start) for s, v in zip(seqs, answers, strict=True)]
        if verdicts is not None:
            verdicts.record(
                [
                    _recorded(s, v, body.model, p)
                    for s, v, p in zip(seqs, answers, prompts, strict=True)
                ]
            )
        events = sum(i.events for i in infos)
        usage = Usage(
            prompt_tokens=events,
            completion_tokens=len(infos),
            total_tokens=events + len(infos),
        )
        common = {
            "id": completion_id,
            "created": int(time.time()),
            "model": body.model,
            "system_fingerprint": service.fingerprint,
        }
        choices = [
            CompletionChoice(index=i, text=v.verdict) for i, v in enumerate(answers, start=0)
        ]
        if not body.stream:
            return Completion(**common, choices=choices, usage=usage, flexlog=infos)
        chunks = [
            Completion(**common, choices=[choice], flexlog=[info])
            for choice, info in zip(choices, infos, strict=True)
        ]
        if body.stream_options and body.stream_options.include_usage:
            chunks.append(Completion(**common, choices=[], usage=usage))
        return _event_stream(chunks)

    @router.post(
        "/detect",
        response_model=DetectResponse,
        tags=["flexlog"],
        responses=_cache_links("$response.body#/results/0/key"),
    )
    async def detect(body: DetectRequest) -> Response:
        """Many sequences (or raw log lines) in, one result per sequence out, in order."""
        voter = service.resolve_model(body.model)
        start = time.perf_counter()
        errors: dict[int, DetectError] = {}
        lines: LineCounts | None = None
        rejected: list[RejectedLine] = []
        origins: list[SourceLines] | None = None
        if body.sequences is not None:
            if len(body.sequences) > settings.max_batch:
                raise _batch_too_large(len(body.sequences), settings.max_batch, "sequences")
            seqs: list[LogSequence | None] = []
            for i, item in enumerate(body.sequences):
                try:
                    seqs.append(_canonical(item, settings.max_events))
                except ValueError as exc:
                    seqs.append(None)
                    errors[i] = DetectError(
                        index=i,
                        id=_item_id(item),
                        error=APIError(
                            400, str(exc), code="invalid_sequence", param=f"sequences.{i}"
                        ).detail(),
                    )
        else:
            assert body.lines is not None
            if len(body.lines) > settings.max_lines:
                raise APIError(
                    413,
                    f"{len(body.lines)} lines, over the limit of {settings.max_lines}",
                    code="batch_too_large",
                    param="lines",
                )
            try:
                parsed, report, origins = await run_in_threadpool(
                    service.reader.partition,
                    body.lines,
                    body.format,
                    body.partition,
                    window=body.window,
                    step=body.step,
                    deadline=time.monotonic() + settings.parse_timeout,
                )
            except ParseTimeout as exc:
                raise _parse_timeout(exc, "lines") from exc
            except ContentError as exc:
                raise APIError(400, str(exc), code="invalid_log_lines", param="lines") from exc
            if len(parsed) > settings.max_batch:
                raise _batch_too_large(len(parsed), settings.max_batch, "lines")
            seqs = list(parsed)
            lines = LineCounts(read=report.read, accepted=report.accepted, rejected=report.rejected)
            rejected = [RejectedLine(line=r.line, reason=r.reason) for r in report.rejections]
        good = [s for s in seqs if s is not None]
        answers = await service.answer(good, voter) if good else []
        # evidence only for anomalous verdicts: no thread hop when there is none
        flagged = any(v.label == 1 for v in answers)
        evidence = iter(
            await run_in_threadpool(service.explain, good, answers)
            if flagged
            else [None] * len(answers)
        )
        found = iter(answers)
        results: list[DetectVerdict | DetectError] = []
        for i, seq in enumerate(seqs):
            if seq is None:
                results.append(errors[i])
                continue
            v, ev = next(found), next(evidence)
            origin = origins[i] if origins is not None else None
            results.append(
                DetectVerdict(
                    index=i,
                    id=seq.id,
                    key=key_of(seq.events),
                    label=v.verdict,
                    votes=v.votes,
                    cached=v.cached,
                    source=v.source,
                    degraded=v.degraded,
                    abstained=list(v.abstained),
                    not_asked=list(v.not_asked),
                    origin=_origin(origin),
                    evidence=ev.to_json(seq.events, origin) if ev is not None else None,
                )
            )
        answered = [r for r in results if isinstance(r, DetectVerdict)]
        if verdicts is not None:
            verdicts.record(_detected(good, answered, body.lines, origins, body.model or ensemble))
        counts = DetectCounts(
            sequences=len(results),
            answered=len(answered),
            errors=len(results) - len(answered),
            anomalous=sum(r.label == "anomalous" for r in answered),
            lines=lines,
        )
        response = DetectResponse(
            model=body.model or ensemble,
            results=results,
            counts=counts,
            rejected_lines=rejected,
            latency_ms=_ms(start),
        )
        # Serialised here, once: FastAPI would dump the validated model to a dict, validate
        # that again against the response model and encode it (the schema stays documented
        # through response_model).
        return Response(response.model_dump_json(), media_type="application/json")

    @router.get("/cache/stats", tags=["cache"])
    async def cache_stats() -> dict[str, Any]:
        """The sequence cache's counters and sizes."""
        return await run_in_threadpool(service.cache_stats)

    @router.get("/cache/{key}", response_model=CacheEntryOut, tags=["cache"])
    async def cache_get(key: CacheKey) -> CacheEntryOut:
        return _entry(await run_in_threadpool(service.cache_get, key.lower()))

    @router.get("/cache/{key}/history", response_model=CacheHistory, tags=["cache"])
    async def cache_history(key: CacheKey) -> CacheHistory:
        """Every correction of a sequence, oldest first: who, when, the label before and
        after, the comment."""
        corrections = await run_in_threadpool(service.cache_history, key.lower())
        return CacheHistory(key=key.lower(), data=[_correction(c) for c in corrections])

    @router.put(
        "/cache/{key}",
        response_model=CacheEntryOut,
        tags=["cache"],
        responses=_cache_links("$request.path.key", correct=False),
    )
    async def cache_put(key: CacheKey, body: CacheUpdate, caller: Caller = admin) -> CacheEntryOut:
        """Correct the label of a sequence (a human answer, which wins over the models);
        recorded in its history. Needs an admin key."""
        key = key.lower()
        if body.events is not None:
            if len(body.events) > settings.max_events:
                raise APIError(
                    413,
                    f"{len(body.events)} events, over the limit of {settings.max_events}",
                    code="sequence_too_long",
                    param="events",
                )
            if not all(is_key(e) for e in body.events):
                raise APIError(
                    400,
                    "events must be event keys (no whitespace or control characters)",
                    code="invalid_sequence",
                    param="events",
                )
            if key_of(body.events) != key:
                raise APIError(400, "The key is not the cache key of these events", param="events")
        label = body.label if isinstance(body.label, int) else int(body.label == "anomalous")
        entry = await run_in_threadpool(
            service.cache_update, key, label, body.events, caller.actor, body.comment
        )
        return _entry(entry)

    @router.delete("/cache/{key}", response_model=CacheDeleted, tags=["cache"])
    async def cache_delete(
        key: CacheKey,
        comment: Annotated[str | None, Query(max_length=MAX_COMMENT)] = None,
        caller: Caller = admin,
    ) -> CacheDeleted:
        """Forget a sequence's answer (the next request votes again); recorded in its
        history. Needs an admin key."""
        await run_in_threadpool(service.cache_delete, key.lower(), caller.actor, comment)
        return CacheDeleted(key=key.lower(), deleted=True)

    @router.post("/cache/{key}/undo", response_model=CacheHistory, tags=["cache"])
    async def cache_undo(
        key: CacheKey, body: CacheUndo | None = None, caller: Caller = admin
    ) -> CacheHistory:
        """Undo the latest correction of a sequence not undone yet; answers the history,
        whose last item is the undo. Needs an admin key."""
        comment = body.comment if body is not None else None
        corrections = await run_in_threadpool(
            service.cache_undo, key.lower(), caller.actor, comment
        )
        return CacheHistory(key=key.lower(), data=[_correction(c) for c in corrections])

    return router


def _ops_router(service: Service, dependencies: list) -> APIRouter:
    """Probes (always open) and metrics (behind a key when keys are set, unless
    ``--public-metrics``)."""
    router = APIRouter(tags=["operations"], route_class=StrictJSONRoute)

    @router.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
    async def readyz() -> Any:
        """The bundle is loaded and every LLM backend answers (503 otherwise: the service
        then still answers, degraded, without the LLM voter)."""
        ready, checks = await run_in_threadpool(service.readiness)
        health = Health(status="ready" if ready else "not ready", checks=checks)
        return JSONResponse(health.model_dump(), status_code=200 if ready else 503)

    @router.get("/metrics", response_class=Response, dependencies=dependencies)
    async def metrics() -> Response:
        """Prometheus metrics."""
        body = await run_in_threadpool(service.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    return router


# -- reloading the bundle ----------------------------------------------------------------------
class HoldBundle:
    """Each request holds the bundle it started with until it is answered
    (:meth:`Service.serving`), so a reload swaps bundles between requests; the reload itself
    and the probes and metrics hold nothing."""

    EXEMPT = ("/v1/admin/", "/healthz", "/readyz", "/metrics")

    def __init__(self, app: ASGIApp, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(self.EXEMPT):
            await self.app(scope, receive, send)
            return
        async with self.service.serving():
            await self.app(scope, receive, send)


def _admin_router(service: Service, keys: KeyRing) -> APIRouter:
    """Operations on the running service, for admin keys only (refused without one)."""
    router = APIRouter(
        prefix="/v1/admin",
        dependencies=[Depends(keys.dependency(Role.ADMIN))],
        responses=_ERRORS,
        route_class=StrictJSONRoute,
        tags=["admin"],
    )

    @router.post(
        "/reload",
        response_model=ReloadResponse,
        responses={
            409: {
                "model": ErrorResponse,
                "description": "Not reloaded, the previous bundle still serves: the bundle "
                "cannot be loaded (reload_failed), another reload is running "
                "(reload_in_progress), requests did not finish (reload_busy), or --vllm "
                "serves another model (restart_required)",
            }
        },
    )
    async def reload(request: Request) -> ReloadResponse:
        """Load the bundle at the configured ``--bundle`` path again (a symlink is followed
        anew) and serve it: requests in flight finish on the previous bundle, none is
        dropped, and the previous model's cached answers are forgotten (human corrections
        stay). Takes no body: which bundle is the server's configuration, never the
        client's. Needs an admin key."""
        if (await request.body()).strip() not in (b"", b"{}"):
            raise APIError(
                400,
                "The reload takes no body: it loads the bundle flexlog serve --bundle names",
                code="invalid_request",
            )
        result = await run_in_threadpool(service.reload)
        return ReloadResponse(
            created=int(time.time()),
            previous_fingerprint=result.previous,
            system_fingerprint=result.fingerprint,
            changed=result.changed,
            voters=list(result.voters),
            dropped_cache_answers=result.dropped,
            duration_ms=round(result.seconds * 1000.0, 3),
        )

    return router


# -- helpers -----------------------------------------------------------------------------------
def _user_text(messages: list[ChatMessage]) -> str:
    """The text of the last user message."""
    for message in reversed(messages):
        if message.role != "user":
            continue
        content = message.content
        if isinstance(content, str):
            return content
        if content:
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise APIError(
                        400,
                        f"Only text content is supported, got a {part.type!r} part",
                        param="messages",
                    )
                texts.append(part.text)
            return "\n".join(texts)
        break
    raise APIError(400, "No user message with a log sequence", param="messages")


def _canonical(item: object, max_events: int) -> LogSequence:
    """A canonical ``{"id", "events"}`` record; ValueError says what is wrong with it."""
    seq = _canonical_fast(item, max_events)
    if seq is not None:
        return seq
    seq = parse_record(item)
    if len(seq.events) > max_events:
        raise ValueError(f"{len(seq.events)} events, over the limit of {max_events}")
    for i, event in enumerate(seq.events):
        if not is_key(event):
            raise ValueError(
                f"field 'events'[{i}] is not an event key (1-256 characters without whitespace); "
                "send raw log lines as 'lines'"
            )
    return seq


def _canonical_fast(item: object, max_events: int) -> LogSequence | None:
    """The record of an item whose events are all event keys (strings), checked in one pass
    over their joined text rather than per event; None when anything is amiss or unusual,
    for :func:`_canonical`'s checks to name. Accepts exactly what they accept: the other
    fields go through :func:`parse_record` itself, the distinct events through
    :func:`all_keys` (the per-event :func:`is_key`) and the Unicode check of ``parse_record``,
    with its bounds and ``max_events``."""
    if type(item) is not dict:
        return None
    events = item.get("events")
    if type(events) is not list or not 0 < len(events) <= min(max_events, MAX_EVENTS):
        return None
    try:
        distinct = set(events)
    except TypeError:  # an unhashable item: not an event
        return None
    if not all_keys(distinct) or not is_unicode("".join(distinct)):
        return None
    rest = {name: value for name, value in item.items() if name != "events"}
    rest["events"] = ["-"]
    try:
        head = parse_record(rest)
    except ValueError:
        return None
    return LogSequence(head.id, tuple(events), head.label, head.group)


def _item_id(item: object) -> str | None:
    if isinstance(item, dict):
        value = item.get("id")
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    return None


def _info(seq: LogSequence, verdict: Verdict, start: float) -> FlexlogInfo:
    return FlexlogInfo(
        id=seq.id,
        key=key_of(seq.events),
        label=verdict.verdict,
        votes=verdict.votes,
        cached=verdict.cached,
        source=verdict.source,
        degraded=verdict.degraded,
        abstained=list(verdict.abstained),
        not_asked=list(verdict.not_asked),
        events=len(seq.events),
        latency_ms=_ms(start),
    )


def _recorded(seq: LogSequence, verdict: Verdict, model: str, prompt: str) -> Recorded:
    """A chat or completion answer for the verdict log, with the prompt's raw lines."""
    try:
        items = split_items(prompt)
    except ContentError:
        items = []
    raw = [(n, item.text) for n, item in enumerate(items, start=1) if item.raw]
    return Recorded(
        key=key_of(seq.events),
        seq_id=seq.id,
        model=model,
        label=verdict.label,
        source=verdict.source,
        votes=verdict.votes,
        events=seq.events,
        not_asked=verdict.not_asked,
        abstained=verdict.abstained,
        lines=raw or None,
    )


def _detected(
    seqs: list[LogSequence],
    results: list[DetectVerdict],
    lines: list[str] | None,
    origins: list[SourceLines] | None,
    model: str,
) -> list[Recorded]:
    """The answers of a detect request for the verdict log (with their raw lines)."""
    recorded = []
    for seq, r in zip(seqs, results, strict=True):
        raw = None
        if lines is not None and origins is not None:
            raw = [(n, lines[n - 1]) for n in origins[r.index].lines[:200]]
        recorded.append(
            Recorded(
                key=r.key,
                seq_id=seq.id,
                model=model,
                label=int(r.label == "anomalous"),
                source=r.source,
                votes=r.votes,
                events=seq.events,
                not_asked=r.not_asked,
                abstained=r.abstained,
                lines=raw,
                evidence=r.evidence,
            )
        )
    return recorded


def _entry(entry: Any) -> CacheEntryOut:
    return CacheEntryOut(
        key=entry.key,
        events=list(entry.events),
        label="anomalous" if entry.label else "normal",
        source=entry.source,
        votes=dict(entry.votes),
    )


def _correction(c: Any) -> CacheCorrectionOut:
    def name(label: int | None) -> str | None:
        return None if label is None else ("anomalous" if label else "normal")

    return CacheCorrectionOut(
        id=c.id,
        key=c.key,
        time=c.time,
        actor=c.actor,
        action=c.action,
        previous_label=name(c.previous_label),
        previous_source=c.previous_source,
        new_label=name(c.new_label),
        new_source=c.new_source,
        comment=c.comment,
        undoes=c.undoes,
    )


def _origin(origin: SourceLines | None) -> dict[str, Any] | None:
    """The request's line numbers a sequence came from (no file: they are the request's)."""
    if origin is None:
        return None
    record = origin.to_json()
    record.pop("file", None)
    return record


def _parse_timeout(exc: ParseTimeout, param: str) -> APIError:
    return APIError(408, str(exc), code="parse_timeout", param=param)


def _batch_too_large(n: int, limit: int, param: str) -> APIError:
    return APIError(
        413, f"{n} sequences, over the limit of {limit}", code="batch_too_large", param=param
    )


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def _event_stream(chunks: list[BaseModel]) -> StreamingResponse:
    """Server-sent events as OpenAI sends them, ending with ``data: [DONE]``."""

    async def events() -> AsyncIterator[str]:
        for chunk in chunks:
            yield f"data: {chunk.model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
