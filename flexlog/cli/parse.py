"""``flexlog parse`` (raw logs into canonical sequences), ``flexlog parse-accuracy``
(grouping accuracy against loghub-style ground truth) and ``flexlog presets``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from flexlog.cli.common import DATASETS, CliError, _print_report, out
from flexlog.cli.logs import add_parser_options, add_partition_options, parser_from_args, read_raw
from flexlog.data.records import IngestReport


def cmd_parse(args: argparse.Namespace) -> int:
    from flexlog.data.records import write_jsonl
    from flexlog.data.templates import write_templates

    report = IngestReport()
    raw = read_raw([Path(p) for p in args.input], args, report)
    n = write_jsonl(args.out, raw.sequences)
    templates = raw.parser.templates()
    if args.templates_out:
        write_templates(args.templates_out, templates)
    _print_report(report)
    out.print(f"{n} sequences, {len(templates)} templates → {args.out}")
    return 0


def cmd_parse_accuracy(args: argparse.Namespace) -> int:
    from flexlog.parsing.accuracy import evaluate_preset, grouping_report

    if args.log or args.structured:
        if not (args.log and args.structured):
            raise CliError("--log and --structured go together")
        row = evaluate_preset(args.log, args.structured, parser_from_args(args).preset)
        row = {"log": args.log, "grouping_accuracy": row["accuracy"], **row}
        if args.json:
            print(json.dumps(row))
        else:
            out.print(
                f"{args.log}: grouping accuracy {row['accuracy']:.3f} ({row['n_lines']} lines, "
                f"{row['n_templates_predicted']} templates found, {row['n_templates_truth']} "
                f"true; {row['n_rejected']} lines rejected)"
            )
        return 0
    rows = grouping_report(Path(args.datasets))
    if args.json:
        print(json.dumps([{"grouping_accuracy": r["accuracy"], **r} for r in rows]))
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


def cmd_presets(args: argparse.Namespace) -> int:
    from flexlog.parsing import PRESETS, get_preset
    from flexlog.parsing.preset_files import preset_yaml

    if args.action == "show":
        if not args.name:
            raise CliError("presets show needs a NAME (flexlog presets lists them)")
        print(preset_yaml(get_preset(args.name)), end="")
        return 0
    if args.name:
        raise CliError(
            f"unexpected {args.name!r}: did you mean `flexlog presets show {args.name}`?"
        )
    table = Table(title="built-in log presets (flexlog presets show NAME prints one as YAML)")
    for col in ("name", "log format", "masks", "session id", "description"):
        table.add_column(col)
    for name, preset in PRESETS.items():
        table.add_row(
            name,
            preset.log_format,
            str(len(preset.masking)),
            "yes" if preset.session_pattern else "-",
            preset.description,
        )
    out.print(table)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``parse``, ``parse-accuracy`` and ``presets`` commands."""
    p = subparsers.add_parser("parse", help="parse raw logs into canonical sequences (Drain3)")
    p.add_argument("--input", required=True, action="append")
    p.add_argument("--out", required=True, help="canonical JSONL")
    p.add_argument("--templates-out", help="write the mined EventId,EventTemplate CSV")
    add_parser_options(p)
    add_partition_options(p)
    p.set_defaults(func=cmd_parse)

    pa = subparsers.add_parser(
        "parse-accuracy",
        help="grouping accuracy of a log format on a loghub-style labelled sample (default: "
        "every preset on the shipped loghub samples)",
    )
    pa.add_argument("--log", help="a raw log sample")
    pa.add_argument("--structured", help="its loghub *_structured.csv (EventId per line)")
    pa.add_argument("--datasets", default=str(DATASETS))
    pa.add_argument("--json", action="store_true")
    add_parser_options(pa)
    pa.set_defaults(func=cmd_parse_accuracy)

    pr = subparsers.add_parser("presets", help="list the built-in log presets, or show one")
    pr.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    pr.add_argument("name", nargs="?", help="the preset to show as YAML")
    pr.set_defaults(func=cmd_presets)
