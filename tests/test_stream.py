"""Streaming: raw lines as they arrive become sequences as they close (flexlog.stream), and
``flexlog score --follow`` answers them while a file grows or a pipe flows."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from applog import FMT, pick

from flexlog.cli import main
from flexlog.data.records import IngestReport, Rejection
from flexlog.ingest import Ingestor, Partitioning, SourceLines
from flexlog.parsing import TemplateParser
from flexlog.parsing.preset_files import resolve_preset
from flexlog.stream import (
    LineSplitter,
    SequenceStream,
    StreamReport,
    follow_file,
    follow_pipe,
)

SESSION = r"req-(\d+)"


def _lines(n_sessions: int, seed: int) -> list[str]:
    """Requests of 6-10 lines (``req-N`` in every line), four at a time interleaved; about
    one in five holds a fault (its line labelled FAIL)."""
    rng = random.Random(seed)
    sessions = []
    for s in range(n_sessions):
        faulty = rng.random() < 0.2
        k = rng.randint(6, 10)
        lines = []
        for i in range(k):
            fault = faulty and i == k // 2
            level, comp, _, message = pick(rng, fault)
            label = "FAIL" if fault else "-"
            lines.append(
                f"{label} 2026-11-01 10:{s % 60:02d}:{i:02d} {level} {comp}: req-{s} {message}"
            )
        sessions.append(lines)
    out: list[str] = []
    for g in range(0, n_sessions, 4):
        group = sessions[g : g + 4]
        for i in range(max(map(len, group))):
            out += [lines[i] for lines in group if i < len(lines)]
    return out


def _parser(lines: list[str]) -> TemplateParser:
    return TemplateParser(resolve_preset(log_format=FMT)).fit(lines)


def _numbered(lines: list[str], first: int = 1) -> list[tuple[int, str]]:
    return list(enumerate(lines, start=first))


def _accounted(stream: SequenceStream, closed) -> None:
    """Every line read is accepted or rejected; each accepted one is in exactly one sequence
    handed back (fixed windows, sessions)."""
    report = stream.report
    assert report.read == report.accepted + report.rejected
    lines = [n for c in closed for n in c.source.lines]
    assert len(lines) == len(set(lines)) == report.accepted
    assert all(len(c.sequence.events) == len(c.source.lines) for c in closed)


# -- the library -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample() -> tuple[TemplateParser, list[str]]:
    lines = _lines(40, 3)
    return _parser(lines), lines


def test_fixed_windows_are_the_batch_ingestors_and_close_when_full(sample) -> None:
    parser, lines = sample
    lines = [*lines[:30], "not a log line", *lines[30:-7]]
    numbered = _numbered(lines)
    partitioning = Partitioning("fixed", window=20)
    batch_report = IngestReport()
    batch = Ingestor(parser, partitioning).ingest([("app.log", numbered)], batch_report)

    stream = SequenceStream(parser, partitioning, source="app.log")
    assert not stream.learn  # a fitted parser is used as it is
    closed = []
    for i, line in enumerate(numbered):
        got = stream.feed([line], now=float(i))
        if got:  # handed back as soon as the 20th accepted line arrives
            assert [c.reason for c in got] == ["window"] and len(got[0].source.lines) == 20
            assert got[0].source.lines[-1] == line[0]
        closed += got
    assert stream.open_lines == stream.report.accepted - 20 * len(closed) > 0
    last = stream.close()
    assert [c.reason for c in last] == ["flush"] and stream.close() == []
    closed += last
    assert [c.sequence for c in closed] == batch.sequences
    assert [c.source for c in closed] == batch.sources
    assert stream.report.to_json() == batch_report.to_json()
    assert stream.report.rejections[0].line == 31
    _accounted(stream, closed)
    with pytest.raises(RuntimeError):
        stream.feed(numbered[:1], now=0.0)

    # fed in uneven batches: the same windows
    stream = SequenceStream(parser, partitioning, source="app.log")
    closed = []
    for start in range(0, len(numbered), 7):
        closed += stream.feed(numbered[start : start + 7], now=0.0)
    closed += stream.close()
    assert [c.sequence for c in closed] == batch.sequences


@pytest.mark.parametrize("n", [3, 40, 41])
def test_sliding_windows_are_the_batch_ingestors(sample, n: int) -> None:
    parser, lines = sample
    numbered = _numbered(lines[:n])
    partitioning = Partitioning("sliding", window=5, step=3)
    batch = Ingestor(parser, partitioning).ingest([("s", numbered)], IngestReport())
    stream = SequenceStream(parser, partitioning, source="s")
    closed = [c for line in numbered for c in stream.feed([line], now=0.0)] + stream.close()
    assert [c.sequence for c in closed] == batch.sequences
    assert [c.source for c in closed] == batch.sources


def _session_line(sid: str | None, i: int) -> str:
    tag = f"req-{sid} " if sid is not None else ""
    return f"- 2026-11-01 10:00:{i % 60:02d} INFO db: {tag}query on table orders took {i} ms"


def _session_stream(sample, **kw) -> SequenceStream:
    parser, _ = sample
    return SequenceStream(
        parser, Partitioning("session", session_pattern=SESSION), source="live", **kw
    )


def test_sessions_close_when_idle_by_the_clock_passed(sample) -> None:
    stream = _session_stream(sample, idle_timeout=60)
    n = iter(range(1, 100))

    def feed(sid: str, now: float):
        i = next(n)
        return stream.feed([(i, _session_line(sid, i))], now)

    assert feed("1", 0) == [] and feed("2", 30) == [] and feed("1", 50) == []
    assert stream.expire(89.9) == []
    (two,) = stream.expire(90)  # 2 idle since 30
    assert (two.sequence.id, two.reason, two.source) == ("2", "idle", SourceLines("live", (2,)))
    assert stream.open_sessions == 1
    # a line after the timeout starts a new sequence with the same id; the old one closes first
    (one,) = feed("1", 111)
    assert (one.sequence.id, one.reason, one.source.lines) == ("1", "idle", (1, 3))
    (again,) = stream.close()
    assert (again.sequence.id, again.reason, again.source.lines) == ("1", "flush", (4,))
    _accounted(stream, [two, one, again])
    assert stream.closed == {"window": 0, "full": 0, "idle": 2, "evicted": 0, "flush": 1}


def test_full_sessions_close_and_start_again(sample) -> None:
    stream = _session_stream(sample, max_events=3)
    numbered = [(i, _session_line("7", i)) for i in range(1, 8)]
    closed = stream.feed(numbered[:2], 0) + stream.feed(numbered[2:], 1)
    assert [(c.sequence.id, c.reason, c.source.lines) for c in closed] == [
        ("7", "full", (1, 2, 3)),
        ("7", "full", (4, 5, 6)),
    ]
    assert stream.open_sessions == 1 and stream.open_lines == 1
    closed += stream.close()
    assert closed[-1].source.lines == (7,) and len(closed[-1].sequence.events) == 1
    _accounted(stream, closed)


def test_too_many_open_sessions_close_the_least_recently_active(sample) -> None:
    stream = _session_stream(sample, max_open=2)
    closed = []
    plan = [("1", 0), ("2", 1), ("1", 2), ("3", 3), ("4", 4), ("3", 5), (None, 6), ("5", 7)]
    for i, (sid, now) in enumerate(plan, start=1):
        closed += stream.feed([(i, _session_line(sid, i))], now)
        assert stream.open_sessions <= 2
    # 2 (idle since 1) goes before 1 (active at 2); then 1; then 4 (3 was active at 5)
    assert [(c.sequence.id, c.reason) for c in closed] == [
        ("2", "evicted"),
        ("1", "evicted"),
        ("4", "evicted"),
    ]
    assert closed[1].source.lines == (1, 3)
    flushed = stream.close()
    assert [(c.sequence.id, c.reason) for c in flushed] == [("3", "flush"), ("5", "flush")]
    # the line without a session id is rejected, as in batch
    assert [(r.line, r.reason) for r in stream.report.rejections] == [(7, "no session id")]
    _accounted(stream, closed + flushed)

    # within one batch, the session whose last line came last is the most recently active
    stream = _session_stream(sample, max_open=2)
    batch = [(i, _session_line(sid, i)) for i, sid in enumerate("1231", start=1)]
    assert [(c.sequence.id, c.source.lines) for c in stream.feed(batch, 0)] == [("2", (2,))]


def test_sessions_without_timeouts_are_the_batch_ingestors(sample) -> None:
    parser, lines = sample
    numbered = _numbered([*lines, "- 2026-11-01 10:00:00 INFO db: no request here"])
    partitioning = Partitioning("session", session_pattern=SESSION)
    report = IngestReport()
    batch = Ingestor(parser, partitioning).ingest([("live", numbered)], report)
    stream = SequenceStream(parser, partitioning, source="live", keep_text=True)
    closed = []
    for start in range(0, len(numbered), 5):
        closed += stream.feed(numbered[start : start + 5], now=start / 10)
    closed += stream.close()
    assert {c.sequence.id: (c.sequence, c.source) for c in closed} == {
        s.id: (s, src) for s, src in zip(batch.sequences, batch.sources, strict=True)
    }
    assert stream.report.to_json() == report.to_json()
    assert stream.report.rejected == 1
    _accounted(stream, closed)
    text = dict(numbered)
    assert all(c.line(n) == text[n] for c in closed for n in c.source.lines)


def test_unfitted_parsers_learn_as_lines_come(sample) -> None:
    _, lines = sample
    parser = TemplateParser(resolve_preset(log_format=FMT))
    stream = SequenceStream(parser, Partitioning("fixed", window=10))
    assert stream.learn
    closed = stream.feed(_numbered(lines[:25]), 0) + stream.close()
    assert parser.fitted and len(closed) == 3
    _accounted(stream, closed)


def test_a_session_partitioning_needs_session_ids(sample) -> None:
    parser, _ = sample
    with pytest.raises(ValueError, match="no session id"):
        SequenceStream(parser, Partitioning("session"))
    with pytest.raises(ValueError, match="max_open"):
        SequenceStream(parser, Partitioning("fixed"), max_open=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        SequenceStream(parser, Partitioning("fixed"), idle_timeout=0)


def test_bytes_become_lines_as_read_log_lines_reads_them() -> None:
    report = IngestReport()
    split = LineSplitter("in", report, max_line_bytes=16)
    assert split.feed(b"first li") == [] and split.pending
    assert split.feed(b"ne\r\n\n  \nsec") == [(1, "first line")]
    assert split.feed(b"ond\n" + b"x" * 10) == [(4, "second")]
    assert split.feed(b"y" * 10) == [] and len(split._buffer) == 0  # over-long: not kept
    assert split.feed(b"z\n\xff\xfe\nok\nlast") == [(7, "ok")]
    assert split.finish() == [(8, "last")] and not split.pending
    assert [(r.line, r.reason) for r in report.rejections] == [
        (5, "line is 22 bytes, over 16"),
        (6, "not valid UTF-8 (byte 0)"),
    ]
    assert report.read == report.rejected == 2  # the lines handed on are counted by the parser


def test_stream_reports_keep_exact_counts_in_bounded_memory() -> None:
    sunk: list[Rejection] = []
    report = StreamReport(retain=2, sink=sunk.append)
    for i in range(5):
        report.accept()
        report.reject("s", i, "bad")
    report.reject_accepted(Rejection("s", 0, "no session id"))
    assert (report.read, report.accepted, report.rejected) == (10, 4, 6)
    assert len(report.rejections) == 2 and report.dropped == 4 and len(sunk) == 6
    assert report.summary() == "read 10, accepted 4, rejected 6"


def test_follow_file_waits_for_a_partial_last_line(tmp_path: Path) -> None:
    log = tmp_path / "growing.log"
    log.write_bytes(b"one\ntw")
    report = IngestReport()
    chunks = follow_file(log, report, poll=0.01, until_idle=0.2)
    assert next(chunks) == [(1, "one")]
    assert next(chunks) == []  # "tw" waits for its newline
    with log.open("ab") as fh:
        fh.write(b"o\nthree")
    assert next(chunks) == [(2, "two")]
    rest = list(chunks)  # idle for 0.2 s: ends, handing over the line without a newline
    assert [c for c in rest if c] == [[(3, "three")]]

    stop = threading.Event()
    stop.set()
    assert list(follow_file(log, report, stop=stop)) == []


def test_follow_pipe_reads_to_the_end(tmp_path: Path) -> None:
    r, w = os.pipe()
    with os.fdopen(r, "rb") as fh:
        chunks = follow_pipe(fh, IngestReport(), poll=0.01)
        os.write(w, b"a\nb")
        got = []
        while not got:
            got = next(chunks)
        assert got == [(1, "a")]
        os.write(w, b"\nc\n")
        os.close(w)
        assert [n for chunk in chunks for n in chunk] == [(2, "b"), (3, "c")]


# -- the command line --------------------------------------------------------------------------
def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}


def _train(root: Path, name: str, *partition: str) -> Path:
    log = root / f"{name}.log"
    log.write_text("\n".join(_lines(250, 0)) + "\n")
    bundle = root / name
    argv = ["train", "--train", str(log), "--log-format", FMT, "--label-field", "Label"]
    argv += ["--voters", "knn,dt,et", "--out", str(bundle), *partition]
    assert main(argv) == 0
    return bundle


def _summary(stderr: str) -> tuple[int, int, int, int, int]:
    text = " ".join(stderr.split())
    m = re.search(
        r"scored: (\d+) sequences answered \((\d+) anomalous\) → .*?; log lines: (\d+) read = "
        r"(\d+) accepted \+ (\d+) rejected",
        text,
    )
    assert m, stderr
    answered, anomalous, read, accepted, rejected = map(int, m.groups())
    assert read == accepted + rejected
    return answered, anomalous, read, accepted, rejected


def _records(path: Path) -> list[dict]:
    text = path.read_text() if path.exists() else ""
    # a line being written may not be complete yet
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _score(bundle: Path, out: Path, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "flexlog.cli", "score", "--bundle", str(bundle)]
    return [*cmd, "--out", str(out), "--no-cache", *args]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream")
    return {
        "fixed": _train(root, "fixed", "--partition", "fixed", "--window", "20"),
        "session": _train(root, "session", "--partition", "session", "--session-pattern", SESSION),
    }


def test_score_follow_answers_a_growing_file_as_windows_fill(bundles, tmp_path: Path) -> None:
    lines = _lines(600, 1)
    log, out = tmp_path / "live.log", tmp_path / "P.jsonl"
    log.write_text("\n".join(lines[:100]) + "\n")
    written = 100
    cmd = _score(bundles["fixed"], out, "--input", str(log), "--follow")
    cmd += ["--until-idle", "2", "--poll", "0.1"]
    with (tmp_path / "err.txt").open("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=_env())
        try:
            deadline = time.monotonic() + 90
            # a burst every 0.4 s keeps the run going until its first verdicts are written
            while not _records(out):
                assert proc.poll() is None, err.seek(0) or err.read()
                assert time.monotonic() < deadline and written < len(lines) - 200
                with log.open("a") as fh:
                    fh.write("\n".join(lines[written : written + 20]) + "\n")
                written += 20
                time.sleep(0.4)
            assert proc.poll() is None  # verdicts come while the run goes on
            with log.open("a") as fh:  # the last bursts: a line written in two parts, a bad one
                fh.write("\n".join(lines[written : written + 50]) + "\n" + lines[written + 50][:20])
            time.sleep(0.5)
            with log.open("a") as fh:
                fh.write(lines[written + 50][20:] + "\nnot a log line\n")
            written += 51
            assert proc.wait(timeout=60) == 0
        finally:
            proc.kill()
        err.seek(0)
        stderr = err.read()
    total = written + 1
    answered, _, read, accepted, rejected = _summary(stderr)
    assert (read, accepted, rejected) == (total, written, 1)
    records = _records(out)
    assert answered == len(records) == math.ceil(written / 20)
    assert [r["id"] for r in records] == [f"{log}:w{i}" for i in range(len(records))]
    numbers = [n for r in records for n in r["origin"]["lines"]]
    assert numbers == list(range(1, written + 1))  # the line written in two parts is one
    assert all("evidence" in r for r in records if r["label"] == 1)
    assert all("evidence" not in r for r in records if r["label"] == 0)
    rejected_lines = _records(out.with_name("P.jsonl.rejected.jsonl"))
    assert [r["line"] for r in rejected_lines] == [total]


def test_score_reads_standard_input_by_session(bundles, tmp_path: Path) -> None:
    lines = _lines(60, 2)
    lines.insert(10, "- 2026-11-01 10:00:00 INFO db: no request here")
    out = tmp_path / "S.jsonl"
    cmd = _score(bundles["session"], out, "--input", "-", "--max-open", "3", "--explain")
    done = subprocess.run(
        cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, env=_env(), timeout=120
    )
    assert done.returncode == 0, done.stderr
    answered, anomalous, read, accepted, rejected = _summary(done.stderr)
    assert (read, accepted, rejected) == (len(lines), len(lines) - 1, 1)
    records = _records(out)
    assert answered == len(records) and anomalous == sum(r["label"] for r in records)
    assert {r["id"] for r in records} == {str(s) for s in range(60)}
    numbers = sorted(n for r in records for n in r["origin"]["lines"])
    assert numbers == [n for n in range(1, len(lines) + 1) if n != 11]
    assert all(r["origin"]["file"] == "<stdin>" for r in records)
    assert "evicted" in done.stderr  # four requests at a time, three open at most
    if anomalous:
        assert "<stdin>:" in done.stdout  # raw lines under the anomalous verdicts


def test_score_follow_stops_on_sigterm_and_flushes(bundles, tmp_path: Path, capsys) -> None:
    lines = _lines(10, 4)[:50]
    log, out = tmp_path / "live.log", tmp_path / "T.jsonl"
    log.write_text("\n".join(lines) + "\n")
    before = signal.getsignal(signal.SIGTERM)

    def terminate() -> None:  # once two windows are answered: the handler is in place by then
        deadline = time.monotonic() + 60
        while len(_records(out)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate, daemon=True)
    killer.start()
    argv = ["score", "--bundle", str(bundles["fixed"]), "--input", str(log), "--follow"]
    assert main([*argv, "--out", str(out), "--poll", "0.05", "--no-cache"]) == 0
    killer.join()
    assert signal.getsignal(signal.SIGTERM) is before
    records = _records(out)
    assert [len(r["origin"]["lines"]) for r in records] == [20, 20, 10]  # the last one flushed
    assert _summary(capsys.readouterr().err)[2:] == (50, 50, 0)


def test_follow_needs_one_raw_input(bundles, tmp_path: Path, capsys) -> None:
    log = tmp_path / "x.log"
    log.write_text(_lines(1, 0)[0] + "\n")
    base = ["score", "--bundle", str(bundles["fixed"]), "--out", str(tmp_path / "o.jsonl")]
    assert main([*base, "--input", str(log), "--input", str(log), "--follow", "--no-cache"]) == 2
    assert "reads one input" in capsys.readouterr().err
    assert main([*base, "--input", str(log), "--follow", "--format", "jsonl", "--no-cache"]) == 2
    assert "not JSONL" in capsys.readouterr().err
