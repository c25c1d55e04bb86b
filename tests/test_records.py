"""Canonical JSONL records: parsing, writing, and accounting for every rejected line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexlog.data.records import (
    IngestReport,
    InputError,
    LogSequence,
    Rejection,
    iter_jsonl,
    labels_of,
    parse_label,
    parse_record,
    read_jsonl,
    write_jsonl,
)


def test_sequence_key_is_events() -> None:
    seq = LogSequence("a", ("open", "read"), 1)
    assert seq.key == ("open", "read")
    assert seq.to_json() == {"id": "a", "events": ["open", "read"], "label": 1}
    assert "label" not in LogSequence("b", ("x",)).to_json()


def test_write_read_round_trip(tmp_path: Path) -> None:
    seqs = [
        LogSequence("a", ("E5", "E22"), 0),
        LogSequence("b", ("open",), 1),
        LogSequence("c", ("ünïcode", "x y"), None),
    ]
    path = tmp_path / "sub" / "seqs.jsonl"
    assert write_jsonl(path, seqs) == 3
    back, report = read_jsonl(path)
    assert back == seqs
    assert (report.read, report.accepted, report.rejected) == (3, 3, 0)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3


def test_parse_record_normalises_ids_and_events() -> None:
    seq = parse_record({"id": 7, "events": [5, "E2"], "label": "anomalous"})
    assert seq == LogSequence("7", ("5", "E2"), 1)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], "JSON object"),
        ({"events": ["a"]}, "'id'"),
        ({"id": True, "events": ["a"]}, "'id'"),
        ({"id": "x"}, "missing field 'events'"),
        ({"id": "x", "events": "a b"}, "must be a list"),
        ({"id": "x", "events": []}, "empty"),
        ({"id": "x", "events": ["a", None]}, "'events'[1]"),
        ({"id": "x", "events": ["a", True]}, "'events'[1]"),
        ({"id": "x", "events": [""]}, "empty string"),
        ({"id": "x", "events": ["a"], "label": 2}, "'label'"),
    ],
)
def test_parse_record_rejects(obj: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_record(obj)


def test_parse_record_require_label() -> None:
    with pytest.raises(ValueError, match="missing field 'label'"):
        parse_record({"id": "x", "events": ["a"]}, require_label=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (1, 1), (True, 1), (False, 0), ("normal", 0), ("Anomalous", 1), ("1", 1)],
)
def test_parse_label_accepts(value: object, expected: int) -> None:
    assert parse_label(value) == expected


@pytest.mark.parametrize("value", [2, -1, 0.5, "bad", None, [1]])
def test_parse_label_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="label"):
        parse_label(value)


def test_bad_lines_are_rejected_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        b'{"id": "ok1", "events": ["a"]}',
        b'{"id": "broken", "events": [',
        b'{"id": "noevents"}',
        b"",
        b'{"id": "empty", "events": []}',
        b'{"id": "bad\xff", "events": ["a"]}',
        b"   ",
        b'{"id": "ok2", "events": ["b", "c"], "label": 1}',
        b'"just a string"',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    seqs, report = read_jsonl(path)
    assert [s.id for s in seqs] == ["ok1", "ok2"]
    # blank lines are neither accepted nor rejected
    assert report.read == 7
    assert report.accepted + report.rejected == report.read
    assert [r.line for r in report.rejections] == [2, 3, 5, 6, 9]
    reasons = [r.reason for r in report.rejections]
    assert "malformed JSON" in reasons[0]
    assert "missing field 'events'" in reasons[1]
    assert "empty" in reasons[2]
    assert "UTF-8" in reasons[3]
    assert "JSON object" in reasons[4]
    assert all(r.source == str(path) for r in report.rejections)
    assert str(report.rejections[0]).startswith(f"{path}:2: ")


def test_overlong_line_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    long_line = json.dumps({"id": "long", "events": ["a"] * 200})
    path.write_text(f'{{"id": "short", "events": ["a"]}}\n{long_line}\n', encoding="utf-8")
    report = IngestReport()
    seqs = list(iter_jsonl(path, report, max_line_bytes=100))
    assert [s.id for s in seqs] == ["short"]
    assert report.rejections[0].line == 2
    assert "over 100" in report.rejections[0].reason


def test_require_label_rejects_unlabelled_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [LogSequence("a", ("x",), 0), LogSequence("b", ("y",))])
    seqs, report = read_jsonl(path, require_label=True)
    assert [s.id for s in seqs] == ["a"]
    assert report.rejections == [Rejection(str(path), 2, "missing field 'label'")]


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(InputError, match=r"nope\.jsonl"):
        read_jsonl(missing)


def test_report_merge_and_json() -> None:
    a, b = IngestReport(), IngestReport()
    a.accept()
    b.accept()
    b.reject("f", 3, "bad")
    a.merge(b)
    assert (a.read, a.accepted, a.rejected) == (3, 2, 1)
    assert a.summary() == "read 3, accepted 2, rejected 1"
    assert a.to_json()["rejections"] == [{"source": "f", "line": 3, "reason": "bad"}]


def test_labels_of_names_unlabelled() -> None:
    assert labels_of([LogSequence("a", ("x",), 1), LogSequence("b", ("x",), 0)]) == [1, 0]
    with pytest.raises(ValueError, match="'b'"):
        labels_of([LogSequence("a", ("x",), 1), LogSequence("b", ("x",))])


def test_lone_surrogates_are_refused_naming_the_field():
    """Text no file, database or response could hold is an input error, not a crash later."""
    import pytest

    from flexlog.data.records import parse_record

    with pytest.raises(ValueError, match=r"'events'\[1\] is not valid Unicode"):
        parse_record({"id": "a", "events": ["open", "\udfff"]})
    with pytest.raises(ValueError, match="'id' is not valid Unicode"):
        parse_record({"id": "\ud800", "events": ["open"]})
    with pytest.raises(ValueError, match="'group' is not valid Unicode"):
        parse_record({"id": "a", "events": ["open"], "group": "\udc00"})
    assert parse_record({"id": "a", "events": ["\U0001f600"]}).events == ("\U0001f600",)
