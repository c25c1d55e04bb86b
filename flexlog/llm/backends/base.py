"""The interface every LLM backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from flexlog.llm.decoding import LabelDecision
from flexlog.llm.prompt import PromptTemplate, approx_tokens


class BackendError(RuntimeError):
    """The backend could not answer (unreachable, timed out, malformed response)."""


class LLMBackend(ABC):
    """Classifies a batch of chat conversations (each ending with the user's prompt) as
    normal / anomalous with the template's two labels. Implementations send the whole batch
    at once, so a server can batch it and reuse the shared prompt prefix."""

    name: str = ""
    #: The model's context length in tokens; prompts are budgeted to fit under it.
    context_tokens: int = 2048

    @abstractmethod
    def classify(
        self, conversations: list[list[dict[str, str]]], template: PromptTemplate
    ) -> list[LabelDecision]:
        """One decision per conversation, in order; raises :class:`BackendError`."""

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the model's tokenizer (an estimate if none is local)."""
        return approx_tokens(text)

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the model or connection."""

    def __enter__(self) -> LLMBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
