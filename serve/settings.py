"""The service's configuration: one immutable pydantic model, filled from the command line
(``flexlog serve``) or by a program that calls :func:`flexlog.serve.create_app`."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Environment variable holding the accepted API keys, comma-separated.
API_KEYS_ENV = "FLEXLOG_API_KEYS"


class Settings(BaseModel):
    """How the service runs.

    ``cache`` is ``"bundle"`` (``BUNDLE/cache.sqlite``), ``"memory"`` (lost at exit),
    ``"off"``, or the path of a cache database. ``api_keys`` empty means no authentication.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: tuple[str, ...] = Field((), repr=False)
    model_name: str = Field("flexlog", min_length=1, max_length=64, pattern=r"^[\w.:-]+$")
    cache: str = "bundle"
    cache_timeout: float = Field(0.25, ge=0, description="seconds to wait for a locked cache")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_batch: int = Field(1024, ge=1, description="sequences (or prompts) per request")
    max_lines: int = Field(100_000, ge=1, description="raw log lines per request")
    max_events: int = Field(100_000, ge=1, description="events per sequence")
    batch_size: int = Field(256, ge=1, description="sequences per micro-batch of the voters")
    batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="wait to fill a micro-batch")
    retry_after: float = Field(15.0, ge=0, description="rest of a failed voter, seconds")
    all_votes: bool = Field(
        False, description="ask every voter (no short-circuit voting): every answer has all votes"
    )
    request_timeout: float = Field(600.0, gt=0, description="seconds to answer a request")
    llm_base_url: str | None = Field(None, description="point the LLM voter at this server")
    llm_timeout: float | None = Field(None, gt=0, description="LLM request timeout, seconds")
    vllm: str | None = Field(None, description="start vLLM: 'cpu', 'gpu' or a launch config")
    vllm_log: Path | None = Field(None, description="where the vLLM server's output goes")
    log_level: str = "info"

    @field_validator("api_keys")
    @classmethod
    def _keys_not_blank(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        if any(not k.strip() for k in keys):
            raise ValueError("API keys must not be blank")
        return keys

    @field_validator("cache")
    @classmethod
    def _cache_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("cache must be 'bundle', 'memory', 'off' or a path")
        return value

    @model_validator(mode="after")
    def _one_llm_server(self) -> Settings:
        if self.vllm and self.llm_base_url:
            raise ValueError("give llm_base_url or vllm, not both")
        return self

    def cache_path(self, bundle: Path) -> Path | None:
        """The cache database to open, or None for an in-memory or no cache."""
        if self.cache in ("memory", "off"):
            return None
        return bundle / "cache.sqlite" if self.cache == "bundle" else Path(self.cache)


def api_keys_from_env(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The keys in ``$FLEXLOG_API_KEYS`` (comma-separated; blanks ignored)."""
    raw = (environ if environ is not None else os.environ).get(API_KEYS_ENV, "")
    return tuple(k.strip() for k in raw.split(",") if k.strip())
