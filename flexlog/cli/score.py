"""``flexlog score``: verdicts of a bundle on canonical sequences or raw logs, each with the
lines it came from and, with ``--explain``, why it was flagged.

With ``--follow`` (a growing file) or ``--input -`` (standard input), raw lines are read as
they arrive (:mod:`flexlog.stream`) and each sequence is answered soon after it closes."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from tqdm.auto import tqdm

from flexlog.cli.common import (
    CliError,
    _aligned,
    _has_slow_voters,
    _load_with_cache,
    _open_cache,
    _print_report,
    err,
    out,
)
from flexlog.cli.logs import (
    JSONL_SUFFIXES,
    RawInput,
    add_parser_options,
    add_partition_options,
    raw_format,
    read_raw,
    wants_raw,
)
from flexlog.data.records import IngestReport, iter_jsonl
from flexlog.ingest import Ingestor, KeyAligner
from flexlog.parsing import read_log_lines
from flexlog.scoring import RecordWriter, score_batch

if TYPE_CHECKING:
    from flexlog.detector import DetectorStats

#: Raw lines printed under each anomalous verdict with --explain.
EXPLAIN_LINES = 5
#: ``--input -``: standard input (read as a stream, as with --follow).
STDIN = "-"


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
    if args.engine == "ray":
        return _cmd_score_ray(args)
    if args.address is not None or args.actors is not None:
        raise CliError("--address and --actors are for --engine ray")
    bundle_path = Path(args.bundle)
    bundle = _load_with_cache(bundle_path, lambda: _open_cache(args, bundle_path))
    if args.follow or STDIN in args.input:
        return _cmd_follow(args, bundle)
    report = IngestReport()
    inputs = [Path(p) for p in args.input]
    raw: RawInput | None = None
    if any(wants_raw(args, p, bundle=bundle) for p in inputs):
        raw = read_raw(inputs, args, report, bundle=bundle)
        seqs, remapped = raw.sequences, raw.remapped
    else:
        seqs = [s for p in inputs for s in iter_jsonl(p, report)]
        seqs, remapped = _aligned(bundle, seqs, _input_templates(args))
    if remapped:
        err.print(f"{remapped} unseen templates mapped to their closest known template")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    detector, profile = bundle.detector, bundle.event_profile
    anomalous, explained = 0, 0
    with (
        RecordWriter(out_path) as writer,
        tqdm(
            total=len(seqs),
            desc="scoring",
            unit="seq",
            disable=len(seqs) < 1000 and not _has_slow_voters(detector.ensemble),
        ) as bar,
    ):
        for start in range(0, len(seqs), args.batch_size):
            batch = seqs[start : start + args.batch_size]
            sources = raw.sources[start : start + args.batch_size] if raw is not None else None
            for done in score_batch(detector, batch, sources, profile=profile):
                writer.write(done.record)
                anomalous += done.anomalous
                if args.explain and done.evidence is not None and explained < args.explain_limit:
                    _print_explanation(done.sequence, done.record, done.evidence, done.source, raw)
                    explained += 1
            bar.update(len(batch))
    if args.explain and anomalous > explained:
        out.print(f"... and {anomalous - explained} more anomalous sequences in {out_path}")
    _print_summary(
        out_path,
        len(seqs),
        anomalous,
        "log lines" if raw is not None else "sequences",
        report,
        detector.stats,
        detector.voter_names,
    )
    if detector.cache is not None:
        detector.cache.close()
    return 0


def _input_templates(args: argparse.Namespace) -> dict[str, str] | None:
    from flexlog.data.templates import read_templates

    return read_templates(args.templates) if args.templates else None


def _print_summary(
    out_path: Path,
    answered: int,
    anomalous: int,
    unit: str,
    report: IngestReport,
    stats: DetectorStats,
    voters: list[str],
) -> None:
    """The closing lines of a batch run (either engine): what was answered, how the lines
    read add up, the rejections (and their file), and the detector's counters."""
    err.print(
        f"[bold]scored:[/] {answered} sequences answered ({anomalous} anomalous) → "
        f"{escape(str(out_path))}; {unit}: {report.read} read = {report.accepted} accepted + "
        f"{report.rejected} rejected"
    )
    if report.rejected:
        _print_report(report)
        rpath = _write_rejections(out_path, report)
        err.print(f"rejections written to {rpath}")
    else:
        _write_rejections(out_path, report)
    voted = stats.voted
    share = (
        ", ".join(f"{n} {100 * stats.asked.get(n, 0) / voted:.0f} %" for n in voters)
        if voted
        else ""
    )
    err.print(
        f"cache hits {stats.cache_hits}, voted {stats.voted} distinct sequences"
        + (f"; asked per voter: {share}" if share else "")
    )


# -- --engine ray: the same records on a Ray cluster (flexlog.ray_engine) ----------------------
def _cmd_score_ray(args: argparse.Namespace) -> int:
    """Score files on Ray: checks first (Ray installed, cluster reachable, bundle, inputs,
    format), then the run; the records, rejections and summary are the local engine's."""
    try:
        from flexlog import ray_engine
    except ImportError as exc:  # pragma: no cover - the module imports ray lazily
        raise CliError(f"--engine ray is unavailable: {exc}") from None

    if args.follow or STDIN in args.input:
        raise CliError("--engine ray scores files: --follow and --input - need --engine local")
    if args.explain:
        raise CliError(
            "--explain prints with --engine local; with --engine ray the records carry the evidence"
        )
    if args.batch_size < 1 or (args.actors is not None and args.actors < 1):
        raise CliError("--batch-size and --actors must be >= 1")
    try:
        ray_engine.require_ray()
        if args.address is not None:
            ray_engine.check_reachable(args.address)
    except ray_engine.EngineError as exc:
        raise CliError(str(exc)) from None
    bundle_path = Path(args.bundle)
    bundle = _load_with_cache(bundle_path, lambda: None)  # the actors open the cache
    inputs = [Path(p) for p in args.input]
    parser = None
    if any(wants_raw(args, p, bundle=bundle) for p in inputs):
        parser, partitioning = _raw_format(args, bundle)
        remapped = 0
    else:
        templates = _input_templates(args)
        plan = ray_engine.ReadPlan.jsonl(bundle.templates, templates)
        remapped = _aligned(bundle, [], templates)[1]
    for path in inputs:  # an input that cannot be opened stops the run, as locally
        next(iter(read_log_lines(path, IngestReport())), None)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cache_options = argparse.Namespace(cache=args.cache, no_cache=args.no_cache)
    load = functools.partial(
        _load_with_cache, bundle_path, functools.partial(_open_cache, cache_options, bundle_path)
    )
    try:
        with ray_engine.connect(args.address):
            if parser is not None:
                ray_engine.fit_parser(parser, [str(p) for p in inputs])
                plan = ray_engine.ReadPlan.raw(parser, partitioning, bundle.templates)
            with RecordWriter(out_path) as writer:
                result = ray_engine.score_files(
                    [str(p) for p in inputs],
                    plan,
                    writer,
                    load=load,
                    batch_size=args.batch_size,
                    actors=args.actors,
                )
    except ray_engine.EngineError as exc:
        raise CliError(str(exc)) from None
    if parser is not None:
        aligner = KeyAligner(bundle.templates)
        remapped = len(aligner.mapping({**parser.templates_learned(), **result.unseen}))
    if remapped:
        err.print(f"{remapped} unseen templates mapped to their closest known template")
    _print_summary(
        out_path,
        result.answered,
        result.anomalous,
        "log lines" if parser is not None else "sequences",
        result.report,
        result.stats,
        bundle.detector.voter_names,
    )
    return 0


def _raw_format(args: argparse.Namespace, bundle):
    """:func:`raw_format`, checked before any work as ``Ingestor.ingest`` checks it (the
    fields time windows read), on no lines (an unfitted parser stays so)."""
    parser, partitioning = raw_format(args, bundle=bundle)
    Ingestor(parser, partitioning).ingest([], IngestReport())
    return parser, partitioning


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


# -- --follow: a growing file or standard input, answered as sequences close -------------------
def _cmd_follow(args: argparse.Namespace, bundle) -> int:
    """Score raw lines as they arrive: sequences close on a full window, an idle or full
    session, or too many open sessions, and are answered in small batches as they do."""
    from flexlog.stream import SequenceStream, StreamReport, follow_file, follow_pipe

    if len(args.input) != 1:
        raise CliError("--follow (or --input -) reads one input")
    name = args.input[0]
    stdin = name == STDIN
    path = Path(name)
    if not stdin and not path.is_file():
        raise CliError(f"{path}: no such file to follow")
    if not wants_raw(args, path, bundle=bundle):
        raise CliError(
            "--follow scores raw logs, not JSONL sequences"
            if args.format == "jsonl" or path.suffix.lower() in JSONL_SUFFIXES
            else "--follow scores raw logs: the bundle has no parser, so give the log format "
            "(--preset, --preset-file or --log-format)"
        )
    for option, seconds in (
        ("--poll", args.poll),
        ("--until-idle", args.until_idle),
        ("--idle-timeout", args.idle_timeout),
    ):
        if seconds is not None and not seconds > 0:
            raise CliError(f"{option} must be > 0 seconds, got {seconds}")
    for option, count in (
        ("--max-open", args.max_open),
        ("--max-events", args.max_events),
        ("--batch-size", args.batch_size),
    ):
        if count < 1:
            raise CliError(f"{option} must be >= 1, got {count}")
    parser, partitioning = raw_format(args, bundle=bundle)
    aligner = KeyAligner(bundle.templates)
    source = "<stdin>" if stdin else str(path)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rejections = _RejectionFile(out_path.with_name(out_path.name + ".rejected.jsonl"))
    report = StreamReport(sink=rejections.write)
    stream = SequenceStream(
        parser,
        partitioning,
        aligner,
        source=source,
        report=report,
        idle_timeout=args.idle_timeout,
        max_events=args.max_events,
        max_open=args.max_open,
        keep_text=args.explain,
    )
    stop = threading.Event()
    with (
        _stop_on_signals(stop),
        rejections,
        RecordWriter(out_path) as writer,
    ):
        scorer = _Scorer(bundle, writer, args)
        if stdin:
            chunks = follow_pipe(
                sys.stdin.buffer, report, poll=args.poll, until_idle=args.until_idle, stop=stop
            )
        else:
            chunks = follow_file(
                path, report, poll=args.poll, until_idle=args.until_idle, stop=stop
            )
        waiting: list = []
        since = 0.0
        for lines in chunks:
            now = time.monotonic()
            closed = stream.feed(lines, now) if lines else stream.expire(now)
            if closed and not waiting:
                since = now
            waiting += closed
            # answer what closed without waiting long: when a batch is full, when the input
            # pauses, or when the oldest closed sequence has waited a poll interval
            if waiting and (
                not lines or len(waiting) >= args.batch_size or now - since >= args.poll
            ):
                scorer.score(waiting)
                waiting = []
        scorer.score(waiting + stream.close())
    remapped = len(aligner.mapping(parser.templates()))
    if remapped:
        err.print(f"{remapped} unseen templates mapped to their closest known template")
    if args.explain and scorer.anomalous > scorer.explained:
        out.print(
            f"... and {scorer.anomalous - scorer.explained} more anomalous sequences in {out_path}"
        )
    reasons = ", ".join(f"{n} {why}" for why, n in stream.closed.items() if n)
    err.print(
        f"[bold]scored:[/] {scorer.answered} sequences answered ({scorer.anomalous} anomalous) "
        f"→ {escape(str(out_path))}; log lines: {report.read} read = {report.accepted} "
        f"accepted + {report.rejected} rejected"
    )
    err.print(f"sequences closed: {reasons or 'none'}")
    if report.rejected:
        _print_report(report)
        err.print(f"rejections written to {rejections.path}")
    stats = bundle.detector.stats
    share = ", ".join(f"{n} {100 * v:.0f} %" for n, v in bundle.detector.asked_share().items())
    err.print(
        f"cache hits {stats.cache_hits}, voted {stats.voted} distinct sequences"
        + (f"; asked per voter: {share}" if share else "")
    )
    if bundle.detector.cache is not None:
        bundle.detector.cache.close()
    return 0


class _Scorer:
    """Answers closed sequences in batches, one record each (the batch path's records)."""

    def __init__(self, bundle, writer: RecordWriter, args: argparse.Namespace):
        self.detector, self.profile = bundle.detector, bundle.event_profile
        self.writer, self.args = writer, args
        self.answered = self.anomalous = self.explained = 0

    def score(self, closed: list) -> None:
        args = self.args
        for start in range(0, len(closed), args.batch_size):
            part = closed[start : start + args.batch_size]
            batch = [c.sequence for c in part]
            sources = [c.source for c in part]
            for c, done in zip(
                part, score_batch(self.detector, batch, sources, profile=self.profile), strict=True
            ):
                self.writer.write(done.record)
                self.anomalous += done.anomalous
                if (
                    args.explain
                    and done.evidence is not None
                    and self.explained < args.explain_limit
                ):
                    _print_explanation(
                        c.sequence, done.record, done.evidence, c.source, _ClosedText(c)
                    )
                    self.explained += 1
            self.answered += len(part)
            self.writer.flush()


class _ClosedText:
    """The raw lines of one closed sequence, as :class:`RawInput` gives them."""

    def __init__(self, closed):
        self.closed = closed

    def line(self, source: str, number: int) -> str:
        return self.closed.line(number)


class _RejectionFile:
    """OUT.rejected.jsonl, written as rejections come (opened at the first; a stale one from
    an earlier run is removed)."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def __enter__(self) -> _RejectionFile:
        self.path.unlink(missing_ok=True)
        return self

    def write(self, rejection) -> None:
        if self._fh is None:
            self._fh = self.path.open("w", encoding="utf-8")
        self._fh.write(json.dumps(rejection.to_json()) + "\n")

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (what is open is then flushed and answered); a second
    SIGINT interrupts at once."""

    def handler(signum, frame) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``score`` command."""
    s = subparsers.add_parser("score", help="score sequences or raw logs with a bundle")
    s.add_argument("--bundle", required=True)
    s.add_argument("--input", required=True, action="append", help="input file (repeatable)")
    s.add_argument(
        "--out",
        required=True,
        help="predictions JSONL, one line per input sequence (Parquet when it ends in .parquet)",
    )
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
    s.add_argument(
        "--cache",
        help="cache database: a path, or a postgresql:// URL that replicas and Ray workers "
        "share (default: BUNDLE/cache.sqlite)",
    )
    s.add_argument("--no-cache", action="store_true", help="answer every sequence with the voters")
    s.add_argument("--batch-size", type=int, default=4096)
    r = s.add_argument_group("engine")
    r.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (the default); ray: files read and parsed in parallel and "
        "sequences scored by a pool of actors on a Ray cluster (pip install 'flexlog[ray]'), "
        "giving the same records, rejections and counts",
    )
    r.add_argument(
        "--address",
        help="--engine ray: the cluster, auto (the one this machine runs), HOST:PORT of its "
        "head, or ray://HOST:PORT (Ray Client); default: a new local Ray instance",
    )
    r.add_argument(
        "--actors",
        type=int,
        help="--engine ray: scoring actors at most, each holding the detector (default: one "
        "per CPU of the cluster)",
    )
    f = s.add_argument_group("streaming (--follow, or --input -)")
    f.add_argument(
        "--follow",
        action="store_true",
        help="tail the --input file as it grows (--input - reads standard input to its end), "
        "answering each sequence as it closes",
    )
    f.add_argument(
        "--poll", type=float, default=0.5, help="seconds between looks for new data (default 0.5)"
    )
    f.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="stop after SECONDS without new data (default: a file is followed until SIGINT "
        "or SIGTERM, standard input to its end); what is open is then answered",
    )
    f.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds without a line after which a session closes (default 60)",
    )
    f.add_argument(
        "--max-open",
        type=int,
        default=10_000,
        help="sessions open at most; the least recently active closes first (default 10000)",
    )
    f.add_argument(
        "--max-events",
        type=int,
        default=10_000,
        help="events at most in a session; a full one closes and a new one starts (default 10000)",
    )
    s.set_defaults(func=cmd_score)
