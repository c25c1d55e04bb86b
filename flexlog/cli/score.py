"""``flexlog score``: verdicts of a bundle on canonical sequences or raw logs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from tqdm.auto import tqdm

from flexlog.cli.common import (
    _add_partition_args,
    _aligned,
    _has_slow_voters,
    _load_with_cache,
    _open_cache,
    _print_report,
    _raw_sequences,
    err,
)
from flexlog.data.records import IngestReport, iter_jsonl


def _write_rejections(path: Path, report: IngestReport) -> Path | None:
    rpath = path.with_name(path.name + ".rejected.jsonl")
    if not report.rejections:
        rpath.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        return None
    with rpath.open("w", encoding="utf-8") as fh:
        for rej in report.rejections:
            fh.write(json.dumps(rej.to_json()) + "\n")
    return rpath


def cmd_score(args: argparse.Namespace) -> int:
    from flexlog.data.templates import read_templates

    bundle_path = Path(args.bundle)
    bundle = _load_with_cache(bundle_path, lambda: _open_cache(args, bundle_path))
    report = IngestReport()
    inputs = [Path(p) for p in args.input]
    if args.format == "jsonl":
        templates = read_templates(args.templates) if args.templates else None
        seqs = [s for p in inputs for s in iter_jsonl(p, report)]
    else:
        from flexlog.parsing import TemplateParser

        saved = bundle.parser_state and TemplateParser.from_dict(bundle.parser_state)
        seqs, parser = _raw_sequences(inputs, args.format, args, report, saved or None)
        templates = parser.templates()
    seqs, remapped = _aligned(bundle, seqs, templates)
    if remapped:
        err.print(f"{remapped} unseen templates mapped to their closest known template")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    anomalous = 0
    with out_path.open("w", encoding="utf-8") as fh:
        for verdict in tqdm(
            bundle.detector.predict_stream(seqs, batch_size=args.batch_size),
            total=len(seqs),
            desc="scoring",
            unit="seq",
            disable=len(seqs) < 1000 and not _has_slow_voters(bundle.detector.ensemble),
        ):
            fh.write(json.dumps(verdict.to_json(), separators=(",", ":")) + "\n")
            anomalous += verdict.label
    unit = "sequences" if args.format == "jsonl" else "log lines"
    err.print(
        f"[bold]scored:[/] {len(seqs)} sequences answered ({anomalous} anomalous) → {escape(str(out_path))}; "
        f"{unit}: {report.read} read = {report.accepted} accepted + {report.rejected} rejected"
    )
    if report.rejected:
        _print_report(report)
        rpath = _write_rejections(out_path, report)
        err.print(f"rejections written to {rpath}")
    else:
        _write_rejections(out_path, report)
    stats = bundle.detector.stats
    share = ", ".join(f"{n} {100 * v:.0f} %" for n, v in bundle.detector.asked_share().items())
    err.print(
        f"cache hits {stats.cache_hits}, voted {stats.voted} distinct sequences"
        + (f"; asked per voter: {share}" if share else "")
    )
    if bundle.detector.cache is not None:
        bundle.detector.cache.close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``score`` command."""
    s = subparsers.add_parser("score", help="score sequences or raw logs with a bundle")
    s.add_argument("--bundle", required=True)
    s.add_argument("--input", required=True, action="append", help="input file (repeatable)")
    s.add_argument("--out", required=True, help="predictions JSONL, one line per input sequence")
    s.add_argument(
        "--format",
        default="jsonl",
        help="jsonl (canonical sequences) or a log preset for raw logs (hdfs, openssh, ...)",
    )
    s.add_argument("--templates", help="EventId,EventTemplate CSV for the input's events (jsonl)")
    _add_partition_args(s)
    s.add_argument("--cache", help="cache database (default: BUNDLE/cache.sqlite)")
    s.add_argument("--no-cache", action="store_true", help="answer every sequence with the voters")
    s.add_argument("--batch-size", type=int, default=4096)
    s.set_defaults(func=cmd_score)
