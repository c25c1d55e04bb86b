"""Raw logs on the command line: the options every command that reads them shares (format,
masks, partitioning, labels) and the one call that turns files into sequences
(:mod:`flexlog.ingest`).

Whether an input is raw logs or canonical JSONL: ``--format jsonl`` or a ``.jsonl`` file is
JSONL; any parser option (``--preset``, ``--preset-file``, ``--log-format``, ``--mask``), a
label option, or a bundle that remembers a parser makes it raw logs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from flexlog.cli.common import CliError
from flexlog.data.records import IngestReport, LogSequence
from flexlog.ingest import (
    MODES,
    Ingestor,
    KeyAligner,
    LineLabels,
    Partitioning,
    SessionLabels,
    SourceLines,
    parse_duration,
)
from flexlog.parsing import Preset, TemplateParser, read_log_lines
from flexlog.parsing.miner import UNMATCHED
from flexlog.parsing.preset_files import resolve_preset

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def add_parser_options(p: argparse.ArgumentParser) -> None:
    """--preset, --preset-file, --log-format, --mask, --sim-th, --depth, --unmatched."""
    g = p.add_argument_group("log format (raw logs)")
    g.add_argument(
        "--preset",
        help="a built-in preset (flexlog presets lists them; default: the bundle's parser, "
        "else generic, the whole line as the message)",
    )
    g.add_argument("--preset-file", help="a YAML preset (flexlog presets show NAME prints one)")
    g.add_argument(
        "--log-format",
        help="loghub format string, e.g. '<Date> <Time> <Level> <Component>: <Content>'",
    )
    g.add_argument(
        "--mask",
        action="append",
        default=[],
        metavar="REGEX=NAME",
        help="mask (RE2 syntax) applied before the preset's own; repeatable",
    )
    g.add_argument("--sim-th", type=float, help="Drain similarity threshold (0-1)")
    g.add_argument("--depth", type=int, help="Drain parse-tree depth (>= 3)")
    g.add_argument(
        "--unmatched",
        choices=UNMATCHED,
        help="a line that does not fit the format: reject it (counted, with its line number; "
        "the default, or the bundle's choice) or parse the whole line as its content",
    )


def add_partition_options(p: argparse.ArgumentParser) -> None:
    """--partition, --session-pattern, --window, --step (default: the bundle's, else session)."""
    g = p.add_argument_group("sequences (raw logs)")
    g.add_argument(
        "--partition",
        choices=MODES,
        help="how raw lines become sequences (default: the bundle's, else by session id)",
    )
    g.add_argument("--session-pattern", help="regex (RE2) whose first match is a line's session")
    g.add_argument(
        "--window",
        help="lines per fixed or sliding window (default 20); for time windows a duration "
        "such as 60s, 5m or 1h",
    )
    g.add_argument(
        "--step",
        help="step of the sliding window in lines (default 1), or of time windows (a "
        "duration; default the window: back to back)",
    )
    g.add_argument(
        "--time-fields",
        help="comma-separated header fields holding the timestamp, for --partition time "
        "(default: the preset's, e.g. Date,Time for hdfs)",
    )
    g.add_argument(
        "--time-format",
        help="strptime format of those fields joined by a space, e.g. '%%y%%m%%d %%H%%M%%S' "
        "(%%s: seconds since the epoch)",
    )


def add_label_options(p: argparse.ArgumentParser) -> None:
    """--label-field/--normal-value (per line) or --labels (per session)."""
    g = p.add_argument_group("labels (raw logs)")
    g.add_argument(
        "--label-field",
        help="header field holding each line's label (BGL style: a sequence is anomalous "
        "when any of its lines is)",
    )
    g.add_argument(
        "--normal-value", default="-", help="the label field's value on normal lines (default -)"
    )
    g.add_argument("--labels", help="session label CSV (HDFS's BlockId,Label: Normal/Anomaly)")


def wants_raw(args: argparse.Namespace, path: Path, *, bundle=None) -> bool:
    """Whether ``path`` is read as raw logs (see the module docstring)."""
    fmt = getattr(args, "format", None)
    if fmt == "jsonl":
        return False
    if fmt is not None:
        return True
    if path.suffix.lower() in JSONL_SUFFIXES:
        return False
    options = ("preset", "preset_file", "log_format", "label_field", "labels")
    if any(getattr(args, name, None) for name in options) or getattr(args, "mask", None):
        return True
    return bundle is not None and bundle.parser_state is not None


def parser_from_args(args: argparse.Namespace, *, bundle=None) -> TemplateParser:
    """The bundle's fitted parser unless the options describe another format; else a fresh
    parser for the preset the options describe."""
    given = [
        getattr(args, n, None) for n in ("preset", "preset_file", "log_format", "sim_th", "depth")
    ]
    given.append(getattr(args, "mask", None))
    fmt = getattr(args, "format", None)
    unmatched = getattr(args, "unmatched", None)
    if bundle is not None and bundle.parser_state is not None and not any(given) and fmt is None:
        return TemplateParser.from_dict(bundle.parser_state, unmatched=unmatched)
    preset = resolve_preset(
        args.preset or (fmt if fmt not in (None, "jsonl") else None),
        preset_file=args.preset_file,
        log_format=args.log_format,
        masks=args.mask,
        sim_th=args.sim_th,
        depth=args.depth,
        session_pattern=getattr(args, "session_pattern", None),
    )
    return TemplateParser(preset, unmatched=unmatched or "reject")


def partitioning_from_args(
    args: argparse.Namespace, *, bundle=None, preset: Preset | None = None
) -> Partitioning:
    """The options' partitioning, over the bundle's, over session windows; time windows take
    the timestamp fields and format of the options, else the bundle's, else the preset's."""
    base = (bundle.partitioning if bundle is not None else None) or Partitioning()
    mode = args.partition or base.mode
    try:
        if mode == "time":
            fields, fmt = (
                (preset.timestamp_fields, preset.timestamp_format) if preset else ((), None)
            )
            window = parse_duration(args.window) if args.window is not None else None
            step = parse_duration(args.step) if args.step is not None else None
            if base.mode == "time":
                fields, fmt = base.time_fields or fields, base.time_format or fmt
                window = window or base.window
                step = step or base.step
            if args.time_fields:
                fields = tuple(f.strip() for f in args.time_fields.split(",") if f.strip())
            return Partitioning(
                mode="time",
                window=window or 60,
                step=step,
                time_fields=fields,
                time_format=args.time_format or fmt,
            )
        window = _lines("--window", args.window) if args.window is not None else base.window
        step = _lines("--step", args.step) if args.step is not None else base.step
        if base.mode == "time":
            window, step = (window if args.window is not None else 20), None
        return Partitioning(
            mode=mode,
            window=window,
            step=step,
            session_pattern=args.session_pattern or base.session_pattern,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _lines(option: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"{option} {value!r}: a number of lines (durations are for --partition time)"
        ) from None


def labels_from_args(args: argparse.Namespace) -> LineLabels | SessionLabels | None:
    field, path = getattr(args, "label_field", None), getattr(args, "labels", None)
    if field and path:
        raise CliError("give --label-field or --labels, not both")
    if field:
        return LineLabels(field, args.normal_value)
    if path:
        return SessionLabels.read(path)
    return None


@dataclass
class RawInput:
    """Sequences read from raw logs, with what explains them: the parser (its templates),
    each sequence's source lines, and the lines' text."""

    sequences: list[LogSequence]
    sources: list[SourceLines]
    parser: TemplateParser
    partitioning: Partitioning
    text: dict[str, dict[int, str]]
    remapped: int = 0
    unlabelled: int = 0
    unused_labels: int = 0

    def line(self, source: str, number: int) -> str:
        return self.text.get(source, {}).get(number, "")


def raw_format(args: argparse.Namespace, *, bundle=None) -> tuple[TemplateParser, Partitioning]:
    """The parser and partitioning raw logs are read with (the bundle's unless the options say
    otherwise); CliError when sessions are asked of a format that has no session id."""
    parser = parser_from_args(args, bundle=bundle)
    partitioning = partitioning_from_args(args, bundle=bundle, preset=parser.preset)
    if partitioning.mode == "session" and not (
        partitioning.session_pattern or parser.preset.session_pattern
    ):
        raise CliError(
            f"log format {parser.preset.name!r} has no session id: give --partition fixed or "
            "sliding (with --window), or --session-pattern"
        )
    return parser, partitioning


def read_raw(
    paths: list[Path],
    args: argparse.Namespace,
    report: IngestReport,
    *,
    bundle=None,
    labels: LineLabels | SessionLabels | None = None,
) -> RawInput:
    """Parse raw log files into sequences the bundle's way (its parser, partitioning and
    templates for alignment) unless the options say otherwise. Every line read ends up in a
    sequence or rejected in ``report``."""
    parser, partitioning = raw_format(args, bundle=bundle)
    aligner = KeyAligner(bundle.templates if bundle is not None else None)
    sources = [(str(p), list(read_log_lines(p, report))) for p in paths]
    ingested = Ingestor(parser, partitioning, aligner).ingest(sources, report, labels=labels)
    remapped = len(aligner.mapping(parser.templates())) if bundle is not None else 0
    return RawInput(
        ingested.sequences,
        ingested.sources,
        parser,
        partitioning,
        {name: dict(lines) for name, lines in sources},
        remapped,
        ingested.unlabelled,
        ingested.unused_labels,
    )


__all__ = [
    "RawInput",
    "add_label_options",
    "add_parser_options",
    "add_partition_options",
    "labels_from_args",
    "parser_from_args",
    "partitioning_from_args",
    "raw_format",
    "read_raw",
    "wants_raw",
]
