"""API keys and roles.

Two roles: a *read* key may detect, chat, complete, list models and read cache entries and
their history; an *admin* key may also correct the cache (``PUT``/``DELETE``, undo). A caller
is recorded in the correction history by the key's id (a short hash), never the key itself.

With no key configured there is no authentication, and corrections over HTTP are refused:
the audited human feedback loop needs to know who corrected what (the CLI on the bundle's own
database still works).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

from fastapi import Request

from .errors import APIError

#: Longest Authorization header value looked at (keys are at most 512 characters).
MAX_AUTHORIZATION = 1024


class Role(IntEnum):
    READ = 1
    ADMIN = 2


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: their role and the id that goes into the audit trail."""

    role: Role
    actor: str


ANONYMOUS = Caller(Role.READ, "anonymous")


def key_id(key: str) -> str:
    """The id of a key in logs and the audit trail: ``key:`` and 12 hex digits of its hash."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyRing:
    """The configured keys with their roles; compares a presented key with every key in
    constant time, so the answer's timing does not tell how much of a key was right."""

    def __init__(self, read_keys: Iterable[str] = (), admin_keys: Iterable[str] = ()):
        admin = list(dict.fromkeys(admin_keys))
        read = [k for k in dict.fromkeys(read_keys) if k not in admin]
        self._keys = [(k.encode(), Caller(Role.ADMIN, key_id(k))) for k in admin]
        self._keys += [(k.encode(), Caller(Role.READ, key_id(k))) for k in read]
        self.has_admin = bool(admin)

    @property
    def required(self) -> bool:
        """Whether requests need a key."""
        return bool(self._keys)

    def identify(self, authorization: str) -> Caller | None:
        """The caller of a ``Bearer`` Authorization header, or None for a wrong key."""
        scheme, _, token = authorization[:MAX_AUTHORIZATION].partition(" ")
        given = token.strip().encode("utf-8", "replace")
        found: Caller | None = None
        for key, caller in self._keys:  # no early exit: constant time over all keys
            if hmac.compare_digest(given, key) and found is None:
                found = caller
        return found if scheme.lower() == "bearer" else None

    def dependency(self, role: Role) -> Callable[[Request], Awaitable[Caller]]:
        """A FastAPI dependency that admits callers with at least ``role`` (401 for a
        missing or wrong key, 403 for a read key where an admin key is needed)."""

        async def check(request: Request) -> Caller:
            caller = self.authenticate(request)
            if role is Role.ADMIN and not self.has_admin:
                raise APIError(
                    403,
                    "Cache corrections and reloads over HTTP need an admin key; start flexlog serve with "
                    "--admin-api-key or $FLEXLOG_ADMIN_API_KEYS (or use `flexlog cache` on the "
                    "bundle's database)",
                    code="admin_key_required",
                )
            if caller.role < role:
                raise APIError(
                    403,
                    "This key may not correct the cache or reload; use an admin key",
                    code="forbidden",
                )
            request.state.caller = caller
            return caller

        return check

    def authenticate(self, request: Request) -> Caller:
        """The caller of a request (anonymous without configured keys); 401 otherwise."""
        if not self.required:
            return ANONYMOUS
        header = request.headers.get("authorization", "")
        caller = self.identify(header)
        if caller is None:
            message = "Incorrect API key provided" if header.strip() else "Missing bearer API key"
            raise APIError(
                401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
            )
        return caller


@dataclass(slots=True)
class Session:
    """A signed-in browser: who it is, the token its forms must carry (CSRF), when it ends,
    and a message to show once on the next page."""

    caller: Caller
    csrf: str
    expires: float
    flash: str | None = None


class Sessions:
    """Browser sessions of the review page, kept in this process (a restart signs everyone
    out). The cookie holds only a random id; at most ``max_sessions`` live at once, the
    oldest signed out first."""

    COOKIE = "flexlog_session"

    def __init__(self, ttl: float = 8 * 3600.0, max_sessions: int = 10_000):
        self.ttl = ttl
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, caller: Caller) -> tuple[str, Session]:
        """A new session for ``caller`` and the id its cookie carries."""
        token = secrets.token_urlsafe(32)
        session = Session(caller, secrets.token_urlsafe(32), time.monotonic() + self.ttl)
        with self._lock:
            while len(self._sessions) >= self.max_sessions:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[token] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie value, or None."""
        if not token or len(token) > 128:
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is not None and session.expires < time.monotonic():
                del self._sessions[token]
                return None
            return session

    def end(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    def __len__(self) -> int:
        return len(self._sessions)
