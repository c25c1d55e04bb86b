"""In-process inference with transformers (+ a PEFT LoRA adapter), the backend that needs no
server: it scores both label words after each prompt and picks the likelier one."""

from __future__ import annotations

import json
from pathlib import Path

from flexlog.llm.backends.base import BackendError, LLMBackend
from flexlog.llm.decoding import LabelDecision, by_logprobs, ladder
from flexlog.llm.models import resolve_model
from flexlog.llm.prompt import PromptTemplate, chat_text

DECODINGS = ("logprobs", "ladder")


ADAPTER_INFO = "flexlog-adapter.json"


def check_adapter(adapter: str | Path, base_model: str) -> dict:
    """Read an adapter's configuration and check that it was trained on ``base_model``.

    ``make finetune`` writes ``flexlog-adapter.json`` naming the base model it trained on;
    an adapter for another base is refused here, before PEFT fails on mismatched shapes.
    Pickled weights are refused: only ``adapter_model.safetensors`` is accepted.
    """
    adapter = Path(adapter)
    cfg_path = adapter / "adapter_config.json"
    if not cfg_path.is_file():
        raise BackendError(f"{adapter}: not a LoRA adapter (no adapter_config.json)")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise BackendError(f"{adapter}: no adapter_model.safetensors (pickled weights refused)")
    try:
        cfg = json.loads(cfg_path.read_text())
        info_path = adapter / ADAPTER_INFO
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise BackendError(f"{adapter}: corrupt adapter configuration ({exc})") from exc
    trained_on = info.get("base_model")
    if trained_on and not _same_model(str(trained_on), str(base_model)):
        raise BackendError(
            f"{adapter}: adapter was fine-tuned on base model {trained_on!r}, not {base_model!r}"
        )
    return {**cfg, **info}


def _same_model(a: str, b: str) -> bool:
    """Whether two model references (names like ``smollm2``, paths, hub ids) are one model."""
    if a == b:
        return True
    try:
        return Path(resolve_model(a)).resolve() == Path(resolve_model(b)).resolve()
    except (ValueError, OSError):
        return False


class TransformersBackend(LLMBackend):
    """transformers + PEFT in one process.

    Parameters
    ----------
    model : base model (``smollm2``, ``tiny-mistral``, a checkpoint dir or a hub id).
    adapter : LoRA adapter directory (PEFT format, safetensors), or None for the base model.
    decoding : "logprobs" (compare the two labels' log-probabilities; deterministic) or
        "ladder" (sample at temperature 0.1, retry at 0.2 ... 1.0, as the paper does).
    batch_size : prompts per forward pass.
    """

    name = "transformers"

    def __init__(
        self,
        model: str = "smollm2",
        adapter: str | Path | None = None,
        *,
        decoding: str = "logprobs",
        batch_size: int = 8,
        device: str = "cpu",
        seed: int = 0,
    ):
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model_name = model
        self.adapter = adapter
        self.decoding = decoding
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self._model = None
        self._tokenizer = None

    def _load(self):
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(self.model_name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if self.adapter is not None:
            from peft import PeftModel

            check_adapter(self.adapter, self.model_name)
            try:
                model = PeftModel.from_pretrained(model, str(self.adapter))
            except (RuntimeError, ValueError, KeyError) as exc:
                raise BackendError(
                    f"{self.adapter}: adapter does not match base model {self.model_name}: {exc}"
                ) from exc
        model.to(self.device).eval()
        self._model, self._tokenizer = model, tokenizer
        self.context_tokens = int(getattr(model.config, "max_position_embeddings", 2048))

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def classify(
        self, conversations: list[list[dict[str, str]]], template: PromptTemplate
    ) -> list[LabelDecision]:
        self._load()
        texts = [chat_text(self._tokenizer, c, add_generation_prompt=True) for c in conversations]
        if self.decoding == "ladder":
            return ladder(
                len(texts),
                lambda idx, t: self._generate([texts[i] for i in idx], t),
                template.label_of,
            )
        out: list[LabelDecision] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            scores = self._label_logprobs(chunk, template.labels)
            out.extend(by_logprobs(n, a) for n, a in scores)
        return out

    def _label_logprobs(self, prompts: list[str], labels: tuple[str, ...]) -> list[tuple]:
        """Sum of log p(label tokens | prompt) for every prompt and label: one padded forward
        pass over the prompts, then each label's remaining tokens on a copy of the KV cache."""
        import copy

        import torch

        tok = self._tokenizer
        rows = [tok(p, add_special_tokens=False).input_ids for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every prompt ends at the last column
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            first = self._model(  # logits of the last position only: the LM head is costly
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
            )
            next_logp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)
            per_label = []
            for label in labels:
                label_ids = tok(label, add_special_tokens=False).input_ids
                score = next_logp[:, label_ids[0]].clone()
                if len(label_ids) > 1:
                    rest = torch.tensor(label_ids[:-1], device=self.device).expand(len(rows), -1)
                    more = torch.ones_like(rest)
                    cont = self._model(
                        input_ids=rest,
                        attention_mask=torch.cat([mask, more], dim=1),
                        position_ids=positions[:, -1:] + more.cumsum(-1),
                        past_key_values=copy.deepcopy(first.past_key_values),
                        use_cache=True,
                    )
                    logp = torch.log_softmax(cont.logits.float(), dim=-1)
                    targets = torch.tensor(label_ids[1:], device=self.device).expand(len(rows), -1)
                    score += logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(dim=-1)
                per_label.append(score.tolist())
        return list(zip(*per_label, strict=True))

    def _generate(self, prompts: list[str], temperature: float) -> list[str]:
        import torch

        torch.manual_seed(self.seed)
        tok = self._tokenizer
        out = []
        for start in range(0, len(prompts), self.batch_size):
            batch = tok(
                prompts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            with torch.inference_mode():
                gen = self._model.generate(
                    **{k: v.to(self.device) for k, v in batch.items()},
                    do_sample=True,
                    temperature=temperature,
                    max_new_tokens=4,
                    pad_token_id=tok.pad_token_id,
                )
            new = gen[:, batch["input_ids"].shape[1] :]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
        return out

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
