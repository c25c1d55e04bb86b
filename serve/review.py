"""The review page: people see what the service flagged and why, and correct labels.

``GET /review`` lists the latest verdicts (anomalous first), filterable by label, source and
time, a page at a time; ``GET /review/sequence/{key}`` shows one sequence: its events (and
raw lines), evidence, every voter's vote, its verdicts and its correction history. The buttons
post to ``/review/correct``, which goes through the audited correction path of the API
(:meth:`Service.cache_update`) under the signed-in key's id.

Pages are rendered on the server (Jinja2, autoescaped); the one script and stylesheet are
served from ``/review/static``, so the page works with no internet. With API keys configured,
a sign-in form exchanges a key for an HttpOnly, SameSite=Strict session cookie (a key in a URL
is refused); every form that changes state carries the session's CSRF token and must come
from this origin. Correcting needs an admin key, as on the API.
"""

from __future__ import annotations

import hmac
import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from flexlog.cache import key_of

from .auth import Caller, KeyRing, Role, Session, Sessions
from .errors import APIError
from .service import Service
from .settings import Settings
from .verdicts import LABELS, SOURCES, WINDOWS, Recorded, VerdictLog

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")

#: Query parameters that would carry a secret in a URL (logged by proxies, kept in history).
SECRET_PARAMS = frozenset(
    {"api_key", "apikey", "key", "token", "access_token", "auth", "authorization", "password"}
)
KEY = re.compile(r"[0-9a-f]{64}")
MAX_FORM_BYTES = 16_384
PER_PAGE = (10, 50, 200)
#: Events listed on a sequence's page (the rest are counted).
EVENTS_SHOWN = 500
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class PageError(Exception):
    """An error shown on the page with its status code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def review_router(
    service: Service,
    settings: Settings,
    keys: KeyRing,
    verdicts: VerdictLog | None,
    sessions: Sessions,
) -> APIRouter:
    """The routes of the review page (not in the OpenAPI schema: they answer HTML)."""
    router = APIRouter(prefix="/review", include_in_schema=False)

    def render(
        request: Request,
        name: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        session: Session | None = None,
    ) -> HTMLResponse:
        flash = None
        if session is not None and session.flash:
            flash, session.flash = session.flash, None
        base = {
            "signed_in": session is not None,
            "auth": keys.required,
            "caller": session.caller if session is not None else None,
            "csrf": session.csrf if session is not None else "",
            "flash": flash,
            "model": settings.model_name,
        }
        response = templates.TemplateResponse(
            request, name, {**base, **context}, status_code=status
        )
        response.headers.update(HEADERS)
        return response

    def error_page(
        request: Request, exc: PageError, session: Session | None = None
    ) -> HTMLResponse:
        return render(
            request,
            "review_error.html",
            {"message": exc.message},
            status=exc.status,
            session=session or session_of(request),
        )

    def no_secrets_in_url(request: Request) -> None:
        if SECRET_PARAMS & {p.lower() for p in request.query_params}:
            raise PageError(
                400,
                "API keys do not belong in URLs (they end up in logs and browser history); "
                "sign in with the form instead",
            )

    def session_of(request: Request) -> Session | None:
        return sessions.get(request.cookies.get(Sessions.COOKIE))

    def viewer(request: Request) -> tuple[Caller | None, Session | None]:
        """Who looks at the page: a session, a bearer header (for tools), or anyone when no
        key is configured; (None, None) means the sign-in form."""
        session = session_of(request)
        if session is not None:
            return session.caller, session
        if not keys.required:
            return None, None
        header = request.headers.get("authorization")
        if header:
            caller = keys.identify(header)
            if caller is None:
                raise PageError(401, "Incorrect API key provided")
            return caller, None
        return None, None

    def needs_sign_in(caller: Caller | None) -> bool:
        return keys.required and caller is None

    def sign_in_page(request: Request, message: str | None = None, status: int = 401):
        return render(request, "review_sign_in.html", {"message": message}, status=status)

    def log() -> VerdictLog:
        if verdicts is None:
            raise PageError(
                404,
                "The review page needs the verdict log; start flexlog serve without "
                "--verdict-log off",
            )
        return verdicts

    @router.get("", response_class=HTMLResponse)
    async def review(request: Request) -> Response:
        try:
            no_secrets_in_url(request)
            caller, session = viewer(request)
            if needs_sign_in(caller):
                return sign_in_page(request)
            query = _filters(request.query_params)
            found = await run_in_threadpool(
                lambda: log().page(
                    label=query["label"],
                    source=query["source"],
                    window=query["window"],
                    page=query["page"],
                    per_page=query["per_page"],
                )
            )
        except PageError as exc:
            return error_page(request, exc)
        return render(
            request,
            "review.html",
            {
                "found": found,
                "query": query,
                "here": _here(request),
                "link": lambda **change: _link(query, **change),
                "labels": list(LABELS),
                "sources": SOURCES,
                "windows": list(WINDOWS),
                "when": _when,
                "skipped": log().skipped,
                "dropped": log().dropped,
                "rate": log().rate,
            },
            session=session,
        )

    @router.get("/sequence/{key}", response_class=HTMLResponse)
    async def sequence(request: Request, key: str) -> Response:
        try:
            no_secrets_in_url(request)
            caller, session = viewer(request)
            if needs_sign_in(caller):
                return sign_in_page(request)
            if not KEY.fullmatch(key):
                raise PageError(400, "A sequence key is 64 lowercase hex digits")
            context = await run_in_threadpool(_sequence_context, service, log(), key)
        except PageError as exc:
            return error_page(request, exc)
        context.update(here=_here(request), when=_when)
        return render(request, "review_sequence.html", context, session=session)

    @router.post("/sign-in", response_class=HTMLResponse)
    async def sign_in(request: Request) -> Response:
        try:
            same_origin(request)
            form = await _form(request)
        except PageError as exc:
            return error_page(request, exc)
        if not keys.required:
            return RedirectResponse("/review", status_code=303)
        given = form.get("api_key", "").strip()
        caller = keys.identify(f"Bearer {given}") if given else None
        if caller is None:
            message = "Incorrect API key" if given else "Enter an API key"
            return sign_in_page(request, message)
        token, _ = sessions.create(caller)
        response = RedirectResponse("/review", status_code=303)
        response.set_cookie(
            Sessions.COOKIE,
            token,
            max_age=int(sessions.ttl),
            path="/review",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/sign-out", response_class=HTMLResponse)
    async def sign_out(request: Request) -> Response:
        try:
            same_origin(request)
            form = await _form(request)
            session = session_of(request)
            if session is not None:
                check_csrf(session, form)
                sessions.end(request.cookies.get(Sessions.COOKIE))
        except PageError as exc:
            return error_page(request, exc)
        response = RedirectResponse("/review", status_code=303)
        response.delete_cookie(Sessions.COOKIE, path="/review")
        return response

    @router.post("/correct", response_class=HTMLResponse)
    async def correct(request: Request) -> Response:
        session = session_of(request)
        try:
            same_origin(request)
            form = await _form(request)
            if keys.required and session is None:
                raise PageError(401, "Sign in with an admin key to correct labels")
            if session is not None:
                check_csrf(session, form)
            if not keys.has_admin or session is None:
                raise PageError(
                    403,
                    "Correcting labels needs an admin key; start flexlog serve with "
                    "--admin-api-key (or $FLEXLOG_ADMIN_API_KEYS) and sign in with it",
                )
            if session.caller.role < Role.ADMIN:
                raise PageError(403, "This key may not correct labels; sign in with an admin key")
            key = form.get("key", "")
            if not KEY.fullmatch(key):
                raise PageError(400, "A sequence key is 64 lowercase hex digits")
            label = form.get("label", "")
            if label not in LABELS:
                raise PageError(400, f"The label must be 'normal' or 'anomalous', not {label!r}")
            comment = form.get("comment", "").strip()[:1000] or None
            back = _back(form.get("back", ""))
            entry = await run_in_threadpool(
                _correct, service, log(), key, LABELS[label], session.caller.actor, comment
            )
        except PageError as exc:
            return error_page(request, exc, session)
        session.flash = f"Marked {entry.key[:12]}… {label}"
        return RedirectResponse(back, status_code=303)

    def same_origin(request: Request) -> None:
        """Refuse a state-changing request sent from another site (the cookie is SameSite
        already; this also covers browsers that do not honour it)."""
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            referer = request.headers.get("referer")
            if referer is None:
                if origin == "null":
                    raise PageError(403, "Forms must be sent from this site")
                return
            origin = "/".join(referer.split("/", 3)[:3])
        host = request.headers.get("host", "")
        if origin not in (f"http://{host}", f"https://{host}"):
            raise PageError(403, "Forms must be sent from this site")

    def check_csrf(session: Session, form: dict[str, str]) -> None:
        if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
            raise PageError(403, "The form has expired or did not come from this page; reload it")

    return router


# -- helpers -----------------------------------------------------------------------------------
async def _form(request: Request) -> dict[str, str]:
    """The fields of a small urlencoded form (first value of each)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise PageError(415, "Send the form as application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise PageError(413, "The form is too large")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PageError(400, "The form could not be read") from exc
    return {name: values[0] for name, values in fields.items()}


def _filters(params: Any) -> dict[str, Any]:
    """The page's filters from its query string; 400 for a value it does not know."""

    def choice(name: str, allowed) -> str | None:
        value = params.get(name) or None
        if value is not None and value not in allowed:
            raise PageError(400, f"Unknown {name} {value!r}; one of: {', '.join(allowed)}")
        return value

    def number(name: str, default: int) -> int:
        value = params.get(name)
        if value is None or value == "":
            return default
        if not value.isdigit() or len(value) > 6 or int(value) < 1:
            raise PageError(400, f"{name} must be a positive whole number")
        return int(value)

    per_page = number("per_page", 50)
    if per_page not in PER_PAGE:
        raise PageError(400, f"per_page must be one of {', '.join(map(str, PER_PAGE))}")
    return {
        "label": choice("label", list(LABELS)),
        "source": choice("source", SOURCES),
        "window": choice("window", list(WINDOWS)),
        "page": number("page", 1),
        "per_page": per_page,
    }


def _link(query: dict[str, Any], **change: Any) -> str:
    merged = {**query, **change}
    return "/review?" + urlencode({k: v for k, v in merged.items() if v not in (None, "")})


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _back(value: str) -> str:
    """Where to go after a form: a page of the review, never another site."""
    if value.startswith("/review") and "//" not in value and "\\" not in value:
        return value
    return "/review"


def _when(epoch: float) -> str:
    if not math.isfinite(epoch):
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sequence_context(service: Service, log: VerdictLog, key: str) -> dict[str, Any]:
    stored = log.events(key)
    cache = service.detector.cache
    entry = history = None
    if cache is not None:
        try:
            entry = service.cache_get(key)
        except APIError:
            entry = None
        history = service.cache_history(key)
    if stored is None and entry is None:
        raise PageError(404, f"No verdict or cache entry for sequence {key}")
    events, length = stored if stored is not None else (list(entry.events), len(entry.events))
    seen = log.of_key(key)
    templates_ = service.bundle.templates or {}
    latest = seen[0] if seen else None
    marks = _evidence_marks(latest.evidence if latest is not None else None)
    rows = [
        {"position": i, "event": e, "template": templates_.get(e), "mark": marks.get(i)}
        for i, e in enumerate(events[:EVENTS_SHOWN])
    ]
    return {
        "key": key,
        "events": rows,
        "length": length,
        "more": max(0, length - len(rows)),
        "verdicts": seen,
        "latest": latest,
        "entry": entry,
        "history": history,
        "cache_enabled": cache is not None,
    }


def _evidence_marks(evidence: dict[str, Any] | None) -> dict[int, str]:
    """Why each listed position is evidence: unseen, rare or unlikely (to whom)."""
    marks: dict[int, str] = {}
    if not evidence:
        return marks
    for item in evidence.get("unseen", []):
        marks[item["position"]] = "unseen"
    for item in evidence.get("rare", []):
        marks.setdefault(item["position"], "rare")
    for voter, found in evidence.get("unlikely", {}).items():
        for item in found.get("events", []):
            marks.setdefault(item["position"], f"unlikely ({voter})")
    return marks


def _correct(
    service: Service, log: VerdictLog, key: str, label: int, actor: str, comment: str | None
):
    """The audited correction of a reviewed sequence, recorded in the verdict log too. The
    events come from the verdict log when the cache no longer holds the sequence."""
    stored = log.events(key)
    events = None
    if stored is not None and stored[1] == len(stored[0]) and key_of(stored[0]) == key:
        events = stored[0]
    if stored is None:
        try:
            service.cache_get(key)
        except APIError as exc:
            raise PageError(404, f"No verdict or cache entry for sequence {key}") from exc
    try:
        entry = service.cache_update(key, label, events, actor, comment)
    except APIError as exc:
        raise PageError(exc.status, exc.message) from exc
    log.record(
        [
            Recorded(
                key=key,
                seq_id=f"review:{actor}",
                model="review",
                label=label,
                source="human",
                votes=dict(entry.votes),
                events=list(entry.events),
                time=time.time(),
            )
        ],
        always=True,
    )
    log.flush()
    return entry
