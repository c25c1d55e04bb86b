"""``flexlog score``: verdicts of a bundle on canonical sequences or raw logs, each with the
lines it came from and, with ``--explain``, why it was flagged."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from tqdm.auto import tqdm

from flexlog.cli.common import (
    _aligned,
    _has_slow_voters,
    _load_with_cache,
    _open_cache,
    _print_report,
    err,
    out,
)
from flexlog.cli.logs import (
    RawInput,
    add_parser_options,
    add_partition_options,
    read_raw,
    wants_raw,
)
from flexlog.data.records import IngestReport, iter_jsonl

#: Raw lines printed under each anomalous verdict with --explain.
EXPLAIN_LINES = 5


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
    from flexlog.evidence import explain

    bundle_path = Path(args.bundle)
    bundle = _load_with_cache(bundle_path, lambda: _open_cache(args, bundle_path))
    report = IngestReport()
    inputs = [Path(p) for p in args.input]
    raw: RawInput | None = None
    if any(wants_raw(args, p, bundle=bundle) for p in inputs):
        raw = read_raw(inputs, args, report, bundle=bundle)
        seqs, remapped = raw.sequences, raw.remapped
    else:
        templates = read_templates(args.templates) if args.templates else None
        seqs = [s for p in inputs for s in iter_jsonl(p, report)]
        seqs, remapped = _aligned(bundle, seqs, templates)
    if remapped:
        err.print(f"{remapped} unseen templates mapped to their closest known template")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    detector, profile = bundle.detector, bundle.event_profile
    anomalous, explained = 0, 0
    with (
        out_path.open("w", encoding="utf-8") as fh,
        tqdm(
            total=len(seqs),
            desc="scoring",
            unit="seq",
            disable=len(seqs) < 1000 and not _has_slow_voters(detector.ensemble),
        ) as bar,
    ):
        for start in range(0, len(seqs), args.batch_size):
            batch = seqs[start : start + args.batch_size]
            verdicts = detector.predict(batch)
            evidence = explain(detector, batch, verdicts, profile=profile)
            for i, (seq, verdict, ev) in enumerate(zip(batch, verdicts, evidence, strict=True)):
                record = verdict.to_json()
                source = raw.sources[start + i] if raw is not None else None
                if source is not None:
                    record["origin"] = source.to_json()
                if ev is not None:
                    record["evidence"] = ev.to_json(seq.events, source)
                fh.write(json.dumps(record, separators=(",", ":")) + "\n")
                anomalous += verdict.label
                if args.explain and ev is not None and explained < args.explain_limit:
                    _print_explanation(seq, record, ev, source, raw)
                    explained += 1
            bar.update(len(batch))
    if args.explain and anomalous > explained:
        out.print(f"... and {anomalous - explained} more anomalous sequences in {out_path}")
    unit = "log lines" if raw is not None else "sequences"
    err.print(
        f"[bold]scored:[/] {len(seqs)} sequences answered ({anomalous} anomalous) → "
        f"{escape(str(out_path))}; {unit}: {report.read} read = {report.accepted} accepted + "
        f"{report.rejected} rejected"
    )
    if report.rejected:
        _print_report(report)
        rpath = _write_rejections(out_path, report)
        err.print(f"rejections written to {rpath}")
    else:
        _write_rejections(out_path, report)
    stats = detector.stats
    share = ", ".join(f"{n} {100 * v:.0f} %" for n, v in detector.asked_share().items())
    err.print(
        f"cache hits {stats.cache_hits}, voted {stats.voted} distinct sequences"
        + (f"; asked per voter: {share}" if share else "")
    )
    if detector.cache is not None:
        detector.cache.close()
    return 0


def _print_explanation(seq, record: dict, ev, source, raw: RawInput | None) -> None:
    """The verdict, who flagged it, and the raw lines (or events) of its strongest evidence."""
    where = ""
    if source is not None:
        span = record["origin"]
        where = f" ({span['file']} lines {span.get('first')}-{span.get('last')})"
    out.print(
        f"[bold red]anomalous[/] {escape(seq.id)}{escape(where)}: flagged by "
        f"{', '.join(ev.flagged_by) or 'the cache'}; {len(ev.unseen)} unseen events, "
        f"{len(ev.rare)} rare in normal training sequences"
        + "".join(f", {len(ps)} unlikely to {n}" for n, ps in ev.unlikely.items())
    )
    positions = ev.strongest(EXPLAIN_LINES) or list(range(min(EXPLAIN_LINES, len(seq.events))))
    for position in positions:
        why = ev.kind(position)
        if raw is not None and source is not None and position < len(source.lines):
            number = source.lines[position]
            text = raw.line(source.source, number)
            out.print(f"  {why:8} {escape(source.source)}:{number}: {escape(text)}", soft_wrap=True)
        else:
            out.print(f"  {why:8} event {position}: {escape(seq.events[position])}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``score`` command."""
    s = subparsers.add_parser("score", help="score sequences or raw logs with a bundle")
    s.add_argument("--bundle", required=True)
    s.add_argument("--input", required=True, action="append", help="input file (repeatable)")
    s.add_argument("--out", required=True, help="predictions JSONL, one line per input sequence")
    s.add_argument(
        "--format",
        help="jsonl (canonical sequences) or a log preset for raw logs (default: jsonl for "
        ".jsonl files, else raw logs parsed with the bundle's parser)",
    )
    s.add_argument("--templates", help="EventId,EventTemplate CSV for the input's events (jsonl)")
    s.add_argument(
        "--explain",
        action="store_true",
        help="print each anomalous verdict with the raw lines of its strongest evidence",
    )
    s.add_argument(
        "--explain-limit", type=int, default=50, help="anomalous verdicts printed (default 50)"
    )
    add_parser_options(s)
    add_partition_options(s)
    s.add_argument("--cache", help="cache database (default: BUNDLE/cache.sqlite)")
    s.add_argument("--no-cache", action="store_true", help="answer every sequence with the voters")
    s.add_argument("--batch-size", type=int, default=4096)
    s.set_defaults(func=cmd_score)
