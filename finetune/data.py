"""Training examples: labelled sequences rendered with the FlexLog prompt, as chat turns.

Each example is one conversation, user = the rendered prompt (shrunk to fit the token budget the
way inference shrinks it), assistant = the label word. It is tokenized with the model's own chat
template, exactly as inference tokenizes the prompt (``add_special_tokens=False``: the template
carries any BOS), and the ``labels`` are ``-100`` everywhere except the assistant's answer and the
token that ends its turn, so the loss is on the answer only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flexlog.data.records import InputError, LogSequence, read_jsonl
from flexlog.llm.prompt import PromptTemplate, RenderedPrompt, chat_text

IGNORE_INDEX = -100


class DataError(ValueError):
    """Training data that cannot be used (missing file, nothing labelled)."""


@dataclass(frozen=True)
class TrainingData:
    """The labelled sequences of a file, with what was skipped and the file's hash."""

    sequences: list[LogSequence]
    skipped: list[str]
    sha256: str
    path: str


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_training_data(path: str | Path) -> TrainingData:
    """Read a canonical JSONL file and keep its labelled sequences.

    Unlabelled or malformed lines are skipped and listed; a file with no labelled sequence at
    all, or one that cannot be read, is a :class:`DataError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such training data file")
    try:
        sequences, report = read_jsonl(path, require_label=True)
    except InputError as exc:
        raise DataError(str(exc)) from exc
    if not sequences:
        why = f" (first problem: {report.rejections[0]})" if report.rejections else ""
        raise DataError(f"{path}: no labelled sequences{why}")
    return TrainingData(
        sequences=sequences,
        skipped=[str(r) for r in report.rejections],
        sha256=sha256_of(path),
        path=str(path),
    )


@dataclass(frozen=True)
class Example:
    """One tokenized training conversation."""

    id: str
    input_ids: list[int]
    labels: list[int]
    label: int
    elided: bool

    @property
    def answer_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def _uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _encode(tokenizer, text: str) -> list[int]:
    special = not _uses_chat_template(tokenizer)  # the chat template carries BOS itself
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def prompt_ids(tokenizer, prompt: RenderedPrompt) -> list[int]:
    """The token ids inference feeds the model for this prompt (generation prompt included)."""
    return _encode(tokenizer, chat_text(tokenizer, prompt.messages(), add_generation_prompt=True))


def encode_example(tokenizer, prompt: RenderedPrompt, answer: str) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for a prompt and its answer; labels are -100 except on the answer.

    The whole conversation is tokenized in one piece (so the answer's first token is the one
    the model would generate after the prompt) and a token is labelled when its characters lie
    in the assistant's part: the answer word and the end-of-turn marker. Trailing whitespace
    after the marker is dropped, so the sequence ends with the last labelled token.
    """
    prompt_text = chat_text(tokenizer, prompt.messages(), add_generation_prompt=True)
    full_text = chat_text(tokenizer, prompt.messages(answer=answer), add_generation_prompt=False)
    if not _uses_chat_template(tokenizer):
        full_text = prompt_text + answer + (tokenizer.eos_token or "")
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently with an answer")
    start, end = len(prompt_text), len(full_text.rstrip())
    enc = tokenizer(
        full_text,
        add_special_tokens=not _uses_chat_template(tokenizer),
        return_offsets_mapping=True,
    )
    ids: list[int] = enc["input_ids"]
    labels = [
        tok if (e > start and s < end) else IGNORE_INDEX
        for tok, (s, e) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    if all(t == IGNORE_INDEX for t in labels):
        raise ValueError("the answer produced no tokens to train on")
    while labels[-1] == IGNORE_INDEX:  # trailing whitespace after the end-of-turn token
        ids, labels = ids[:-1], labels[:-1]
    return ids, labels


def token_counter(tokenizer, template: PromptTemplate) -> Callable[[str], int]:
    """Counts the tokens of a whole training conversation for a user text (longest answer)."""
    longest = max(template.labels, key=len)

    def count(text: str) -> int:
        rendered = RenderedPrompt(text, 0, 0, False)
        ids, _ = encode_example(tokenizer, rendered, longest)
        return len(ids)

    return count


def build_examples(
    sequences: Sequence[LogSequence],
    tokenizer,
    template: PromptTemplate,
    *,
    domain: str,
    max_seq_tokens: int,
    knowledge: Callable[[LogSequence], Sequence[str]] | None = None,
) -> list[Example]:
    """Render, budget and tokenize every labelled sequence."""
    count = token_counter(tokenizer, template)
    out = []
    for seq in sequences:
        if seq.label is None:
            raise DataError(f"sequence {seq.id!r} has no label")
        rendered = template.render(
            seq.events,
            domain=domain,
            knowledge=knowledge(seq) if knowledge else (),
            max_tokens=max_seq_tokens,
            count_tokens=count,
        )
        ids, labels = encode_example(tokenizer, rendered, template.labels[seq.label])
        if len(ids) > max_seq_tokens:  # the counter uses the longest label, so cannot happen
            raise ValueError(f"{seq.id}: {len(ids)} tokens, over {max_seq_tokens}")
        out.append(Example(seq.id, ids, labels, seq.label, rendered.elided))
    return out


class ExampleDataset:
    """A map-style dataset of examples, as the Trainer wants it."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ex = self.examples[i]
        return {"input_ids": ex.input_ids, "labels": ex.labels}


@dataclass
class Collator:
    """Right-pads a batch: ``pad_token_id`` for inputs, -100 for labels, 0 for attention."""

    pad_token_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids, labels, mask = [], [], []
        for b in batch:
            pad = width - len(b["input_ids"])
            ids.append(b["input_ids"] + [self.pad_token_id] * pad)
            labels.append(b["labels"] + [IGNORE_INDEX] * pad)
            mask.append([1] * len(b["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }
