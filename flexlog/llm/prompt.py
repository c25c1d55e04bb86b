"""The five-part FlexLog prompt (description, instruction, relevant information, input,
output), read from ``prompts/*.yaml`` and rendered the same way for fine-tuning and inference.

Long sequences are handled deliberately, in this order, until the prompt fits the token budget:

1. consecutive repeats are run-length encoded (``read x12``), which loses no information;
2. retrieved knowledge is cut to its own share of the budget (``knowledge_share``, a quarter by
   default), least relevant item first, so that a long sequence never crowds it out entirely;
3. the middle of the sequence is replaced by ``... N events omitted ...``, keeping its start
   and end (where process start-up and the attack's effect usually are);
4. only if even two events do not fit beside the remaining knowledge is more of it dropped.

If even the bare prompt around a two-event sequence does not fit, rendering raises ValueError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

PARTS = ("description", "instruction", "relevant_information", "input", "output")
_KEYS = {"name", "version", "labels", "domains", *PARTS}
DEFAULT_TEMPLATE = "anomaly_detection"
#: Share of the token budget that retrieved knowledge may keep when the prompt must shrink.
KNOWLEDGE_SHARE = 0.25


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 4 characters per token), for remote backends."""
    return max(1, len(text) // 4)


def run_length(events: Sequence[str]) -> list[str]:
    """``[a, a, a, b]`` → ``["a x3", "b"]``."""
    out: list[str] = []
    i = 0
    while i < len(events):
        j = i
        while j + 1 < len(events) and events[j + 1] == events[i]:
            j += 1
        n = j - i + 1
        out.append(f"{events[i]} x{n}" if n > 1 else events[i])
        i = j + 1
    return out


def _elide(items: list[str], keep: int) -> list[str]:
    if keep >= len(items):
        return items
    head, tail = (keep + 1) // 2, keep // 2
    omitted = len(items) - head - tail
    return [*items[:head], f"... {omitted} events omitted ...", *(items[-tail:] if tail else [])]


@dataclass(frozen=True)
class RenderedPrompt:
    """A rendered prompt and what had to be given up to fit it in the budget."""

    text: str
    items: int
    knowledge_used: int
    elided: bool

    def messages(self, answer: str | None = None) -> list[dict[str, str]]:
        """OpenAI-style chat messages; with ``answer``, the assistant turn for training."""
        msgs = [{"role": "user", "content": self.text}]
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        return msgs


@dataclass(frozen=True)
class PromptTemplate:
    """The prompt's five parts and its answer labels, as read from a YAML file."""

    name: str
    version: int
    labels: tuple[str, str]
    domains: dict[str, str]
    description: str
    instruction: str
    relevant_information: str
    input: str
    output: str
    source: str = field(default="", compare=False)

    @classmethod
    def load(cls, name_or_path: str | Path = DEFAULT_TEMPLATE) -> PromptTemplate:
        """A shipped template by name (``prompts/<name>.yaml``) or a YAML file by path."""
        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml") or path.exists():
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"{path}: cannot read prompt template: {exc}") from exc
            source = str(path)
        else:
            res = resources.files("flexlog.prompts").joinpath(f"{name_or_path}.yaml")
            if not res.is_file():
                raise ValueError(f"no shipped prompt template named {name_or_path!r}")
            text, source = res.read_text(encoding="utf-8"), f"prompts/{name_or_path}.yaml"
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{source}: not valid YAML: {exc}") from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: object, *, source: str = "<dict>") -> PromptTemplate:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a prompt template is a mapping")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; allowed: {sorted(_KEYS)}")
        missing = sorted(k for k in _KEYS if k not in data)
        if missing:
            raise ValueError(f"{source}: missing keys {missing}")
        labels = data["labels"]
        if not (isinstance(labels, list) and len(labels) == 2 and all(map(str.strip, labels))):
            raise ValueError(f"{source}: labels must be two words, [normal, anomalous]")
        if "{events}" not in data["input"]:
            raise ValueError(f"{source}: the input part must contain {{events}}")
        if "{knowledge}" not in data["relevant_information"]:
            raise ValueError(f"{source}: relevant_information must contain {{knowledge}}")
        return cls(
            name=str(data["name"]),
            version=int(data["version"]),
            labels=(str(labels[0]), str(labels[1])),
            domains={str(k): str(v) for k, v in data["domains"].items()},
            **{p: str(data[p]).strip() for p in PARTS},
            source=source,
        )

    def _join(self, domain: str, items: list[str], knowledge: list[str]) -> str:
        if domain not in self.domains:
            raise ValueError(f"unknown domain {domain!r}; known: {sorted(self.domains)}")
        parts = [
            self.description.format(domain=self.domains[domain]),
            self.instruction,
        ]
        if knowledge:
            parts.append(self.relevant_information.format(knowledge="\n".join(knowledge)))
        parts.append(self.input.format(events=", ".join(items)))
        parts.append(self.output)
        return "\n\n".join(parts)

    def render(
        self,
        events: Sequence[str],
        *,
        domain: str = "logs",
        knowledge: Sequence[str] = (),
        max_tokens: int | None = None,
        count_tokens: Callable[[str], int] = approx_tokens,
        knowledge_share: float = KNOWLEDGE_SHARE,
    ) -> RenderedPrompt:
        """Render one sequence, shrinking it as the module docstring describes to fit
        ``max_tokens`` (counted with ``count_tokens``)."""
        if not events:
            raise ValueError("cannot render an empty sequence")
        if not 0.0 <= knowledge_share <= 1.0:
            raise ValueError(f"knowledge_share must be in [0, 1], got {knowledge_share}")
        items = run_length(list(events))
        kept = list(knowledge)
        text = self._join(domain, items, kept)
        if max_tokens is None or count_tokens(text) <= max_tokens:
            return RenderedPrompt(text, len(items), len(kept), False)
        share = knowledge_share * max_tokens
        while kept and count_tokens("\n".join(kept)) > share:
            kept.pop()
        text = self._join(domain, items, kept)
        if count_tokens(text) <= max_tokens:
            return RenderedPrompt(text, len(items), len(kept), False)

        def fits(n: int) -> bool:
            return count_tokens(self._join(domain, _elide(items, n), kept)) <= max_tokens

        while not fits(2):
            if not kept:
                raise ValueError(
                    f"the prompt does not fit in {max_tokens} tokens even for 2 events"
                )
            kept.pop()
        lo, hi = 2, len(items)  # binary search for the most items that fit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return RenderedPrompt(self._join(domain, _elide(items, lo), kept), lo, len(kept), True)

    def label_of(self, text: str) -> int | None:
        """0 / 1 for an answer that starts with one of the labels, else None."""
        words = text.strip().lower().replace(".", " ").replace(":", " ").split()
        if not words:
            return None
        first = words[0].strip("\"'`*")
        for value, label in enumerate(self.labels):
            if first == label.lower():
                return value
        return None


def chat_text(tokenizer, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    """Apply the model's own chat template where it has one; plain text otherwise."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    text = "\n\n".join(m["content"] for m in messages)
    return text + (" " if add_generation_prompt else "")
