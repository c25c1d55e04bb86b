"""``flexlog serve`` and ``flexlog serve-bench``, added to the flexlog command line through
the ``flexlog.commands`` entry point (flexlog itself imports nothing from here)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

#: Settings fields that ``flexlog serve`` exposes as options, with their help.
_LIMITS = {
    "max_request_bytes": (int, "largest request body, bytes (default 8 MiB)"),
    "max_batch": (int, "sequences or prompts per request (default 1024)"),
    "max_lines": (int, "raw log lines per request (default 100000)"),
    "max_events": (int, "events per sequence (default 100000)"),
    "max_line_chars": (
        int,
        "characters per raw log line; longer ones are rejected (default 65536)",
    ),
    "batch_size": (int, "sequences per micro-batch of the voters (default 256)"),
    "batch_wait_ms": (float, "wait to fill a micro-batch, ms (default 2)"),
    "retry_after": (float, "seconds a failed voter rests before it is asked again (default 15)"),
    "request_timeout": (float, "seconds to answer a request before 503 (default 600)"),
    "parse_timeout": (float, "seconds to parse a request's raw log lines before 408 (default 10)"),
    "body_timeout": (float, "seconds to receive a request body before 408 (default 30)"),
    "max_connections": (int, "open connections before new ones get 503 (default 1024)"),
    "keep_alive": (float, "seconds an idle keep-alive connection stays open (default 5)"),
    "cache_timeout": (float, "seconds to wait for a locked cache database (default 0.25)"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` and ``serve-bench`` commands."""
    from flexlog.cli.logs import add_parser_options

    s = subparsers.add_parser(
        "serve", help="serve a bundle over an OpenAI-compatible HTTP API (FastAPI + uvicorn)"
    )
    s.add_argument(
        "--bundle",
        required=True,
        help="bundle directory from flexlog train; loaded again from this path (which may be "
        "a symlink to repoint) on SIGHUP or POST /v1/admin/reload",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="read key: detect, chat, completions, cache reads (repeatable); better: "
        "$FLEXLOG_API_KEYS or --api-keys-file",
    )
    s.add_argument("--api-keys-file", help="file with one read key per line")
    s.add_argument(
        "--admin-api-key",
        action="append",
        default=[],
        help="admin key: also corrects the cache (repeatable); better: "
        "$FLEXLOG_ADMIN_API_KEYS or --admin-api-keys-file",
    )
    s.add_argument("--admin-api-keys-file", help="file with one admin key per line")
    s.add_argument(
        "--public-metrics",
        action="store_true",
        help="serve /metrics, /docs and /openapi.json without a key when keys are set",
    )
    s.add_argument(
        "--cache",
        default="bundle",
        help="'bundle' (BUNDLE/cache.sqlite, default), 'memory', 'off', a database path, or a "
        "postgresql:// URL (a cache several replicas share)",
    )
    s.add_argument(
        "--verdict-log",
        default="bundle",
        help="where the review page (/review) keeps recent verdicts: 'bundle' "
        "(BUNDLE/verdicts.sqlite, default), 'memory', 'off', or a database path",
    )
    s.add_argument(
        "--review-keep", type=int, default=10_000, help="verdicts kept for review (default 10000)"
    )
    s.add_argument(
        "--review-rate",
        type=float,
        default=500.0,
        help="verdicts a second kept for review, anomalous and human ones first (default 500)",
    )
    s.add_argument("--model-name", default="flexlog", help="model id of the ensemble")
    s.add_argument("--llm-base-url", help="point the bundle's LLM voter at this server")
    s.add_argument("--llm-timeout", type=float, help="LLM request timeout, seconds")
    s.add_argument(
        "--vllm",
        metavar="CONFIG",
        help="start vLLM for the LLM voter: 'cpu', 'gpu' or a launch config YAML",
    )
    s.add_argument("--vllm-log", help="file for the vLLM server's output")
    s.add_argument(
        "--all-votes",
        action="store_true",
        help="ask every voter about every sequence (default: only the voters whose vote can "
        "still change the label; the labels are the same)",
    )
    add_parser_options(s)
    for name, (kind, text) in _LIMITS.items():
        s.add_argument(f"--{name.replace('_', '-')}", type=kind, help=text)
    s.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    s.set_defaults(func=cmd_serve)

    b = subparsers.add_parser(
        "serve-bench", help="load-test a running service: req/s and p50/p99 latency"
    )
    b.add_argument("--url", help="service for the cache and ML paths")
    b.add_argument("--ensemble-url", help="service whose bundle has the LLM voter")
    b.add_argument("--sequences", required=True, help="canonical JSONL to draw requests from")
    b.add_argument(
        "--concurrency",
        default="1,8,32",
        help="comma-separated client counts ('' skips the cache, ML and ensemble paths)",
    )
    b.add_argument(
        "--detect-batches",
        default="",
        metavar="N,N,...",
        help="also POST batches of N fresh sequences to --url's /v1/detect, one client, and "
        "report sequences/s (e.g. 1,100,1000)",
    )
    b.add_argument(
        "--bundle",
        help="the service's bundle: with --detect-batches, Detector.predict's sequences/s on "
        "the same batches in this process stand beside the service's",
    )
    b.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    b.add_argument("--model", default="flexlog")
    b.add_argument("--api-key", help="bearer key (or $FLEXLOG_API_KEY)")
    b.add_argument("--out", default="runs/serve-bench", help="report directory")
    b.set_defaults(func=cmd_serve_bench)


def _api_keys(given: list[str], option: str, env: str, keys_file: str | None) -> tuple[str, ...]:
    """The keys from the options, the environment and a file; any source that is configured
    but empty stops the server (fail closed) with a message naming it."""
    from .settings import api_keys_from_env, api_keys_from_file

    for key in given:
        if not key.strip():
            raise ValueError(f"{option} was given an empty key")
    keys = [k.strip() for k in given]
    keys += api_keys_from_env(env)
    if keys_file is not None:
        keys += api_keys_from_file(keys_file)
    return tuple(dict.fromkeys(keys))


def _log_preset(args: argparse.Namespace) -> dict | None:
    """The raw-line format the options describe (for bundles without a parser), or None."""
    from flexlog.parsing.preset_files import resolve_preset

    given = (args.preset, args.preset_file, args.log_format, args.mask, args.sim_th, args.depth)
    if not any(given):
        return None
    return resolve_preset(
        args.preset,
        preset_file=args.preset_file,
        log_format=args.log_format,
        masks=args.mask,
        sim_th=args.sim_th,
        depth=args.depth,
    ).to_dict()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the bundle and serve it until interrupted."""
    try:
        from pydantic import ValidationError

        from .app import create_app
        from .runner import serve_forever
        from .settings import ADMIN_API_KEYS_ENV, API_KEYS_ENV, Settings
    except ImportError as exc:
        raise ValueError(f"flexlog serve needs the 'serve' extra of flexlog: {exc}") from exc

    options = {k: getattr(args, k) for k in _LIMITS if getattr(args, k) is not None}
    try:
        settings = Settings(
            host=args.host,
            port=args.port,
            api_keys=_api_keys(args.api_key, "--api-key", API_KEYS_ENV, args.api_keys_file),
            admin_api_keys=_api_keys(
                args.admin_api_key,
                "--admin-api-key",
                ADMIN_API_KEYS_ENV,
                args.admin_api_keys_file,
            ),
            public_metrics=args.public_metrics,
            log_preset=_log_preset(args),
            cache=args.cache,
            verdict_log=args.verdict_log,
            review_keep=args.review_keep,
            review_rate=args.review_rate,
            model_name=args.model_name,
            llm_base_url=args.llm_base_url,
            llm_timeout=args.llm_timeout,
            vllm=args.vllm,
            vllm_log=args.vllm_log,
            all_votes=args.all_votes,
            log_level=args.log_level,
            **options,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid serve options: {problems}") from None
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.auth and not _is_loopback(settings.host):
        print(
            f"warning: serving on {settings.host} without API keys; anyone who can reach it "
            "can use it (cache corrections over HTTP stay refused without an admin key)",
            file=sys.stderr,
        )
    app = create_app(Path(args.bundle), settings)
    serve_forever(app, settings)
    return 0


def cmd_serve_bench(args: argparse.Namespace) -> int:
    """Run :func:`flexlog.serve.bench.run_bench` and print and save the table."""
    import os

    from flexlog.data.records import read_jsonl

    try:
        from .bench import (
            format_detect_table,
            format_table,
            run_bench,
            run_detect_batches,
            save_results,
        )
    except ImportError as exc:
        raise ValueError(f"flexlog serve-bench needs the 'serve' extra of flexlog: {exc}") from exc

    seqs, report = read_jsonl(args.sequences)
    if not seqs:
        raise ValueError(f"{args.sequences}: no usable sequences ({report.summary()})")
    concurrency = _integers(args.concurrency, "--concurrency")
    detect_batches = _integers(args.detect_batches, "--detect-batches")
    if not args.url and not args.ensemble_url:
        raise ValueError("serve-bench needs --url, --ensemble-url or both")
    if detect_batches and not args.url:
        raise ValueError("--detect-batches needs --url")
    api_key = args.api_key or os.environ.get("FLEXLOG_API_KEY")
    targets = {}
    if args.url:
        targets.update(cache=args.url.rstrip("/"), ml=args.url.rstrip("/"))
    if args.ensemble_url:
        targets["ensemble"] = args.ensemble_url.rstrip("/")
    results = run_bench(
        targets,
        seqs,
        concurrency=concurrency,
        duration=args.duration,
        model=args.model,
        api_key=api_key,
        progress=lambda r: print(
            f"{r.scenario} x{r.concurrency}: {r.rps:.1f} req/s, p50 {r.p50_ms:.1f} ms, "
            f"p99 {r.p99_ms:.1f} ms, {r.errors} errors",
            file=sys.stderr,
        ),
    )
    detect = []
    if detect_batches:
        detect = run_detect_batches(
            args.url.rstrip("/"),
            seqs,
            batches=detect_batches,
            duration=args.duration,
            bundle=args.bundle,
            model=args.model,
            api_key=api_key,
            progress=lambda r: print(
                f"detect batch {r.batch}: {r.service_rate:.1f} sequences/s"
                + (
                    f", in-process {r.inprocess_cached_rate:.1f}/s with the memory cache as "
                    f"served (ratio {r.ratio:.2f}), {r.inprocess_rate:.1f}/s without"
                    if r.inprocess_rate and r.inprocess_cached_rate and r.ratio
                    else ""
                )
                + f", {r.errors} errors",
                file=sys.stderr,
            ),
        )
    tables = [format_table(results)] if results else []
    tables += [format_detect_table(detect)] if detect else []
    print("\n\n".join(tables))
    path = save_results(results, args.out, detect)
    print(f"written to {path}", file=sys.stderr)
    return 0


def _integers(text: str, option: str) -> list[int]:
    """The comma-separated integers of an option."""
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError as exc:
        raise ValueError(f"{option} {text!r}: expected integers") from exc
