"""One ingestion path: raw lines to labelled sequences that know their lines."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

from flexlog.data.records import IngestReport, InputError
from flexlog.ingest import Ingestor, KeyAligner, LineLabels, Partitioning, SessionLabels
from flexlog.parsing import TemplateParser
from flexlog.parsing.preset_files import resolve_preset

BGL_LIKE = "<Label> <Date> <Time> <Level> <Component>: <Content>"


def _bgl_lines(n: int) -> list[str]:
    lines = []
    for i in range(n):
        bad = i in (5, 47)
        label = "KERNDTLB" if bad else "-"
        message = "data TLB error interrupt" if bad else f"generating core.{i % 7}"
        lines.append(f"{label} 2005-06-03 15.42.{i:02d} INFO kernel: {message}")
    return lines


def test_labels_on_each_line_make_sequence_labels_and_never_reach_the_content() -> None:
    lines = _bgl_lines(60)
    lines.insert(30, "garbage that fits no format")
    ingestor = Ingestor(
        TemplateParser(resolve_preset(log_format=BGL_LIKE)), Partitioning("fixed", window=20)
    )
    report = IngestReport()
    out = ingestor.ingest(
        [("bgl.log", list(enumerate(lines, start=1)))], report, labels=LineLabels("Label", "-")
    )
    assert len(out.sequences) == 3 and [s.label for s in out.sequences] == [1, 0, 1]
    assert out.sources[0].to_json()["first"] == 1 and out.sources[0].lines[-1] == 20
    in_sequences = sum(len(s.lines) for s in out.sources)
    assert report.read == 61 and in_sequences + report.rejected == report.read
    assert report.rejections[0].line == 31
    assert all("KERNDTLB" not in t for t in ingestor.parser.templates().values())


def test_a_label_field_the_format_lacks_is_a_clear_error() -> None:
    ingestor = Ingestor(TemplateParser(resolve_preset(log_format=BGL_LIKE)))
    with pytest.raises(InputError, match="'Lable' is not a field of the log format"):
        ingestor.ingest([("x", [(1, "- a b c d: e")])], IngestReport(), labels=LineLabels("Lable"))


def test_session_labels_from_a_label_file(datasets_dir: Path, tmp_path: Path) -> None:
    """HDFS's BlockId,Label file: sessions missing from it are dropped with their lines
    rejected, sessions it names that never appear are counted; the counts add up."""
    log = datasets_dir / "hdfs" / "HDFS_2k.log"
    parser = TemplateParser("hdfs")
    report = IngestReport()
    probe = Ingestor(parser).files([log], IngestReport())
    ids = [s.id for s in probe.sequences]
    labels = tmp_path / "anomaly_label.csv"
    with labels.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["BlockId", "Label"])
        for i, sid in enumerate(ids[:-3]):
            writer.writerow([sid, "Anomaly" if i % 10 == 0 else "Normal"])
        writer.writerow(["blk_never_seen", "Normal"])
    out = Ingestor(TemplateParser("hdfs")).files([log], report, labels=SessionLabels.read(labels))
    assert out.unlabelled == 3 and out.unused_labels == 1
    assert [s.id for s in out.sequences] == ids[:-3]
    assert sum(s.label for s in out.sequences) == len(range(0, len(ids) - 3, 10))
    in_sequences = sum(len(s.lines) for s in out.sources)
    assert in_sequences + report.rejected == report.read == 2000
    assert any("has no label in" in r.reason for r in report.rejections)


def test_bad_label_files_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("BlockId,Label\nblk_1,Normal\nblk_2,Maybe\n")
    with pytest.raises(InputError, match=r"labels.csv:3: label 'Maybe'"):
        SessionLabels.read(path)
    path.write_text("just-one-column\n")
    with pytest.raises(InputError, match="header"):
        SessionLabels.read(path)


def test_unseen_keys_are_aligned_to_known_templates() -> None:
    aligner = KeyAligner({"E1": "Receiving block <*> src: <*> dest: <*>"})
    mapping = aligner.mapping({"N9": "Receiving new block <*> src: <*> dest: <*>", "E1": "x"})
    assert mapping == {"N9": "E1"}


def test_partitioning_round_trips_and_refuses_bad_values() -> None:
    p = Partitioning("sliding", window=10, step=5)
    assert Partitioning.from_json(p.to_json()) == p
    with pytest.raises(ValueError, match="partition must be one of"):
        Partitioning("hourly")
    with pytest.raises(ValueError, match="window must be"):
        Partitioning("fixed", window=0)
    with pytest.raises(ValueError, match="unknown fields"):
        Partitioning.from_json({"mode": "fixed", "size": 3})


def test_time_windows_from_the_timestamp_fields(datasets_dir: Path) -> None:
    """HDFS lines in windows of 60 s (and of 60 s every 30 s): every line with a readable
    timestamp is in the windows that cover its time; an unreadable one is rejected."""
    from flexlog.ingest import parse_duration
    from flexlog.parsing import get_preset

    fields, fmt = get_preset("hdfs").timestamp_fields, get_preset("hdfs").timestamp_format
    lines = (datasets_dir / "hdfs" / "HDFS_2k.log").read_text().splitlines()[:300]
    lines.append("081109 2O3615 148 INFO dfs.DataNode: the letter O in the time")
    numbered = list(enumerate(lines, start=1))
    tumbling = Partitioning(
        "time", window=parse_duration("1m"), time_fields=fields, time_format=fmt
    )
    report = IngestReport()
    out = Ingestor(TemplateParser("hdfs"), tumbling).ingest([("hdfs", numbered)], report)
    assert report.read == 301 and report.rejected == 1
    assert "unparsable timestamp" in report.rejections[0].reason
    assert sum(len(s.events) for s in out.sequences) == report.accepted
    starts = [int(s.id.rsplit(":t", 1)[1]) for s in out.sequences]
    assert starts == sorted(starts) and all(b - a >= 60 for a, b in itertools.pairwise(starts))
    for source in out.sources:  # the lines of a window are within its minute
        stamps = {lines[n - 1].split()[1][:4] for n in source.lines}
        assert len(stamps) == 1
    sliding = Partitioning("time", window=60, step=30, time_fields=fields, time_format=fmt)
    twice = Ingestor(TemplateParser("hdfs"), sliding).ingest([("hdfs", numbered)], IngestReport())
    assert sum(len(s.events) for s in twice.sequences) == 2 * report.accepted
    with pytest.raises(ValueError, match="time windows need"):
        Partitioning("time", window=60)
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")
