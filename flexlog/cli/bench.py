"""``flexlog bench``: throughput of the ML path and the cache, or of the LLM voter's backends."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexlog.cli.common import DATASETS, CliError, out


def cmd_bench(args: argparse.Namespace) -> int:
    if args.llm:
        return _bench_llm(args)
    from flexlog.bench import run_bench

    sizes = [int(s) for s in args.sizes.split(",") if s]
    run_bench(sizes, out_dir=Path(args.out), datasets=Path(args.datasets), console=out)
    return 0


def _bench_llm(args: argparse.Namespace) -> int:
    try:
        from flexlog.llm.bench import run_llm_bench
    except ImportError as exc:
        raise CliError(f"the LLM bench needs the 'llm' extra of flexlog: {exc}") from exc
    backends = [b for b in args.llm.split(",") if b]
    try:
        run_llm_bench(
            backends,
            n=args.sequences,
            model=args.model,
            adapter=args.adapter,
            max_prompt_tokens=args.max_prompt_tokens,
            batch_size=args.batch_size,
            datasets=Path(args.datasets),
            out_dir=Path(args.out),
            console=out,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command."""
    bn = subparsers.add_parser(
        "bench", help="throughput of the ML path and the cache, or of the LLM"
    )
    bn.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated batch sizes")
    bn.add_argument("--datasets", default=str(DATASETS))
    bn.add_argument("--out", default="runs/bench")
    llm = bn.add_argument_group("LLM voter throughput (instead of the ML path)")
    llm.add_argument(
        "--llm",
        metavar="BACKENDS",
        help="comma-separated: transformers, vllm, vllm-merged, openai (a vLLM server)",
    )
    llm.add_argument("--sequences", type=int, default=32, help="prompts per backend")
    llm.add_argument("--model", default="smollm2", help="base model")
    llm.add_argument("--adapter", help="LoRA adapter directory from make finetune")
    llm.add_argument("--max-prompt-tokens", type=int, default=512)
    llm.add_argument("--batch-size", type=int, default=8)
    bn.set_defaults(func=cmd_bench)
