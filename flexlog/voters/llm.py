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

from flexlog.evaluate import scores
from flexlog.features import as_event_lists
from flexlog.llm.backends import BACKENDS, DEFAULT_BACKEND, make_backend
from flexlog.llm.decoding import LabelDecision, with_threshold
from flexlog.llm.prompt import PromptTemplate
from flexlog.llm.prompting import PromptAssembler, Retriever
from flexlog.thresholds import best_f1_threshold
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
    max_prompt_tokens : token budget of a prompt (default: the fine-tuning budget recorded
        beside the adapter, else the model's context minus 16).
    threshold : log-probability margin ``lp(anomalous) - lp(normal)`` above which a sequence
        is anomalous; "auto" takes the one ``make finetune`` calibrated on held-out data
        (recorded beside the adapter), else 0 (the plain argmax). See :meth:`calibrate`.
    batch_size, decoding, random_state : passed to the backend.
    """

    name: ClassVar[str] = "llm"
    #: A model call per sequence: asked last, and only where its vote can change the label.
    cost: ClassVar[float] = 10000.0

    def __init__(
        self,
        backend: str = DEFAULT_BACKEND,
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
        threshold: float | str = "auto",
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
        self.threshold = threshold
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
        self.threshold_ = self._resolve_threshold()

    def _resolve_threshold(self) -> float:
        if self.threshold != "auto":
            try:
                value = float(self.threshold)
            except (TypeError, ValueError):
                value = float("nan")
            if not np.isfinite(value):
                raise ValueError(f"threshold must be a number or 'auto', got {self.threshold!r}")
            return value
        value = self._adapter_info().get("threshold", 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.adapter}: adapter threshold must be a number, got {value!r}")
        return float(value)

    def _adapter_info(self) -> dict:
        """What ``make finetune`` recorded beside the adapter (empty without one)."""
        if self.adapter is None:
            return {}
        path = Path(self.adapter) / ADAPTER_EXTRAS[0]
        try:
            info = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable adapter information ({exc})") from exc
        if not isinstance(info, dict):
            raise ValueError(f"{path}: adapter information is not a JSON object")
        return info

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

    def _retriever(self) -> Retriever | None:
        if not self.retrieval:
            return None
        if getattr(self, "retriever_", None) is None:
            self.retriever_ = Retriever(self.domain, self.knowledge_system)
        return self.retriever_

    def fit(self, X, y=None, templates: dict[str, str] | None = None) -> LLMVoter:
        """Validate the configuration and build the retrieval index. The model itself is
        fine-tuned offline (``make finetune``); labels, if given, are only checked."""
        seqs = as_event_lists(X)
        if y is not None:
            check_labels(y, len(seqs))
        self.vocabulary_ = {e for events in seqs for e in events}
        if templates:
            self.add_templates(templates)
        self._validate()
        self.template_ = PromptTemplate.load(self.prompt)
        retriever = self._retriever()
        if retriever is not None:
            self.vocabulary_.update(r.key for r in retriever.index().records)
        self.assembler_ = None
        self.classes_ = np.array([0, 1])
        return self

    # -- prediction ------------------------------------------------------------------------
    def add_templates(self, table: dict[str, str]) -> None:
        """Texts of event keys (e.g. an upgraded system's templates), so that retrieval can
        find the closest known template of a key it has no record for. Their keys join the
        vocabulary that may appear in the prompt as text."""
        self.vocabulary_ = {*getattr(self, "vocabulary_", ()), *table}
        self.assembler_ = None
        retriever = self._retriever()
        if retriever is not None:
            retriever.add_templates(table)

    def known_events(self) -> frozenset[str]:
        """The event keys the prompt names as they are (training, templates, knowledge)."""
        return frozenset(getattr(self, "vocabulary_", ()))

    def knowledge_for(self, events) -> list[str]:
        """The retrieved lines for one sequence (most relevant first)."""
        retriever = self._retriever()
        return retriever(events) if retriever is not None else []

    def _assembler(self) -> PromptAssembler:
        if getattr(self, "assembler_", None) is None:
            backend = self._backend()
            trained = self._adapter_info().get("max_seq_tokens")  # prompts as long as in training
            budget = self.max_prompt_tokens or (
                trained if isinstance(trained, int) and trained >= 64 else None
            )
            self.assembler_ = PromptAssembler(
                self.prompt,
                self.domain,
                max_tokens=budget or max(64, backend.context_tokens - 16),
                count_tokens=backend.count_tokens,
                retriever=self._retriever(),
                vocabulary=getattr(self, "vocabulary_", None) or frozenset(),
            )
        return self.assembler_

    def conversations(self, X) -> list[list[dict[str, str]]]:
        """The chat messages sent for each sequence (see :class:`PromptAssembler`)."""
        return self._assembler().conversations(X)

    def decide(self, X) -> list[LabelDecision]:
        """One decision per sequence, with the path that decided it."""
        if not hasattr(self, "classes_"):
            self.fit(X)
        if len(X) == 0:
            return []
        raw = self._backend().classify(self.conversations(X), self.template_)
        decisions = [with_threshold(d, self.threshold_) for d in raw]
        self.decisions_ = decisions
        return decisions

    def margins(self, X) -> np.ndarray:
        """``lp(anomalous) - lp(normal)`` per sequence (needs the log-probability decoding)."""
        decisions = self.decide(X)
        missing = [i for i, d in enumerate(decisions) if d.logprobs is None]
        if missing:
            raise ValueError(
                f"{len(missing)} decisions have no log-probabilities (decoding "
                f"{self.decoding!r}, first at index {missing[0]}); use decoding='logprobs'"
            )
        return np.array([d.logprobs[1] - d.logprobs[0] for d in decisions])

    def calibrate(self, X, y) -> dict:
        """Tune ``threshold_`` for the best F1 on labelled held-out sequences (never the
        test set); returns the chosen threshold and F1 before and after."""
        y = check_labels(y, len(as_event_lists(X)))
        margins = self.margins(X)
        self.threshold_, f1 = best_f1_threshold(margins, y, prefer=0.0)
        return {
            "threshold": self.threshold_,
            "f1": f1,
            "f1_at_zero": scores(y, (margins > 0.0).astype(int))["f1"],
            "sequences": len(y),
        }

    def predict(self, X) -> np.ndarray:
        return np.array([d.label for d in self.decide(X)], dtype=np.int64)

    def predict_proba(self, X) -> np.ndarray:
        """The calibrated margin as a probability, ``sigmoid(margin - threshold_)`` (0.5 at the
        calibrated cut), so the LLM takes part in weighted and stacked votes by how sure it
        is; a decision without log-probabilities (another decoding path) counts as 0 or 1."""
        p = np.array(
            [
                d.label
                if d.logprobs is None
                else 1.0 / (1.0 + np.exp(-(d.logprobs[1] - d.logprobs[0] - self.threshold_)))
                for d in self.decide(X)
            ],
            dtype=float,
        )
        return np.column_stack([1.0 - p, p])

    def close(self) -> None:
        """Release the backend (an in-process engine holds GBs); the next question loads it
        again."""
        backend = getattr(self, "backend_", None)
        if backend is not None:
            backend.close()
        self.backend_ = None
        self.assembler_ = None  # it counts tokens with the backend

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
        retriever = self._retriever()
        index = retriever.index() if retriever is not None else None
        if index is not None:
            index.save(directory / "knowledge")
            files += [f"knowledge/{p.name}" for p in sorted((directory / "knowledge").iterdir())]
        (directory / "llm.json").write_text(
            json.dumps(
                {
                    "adapter_in_bundle": self.adapter is not None,
                    "threshold": getattr(self, "threshold_", None),
                    "vocabulary": sorted(getattr(self, "vocabulary_", ())),
                }
            )
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
        threshold = state.get("threshold")
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                raise BundleFormatError(f"{directory}/llm.json: threshold is not a number")
            voter.threshold_ = float(threshold)
        if voter.retrieval and (directory / "knowledge").is_dir():
            from flexlog.rag import KnowledgeIndex

            index = KnowledgeIndex.load(directory / "knowledge")
            voter.retriever_ = Retriever(voter.domain, voter.knowledge_system, index=index)
        vocabulary = state.get("vocabulary")
        if vocabulary is not None and not (
            isinstance(vocabulary, list) and all(isinstance(v, str) for v in vocabulary)
        ):
            raise BundleFormatError(f"{directory}/llm.json: vocabulary is not a list of keys")
        if vocabulary is None:  # bundles before the vocabulary: the knowledge corpus's keys
            retriever = voter._retriever()
            index = getattr(retriever, "_index", None)
            vocabulary = [r.key for r in index.records] if index is not None else []
        voter.vocabulary_ = set(vocabulary)
        if state.get("templates"):
            voter.add_templates(state["templates"])
        voter.classes_ = np.array([0, 1])
        return voter
