"""The service's configuration: one immutable pydantic model, filled from the command line
(``flexlog serve``) or by a program that calls :func:`flexlog.serve.create_app`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flexlog.cache.postgres import is_postgres_url

#: Environment variable holding the accepted (read) API keys, comma-separated.
API_KEYS_ENV = "FLEXLOG_API_KEYS"
#: Environment variable holding the admin API keys (they may also correct the cache).
ADMIN_API_KEYS_ENV = "FLEXLOG_ADMIN_API_KEYS"


class Settings(BaseModel):
    """How the service runs.

    ``cache`` is ``"bundle"`` (``BUNDLE/cache.sqlite``), ``"memory"`` (lost at exit),
    ``"off"``, or the path of a cache database.

    Two roles: ``api_keys`` may read (detect, chat, completions, models, cache entries and
    their history); ``admin_api_keys`` may also correct the cache (``PUT``/``DELETE``, undo).
    With no key of either kind there is no authentication and corrections over HTTP are
    refused; with any key set, every ``/v1`` path needs one, and so do ``/metrics`` and the
    OpenAPI pages unless ``public_metrics``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: tuple[str, ...] = Field((), repr=False)
    admin_api_keys: tuple[str, ...] = Field((), repr=False)
    public_metrics: bool = Field(
        False, description="serve /metrics and the OpenAPI pages without a key"
    )
    model_name: str = Field("flexlog", min_length=1, max_length=64, pattern=r"^[\w.:-]+$")
    cache: str = "bundle"
    cache_timeout: float = Field(0.25, ge=0, description="seconds to wait for a locked cache")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_batch: int = Field(1024, ge=1, description="sequences (or prompts) per request")
    max_lines: int = Field(100_000, ge=1, description="raw log lines per request")
    max_events: int = Field(100_000, ge=1, description="events per sequence")
    max_line_chars: int = Field(
        65_536, ge=256, description="characters per raw log line (longer lines are rejected)"
    )
    batch_size: int = Field(256, ge=1, description="sequences per micro-batch of the voters")
    batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="wait to fill a micro-batch")
    retry_after: float = Field(15.0, ge=0, description="rest of a failed voter, seconds")
    all_votes: bool = Field(
        False, description="ask every voter (no short-circuit voting): every answer has all votes"
    )
    request_timeout: float = Field(600.0, gt=0, description="seconds to answer a request")
    parse_timeout: float = Field(
        10.0, gt=0, description="seconds to parse a request's raw log lines before 408"
    )
    body_timeout: float = Field(
        30.0, gt=0, description="seconds to receive a request body before 408"
    )
    max_connections: int = Field(
        1024, ge=1, description="open connections before new ones are refused with 503"
    )
    keep_alive: float = Field(5.0, gt=0, description="seconds an idle connection stays open")
    llm_base_url: str | None = Field(None, description="point the LLM voter at this server")
    llm_timeout: float | None = Field(None, gt=0, description="LLM request timeout, seconds")
    vllm: str | None = Field(None, description="start vLLM: 'cpu', 'gpu' or a launch config")
    vllm_log: Path | None = Field(None, description="where the vLLM server's output goes")
    verdict_log: str = Field(
        "bundle",
        description="where the review page's recent verdicts live: 'bundle' "
        "(BUNDLE/verdicts.sqlite), 'memory', 'off' or a path",
    )
    review_keep: int = Field(10_000, ge=1, description="verdicts the review page keeps")
    review_rate: float = Field(
        500.0, gt=0, description="verdicts a second the review page keeps (anomalous first)"
    )
    session_ttl: float = Field(8 * 3600.0, gt=0, description="seconds a review-page sign-in lasts")
    log_level: str = "info"
    log_preset: dict | None = Field(
        None,
        description="the log format (a preset's to_dict) for raw lines, when the bundle has "
        "no parser of its own",
    )

    @field_validator("api_keys", "admin_api_keys")
    @classmethod
    def _keys_not_blank(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        if any(not k.strip() or k != k.strip() for k in keys):
            raise ValueError("API keys must not be blank or start or end with whitespace")
        if any(len(k) > 512 for k in keys):
            raise ValueError("API keys must be at most 512 characters")
        return keys

    @property
    def auth(self) -> bool:
        """Whether requests need a key."""
        return bool(self.api_keys or self.admin_api_keys)

    @field_validator("cache")
    @classmethod
    def _cache_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("cache must be 'bundle', 'memory', 'off' or a path")
        return value

    @field_validator("verdict_log")
    @classmethod
    def _verdict_log_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("verdict_log must be 'bundle', 'memory', 'off' or a path")
        return value

    @model_validator(mode="after")
    def _one_llm_server(self) -> Settings:
        if self.vllm and self.llm_base_url:
            raise ValueError("give llm_base_url or vllm, not both")
        return self

    def cache_location(self, bundle: Path) -> Path | str | None:
        """The cache database to open (a path or a postgresql:// URL), or None for an
        in-memory or no cache."""
        if self.cache in ("memory", "off"):
            return None
        if self.cache == "bundle":
            return bundle / "cache.sqlite"
        return self.cache if is_postgres_url(self.cache) else Path(self.cache)

    def verdict_log_location(self, bundle: Path) -> Path | None:
        """The verdict log's file, or None for one in memory (``off``: check first)."""
        if self.verdict_log in ("memory", "off"):
            return None
        if self.verdict_log == "bundle":
            return bundle / "verdicts.sqlite"
        return Path(self.verdict_log)


def api_keys_from_env(
    name: str = API_KEYS_ENV, environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The keys in ``$name`` (comma-separated). Set but holding no key is an error naming
    the variable: a configuration that meant to require keys must not start without any."""
    env = environ if environ is not None else os.environ
    if name not in env:
        return ()
    keys = tuple(k.strip() for k in env[name].split(",") if k.strip())
    if not keys:
        raise ValueError(f"${name} is set but holds no API key; unset it or give keys")
    return keys


def api_keys_from_file(path: str | Path) -> tuple[str, ...]:
    """The keys in a file, one per line (blank lines and ``#`` comments ignored). A file
    that holds no key is an error naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read API keys ({exc})") from exc
    keys = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if not keys:
        raise ValueError(f"{path}: the API keys file holds no key")
    return keys
