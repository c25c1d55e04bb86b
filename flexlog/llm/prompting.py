"""Prompt assembly: from an event sequence to the chat messages the LLM sees.

The same assembly serves inference (the LLM voter), fine-tuning (training prompts carry the
knowledge inference will put in them) and the throughput benchmark, so none of them reaches
into another: a :class:`Retriever` finds the knowledge lines of a sequence, a
:class:`PromptAssembler` renders the prompt template within a token budget.

Only known event keys reach the prompt as text. Given a ``vocabulary`` (the keys seen in
training, the bundle's template keys and the knowledge corpus's keys), the assembler writes
any other item as an opaque id, ``unseen-`` and 8 hex digits of its hash: the same unknown
item always gets the same id, and no text a client made up (``ANSWER:normal``) is ever read
by the model.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from flexlog.features import as_event_lists
from flexlog.llm.prompt import PromptTemplate

#: Which part of the knowledge corpus each prompt domain reads by default.
DOMAIN_SCOPES = {"syscalls": {"kind": "syscall"}, "hdfs": {"system": "hdfs"}}


class Retriever:
    """Descriptions of a sequence's templates (or system calls) from the FAISS knowledge index.

    ``knowledge_system`` restricts the lookup to one system's records (default: by domain).
    The index is built on first use unless one is given (a bundle's saved index);
    ``templates`` (event key → text) let keys without a record of their own find their closest
    known template.
    """

    def __init__(
        self,
        domain: str = "logs",
        knowledge_system: str | None = None,
        templates: Mapping[str, str] | None = None,
        *,
        index=None,
    ):
        self.domain = domain
        self.knowledge_system = knowledge_system
        self.templates = dict(templates or {})
        self._index = index

    @property
    def scope(self) -> dict:
        if self.knowledge_system is not None:
            return {"system": self.knowledge_system}
        return dict(DOMAIN_SCOPES.get(self.domain, {}))

    def index(self):
        """The knowledge index (built once; needs the ``llm`` extra)."""
        if self._index is None:
            try:
                from flexlog.rag import Embedder, KnowledgeCorpus, KnowledgeIndex
            except ImportError as exc:  # the "llm" extra is not installed
                raise ValueError(f"retrieval needs the 'llm' extra of flexlog: {exc}") from exc
            self._index = KnowledgeIndex.build(KnowledgeCorpus.load(), Embedder())
        return self._index

    def add_templates(self, table: Mapping[str, str]) -> None:
        """Texts of event keys (e.g. an upgraded system's templates)."""
        self.templates.update(table)

    def __call__(self, events: Sequence[str]) -> list[str]:
        """The retrieved lines for one sequence, rarest events first: when the budget cuts
        the list, the ubiquitous ones go."""
        from flexlog.rag import format_knowledge

        counts = Counter(events)
        keys = sorted(counts, key=counts.__getitem__)
        return format_knowledge(self.index().lookup(keys, self.templates or None, **self.scope))


def opaque_id(item: str) -> str:
    """The prompt's name for an item outside the vocabulary."""
    return "unseen-" + hashlib.sha256(item.encode("utf-8", "surrogatepass")).hexdigest()[:8]


class PromptAssembler:
    """Renders the prompt template for sequences within ``max_tokens`` (counted by the
    model's own tokenizer), with the knowledge ``retriever`` finds (None: no retrieval).

    ``vocabulary``: the event keys that may appear in the prompt as they are; any other item
    is written as :func:`opaque_id` (None: every item as it is, for trusted training data).
    """

    def __init__(
        self,
        prompt: str = "anomaly_detection",
        domain: str = "logs",
        *,
        max_tokens: int,
        count_tokens: Callable[[str], int],
        retriever: Retriever | None = None,
        vocabulary: Collection[str] | None = None,
    ):
        self.template = PromptTemplate.load(prompt)
        if domain not in self.template.domains:
            raise ValueError(
                f"domain must be one of {sorted(self.template.domains)}, got {domain!r}"
            )
        if max_tokens < 64:
            raise ValueError(f"max_tokens must be at least 64, got {max_tokens}")
        self.domain = domain
        self.max_tokens = max_tokens
        self.count_tokens = count_tokens
        self.retriever = retriever
        self.vocabulary = None if vocabulary is None else frozenset(vocabulary)

    def known(self, events: Sequence[str]) -> list[str]:
        """The events as the prompt names them: known keys as they are, others opaque."""
        if self.vocabulary is None:
            return list(events)
        vocabulary = self.vocabulary
        return [e if e in vocabulary else opaque_id(e) for e in events]

    def messages(self, events: Sequence[str]) -> list[dict[str, str]]:
        """The chat messages for one sequence."""
        events = self.known(events)
        knowledge = self.retriever(events) if self.retriever is not None else []
        rendered = self.template.render(
            events,
            domain=self.domain,
            knowledge=knowledge,
            max_tokens=self.max_tokens,
            count_tokens=self.count_tokens,
        )
        return rendered.messages()

    def conversations(self, X: Iterable) -> list[list[dict[str, str]]]:
        """The chat messages for each sequence of a batch."""
        return [self.messages(events) for events in as_event_lists(X)]


__all__ = ["DOMAIN_SCOPES", "PromptAssembler", "Retriever", "opaque_id"]
