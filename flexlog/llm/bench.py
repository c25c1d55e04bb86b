"""LLM voter throughput: the same prompts through each inference backend
(``flexlog bench --llm``).

The prompts are rendered once (retrieval included, budgeted with the model's tokenizer), so
every backend answers exactly the same conversations. For each backend the start-up (model
load, engine or server start) is timed apart from the scoring of the batch, which is what a
long-running detector pays per sequence; one short warm-up call precedes the timed one.
Labels are compared with the first backend's, as a check that the backends agree.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

#: Bench names → how they run. "vllm-merged" and "openai" serve the adapter merged into the
#: base weights (vLLM's LoRA kernels are slow on CPU); "vllm" uses its LoRA support.
#: "openai-fp32-eager" is the server as flexlog started it on CPU before it chose bfloat16 and
#: compilation (:func:`~flexlog.llm.vllm_server.cpu_engine_defaults`), to compare with.
LLM_BENCH_BACKENDS = ("transformers", "vllm", "vllm-merged", "openai", "openai-fp32-eager")


def bench_sequences(datasets: Path, n: int, seed: int = 0) -> list[list[str]]:
    """``n`` ADFA-LD traces, half attacks and half normal validation traces (seeded)."""
    from flexlog.data.adfa import load_adfa

    corpus = load_adfa(datasets / "adfa-ld")
    attacks = [s for seqs in corpus.attacks.values() for s in seqs]
    rng = random.Random(seed)
    half = n // 2
    picked = rng.sample(attacks, min(half, len(attacks)))
    picked += rng.sample(corpus.validation, min(n - len(picked), len(corpus.validation)))
    rng.shuffle(picked)
    return [s.events for s in picked]


def _open(name: str, model: str, adapter: str | None, batch_size: int):
    """A started backend for a bench name, and the server to stop afterwards (or None)."""
    from flexlog.llm.backends import make_backend

    if name.startswith("openai"):
        from flexlog.llm.vllm_server import VLLMServer

        legacy = {"dtype": "float32", "enforce_eager": True} if name != "openai" else {}
        server = VLLMServer(model, adapter, merge_adapter=adapter is not None, **legacy).start()
        backend = make_backend(
            "openai",
            base_url=server.base_url,
            served_model="flexlog",
            batch_size=batch_size,
            decoding="logprobs",
        )
        return backend, server
    options = {"model": model, "adapter": adapter, "batch_size": batch_size}
    options["decoding"] = "logprobs"  # the same work everywhere: two labels scored
    if name.startswith("vllm"):
        options["merge_adapter"] = name == "vllm-merged"
    return make_backend(name.removesuffix("-merged"), **options), None


def run_llm_bench(
    backends: Sequence[str],
    *,
    n: int = 32,
    model: str = "smollm2",
    adapter: str | None = None,
    max_prompt_tokens: int = 512,
    batch_size: int = 8,
    datasets: Path = Path("../shared/datasets"),
    out_dir: Path | None = None,
    console: Console | None = None,
) -> dict:
    """Score ``n`` prompts with each backend; returns (and writes to ``out_dir``) the report."""
    from flexlog.llm.backends import make_backend
    from flexlog.llm.prompting import PromptAssembler, Retriever

    unknown = sorted(set(backends) - set(LLM_BENCH_BACKENDS))
    if unknown:
        raise ValueError(f"unknown LLM bench backends {unknown}; known: {LLM_BENCH_BACKENDS}")
    if n < 1:
        raise ValueError(f"the bench needs at least one sequence, got {n}")
    console = console or Console(stderr=True)
    sequences = bench_sequences(datasets, n)
    with make_backend("transformers", model=model, adapter=adapter) as tokenizer:
        assembler = PromptAssembler(
            domain="syscalls",
            max_tokens=max_prompt_tokens,
            count_tokens=tokenizer.count_tokens,
            retriever=Retriever("syscalls"),
        )
        conversations = assembler.conversations(sequences)
        tokens = [tokenizer.count_tokens(c[0]["content"]) for c in conversations]
    template = assembler.template
    rows: dict[str, dict] = {}
    reference: list[int] | None = None
    for name in backends:
        console.print(f"[bold]{name}[/]: starting")
        t0 = time.perf_counter()
        backend, server = _open(name, model, adapter, batch_size)
        try:
            backend.classify(conversations[:1], template)  # loads the model / warms the engine
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            decisions = backend.classify(conversations, template)
            seconds = time.perf_counter() - t1
        finally:
            backend.close()
            if server is not None:
                server.stop()
        labels = [d.label for d in decisions]
        reference = reference or labels
        rows[name] = {
            "startup_seconds": round(startup, 2),
            "seconds": round(seconds, 3),
            "sequences_per_second": round(len(conversations) / seconds, 3),
            "prompt_tokens_per_second": round(sum(tokens) / seconds, 1),
            "paths": sorted({d.path for d in decisions}),
            "agreement_with_first": round(
                sum(a == b for a, b in zip(labels, reference, strict=True)) / len(labels), 3
            ),
        }
        console.print(f"  {rows[name]['sequences_per_second']:.2f} sequences/s")
    report = {
        "sequences": len(conversations),
        "prompt_tokens_mean": round(sum(tokens) / len(tokens), 1),
        "model": model,
        "adapter": adapter,
        "max_prompt_tokens": max_prompt_tokens,
        "batch_size": batch_size,
        "backends": rows,
    }
    console.print(_table(report))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "llm-bench.json").write_text(json.dumps(report, indent=1) + "\n")
        (out_dir / "llm-bench.md").write_text(_markdown(report))
    return report


_COLUMNS = (
    ("backend", None),
    ("start-up s", "startup_seconds"),
    ("sequences/s", "sequences_per_second"),
    ("prompt tokens/s", "prompt_tokens_per_second"),
    ("agreement", "agreement_with_first"),
)


def _table(report: dict) -> Table:
    table = Table(
        title=f"LLM voter throughput ({report['sequences']} prompts, "
        f"~{report['prompt_tokens_mean']:.0f} tokens each)"
    )
    for title, _ in _COLUMNS:
        table.add_column(title, justify="left" if title == "backend" else "right")
    for name, row in report["backends"].items():
        table.add_row(name, *(str(row[key]) for _, key in _COLUMNS[1:]))
    return table


def _markdown(report: dict) -> str:
    lines = [
        f"# LLM voter throughput: {report['sequences']} ADFA-LD prompts, "
        f"~{report['prompt_tokens_mean']:.0f} tokens each, model {report['model']}, "
        f"adapter {report['adapter'] or '-'}",
        "",
        "| " + " | ".join(t for t, _ in _COLUMNS) + " |",
        "|---|" + "---:|" * (len(_COLUMNS) - 1),
    ]
    for name, row in report["backends"].items():
        lines.append(f"| {name} | " + " | ".join(str(row[k]) for _, k in _COLUMNS[1:]) + " |")
    return "\n".join(lines) + "\n"
