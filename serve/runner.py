"""Running the app with uvicorn: in the foreground (``flexlog serve``, where SIGHUP reloads
the bundle) or in a background thread on a loopback port (tests, benchmarks).

Limits on slow and many clients (see the README's "Running behind a reverse proxy"):

* request headers must arrive within ``Settings.body_timeout`` seconds of the connection
  opening or of the previous response (uvicorn itself never times a half-sent request out:
  :class:`HeaderDeadline` closes the connection);
* the body within ``body_timeout`` (:class:`flexlog.serve.app.BodyLimit` answers 408);
* idle keep-alive connections close after ``keep_alive`` seconds;
* over ``max_connections`` open connections or running requests, uvicorn answers 503;
* request header lines are bounded by h11/httptools (16 KiB incomplete event size).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from .errors import APIError
from .settings import Settings

if TYPE_CHECKING:
    from .service import Service

logger = logging.getLogger("flexlog.serve")


class HeaderDeadline:
    """Mixin for uvicorn's HTTP protocols: close a connection whose request headers are not
    complete ``header_timeout`` seconds after it opened or after its last response."""

    header_timeout: float = 30.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _watch_headers(self) -> None:
        cycle: Any = getattr(self, "cycle", None)
        waiting = cycle is None or cycle.response_complete
        if not waiting:
            self._stop_header_timer()
        elif self._header_timer is None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(self.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        self._header_timer = None
        cycle: Any = getattr(self, "cycle", None)
        transport: asyncio.Transport | None = getattr(self, "transport", None)
        if (cycle is None or cycle.response_complete) and transport is not None:
            transport.close()

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


def _protocol(header_timeout: float) -> type:
    """uvicorn's fastest installed HTTP protocol, with the header deadline."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools is optional in uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type("FlexlogHTTPProtocol", (HeaderDeadline, base), {"header_timeout": header_timeout})


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of the service: limits and timeouts from ``settings``."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "server_header": False,
        "timeout_graceful_shutdown": 30,
        "timeout_keep_alive": max(1, round(settings.keep_alive)),
        "limit_concurrency": settings.max_connections,
        "http": _protocol(settings.body_timeout),
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve_forever(app: FastAPI, settings: Settings) -> None:
    """Run until interrupted (SIGINT/SIGTERM shut it down gracefully); SIGHUP reloads the
    app's bundle (:meth:`Service.reload`) where the platform has it."""
    server = uvicorn.Server(uvicorn_config(app, settings))
    with reload_on_hangup(getattr(app.state, "service", None)):
        server.run()


@contextlib.contextmanager
def reload_on_hangup(service: Service | None) -> Iterator[None]:
    """Inside the block, SIGHUP reloads ``service``'s bundle in a thread of its own (reloads
    run one after another); a failed one is logged and the bundle serving stays. Installs
    nothing without a service, without SIGHUP, or outside the main thread."""
    hangup = getattr(signal, "SIGHUP", None)
    if (
        service is None
        or hangup is None
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def reload() -> None:
        logger.info("SIGHUP: reloading the bundle at %s", service.path)
        try:
            service.reload(wait=True)
        except APIError:
            pass  # logged by the service
        except Exception:
            logger.exception("the reload on SIGHUP failed; the bundle serving stays")

    def handle(signum: int, frame: object) -> None:
        threading.Thread(target=reload, name="flexlog-reload", daemon=True).start()

    previous = signal.signal(hangup, handle)
    try:
        yield
    finally:
        signal.signal(hangup, previous)


class BackgroundServer:
    """uvicorn serving ``app`` in a daemon thread; ``port=0`` takes a free port.

    Use as a context manager: the server is up inside the block and shut down (lifespan
    included) after it.
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
    ):
        self.app = app
        self.host = host
        self.port = port
        self.log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        settings = getattr(self.app.state, "settings", None) or Settings()
        config = uvicorn_config(
            self.app, settings, log_level=self.log_level, lifespan="on", host=self.host
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="flexlog-serve", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited before it started")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
