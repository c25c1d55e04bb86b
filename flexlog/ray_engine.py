"""Batch scoring on a Ray cluster with Ray Data (``flexlog score --engine ray``): the same
records, rejections and counts as the local engine, with files read and parsed in parallel
tasks and sequences scored in a pool of actors that each hold the detector.

Ray is imported only when a function here runs, so flexlog works without it; :func:`connect`
says to install ``flexlog[ray]`` when it is missing.

The pipeline
------------
1. ``ray.data.from_items`` of the input files, one block per file, so that each file is read
   in a task of its own (``map_batches`` of :func:`_read_file`, a stateless task).
2. Reading a file is the local engine's per-file path, run as is on the worker:
   :func:`~flexlog.parsing.read_log_lines` (lines not UTF-8 or over the length limit rejected
   with file and line), then :meth:`Ingestor.ingest <flexlog.ingest.Ingestor.ingest>` with the
   driver's parser (its *fitted* state travels as JSON data and is rebuilt on the worker: no
   worker mines templates, so every shard gives a line the same key), the bundle's templates
   for :class:`~flexlog.ingest.KeyAligner` (it maps each unseen key on its own text, so an
   unseen template moves the same way on every worker) and the partitioning. The local engine
   partitions each file on its own -- windows, and sessions too: a session id that appears in
   two files makes one sequence in each, with its own ``origin`` -- so the file is the unit
   of grouping and no shuffle (``groupby``) across files is needed or wanted. Canonical JSONL
   inputs are read with :func:`~flexlog.data.records.iter_jsonl` and aligned alike. The task
   emits one row per sequence and, last, one ``report`` row: the file's counts, its
   rejections, how many sequences it made and the unseen templates it met. (Ray Data fuses
   this step into the actors of step 3 when it can, sparing a copy of every row; files are
   then read in parallel by the actors.) A file is read whole by one task, as the local
   engine reads it: windows need its lines in order.
3. ``map_batches(_ScoreActor, compute=ActorPoolStrategy(...))``: each actor loads the bundle
   once with the loader it is given (the CLI passes the one it uses itself: ``load_bundle``
   with its cache options, so an LLM voter asks the OpenAI-compatible/vLLM server its bundle
   names, as locally), scores its batch with :func:`flexlog.scoring.score_batch` (the local
   engine's code) and emits each record as the JSON line :func:`~flexlog.scoring.record_line`
   makes, passes the report rows through, and adds one ``stats`` row: what the batch added to
   its detector's counters.
4. ``iter_batches`` to the driver, in input order (``preserve_order``), which writes the one
   ``--out`` file (JSON Lines or Parquet) in the local engine's order -- files in the order
   given, sequences in the order ingestion made them -- and adds up the reports and the
   counters. A cluster-side ``write_json`` would give a folder of unordered shards, not the
   file the command promises, and the rejections and counts have to come back anyway.
   Through Ray Client (``ray://HOST:PORT``), whose drivers cannot run Ray Data, the pipeline
   runs in a small actor on the cluster and the driver pulls its rows, in the same order.

Same records
------------
Without a cache (``--no-cache``) the output is the local engine's byte for byte. With one,
labels and votes are the same, but ``cached`` and ``source`` say whether a batch met a
sequence before the cache had it, which depends on where batches begin (as it does locally
for another ``--batch-size``). The summary's detector counters are added up over the actors'
batches: a sequence voted on in two batches counts twice.

Exactly once
------------
Ray Data retries a failed read task, and restarts a dead actor and retries its task
(``max_restarts=-1``, ``max_task_retries=-1``, its defaults for actor pools); Ray delivers
each output of a task once, whichever attempt made it, so a batch answered by a dying actor
and again by its successor comes back once. Scoring is deterministic (no cache: the same
records; with a cache, a retried batch may be answered from what the dead attempt cached).
Each row carries its file index and its sequence index in the file, and the driver checks
that every file's records arrive exactly once and in order, against the count its report row
gives: a lost or doubled sequence is an error, never a silent miscount.

Test hook: with ``FLEXLOG_RAY_CRASH_ONCE=N:MARKER`` in the driver's environment, the scoring
actor that reaches its ``N``-th batch while the file ``MARKER`` does not exist creates it and
exits its process at once (``os._exit``), so a test can kill a worker mid-run exactly once.
Unset (always, outside tests), it does nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexlog.data.records import IngestReport, LogSequence, Rejection
from flexlog.detector import DetectorStats
from flexlog.ingest import SourceLines

if TYPE_CHECKING:
    from flexlog.bundle import Bundle
    from flexlog.parsing import TemplateParser
    from flexlog.scoring import RecordWriter

#: Environment variable of the test hook (see the module docstring).
CRASH_ONCE_ENV = "FLEXLOG_RAY_CRASH_ONCE"
#: Seconds to wait for a TCP connection to a cluster's address before giving up.
CONNECT_TIMEOUT = 5.0
#: Row kinds between the stages.
SEQ, REPORT, RECORD, STATS = "seq", "report", "record", "stats"


class EngineError(ValueError):
    """The Ray engine cannot run as asked (Ray missing, cluster unreachable, a lost record);
    the message is one line."""


# -- connecting --------------------------------------------------------------------------------
def require_ray():
    """The ``ray`` module with Ray Data, or EngineError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise EngineError(
            "--engine ray needs Ray Data, which is not installed: pip install 'flexlog[ray]'"
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``ray://HOST:PORT`` or ``HOST:PORT``; None for ``auto``/``local``."""
    rest = address.removeprefix("ray://")
    if rest in ("auto", "local") or ":" not in rest:
        return None
    host, _, port = rest.rpartition(":")
    if not port.isdigit():
        raise EngineError(f"Ray address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """EngineError unless something listens at the address's host and port (a quick check,
    before Ray's own connection retries, which take long to give up)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise EngineError(f"cannot reach the Ray cluster at {address}: {reason}") from None


@contextlib.contextmanager
def connect(address: str | None = None, **init_kwargs: Any) -> Iterator[Any]:
    """Ray, connected: to ``address`` (``auto``, ``HOST:PORT`` of a cluster's head, or
    ``ray://HOST:PORT`` of a Ray Client server), or without one to the connection this process
    already has, else to a new local Ray instance. A connection made here is closed on exit.
    EngineError (one line) when Ray is missing or the cluster cannot be reached."""
    ray = require_ray()
    if ray.is_initialized():
        if address is not None:
            raise EngineError(
                "this process is already connected to Ray: give no address to use that connection"
            )
        yield ray
        return
    if address is not None:
        check_reachable(address)
    kwargs = {"include_dashboard": False, **init_kwargs}
    if address is not None and address.startswith("ray://"):
        kwargs.pop("include_dashboard")  # not a Ray Client option
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError... from Ray
        text = str(exc).strip().splitlines()
        raise EngineError(
            f"cannot connect to the Ray cluster at {address or 'a new local instance'}: "
            f"{text[0] if text else type(exc).__name__}"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


# -- what the workers are given --------------------------------------------------------------
@dataclass(frozen=True)
class ReadPlan:
    """How the workers turn a file into sequences; plain data (JSON-ready), shipped to them.

    ``kind``: ``raw`` (log lines: ``parser`` is a fitted parser's state, ``partitioning``
    its JSON, ``known`` the bundle's templates for alignment) or ``jsonl`` (canonical
    sequences, aligned with ``templates``, the input's own table, when given)."""

    kind: str
    parser: dict | None = None
    partitioning: dict | None = None
    known: dict[str, str] | None = None
    templates: dict[str, str] | None = None

    @classmethod
    def raw(cls, parser: TemplateParser, partitioning, known: Mapping[str, str] | None) -> ReadPlan:
        if not parser.fitted:
            raise ValueError("the parser must be fitted before it is shipped to the workers")
        return cls(
            "raw",
            parser=parser.to_dict(),
            partitioning=partitioning.to_json(),
            known=dict(known) if known else None,
        )

    @classmethod
    def jsonl(
        cls, known: Mapping[str, str] | None, templates: Mapping[str, str] | None
    ) -> ReadPlan:
        return cls(
            "jsonl",
            known=dict(known) if known else None,
            templates=dict(templates) if templates else None,
        )


def fit_parser(parser: TemplateParser, paths: Sequence[str | Path]) -> TemplateParser:
    """Fit an unfitted parser on every line of ``paths`` in order, as the local engine's
    :class:`~flexlog.ingest.Ingestor` does before parsing (here on the driver, once, so the
    workers parse with the same templates); a fitted parser is returned as is."""
    from flexlog.ingest import Ingestor
    from flexlog.parsing import read_log_lines

    if not parser.fitted:
        ingestor = Ingestor(parser)
        lines = [line for p in paths for line in read_log_lines(p, IngestReport())]
        ingestor.fit(lines)
    return parser


#: Per worker process: the aligner of the last plan (its similarity model is built once).
_ALIGNERS: dict[str, Any] = {}


def _aligner_for(plan: ReadPlan):
    from flexlog.ingest import KeyAligner

    key = json.dumps(plan.known, sort_keys=True)
    if key not in _ALIGNERS:
        _ALIGNERS.clear()
        _ALIGNERS[key] = KeyAligner(plan.known)
    return _ALIGNERS[key]


def read_file(plan: ReadPlan, source: str) -> tuple[list[LogSequence], list[SourceLines], dict]:
    """One input file's sequences, the lines each came from (raw logs) and its report (JSON:
    ``read`` and ``ingest`` stages, ``sequences``, ``unseen`` templates), as the local engine
    makes them."""
    from flexlog.data.records import iter_jsonl
    from flexlog.ingest import Ingestor, Partitioning
    from flexlog.parsing import TemplateParser, read_log_lines

    aligner = _aligner_for(plan)
    read, ingest = IngestReport(), IngestReport()
    unseen: dict[str, str] = {}
    if plan.kind == "jsonl":
        seqs = list(iter_jsonl(source, read))
        seqs, _ = aligner.align(seqs, plan.templates)
        sources: list[SourceLines] = []
    else:
        lines = list(read_log_lines(source, read))
        # a parser of its own for each file, so that its unseen templates are this file's
        parser = TemplateParser.from_dict(plan.parser or {})
        partitioning = Partitioning.from_json(plan.partitioning or {})
        ingested = Ingestor(parser, partitioning, aligner).ingest([(source, lines)], ingest)
        seqs, sources = ingested.sequences, ingested.sources
        learned = parser.templates_learned()
        unseen = {k: t for k, t in parser.templates().items() if k not in learned}
    report = {
        "read": _report_json(read),
        "ingest": _report_json(ingest),
        "sequences": len(seqs),
        "unseen": unseen,
    }
    return seqs, sources, report


def _report_json(report: IngestReport) -> dict:
    return {
        "read": report.read,
        "accepted": report.accepted,
        "rejections": [[r.source, r.line, r.reason] for r in report.rejections],
    }


def _report_from(data: dict) -> IngestReport:
    return IngestReport(
        data["read"], data["accepted"], [Rejection(s, n, why) for s, n, why in data["rejections"]]
    )


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("file", pa.int64()),
            ("seq", pa.int64()),
            ("kind", pa.string()),
            ("label", pa.int64()),
            ("data", pa.string()),
        ]
    )


def _table(rows: list[dict]):
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=_schema())


def _read_file(batch, *, plan: ReadPlan):
    """Ray Data task: the rows (``file``, ``path``) of a batch of input files → one ``seq``
    row per sequence and a ``report`` row per file."""
    rows: list[dict] = []
    for item in batch.to_pylist():
        index, source = item["file"], item["path"]
        seqs, sources, report = read_file(plan, source)
        for i, seq in enumerate(seqs):
            data: dict[str, Any] = {"seq": seq.to_json()}
            if sources:
                data["lines"] = list(sources[i].lines)
            rows.append({"file": index, "seq": i, "kind": SEQ, "data": json.dumps(data)})
        rows.append({"file": index, "seq": len(seqs), "kind": REPORT, "data": json.dumps(report)})
    return _table(rows)


# -- scoring actors ---------------------------------------------------------------------------
class _ScoreActor:
    """Ray Data actor: the bundle loaded once, then each batch of ``seq`` rows answered with
    :func:`flexlog.scoring.score_batch`; other rows pass through; one ``stats`` row a batch."""

    def __init__(self, load: Callable[[], Bundle], paths: list[str], crash: str | None = None):
        bundle = load()
        self.bundle, self.detector, self.profile = bundle, bundle.detector, bundle.event_profile
        self.paths = paths
        self.crash = crash
        self.batches = 0

    def __call__(self, batch):
        from flexlog.scoring import score_batch

        self.batches += 1
        self._maybe_crash()
        rows = batch.to_pylist()
        wanted = [r for r in rows if r["kind"] == SEQ]
        seqs, sources = [], []
        for r in wanted:
            data = json.loads(r["data"])
            s = data["seq"]
            seqs.append(LogSequence(s["id"], tuple(s["events"]), s.get("label"), s.get("group")))
            lines = data.get("lines")
            sources.append(
                None if lines is None else SourceLines(self.paths[r["file"]], tuple(lines))
            )
        before = dataclasses.asdict(self.detector.stats)
        scored = score_batch(
            self.detector,
            seqs,
            sources if any(s is not None for s in sources) else None,
            profile=self.profile,
        )
        answers = iter(scored)
        out = []
        for r in rows:
            if r["kind"] == SEQ:
                done = next(answers)
                out.append(
                    {
                        "file": r["file"],
                        "seq": r["seq"],
                        "kind": RECORD,
                        "label": done.verdict.label,
                        "data": done.line,
                    }
                )
            else:
                out.append(r)
        delta = _stats_delta(before, dataclasses.asdict(self.detector.stats))
        out.append({"file": -1, "seq": -1, "kind": STATS, "data": json.dumps(delta)})
        return _table(out)

    def _maybe_crash(self) -> None:
        """The test hook of the module docstring."""
        if not self.crash:
            return
        n, _, marker = self.crash.partition(":")
        if self.batches == int(n) and marker:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(17)

    def __del__(self) -> None:
        cache = getattr(getattr(self, "detector", None), "cache", None)
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.close()


def _stats_delta(before: dict, after: dict) -> dict:
    delta = {}
    for name, value in after.items():
        if isinstance(value, dict):
            old = before.get(name, {})
            delta[name] = {k: v - old.get(k, 0) for k, v in value.items() if v != old.get(k, 0)}
        else:
            delta[name] = value - before.get(name, 0)
    return delta


def _add_stats(total: DetectorStats, delta: dict) -> None:
    for f in dataclasses.fields(DetectorStats):
        value = delta.get(f.name)
        if value is None:
            continue
        if isinstance(value, dict):
            counts = getattr(total, f.name)
            for k, v in value.items():
                counts[k] = counts.get(k, 0) + v
        else:
            setattr(total, f.name, getattr(total, f.name) + value)


# -- the run ---------------------------------------------------------------------------------
@dataclass
class RayScoring:
    """What a run gives back: the ingestion ``report`` (rejections in the local engine's
    order), the sequences ``answered`` and ``anomalous``, the unseen templates met in the
    raw logs, and the detectors' counters added up over the actors (``stats``; a sequence two
    actors both voted on counts in each)."""

    report: IngestReport
    answered: int = 0
    anomalous: int = 0
    unseen: dict[str, str] = field(default_factory=dict)
    stats: DetectorStats = field(default_factory=DetectorStats)


def score_files(
    paths: Sequence[str],
    plan: ReadPlan,
    writer: RecordWriter,
    *,
    load: Callable[[], Bundle],
    batch_size: int = 4096,
    actors: int | None = None,
) -> RayScoring:
    """Score ``paths`` (each read with ``plan``) on the connected Ray cluster (see
    :func:`connect`), writing each record to ``writer`` in the local engine's order.

    ``load`` builds the bundle in each actor (picklable; e.g. ``functools.partial(load_bundle,
    path)``); ``actors``: the most scoring actors (default: one per CPU of the cluster; the
    pool starts with one and grows while batches queue). The files, and the bundle, must be
    readable at the same paths on every node.

    Through Ray Client (``ray://``), whose drivers cannot run Ray Data themselves, the
    pipeline runs in a small actor on the cluster (:class:`_RemoteRows`) and its rows are
    pulled from there in order.
    """
    ray = require_ray()
    paths = [str(p) for p in paths]
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if actors < 1:
        raise ValueError(f"actors must be >= 1, got {actors}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    args = (paths, plan, load, batch_size, actors, os.environ.get(CRASH_ONCE_ENV) or None)
    if ray.util.client.ray.is_connected():
        rows = _pull(ray.remote(num_cpus=0)(_RemoteRows).remote(*args))
    else:
        rows = _rows(_dataset(*args))
    return _collect(rows, paths, writer)


def _dataset(
    paths: list[str],
    plan: ReadPlan,
    load: Callable[[], Bundle],
    batch_size: int,
    actors: int,
    crash: str | None,
):
    """The pipeline of the module docstring, as a Ray Dataset of rows in input order."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    preserve = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # datasets take a copy when created
    try:
        items = [{"file": i, "path": p} for i, p in enumerate(paths)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(
            _read_file,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"plan": plan},
            num_cpus=1,
        )
        return ds.map_batches(
            _ScoreActor,
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            fn_constructor_kwargs={"load": load, "paths": paths, "crash": crash},
            num_cpus=1,
        )
    finally:
        ctx.execution_options.preserve_order = preserve


def _rows(ds) -> Iterator[list[tuple]]:
    """The dataset's rows, a block at a time, as ``(kind, file, seq, label, data)``."""
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        columns = [batch.column(name).to_pylist() for name in ("kind", "file", "seq", "label")]
        yield list(zip(*columns, batch.column("data").to_pylist(), strict=True))


class _RemoteRows:
    """Runs the pipeline inside the cluster for a Ray Client driver and hands its rows out a
    block at a time (made a remote actor by :func:`score_files`)."""

    def __init__(self, *args) -> None:
        self._blocks = _rows(_dataset(*args))

    def next(self) -> list[tuple] | None:
        return next(self._blocks, None)


def _pull(actor) -> Iterator[list[tuple]]:
    import ray

    while (block := ray.get(actor.next.remote())) is not None:
        yield block


def _collect(blocks: Iterator[list[tuple]], paths: list[str], writer: RecordWriter) -> RayScoring:
    """Write the records in order and add up the reports and counters (see the module
    docstring: every file's records exactly once, in order)."""
    result = RayScoring(IngestReport())
    reports: dict[int, dict] = {}
    seen = [0] * len(paths)
    last_file = 0
    for block in blocks:
        for kind, f, s, label, text in block:
            if kind == RECORD:
                if f < last_file or s != seen[f]:
                    raise EngineError(
                        f"{paths[f]}: sequence {s} arrived out of order (expected "
                        f"{seen[f]}); the output is incomplete"
                    )
                last_file, seen[f] = f, s + 1
                writer.write_line(text)
                result.answered += 1
                result.anomalous += label == 1
            elif kind == REPORT:
                if f in reports:
                    raise EngineError(f"{paths[f]}: its report arrived twice")
                reports[f] = json.loads(text)
            elif kind == STATS:
                _add_stats(result.stats, json.loads(text))
    for f, path in enumerate(paths):
        report = reports.get(f)
        if report is None or report["sequences"] != seen[f]:
            expected = "?" if report is None else report["sequences"]
            raise EngineError(
                f"{path}: {seen[f]} records came back for {expected} sequences; the output "
                "is incomplete"
            )
    # the local engine reads every file before parsing any: read rejections come first
    for stage in ("read", "ingest"):
        for f in range(len(paths)):
            result.report.merge(_report_from(reports[f][stage]))
    for f in range(len(paths)):
        result.unseen.update(reports[f]["unseen"])
    return result


__all__ = [
    "CRASH_ONCE_ENV",
    "EngineError",
    "RayScoring",
    "ReadPlan",
    "check_reachable",
    "connect",
    "fit_parser",
    "read_file",
    "require_ray",
    "score_files",
]
