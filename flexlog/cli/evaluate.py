"""``flexlog evaluate``: precision, recall and F1 of a bundle on labelled sequences."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flexlog.cli.common import (
    CliError,
    _evaluate,
    _load_with_cache,
    _metrics_table,
    _open_cache,
    _print_report,
    _read_labelled,
    out,
)
from flexlog.cli.logs import add_label_options, add_parser_options, add_partition_options


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flexlog.data.templates import read_templates

    bundle_path = Path(args.bundle)
    bundle = _load_with_cache(
        bundle_path, lambda: _open_cache(args, bundle_path) if args.cache else None
    )
    templates = read_templates(args.templates) if args.templates else None
    try:
        seqs, report, _ = _read_labelled(Path(args.test), args, bundle=bundle, templates=templates)
        if not seqs:
            raise CliError(f"{args.test}: no usable labelled sequences ({report.summary()})")
        res = _evaluate(bundle.detector, seqs, all_votes=args.all_votes)
    finally:
        if bundle.detector.cache is not None:
            bundle.detector.cache.close()
    scores = res["scores"]
    if args.json:
        ens = scores["ensemble"]
        voters = {k: v for k, v in scores.items() if k not in ("ensemble", "with_cache")}
        payload = {**ens, "voters": voters}
        if "with_cache" in scores:
            payload["with_cache"] = scores["with_cache"]
        payload["asked_share"] = res["asked_share"]
        payload["input"] = {
            "read": report.read,
            "accepted": report.accepted,
            "rejected": report.rejected,
        }
        print(json.dumps(payload, indent=None))
    else:
        if report.rejected:
            _print_report(report)
        out.print(_metrics_table(f"{args.test} ({report.accepted} sequences)", scores))
        share = ", ".join(f"{n} {100 * v:.0f} %" for n, v in res["asked_share"].items())
        out.print(
            f"rule {bundle.detector.ensemble.rule.name}; distinct sequences asked per voter: "
            f"{share}" + ("" if args.all_votes else " (short-circuit voting; --all-votes asks all)")
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command."""
    e = subparsers.add_parser(
        "evaluate", help="precision / recall / F1 of a bundle on labelled data"
    )
    e.add_argument("--bundle", required=True)
    e.add_argument(
        "--test",
        required=True,
        help="labelled canonical JSONL, or raw logs (with --label-field or --labels; parsed "
        "and partitioned the bundle's way unless the options say otherwise)",
    )
    e.add_argument("--templates", help="EventId,EventTemplate CSV of the test events")
    e.add_argument("--cache", action="store_true", help="also report answers through the cache")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--all-votes",
        action="store_true",
        help="ask every voter about every sequence (per-voter scores on the whole file; the "
        "ensemble's labels are the same)",
    )
    add_parser_options(e)
    add_partition_options(e)
    add_label_options(e)
    e.set_defaults(func=cmd_evaluate, no_cache=False)
