"""An OpenAI-compatible HTTP server as the LLM voter's backend (vLLM, or any server that
speaks ``/v1/chat/completions``), through the official ``openai`` client.

Decodings:

- ``choice`` (default): greedy answer constrained server-side to the two labels (vLLM's
  ``structured_outputs: {"choice": [...]}``); the first answer token's top log-probabilities are
  kept in the decision. A server that ignores the constraint and answers something else is
  retried with the temperature ladder, never silently mislabelled.
- ``logprobs``: unconstrained greedy answer; the first answer token's top log-probabilities
  decide between the labels (the ladder if neither label is among them).
- ``ladder``: the paper's sampling at temperature 0.1, retried at 0.2 ... 1.0.

A batch's requests are sent concurrently, so the server batches them and reuses the shared
prompt prefix from its cache.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flexlog.llm.backends.base import BackendError, LLMBackend
from flexlog.llm.decoding import LabelDecision, ladder
from flexlog.llm.prompt import PromptTemplate, approx_tokens

DECODINGS = ("choice", "logprobs", "ladder")
#: Context length assumed when the server does not report ``max_model_len``.
DEFAULT_CONTEXT = 2048
#: Tokens sampled per ladder step: enough for a label and a little more.
SAMPLE_TOKENS = 8
#: Log-probabilities at or below this are tokens a constrained decoder masked out.
_MASKED = -1000.0


def _norm(token: str) -> str:
    return token.strip().strip("\"'`*").lower()


def label_logprobs(
    top: Iterable[tuple[str, float]], labels: Sequence[str]
) -> tuple[float, float] | None:
    """Each label's log-probability mass among one answer position's top tokens.

    A token counts for a label when it (stripped, lower-cased) begins that label and not the
    other one (``"an"`` for "anomalous", ``" normal"`` for "normal"); the masses are summed in
    probability space. This is the probability that the answer *starts* towards each label,
    exact under a two-choice constraint and an approximation otherwise. A label none of whose
    tokens is listed gets the lowest listed log-probability (a bound: each of its tokens ranks
    below every listed one). None when no listed token begins either label.
    """
    top = [(tok, float(lp)) for tok, lp in top if lp is not None and float(lp) > _MASKED]
    if not top:
        return None
    words = [label.lower() for label in labels]
    masses: list[float | None] = []
    for i, word in enumerate(words):
        others = [w for j, w in enumerate(words) if j != i]
        found = [
            lp
            for tok, lp in top
            if (s := _norm(tok)) and word.startswith(s) and not any(o.startswith(s) for o in others)
        ]
        if found:
            peak = max(found)
            masses.append(peak + math.log(sum(math.exp(lp - peak) for lp in found)))
        else:
            masses.append(None)
    if all(m is None for m in masses):
        return None
    floor = min(lp for _, lp in top)
    lp_normal, lp_anomalous = (floor if m is None else m for m in masses)
    return lp_normal, lp_anomalous


def first_answer_top(
    positions: Iterable[tuple[str, list[tuple[str, float]]]],
) -> list[tuple[str, float]]:
    """The alternatives at the first answer position whose generated token is not blank.

    ``positions`` gives, per generated token, ``(token text, [(alternative, logprob), ...])``.
    """
    for token, alternatives in positions:
        if token.strip():
            return alternatives
    return []


def _positions(content: list) -> list[tuple[str, list[tuple[str, float]]]]:
    """An OpenAI response's ``logprobs.content`` as (token, alternatives) per position."""
    return [
        (e.token or "", [(t.token, t.logprob) for t in (e.top_logprobs or [])]) for e in content
    ]


def answer_tokens(labels: Sequence[str], decoding: str) -> int:
    """``max_tokens`` of a greedy answer: a constrained one ends with its label (which a
    grammar may spell in single characters); an unconstrained one is only read at its first
    non-blank token, so a few suffice (decoding is the slow part on CPU, with LoRA)."""
    return max(map(len, labels)) + 2 if decoding == "choice" else 3


def decide(
    text: str, top: list[tuple[str, float]], template: PromptTemplate, decoding: str
) -> LabelDecision | None:
    """The decision for one greedy answer and its first answer position's alternatives;
    None when it must go to the ladder (a "choice" answer that is no label, or no label
    among the alternatives under "logprobs")."""
    lps = label_logprobs(top, template.labels)
    if decoding == "choice":
        label = template.label_of(text)
        return None if label is None else LabelDecision(label, "choice", lps, text)
    if lps is None:
        return None
    return LabelDecision(int(lps[1] > lps[0]), "logprobs", lps, text)


class OpenAIBackend(LLMBackend):
    """Talk to an OpenAI-compatible server.

    Parameters
    ----------
    base_url : the server's API root, e.g. ``http://127.0.0.1:8000/v1``.
    served_model : model name on the server (vLLM serves the LoRA adapter as ``flexlog``).
    api_key : bearer token, if the server wants one.
    timeout, max_retries : per request; the client retries connection errors, 408/429/5xx.
    batch_size : requests in flight at once.
    decoding : "choice", "logprobs" or "ladder" (see the module docstring).
    model : a local base model (``smollm2``, a checkpoint dir) whose tokenizer counts prompt
        tokens; None counts with an estimate.
    seed : sampling seed sent with each ladder request.
    top_logprobs : alternatives asked for per answer token (the OpenAI API allows up to 20).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        served_model: str = "flexlog",
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        batch_size: int = 8,
        decoding: str = "choice",
        model: str | None = None,
        seed: int = 0,
        top_logprobs: int = 20,
    ):
        if not base_url:
            raise ValueError("the openai backend needs base_url, e.g. http://127.0.0.1:8000/v1")
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in 0..20, got {top_logprobs}")
        from openai import OpenAI

        self.base_url = base_url.rstrip("/")
        self.served_model = served_model
        self.timeout = timeout
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.decoding = decoding
        self.model_name = model
        self.seed = seed
        self.top_logprobs = top_logprobs
        self._client = OpenAI(
            base_url=self.base_url,
            api_key=api_key or "EMPTY",
            timeout=timeout,
            max_retries=max_retries,
        )
        self._pool: ThreadPoolExecutor | None = None
        self._tokenizer: Any = None
        self._context: int | None = None

    # -- sizing ----------------------------------------------------------------------------
    @property
    def context_tokens(self) -> int:  # type: ignore[override]
        """The served model's ``max_model_len`` from ``GET /v1/models``, else 2048."""
        if self._context is None:
            try:
                models = list(self._client.models.list())
            except Exception:  # unreachable now: classify() will say so
                return DEFAULT_CONTEXT
            lengths = {m.id: getattr(m, "max_model_len", None) for m in models}
            card = next((m for m in models if m.id == self.served_model), None)
            length = lengths.get(self.served_model)
            if length is None and card is not None:  # a LoRA adapter: its base model's
                length = lengths.get(getattr(card, "parent", None) or getattr(card, "root", ""))
            self._context = int(length) if length else DEFAULT_CONTEXT
        return self._context

    def count_tokens(self, text: str) -> int:
        if self.model_name is not None and self._tokenizer is None:
            try:
                from transformers import AutoTokenizer

                from flexlog.llm.models import resolve_model

                self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.model_name))
            except Exception as exc:  # no local tokenizer: estimate
                warnings.warn(
                    f"no tokenizer for {self.model_name!r} ({exc}); estimating prompt tokens",
                    stacklevel=2,
                )
                self._tokenizer = False
        if self._tokenizer:
            return len(self._tokenizer(text, add_special_tokens=False).input_ids)
        return approx_tokens(text)

    # -- requests --------------------------------------------------------------------------
    def _complete(self, messages: list[dict[str, str]], **params) -> tuple[str, list]:
        """One chat completion: (answer text, per-token logprob entries or [])."""
        import openai

        try:
            resp = self._client.chat.completions.create(
                model=self.served_model, messages=messages, **params
            )
        except openai.APIConnectionError as exc:  # includes timeouts
            raise BackendError(f"{self.base_url}: LLM server unreachable ({exc})") from exc
        except openai.APIStatusError as exc:
            raise BackendError(
                f"{self.base_url}: LLM server answered HTTP {exc.status_code}: {exc.message}"
            ) from exc
        except (openai.OpenAIError, ValueError) as exc:  # ValueError: a body that is not JSON
            raise BackendError(f"{self.base_url}: malformed response ({exc})") from exc
        try:
            choice = resp.choices[0]
            text = choice.message.content or ""
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
            content = (choice.logprobs.content or []) if choice.logprobs else []
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise BackendError(f"{self.base_url}: malformed response ({exc!r})") from exc
        return text, content

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``fn`` over ``items``, ``batch_size`` at a time in flight."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.batch_size, thread_name_prefix="flexlog-openai")
        futures = [self._pool.submit(fn, item) for item in items]
        return [f.result() for f in futures]

    def _sample(self, conversations: Sequence[list[dict[str, str]]], temperature: float) -> list:
        params = {"temperature": temperature, "max_tokens": SAMPLE_TOKENS, "seed": self.seed}
        return [text for text, _ in self._map(lambda m: self._complete(m, **params), conversations)]

    def _ladder(
        self, conversations: Sequence[list[dict[str, str]]], template: PromptTemplate
    ) -> list[LabelDecision]:
        return ladder(
            len(conversations),
            lambda idx, t: self._sample([conversations[i] for i in idx], t),
            template.label_of,
        )

    def classify(
        self, conversations: list[list[dict[str, str]]], template: PromptTemplate
    ) -> list[LabelDecision]:
        if not conversations:
            return []
        if self.decoding == "ladder":
            return self._ladder(conversations, template)
        labels = list(template.labels)
        params: dict[str, Any] = {
            "temperature": 0.0,
            "max_tokens": answer_tokens(labels, self.decoding),
            "logprobs": self.top_logprobs > 0,
        }
        if self.top_logprobs:
            params["top_logprobs"] = self.top_logprobs
        if self.decoding == "choice":
            params["extra_body"] = {"structured_outputs": {"choice": labels}}
        answers = self._map(lambda m: self._complete(m, **params), conversations)

        decisions = [
            decide(text, first_answer_top(_positions(content)), template, self.decoding)
            for text, content in answers
        ]
        retry = [i for i, d in enumerate(decisions) if d is None]
        if retry:
            again = self._ladder([conversations[i] for i in retry], template)
            for i, d in zip(retry, again, strict=True):
                decisions[i] = d
        return decisions  # type: ignore[return-value]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._client.close()
