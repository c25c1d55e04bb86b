"""``flexlog parse`` (raw logs into canonical sequences) and ``flexlog parse-accuracy`` (the
presets' grouping accuracy on loghub samples)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from flexlog.cli.common import DATASETS, _add_partition_args, _print_report, _raw_sequences, out
from flexlog.data.records import IngestReport


def cmd_parse(args: argparse.Namespace) -> int:
    from flexlog.data.records import write_jsonl
    from flexlog.data.templates import write_templates

    report = IngestReport()
    seqs, parser = _raw_sequences([Path(p) for p in args.input], args.preset, args, report)
    n = write_jsonl(args.out, seqs)
    if args.templates_out:
        write_templates(args.templates_out, parser.templates())
    _print_report(report)
    out.print(f"{n} sequences, {len(parser.templates())} templates → {args.out}")
    return 0


def cmd_parse_accuracy(args: argparse.Namespace) -> int:
    from flexlog.parsing.accuracy import grouping_report

    rows = grouping_report(Path(args.datasets))
    if args.json:
        print(json.dumps(rows))
        return 0
    table = Table(title="Drain3 grouping accuracy against loghub ground truth")
    columns = ("log", "preset", "lines", "templates (truth)", "templates (found)")
    for col in (*columns, "accuracy", "held-out"):
        table.add_column(col, justify="left" if col in ("log", "preset") else "right")
    for r in rows:
        table.add_row(
            r["log"],
            r["preset"],
            str(r["n_lines"]),
            str(r["n_templates_truth"]),
            str(r["n_templates_predicted"]),
            f"{r['accuracy']:.3f}",
            f"{r['heldout_accuracy']:.3f}",
        )
    out.print("held-out: fitted on the first half of each sample, scored on the second half")
    out.print(table)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``parse`` and ``parse-accuracy`` commands."""
    p = subparsers.add_parser("parse", help="parse raw logs into canonical sequences (Drain3)")
    p.add_argument("--preset", default="generic", help="log format and masking preset")
    p.add_argument("--input", required=True, action="append")
    p.add_argument("--out", required=True, help="canonical JSONL")
    p.add_argument("--templates-out", help="write the mined EventId,EventTemplate CSV")
    _add_partition_args(p)
    p.set_defaults(func=cmd_parse)

    pa = subparsers.add_parser(
        "parse-accuracy", help="grouping accuracy of the presets on loghub samples"
    )
    pa.add_argument("--datasets", default=str(DATASETS))
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(func=cmd_parse_accuracy)
