"""The LLM voter: a (fine-tuned) language model asked the five-part FlexLog prompt.

It is a voter like any other (``fit`` / ``predict``), so the detector batches it, caches its
answers and outvotes it. Fine-tuning happens offline (``make finetune``), which produces the
LoRA adapter this voter loads; ``fit`` only prepares retrieval. Every prediction's decision
path (log-probabilities, constrained choice, the temperature ladder, or the default) is kept in
``decisions_`` for reports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from flexlog.features import as_event_lists
from flexlog.llm.backends import BACKENDS, make_backend
from flexlog.llm.decoding import LabelDecision
from flexlog.llm.prompt import PromptTemplate
from flexlog.voters.base import BundleFormatError, check_labels

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: Written by ``make finetune`` beside the adapter: its base model, prompt and domain.
ADAPTER_EXTRAS = ("flexlog-adapter.json", "prompt.yaml")


class LLMVoter(ClassifierMixin, BaseEstimator):
    """Ask an LLM whether each sequence is normal or anomalous.

    Parameters
    ----------
    backend : "transformers" (in-process), or another name from ``flexlog.llm.backends``.
    model : base model: ``smollm2``, ``tiny-mistral``, a checkpoint directory or a hub id.
    adapter : LoRA adapter directory from ``make finetune``, or None.
    base_url, served_model, api_key, timeout : for the OpenAI-compatible HTTP backend.
    domain : what the events are, for the prompt: "syscalls", "hdfs" or "logs".
    prompt : prompt template name (``prompts/<name>.yaml``) or path.
    retrieval : put descriptions of the sequence's templates into the prompt.
    knowledge_system : restrict retrieval to one system's records (default: "hdfs" for the
        hdfs domain, system calls for the syscalls domain, everything for "logs").
    max_prompt_tokens : token budget of a prompt (default: the model's context minus 16).
    batch_size, decoding, random_state : passed to the backend.
    """

    name: ClassVar[str] = "llm"

    def __init__(
        self,
        backend: str = "transformers",
        model: str = "smollm2",
        adapter: str | None = None,
        base_url: str | None = None,
        served_model: str = "flexlog",
        api_key: str | None = None,
        timeout: float = 60.0,
        domain: str = "logs",
        prompt: str = "anomaly_detection",
        retrieval: bool = True,
        knowledge_system: str | None = None,
        max_prompt_tokens: int | None = None,
        batch_size: int = 8,
        decoding: str = "logprobs",
        random_state: int | None = 0,
    ):
        self.backend = backend
        self.model = model
        self.adapter = adapter
        self.base_url = base_url
        self.served_model = served_model
        self.api_key = api_key
        self.timeout = timeout
        self.domain = domain
        self.prompt = prompt
        self.retrieval = retrieval
        self.knowledge_system = knowledge_system
        self.max_prompt_tokens = max_prompt_tokens
        self.batch_size = batch_size
        self.decoding = decoding
        self.random_state = random_state

    # -- set-up ----------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {self.backend!r}")
        template = PromptTemplate.load(self.prompt)
        if self.domain not in template.domains:
            raise ValueError(
                f"domain must be one of {sorted(template.domains)}, got {self.domain!r}"
            )
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 64:
            raise ValueError(f"max_prompt_tokens must be at least 64, got {self.max_prompt_tokens}")

    def _backend(self):
        if getattr(self, "backend_", None) is None:
            self.backend_ = make_backend(
                self.backend,
                model=self.model,
                adapter=self.adapter,
                base_url=self.base_url,
                served_model=self.served_model,
                api_key=self.api_key,
                timeout=self.timeout,
                batch_size=self.batch_size,
                decoding=self.decoding,
                seed=self.random_state or 0,
            )
        return self.backend_

    def _index(self):
        if not self.retrieval:
            return None
        if getattr(self, "index_", None) is None:
            try:
                from flexlog.rag import Embedder, KnowledgeCorpus, KnowledgeIndex
            except ImportError as exc:  # the "llm" extra is not installed
                raise ValueError(f"retrieval needs the 'llm' extra of flexlog: {exc}") from exc
            corpus = KnowledgeCorpus.load()
            self.index_ = KnowledgeIndex.build(corpus, Embedder())
        return self.index_

    def fit(self, X, y=None, templates: dict[str, str] | None = None) -> LLMVoter:
        """Validate the configuration and build the retrieval index. The model itself is
        fine-tuned offline (``make finetune``); labels, if given, are only checked."""
        seqs = as_event_lists(X)
        if y is not None:
            check_labels(y, len(seqs))
        if templates:
            self.add_templates(templates)
        self._validate()
        self.template_ = PromptTemplate.load(self.prompt)
        self._index()
        self.classes_ = np.array([0, 1])
        return self

    # -- prediction ------------------------------------------------------------------------
    def add_templates(self, table: dict[str, str]) -> None:
        """Texts of event keys (e.g. an upgraded system's templates), so that retrieval can
        find the closest known template of a key it has no record for."""
        self.templates_ = {**getattr(self, "templates_", {}), **table}

    def _scope(self) -> dict:
        if self.knowledge_system is not None:
            return {"system": self.knowledge_system}
        return {"syscalls": {"kind": "syscall"}, "hdfs": {"system": "hdfs"}}.get(self.domain, {})

    def knowledge_for(self, events) -> list[str]:
        """The retrieved lines for one sequence (most relevant first)."""
        index = self._index()
        if index is None:
            return []
        from flexlog.rag import format_knowledge

        found = index.lookup(
            list(dict.fromkeys(events)), getattr(self, "templates_", None), **self._scope()
        )
        return format_knowledge(found)

    def conversations(self, X) -> list[list[dict[str, str]]]:
        """The chat messages sent for each sequence (also what fine-tuning trains on)."""
        backend = self._backend()
        budget = self.max_prompt_tokens or max(64, backend.context_tokens - 16)
        template = getattr(self, "template_", None) or PromptTemplate.load(self.prompt)
        out = []
        for events in as_event_lists(X):
            rendered = template.render(
                events,
                domain=self.domain,
                knowledge=self.knowledge_for(events),
                max_tokens=budget,
                count_tokens=backend.count_tokens,
            )
            out.append(rendered.messages())
        return out

    def decide(self, X) -> list[LabelDecision]:
        """One decision per sequence, with the path that decided it."""
        if not hasattr(self, "classes_"):
            self.fit(X)
        if len(X) == 0:
            return []
        decisions = self._backend().classify(self.conversations(X), self.template_)
        self.decisions_ = decisions
        return decisions

    def predict(self, X) -> np.ndarray:
        return np.array([d.label for d in self.decide(X)], dtype=np.int64)

    # -- persistence -----------------------------------------------------------------------
    def save_state(self, directory: Path) -> list[str]:
        """Copy the adapter (safetensors only) and the retrieval index into the bundle."""
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        if self.adapter is not None:
            src = Path(self.adapter)
            (directory / "adapter").mkdir(exist_ok=True)
            for name in ADAPTER_FILES:
                if not (src / name).is_file():
                    raise ValueError(f"{src}: adapter lacks {name}")
                shutil.copyfile(src / name, directory / "adapter" / name)
                files.append(f"adapter/{name}")
            for name in ADAPTER_EXTRAS:
                if (src / name).is_file():
                    shutil.copyfile(src / name, directory / "adapter" / name)
                    files.append(f"adapter/{name}")
        index = self._index() if self.retrieval else None
        if index is not None:
            index.save(directory / "knowledge")
            files += [f"knowledge/{p.name}" for p in sorted((directory / "knowledge").iterdir())]
        (directory / "llm.json").write_text(
            json.dumps({"adapter_in_bundle": self.adapter is not None})
        )
        return [*files, "llm.json"]

    @classmethod
    def load_state(cls, directory: Path, params: dict) -> LLMVoter:
        try:
            state = json.loads((directory / "llm.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleFormatError(f"{directory}/llm.json: {exc}") from exc
        params = dict(params)
        if state.get("adapter_in_bundle"):
            params["adapter"] = str(directory / "adapter")
        voter = cls(**params)
        voter._validate()
        voter.template_ = PromptTemplate.load(voter.prompt)
        if state.get("templates"):
            voter.add_templates(state["templates"])
        if voter.retrieval and (directory / "knowledge").is_dir():
            from flexlog.rag import KnowledgeIndex

            voter.index_ = KnowledgeIndex.load(directory / "knowledge")
        voter.classes_ = np.array([0, 1])
        return voter
