"""``flexlog bench``: throughput of the ML path and the cache, of the LLM voter's backends,
of the log parser, or of batch scoring (local against Ray)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexlog.cli.common import DATASETS, CliError, out


def cmd_bench(args: argparse.Namespace) -> int:
    if sum(bool(x) for x in (args.llm, args.parse, args.score)) > 1:
        raise CliError("give one of --llm, --parse and --score")
    if args.llm:
        return _bench_llm(args)
    if args.parse:
        return _bench_parse(args)
    if args.score:
        return _bench_score(args)
    from flexlog.bench import run_bench

    sizes = _sizes(args.sizes or "10000,100000,1000000")
    run_bench(sizes, out_dir=Path(args.out), datasets=Path(args.datasets), console=out)
    return 0


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CliError(f"--sizes {text!r}: expected comma-separated integers") from None
    if not sizes or min(sizes) < 1:
        raise CliError(f"--sizes {text!r}: expected positive integers")
    return sizes


def _bench_parse(args: argparse.Namespace) -> int:
    from flexlog.bench import PARSE_SIZES, bench_parse

    sizes = _sizes(args.sizes) if args.sizes else list(PARSE_SIZES)
    try:
        bench_parse(args.parse, sizes, out_dir=Path(args.out), console=out)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    return 0


def _bench_score(args: argparse.Namespace) -> int:
    from flexlog.score_bench import SCORE_SIZES, bench_score

    sizes = _sizes(args.sizes) if args.sizes else list(SCORE_SIZES)
    actors = _sizes(args.actors) if args.actors else []
    bundle = Path(args.bundle) if args.bundle else None
    if bundle is not None and not (bundle / "manifest.json").is_file():
        raise CliError(f"{bundle}: not a flexlog bundle (no manifest.json)")
    if actors:
        try:
            from flexlog.ray_engine import EngineError, require_ray

            require_ray()
        except EngineError as exc:
            raise CliError(str(exc)) from None
    try:
        bench_score(sizes, actors=actors, bundle=bundle, files=args.files, out_dir=Path(args.out))
    except (ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
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
    bn.add_argument(
        "--sizes",
        help="comma-separated batch sizes (default 10000,100000,1000000), or with --parse "
        "line counts (default 100000,1000000; add 10000000 for the full range: minutes)",
    )
    bn.add_argument("--datasets", default=str(DATASETS))
    bn.add_argument("--out", default="runs/bench")
    bn.add_argument(
        "--parse",
        nargs="?",
        const="hdfs",
        metavar="PRESET",
        help="parser throughput instead: generated lines of PRESET (default hdfs), fit and "
        "parse, lines/s and peak memory per size",
    )
    sc = bn.add_argument_group("batch scoring, local against Ray (instead of the ML path)")
    sc.add_argument(
        "--score",
        action="store_true",
        help="flexlog score on generated HDFS lines (--sizes: line counts, default 1000000; "
        "add 10000000 for the full range): lines/s, sequences/s, peak memory per worker",
    )
    sc.add_argument("--actors", default="1,2", help="Ray actor counts to measure ('' : local only)")
    sc.add_argument(
        "--bundle", help="score with this bundle (default: one trained on generated lines)"
    )
    sc.add_argument("--files", type=int, default=8, help="files the generated log is split into")
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
