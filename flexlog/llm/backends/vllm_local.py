"""In-process inference with vLLM's offline engine (``vllm.LLM``), LoRA adapter included.

The same decodings as the HTTP backend without a server: ``choice`` (greedy answer constrained to
the two labels), ``logprobs`` (the first answer token's top log-probabilities decide) and
``ladder`` (the paper's sampling). On a CPU-only machine it runs with
:func:`~flexlog.llm.vllm_server.cpu_engine_defaults` (bfloat16 where native, compiled), its
OpenMP threads bound to this process's cores.
"""

from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path
from typing import Any

from flexlog.llm.backends.base import BackendError, LLMBackend
from flexlog.llm.backends.openai_http import (
    SAMPLE_TOKENS,
    answer_tokens,
    decide,
    first_answer_top,
)
from flexlog.llm.decoding import LabelDecision, ladder
from flexlog.llm.models import resolve_model
from flexlog.llm.prompt import PromptTemplate
from flexlog.llm.vllm_server import (
    VLLM_LORA_RANKS,
    check_vllm_adapter,
    cpu_engine_defaults,
    cpu_threads_bind,
    has_gpu,
    merged_checkpoint,
)

DECODINGS = ("choice", "logprobs", "ladder")
#: The engine's ``gpu_memory_utilization`` on CPU, where it sizes the KV cache in RAM.
CPU_MEMORY_UTILIZATION = 0.3


def _positions(completion: Any) -> list[tuple[str, list[tuple[str, float]]]]:
    """A vLLM completion's sample logprobs as (token, alternatives) per position."""
    out = []
    for token_id, alternatives in zip(
        completion.token_ids, completion.logprobs or [], strict=False
    ):
        chosen = alternatives.get(token_id)
        token = (chosen.decoded_token if chosen is not None else None) or ""
        out.append((token, [(lp.decoded_token or "", lp.logprob) for lp in alternatives.values()]))
    return out


class VLLMBackend(LLMBackend):
    """A vLLM engine in this process.

    Parameters
    ----------
    model : base model (``smollm2``, ``tiny-mistral``, a checkpoint dir or a hub id).
    adapter : LoRA adapter directory (PEFT, safetensors), or None.
    merge_adapter : run the base model with the adapter merged into its weights instead of
        vLLM's LoRA support (about ten times faster on CPU; see ``merged_checkpoint``). None
        means merged on CPU and vLLM's LoRA on GPU (where it costs little).
    batch_size : most sequences the engine schedules at once (``max_num_seqs``); a whole
        ``classify`` call is handed to the engine in one go.
    decoding : "choice", "logprobs" or "ladder".
    seed : engine and sampling seed.
    max_model_len : context length of the engine.
    gpu_memory_utilization : None means 0.3 on CPU (where it sizes the KV cache in RAM) and
        0.9 on GPU.
    dtype : None means "auto" on GPU and, on CPU, :func:`cpu_engine_defaults`'s.
    enforce_eager : None means compiled (vLLM's default on GPU, ours on CPU).
    max_lora_rank : the largest adapter rank accepted (a vLLM rank: 8, 16, 32, ...).
    top_logprobs : alternatives kept per answer token (at most vLLM's ``max_logprobs``, 20).
    engine_args : further keyword arguments for ``vllm.LLM``.
    """

    name = "vllm"

    def __init__(
        self,
        model: str = "smollm2",
        adapter: str | Path | None = None,
        *,
        merge_adapter: bool | None = None,
        batch_size: int = 64,
        decoding: str = "choice",
        seed: int = 0,
        max_model_len: int = 4096,
        gpu_memory_utilization: float | None = None,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        max_lora_rank: int = 16,
        top_logprobs: int = 20,
        engine_args: dict[str, Any] | None = None,
    ):
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {VLLM_LORA_RANKS}")
        self.model_name = model
        self.adapter = None if adapter is None else Path(adapter)
        self.merge_adapter = merge_adapter
        self.batch_size = batch_size
        self.decoding = decoding
        self.seed = seed
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self.enforce_eager = enforce_eager
        self.max_lora_rank = max_lora_rank
        self.top_logprobs = top_logprobs
        self.engine_args = dict(engine_args or {})
        self.context_tokens = max_model_len
        self._llm: Any = None
        self._lora: Any = None
        self._path = resolve_model(model)
        if self.adapter is not None:  # fail before the slow engine start
            check_vllm_adapter(self.adapter, self._path, max_lora_rank)

    def _load(self) -> Any:
        if self._llm is not None:
            return self._llm
        gpu = has_gpu()
        if not gpu:  # must be set before vLLM is imported
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_bind())
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        cpu = {} if gpu else cpu_engine_defaults()
        path = self._path
        merge = not gpu if self.merge_adapter is None else self.merge_adapter
        if self.adapter is not None and merge:
            path = str(merged_checkpoint(path, self.adapter))
        args: dict[str, Any] = {
            "model": path,
            "dtype": self.dtype or cpu.get("dtype", "auto"),
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.batch_size,
            "seed": self.seed,
            "gpu_memory_utilization": self.gpu_memory_utilization
            or (0.9 if gpu else CPU_MEMORY_UTILIZATION),
            "enforce_eager": bool(
                cpu.get("enforce_eager") if self.enforce_eager is None else self.enforce_eager
            ),
            "max_logprobs": max(20, self.top_logprobs),
        }
        if self.adapter is not None and not merge:
            args.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1)
            self._lora = LoRARequest("flexlog", 1, str(self.adapter))
        args.update(self.engine_args)
        try:
            self._llm = LLM(**args)
        except Exception as exc:
            raise BackendError(f"vLLM could not start {self.model_name}: {exc}") from exc
        return self._llm

    @property
    def tokenizer(self) -> Any:
        return self._load().get_tokenizer()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _run(self, conversations: list[list[dict[str, str]]], params: Any) -> list[Any]:
        try:
            return self._load().chat(conversations, params, use_tqdm=False, lora_request=self._lora)
        except BackendError:
            raise
        except Exception as exc:  # a prompt too long, an engine failure
            raise BackendError(f"vLLM failed on {self.model_name}: {exc}") from exc

    def _sample(self, conversations: list[list[dict[str, str]]], temperature: float) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=temperature, max_tokens=SAMPLE_TOKENS, seed=self.seed)
        return [out.outputs[0].text for out in self._run(conversations, params)]

    def _ladder(
        self, conversations: list[list[dict[str, str]]], template: PromptTemplate
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
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        labels = list(template.labels)
        params = SamplingParams(
            temperature=0.0,
            max_tokens=answer_tokens(labels, self.decoding),
            logprobs=self.top_logprobs or None,
            seed=self.seed,
            structured_outputs=(
                StructuredOutputsParams(choice=labels) if self.decoding == "choice" else None
            ),
        )
        decisions = [
            decide(
                out.outputs[0].text,
                first_answer_top(_positions(out.outputs[0])),
                template,
                self.decoding,
            )
            for out in self._run(conversations, params)
        ]
        retry = [i for i, d in enumerate(decisions) if d is None]
        if retry:
            again = self._ladder([conversations[i] for i in retry], template)
            for i, d in zip(retry, again, strict=True):
                decisions[i] = d
        return decisions  # type: ignore[return-value]

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        with contextlib.suppress(Exception):  # already gone: freeing below is what matters
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        if has_gpu():
            import torch

            torch.cuda.empty_cache()
