"""The HTTP service: an OpenAI-compatible API in front of a flexlog bundle.

``create_app(bundle_or_path, settings)`` builds the FastAPI app; ``flexlog serve`` runs it
with uvicorn. Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (the user content is a log sequence, the answer ``normal`` or
``anomalous``), ``POST /v1/detect`` (native batch), ``GET|PUT|DELETE /v1/cache/{key}`` and
``GET /v1/cache/stats`` (human corrections), ``GET /healthz``, ``GET /readyz`` and
``GET /metrics``. Errors are OpenAI error objects; no stack trace ever reaches a client.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flexlog import __version__
from flexlog.bundle import Bundle
from flexlog.cache import key_of
from flexlog.data.records import LogSequence, parse_record
from flexlog.detector import Verdict

from .content import ContentError, is_key
from .errors import APIError
from .metrics import CONTENT_TYPE
from .schemas import (
    CACHE_KEY_PATTERN,
    AssistantMessage,
    CacheDeleted,
    CacheEntryOut,
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
    Usage,
)
from .service import Service
from .settings import Settings

logger = logging.getLogger("flexlog.serve")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Invalid request"),
        (401, "Missing or wrong API key"),
        (404, "Unknown model or cache entry"),
        (413, "Request or batch too large"),
        (422, "Request body does not match the schema"),
        (503, "No voter can answer, or the service is busy"),
    )
}
CacheKey = Annotated[str, PathParam(pattern=CACHE_KEY_PATTERN, description="64 hex digits")]


def create_app(bundle_or_path: Bundle | str | Path, settings: Settings | None = None) -> FastAPI:
    """The service for a bundle (loaded and checked here, so a bad bundle fails at once)."""
    settings = settings or Settings()
    service = Service.load(bundle_or_path, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="flexlog",
        version=__version__,
        summary="Log anomaly detection behind an OpenAI-compatible API",
        lifespan=lifespan,
    )
    app.state.service = service
    _install_errors(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetrics, service=service)
    app.include_router(_api_router(service, settings))
    app.include_router(_ops_router(service))
    return app


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

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return APIError(500, "The server had an error processing the request").response()


# -- middleware --------------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whether or not they declare a
    Content-Length; the body is read here and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

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
        while True:
            message = await receive()
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
def _auth_dependency(settings: Settings) -> Callable[[Request], Awaitable[None]]:
    keys = [k.encode() for k in settings.api_keys]

    async def check(request: Request) -> None:
        if not keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        matched = False
        for key in keys:  # compare with every key, in constant time
            matched |= hmac.compare_digest(given, key)
        if scheme.lower() != "bearer" or not matched:
            message = "Incorrect API key provided" if token else "Missing bearer API key"
            raise APIError(
                401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
            )

    return check


def _api_router(service: Service, settings: Settings) -> APIRouter:
    router = APIRouter(
        prefix="/v1", dependencies=[Depends(_auth_dependency(settings))], responses=_ERRORS
    )
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
        try:
            return await run_in_threadpool(
                lambda: [
                    service.reader.sequence(p, i, fmt) for p, i in zip(prompts, ids, strict=True)
                ]
            )
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
        verdicts = await service.answer(seqs, voter)
        infos = [_info(s, v, start) for s, v in zip(seqs, verdicts, strict=True)]
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
            CompletionChoice(index=i, text=v.verdict) for i, v in enumerate(verdicts, start=0)
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

    @router.post("/detect", response_model=DetectResponse, tags=["flexlog"])
    async def detect(body: DetectRequest) -> DetectResponse:
        """Many sequences (or raw log lines) in, one result per sequence out, in order."""
        voter = service.resolve_model(body.model)
        start = time.perf_counter()
        errors: dict[int, DetectError] = {}
        lines: LineCounts | None = None
        rejected: list[RejectedLine] = []
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
                parsed, report = await run_in_threadpool(
                    service.reader.partition,
                    body.lines,
                    body.format,
                    body.partition,
                    window=body.window,
                    step=body.step,
                )
            except ContentError as exc:
                raise APIError(400, str(exc), code="invalid_log_lines", param="lines") from exc
            if len(parsed) > settings.max_batch:
                raise _batch_too_large(len(parsed), settings.max_batch, "lines")
            seqs = list(parsed)
            lines = LineCounts(read=report.read, accepted=report.accepted, rejected=report.rejected)
            rejected = [RejectedLine(line=r.line, reason=r.reason) for r in report.rejections]
        good = [s for s in seqs if s is not None]
        verdicts = iter(await service.answer(good, voter) if good else [])
        results: list[DetectVerdict | DetectError] = []
        for i, seq in enumerate(seqs):
            if seq is None:
                results.append(errors[i])
                continue
            v = next(verdicts)
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
                )
            )
        answered = [r for r in results if isinstance(r, DetectVerdict)]
        counts = DetectCounts(
            sequences=len(results),
            answered=len(answered),
            errors=len(results) - len(answered),
            anomalous=sum(r.label == "anomalous" for r in answered),
            lines=lines,
        )
        return DetectResponse(
            model=body.model or ensemble,
            results=results,
            counts=counts,
            rejected_lines=rejected,
            latency_ms=_ms(start),
        )

    @router.get("/cache/stats", tags=["cache"])
    async def cache_stats() -> dict[str, Any]:
        """The sequence cache's counters and sizes."""
        return await run_in_threadpool(service.cache_stats)

    @router.get("/cache/{key}", response_model=CacheEntryOut, tags=["cache"])
    async def cache_get(key: CacheKey) -> CacheEntryOut:
        return _entry(await run_in_threadpool(service.cache_get, key.lower()))

    @router.put("/cache/{key}", response_model=CacheEntryOut, tags=["cache"])
    async def cache_put(key: CacheKey, body: CacheUpdate) -> CacheEntryOut:
        """Correct the label of a sequence (a human answer, which wins over the models)."""
        key = key.lower()
        if body.events is not None:
            if not all(isinstance(e, str) and is_key(e) for e in body.events):
                raise APIError(
                    400,
                    "events must be event keys (no whitespace or control characters)",
                    code="invalid_sequence",
                    param="events",
                )
            if key_of(body.events) != key:
                raise APIError(400, "The key is not the cache key of these events", param="events")
        label = body.label if isinstance(body.label, int) else int(body.label == "anomalous")
        entry = await run_in_threadpool(service.cache_update, key, label, body.events)
        return _entry(entry)

    @router.delete("/cache/{key}", response_model=CacheDeleted, tags=["cache"])
    async def cache_delete(key: CacheKey) -> CacheDeleted:
        """Forget a sequence's answer; the next request votes again."""
        await run_in_threadpool(service.cache_delete, key.lower())
        return CacheDeleted(key=key.lower(), deleted=True)

    return router


def _ops_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["operations"])

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

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        body = await run_in_threadpool(service.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

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


def _entry(entry: Any) -> CacheEntryOut:
    return CacheEntryOut(
        key=entry.key,
        events=list(entry.events),
        label="anomalous" if entry.label else "normal",
        source=entry.source,
        votes=dict(entry.votes),
    )


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
