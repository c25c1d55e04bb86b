"""Request and response models: OpenAI's chat.completion, chat.completion.chunk,
text_completion, model list and error objects (fields a log classifier cannot honour, such as
``temperature``, are accepted and ignored), plus the native batch, cache and health bodies.

Every answer carries a ``flexlog`` extension object: each voter's vote, whether the cache
answered, which voters could not vote (``degraded``), and the latency.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Label = Literal["normal", "anomalous"]
CACHE_KEY_PATTERN = r"^[0-9a-fA-F]{64}$"
#: Longest comment kept with a cache correction.
MAX_COMMENT = 1000


# -- errors ------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- shared --------------------------------------------------------------------------------
class FlexlogOptions(BaseModel):
    """The request's ``flexlog`` extension (``extra_body={"flexlog": {...}}`` in the openai
    client): how to read raw log lines in the content."""

    model_config = ConfigDict(extra="forbid")

    format: str | None = Field(
        None,
        max_length=64,
        description="log preset for raw lines (default: the bundle's parser, else generic)",
    )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class Usage(BaseModel):
    """Tokens are log events: ``prompt_tokens`` is the sequence's length, and the answer is
    one token."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FlexlogInfo(BaseModel):
    """The ``flexlog`` extension of an answer."""

    id: str
    key: str = Field(description="cache key of the sequence (for PUT /v1/cache/{key})")
    label: Label
    votes: dict[str, int] = Field(description="each voter's vote, 1 = anomalous")
    cached: bool
    source: Literal["ensemble", "cache", "human", "voter"]
    degraded: bool = Field(description="some voter could not vote")
    abstained: list[str] = Field(description="the voters that could not vote")
    not_asked: list[str] = Field(
        default_factory=list,
        description="the voters not asked because their vote could no longer change the label",
    )
    events: int
    latency_ms: float


# -- chat completions ------------------------------------------------------------------------
class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(BaseModel):
    """The last user message is the log sequence: a JSON list or a bracketed list of event
    keys, or raw log lines (one per line)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only 1: the answer is deterministic")
    flexlog: FlexlogOptions | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Label
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str
    flexlog: FlexlogInfo


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: Literal["stop"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str
    usage: Usage | None = None
    flexlog: FlexlogInfo | None = None


# -- completions -----------------------------------------------------------------------------
class CompletionRequest(BaseModel):
    """Each prompt is one log sequence, written as in a chat message."""

    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str | list[str] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only 1: the answer is deterministic")
    flexlog: FlexlogOptions | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop"] | None = "stop"
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str
    usage: Usage | None = None
    flexlog: list[FlexlogInfo] | None = Field(None, description="one per prompt, in order")


# -- models ----------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "flexlog"
    kind: Literal["ensemble", "voter"]
    voters: list[str] = Field(description="the voters that answer for this model")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- native batch ----------------------------------------------------------------------------
class DetectRequest(BaseModel):
    """Either canonical ``sequences`` (``{"id", "events"}`` objects; a bad item gets its own
    error, the others are answered) or raw ``lines``, parsed with ``format`` and partitioned."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="default: the ensemble")
    sequences: list[Any] | None = None
    lines: list[str] | None = None
    format: str | None = Field(None, max_length=64, description="log preset for lines")
    partition: Literal["session", "fixed", "sliding", "time"] = Field(
        "session",
        description="session ids, fixed or sliding windows of lines, or windows of time "
        "(window and step in seconds, from the format's timestamp fields)",
    )
    window: int = Field(20, ge=1, le=1_000_000, description="lines (or seconds) per window")
    step: int = Field(
        1, ge=1, le=1_000_000, description="step of sliding windows (time: 1 = back to back)"
    )

    @model_validator(mode="after")
    def _one_input(self) -> DetectRequest:
        if (self.sequences is None) == (self.lines is None):
            raise ValueError("give exactly one of 'sequences' or 'lines'")
        return self


class DetectVerdict(BaseModel):
    index: int
    id: str
    key: str
    label: Label
    votes: dict[str, int]
    cached: bool
    source: Literal["ensemble", "cache", "human", "voter"]
    degraded: bool
    abstained: list[str]
    not_asked: list[str] = Field(
        default_factory=list,
        description="the voters not asked because their vote could no longer change the label",
    )
    origin: dict[str, Any] | None = Field(
        None,
        description="for raw lines: the request's line numbers the sequence came from "
        "(first, last, and the lines themselves for short sequences)",
    )
    evidence: dict[str, Any] | None = Field(
        None,
        description="for anomalous verdicts: the voters that flagged it, the events unseen in "
        "training, rare in normal training sequences, or unlikely to a next-event voter "
        "(positions, events and, for raw lines, line numbers)",
    )


class DetectError(BaseModel):
    index: int
    id: str | None
    error: ErrorDetail


class LineCounts(BaseModel):
    read: int
    accepted: int
    rejected: int


class RejectedLine(BaseModel):
    line: int
    reason: str


class DetectCounts(BaseModel):
    """``answered + errors == sequences``; for raw lines also ``accepted + rejected == read``."""

    sequences: int
    answered: int
    errors: int
    anomalous: int
    lines: LineCounts | None = None


class DetectResponse(BaseModel):
    object: Literal["flexlog.detection"] = "flexlog.detection"
    model: str
    results: list[DetectVerdict | DetectError]
    counts: DetectCounts
    rejected_lines: list[RejectedLine] = Field(default_factory=list)
    latency_ms: float


# -- cache -----------------------------------------------------------------------------------
class CacheUpdate(BaseModel):
    """A human correction. ``events`` are needed only when the key is not in the cache yet."""

    model_config = ConfigDict(extra="forbid")

    label: Label | Literal[0, 1]
    events: list[str] | None = Field(
        None, min_length=1, description="bounded like a detected sequence (max_events)"
    )
    comment: str | None = Field(
        None, max_length=MAX_COMMENT, description="why, kept in the correction history"
    )


class CacheUndo(BaseModel):
    """Undo the latest correction of a sequence that is not undone yet."""

    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(None, max_length=MAX_COMMENT)


class CacheCorrectionOut(BaseModel):
    """One recorded correction: who (the key's id, never the key), when, what changed."""

    id: int
    key: str
    time: float = Field(description="seconds since the epoch")
    actor: str = Field(description="'key:<id>' for an API key, 'cli:<user>' for the CLI")
    action: Literal["set", "delete", "undo"]
    previous_label: Label | None
    previous_source: Literal["model", "human"] | None
    new_label: Label | None
    new_source: Literal["model", "human"] | None
    comment: str | None
    undoes: int | None = Field(None, description="for an undo: the correction it reverted")


class CacheHistory(BaseModel):
    object: Literal["list"] = "list"
    key: str
    data: list[CacheCorrectionOut] = Field(description="oldest first")


class CacheEntryOut(BaseModel):
    object: Literal["flexlog.cache_entry"] = "flexlog.cache_entry"
    key: str
    events: list[str]
    label: Label
    source: Literal["model", "human"]
    votes: dict[str, int]


class CacheDeleted(BaseModel):
    object: Literal["flexlog.cache_entry.deleted"] = "flexlog.cache_entry.deleted"
    key: str
    deleted: bool


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


# -- admin -----------------------------------------------------------------------------------
class ReloadResponse(BaseModel):
    """What ``POST /v1/admin/reload`` did: the bundle at the configured path, loaded again,
    serves now (unless it was the same bundle)."""

    object: Literal["flexlog.reload"] = "flexlog.reload"
    created: int = Field(description="when the reload finished, seconds since the epoch")
    previous_fingerprint: str = Field(description="system_fingerprint of the bundle before")
    system_fingerprint: str = Field(description="system_fingerprint of the bundle serving now")
    changed: bool = Field(description="another bundle serves now (the fingerprint changed)")
    voters: list[str] = Field(description="the voters of the ensemble serving now")
    dropped_cache_answers: int = Field(
        description="the previous model's cached answers forgotten (human corrections stay)"
    )
    duration_ms: float = Field(description="time the reload took, loading included")
