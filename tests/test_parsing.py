"""Tests for flexlog.parsing: presets, Drain3 mining, partitioning and grouping accuracy.

The accuracy and format tests run on the real loghub 2k samples under the shared datasets
directory and are skipped only when that directory is missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flexlog.data.records import IngestReport, LogSequence
from flexlog.parsing import (
    MAX_LOG_LINE_BYTES,
    PRESETS,
    ParsedLine,
    Preset,
    TemplateParser,
    by_session,
    compile_log_format,
    evaluate_preset,
    event_key,
    fixed_window,
    get_preset,
    grouping_accuracy,
    partition,
    read_log_lines,
    sliding_window,
)
from flexlog.parsing.accuracy import BENCHMARKS

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
HDFS_LOG = DATASETS / "hdfs" / "HDFS_2k.log"

# Grouping accuracy measured with these presets (see docs/parsing.md); floors sit just below.
MEASURED = {
    "hdfs": 1.0,
    "hadoop": 1.0,
    "spark": 1.0,
    "openssh": 1.0,
    "zookeeper": 1.0,
    "linux": 1.0,
    "openstack": 1.0,
    "apache": 1.0,
    "hpc": 1.0,
}
FLOOR_MARGIN = 0.02


def _need_data() -> None:
    if not DATASETS.is_dir():
        pytest.skip(f"datasets directory {DATASETS} is missing")


def _parsed(events: list[str]) -> list[ParsedLine]:
    return [ParsedLine(i, f"msg {e}", e, f"msg {e}") for i, e in enumerate(events, start=1)]


# -- grouping accuracy --------------------------------------------------------------------


def test_grouping_accuracy_definition() -> None:
    truth = ["a", "a", "b", "b", "c"]
    assert grouping_accuracy(["x", "x", "y", "y", "z"], truth) == 1.0  # names do not matter
    # Merging b and c into one group makes those three lines wrong.
    assert grouping_accuracy(["x", "x", "y", "y", "y"], truth) == pytest.approx(2 / 5)
    # Splitting a makes both its lines wrong.
    assert grouping_accuracy(["x", "w", "y", "y", "z"], truth) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="differ in length"):
        grouping_accuracy(["x"], truth)
    with pytest.raises(ValueError, match="no lines"):
        grouping_accuracy([], [])


@pytest.mark.parametrize(("preset", "rel"), BENCHMARKS, ids=[p for p, _ in BENCHMARKS])
def test_grouping_accuracy_floor(preset: str, rel: str) -> None:
    _need_data()
    log = DATASETS / rel
    result = evaluate_preset(log, log.with_name(log.name + "_structured.csv"), preset)
    assert result["n_lines"] == 2000
    assert result["n_rejected"] == 0
    floor = MEASURED[preset] - FLOOR_MARGIN
    assert result["accuracy"] >= floor, result


@pytest.mark.parametrize(("preset", "rel"), BENCHMARKS, ids=[p for p, _ in BENCHMARKS])
def test_preset_format_matches_sample(preset: str, rel: str) -> None:
    _need_data()
    lines = list(read_log_lines(DATASETS / rel))
    fit = sum(PRESETS[preset].split(text) is not None for _, text in lines)
    assert fit / len(lines) >= 0.99
    # The generic preset takes any line whole.
    assert all(PRESETS["generic"].split(text)["Content"] == text for _, text in lines[:50])


def test_header_fields_extracted() -> None:
    _need_data()
    _, first = next(read_log_lines(HDFS_LOG))
    parts = get_preset("hdfs").split(first)
    assert parts is not None
    assert parts["Level"] == "INFO"
    assert parts["Component"] == "dfs.DataNode$PacketResponder"
    assert parts["Content"].startswith("PacketResponder 1 for block blk_")
    parsed = TemplateParser("hdfs").parse([first])
    assert parsed[0].fields == {
        "Date": "081109",
        "Time": "203615",
        "Pid": "148",
        "Level": "INFO",
        "Component": "dfs.DataNode$PacketResponder",
    }


def test_compile_log_format_optional_group_and_bad_field() -> None:
    regex = compile_log_format(r"<Month> <Date> <Comp>(\[<PID>\])?: <Content>")
    m = regex.match("Jun 14 sshd[19939]: hello  world")
    assert m is not None and m["PID"] == "19939" and m["Content"] == "hello  world"
    m = regex.match("Jun 14 kernel: boot")
    assert m is not None and m["PID"] is None and m["Comp"] == "kernel"
    with pytest.raises(ValueError, match="appears twice"):
        compile_log_format("<A> <A> <Content>")
    with pytest.raises(ValueError, match="valid identifier"):
        compile_log_format("<a-b> <Content>")


# -- presets ------------------------------------------------------------------------------


def test_unknown_preset_lists_known_names() -> None:
    with pytest.raises(ValueError) as info:
        get_preset("nosuchsystem")
    for name in ("hdfs", "hadoop", "spark", "openssh", "zookeeper", "linux", "generic"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="known presets"):
        TemplateParser("nosuchsystem")


def test_required_presets_present_and_case_insensitive() -> None:
    required = {"hdfs", "hadoop", "spark", "openssh", "zookeeper", "linux"}
    required |= {"openstack", "apache", "hpc", "generic"}
    assert required <= set(PRESETS)
    assert get_preset("HDFS") is PRESETS["hdfs"]


def test_preset_validation() -> None:
    with pytest.raises(ValueError, match="<Content>"):
        Preset(name="x", log_format="<Date> <Message>")
    with pytest.raises(ValueError, match="not a valid regex"):
        Preset(name="x", log_format="<Content>", masking=(("(unclosed", "BAD"),))
    with pytest.raises(ValueError, match="sim_th"):
        Preset(name="x", log_format="<Content>", sim_th=1.5)
    with pytest.raises(ValueError, match="depth"):
        Preset(name="x", log_format="<Content>", depth=2)


def test_preset_dict_round_trip() -> None:
    for preset in PRESETS.values():
        assert Preset.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset


def test_masks_in_templates() -> None:
    parser = TemplateParser("generic")
    parsed = parser.parse(
        [
            "connect to 10.0.0.1:8080 took 12ms for /var/lib/data/file.bin",
            "connect to 10.0.0.2:9090 took 7.5 KB for /srv/a/b",
        ]
    )
    assert parsed[0].event == parsed[1].event
    assert parsed[0].template == "connect to <IP> took <NUM> for <PATH>"


# -- mining -------------------------------------------------------------------------------


def test_keys_are_stable_and_derived_from_final_template() -> None:
    _need_data()
    lines = list(read_log_lines(HDFS_LOG))
    first = TemplateParser("hdfs").fit_parse(lines)
    second = TemplateParser("hdfs").fit_parse(lines)
    assert [p.event for p in first] == [p.event for p in second]
    table: dict[str, str] = {}
    for p in first:
        assert p.event == event_key(p.template)
        assert re.fullmatch(r"T[0-9a-f]{8}", p.event)
        assert table.setdefault(p.event, p.template) == p.template
    # Every key is a learned template (two-pass: no line keeps a template that later grew).
    assert set(table) <= set(TemplateParser("hdfs").fit(lines).templates())


def test_parse_auto_fits_and_skips_blank_lines() -> None:
    parser = TemplateParser("generic")
    assert not parser.fitted
    report = IngestReport()
    lines = [
        "2024-01-01 10:00:00 INFO auth: user alice logged in",
        "",
        "   ",
        "2024-01-01 10:00:05 INFO auth: user bob logged in",
    ]
    parsed = parser.parse(lines, report=report)
    assert parser.fitted
    assert [p.line for p in parsed] == [1, 4]
    assert report.read == report.accepted == 2
    assert parsed[0].event == parsed[1].event
    assert parsed[0].template == "<TS> INFO auth: user <*> logged in"


def test_unseen_lines_get_deterministic_keys() -> None:
    parser = TemplateParser("generic").fit(["disk sda1 is full", "disk sdb2 is full"])
    a = parser.parse(["totally new message 42 here"])[0]
    b = TemplateParser.from_dict(parser.to_dict()).parse(["totally new message 42 here"])[0]
    assert a.event == b.event == event_key("totally new message <NUM> here")
    assert a.event in parser.templates()
    assert a.event not in parser.templates_learned()


def test_save_load_round_trip_gives_identical_keys(tmp_path: Path) -> None:
    _need_data()
    lines = list(read_log_lines(HDFS_LOG))
    parser = TemplateParser("hdfs")
    parser.fit(lines[:1500])
    before = parser.parse(lines)
    state = json.loads(json.dumps(parser.to_dict()))  # JSON only, no pickle
    reloaded = TemplateParser.from_dict(state)
    assert reloaded.preset == parser.preset
    assert reloaded.templates_learned() == parser.templates_learned()
    assert [p.event for p in reloaded.parse(lines)] == [p.event for p in before]
    path = tmp_path / "parser.json"
    parser.save(path)
    assert [p.event for p in TemplateParser.load(path).parse(lines)] == [p.event for p in before]


def test_load_rejects_bad_state(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        TemplateParser.from_dict({"version": 1})
    state = TemplateParser("generic").fit(["a b c"]).to_dict()
    state["version"] = 99
    with pytest.raises(ValueError, match="version"):
        TemplateParser.from_dict(state)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json"):
        TemplateParser.load(bad)


def test_overrides_change_drain_parameters() -> None:
    parser = TemplateParser("hdfs", sim_th=0.7, depth=6)
    assert (parser.preset.sim_th, parser.preset.depth) == (0.7, 6)
    assert parser.preset.name == "hdfs"
    assert TemplateParser.from_dict(parser.to_dict()).preset.sim_th == 0.7


# -- bad input ----------------------------------------------------------------------------


def test_bad_input_counts_add_up(tmp_path: Path) -> None:
    good = "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
    path = tmp_path / "mixed.log"
    path.write_bytes(
        (good + "blk_1 terminating\n").encode()
        + b"081109 203615 148 INFO dfs.X: bad byte \xff\xfe here\n"  # line 2: not UTF-8
        + b"this line has no header\n"  # line 3: not the hdfs format
        + b"\n"  # line 4: blank, skipped and not counted
        + (good + "blk_2 terminating\r\n").encode()  # line 5
        + b"x" * (MAX_LOG_LINE_BYTES + 1)
        + b"\n"  # line 6: too long
    )
    report = IngestReport()
    parsed = TemplateParser("hdfs").parse_file(path, report)
    assert [p.line for p in parsed] == [1, 5]
    assert parsed[1].content.endswith("terminating")  # CRLF stripped
    assert [p.session for p in parsed] == ["blk_1", "blk_2"]
    assert report.read == 5
    assert report.accepted == 2
    assert report.accepted + report.rejected == report.read
    by_line = {r.line: r for r in report.rejections}
    assert set(by_line) == {2, 3, 6}
    assert all(r.source == str(path) for r in report.rejections)
    assert "UTF-8" in by_line[2].reason
    assert by_line[3].reason == "does not match the hdfs log format"
    assert "bytes" in by_line[6].reason
    assert f"{path}:3: does not match" in str(by_line[3])


def test_read_log_lines_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot open"):
        list(read_log_lines(tmp_path / "nope.log"))


# -- partitioning -------------------------------------------------------------------------


def test_hdfs_block_sessions() -> None:
    _need_data()
    report = IngestReport()
    parsed = TemplateParser("hdfs").parse_file(HDFS_LOG, report)
    assert report.accepted == 2000
    session_report = IngestReport()
    sessions = by_session(parsed, report=session_report, source=str(HDFS_LOG))
    assert sessions and all(isinstance(s, LogSequence) for s in sessions)
    assert all(re.fullmatch(r"blk_-?\d+", s.id) for s in sessions)
    assert len({s.id for s in sessions}) == len(sessions)
    assert sum(len(s.events) for s in sessions) == session_report.accepted == 2000
    assert session_report.rejected == 0
    # Ids in order of first appearance; an explicit pattern gives the same grouping here.
    assert sessions[0].id == parsed[0].session
    again = partition(parsed, "session", pattern=r"blk_-?\d+")
    assert [s.id for s in again] == [s.id for s in sessions]


def test_by_session_rejects_lines_without_id() -> None:
    parsed = [
        ParsedLine(1, "open blk_1", "A", "open <BLK>", "blk_1"),
        ParsedLine(2, "heartbeat", "B", "heartbeat", None),
        ParsedLine(3, "close blk_1", "C", "close <BLK>", "blk_1"),
        ParsedLine(4, "open blk_2", "A", "open <BLK>", "blk_2"),
    ]
    report = IngestReport()
    sessions = by_session(parsed, report=report, source="x.log")
    assert [(s.id, s.events) for s in sessions] == [("blk_1", ("A", "C")), ("blk_2", ("A",))]
    assert report.accepted == 3 and report.read == 4
    assert str(report.rejections[0]) == "x.log:2: no session id"
    grouped = by_session(parsed, r"blk_(\d+)")
    assert [s.id for s in grouped] == ["1", "2"]


@pytest.mark.parametrize(
    ("n", "size", "expected"), [(0, 3, 0), (1, 3, 1), (9, 3, 3), (10, 3, 4), (10, 1, 10)]
)
def test_fixed_window_counts(n: int, size: int, expected: int) -> None:
    windows = fixed_window(_parsed([f"E{i}" for i in range(n)]), size, source="s")
    assert len(windows) == expected
    assert [w.id for w in windows] == [f"s:w{i}" for i in range(expected)]
    assert sum(len(w.events) for w in windows) == n
    assert all(1 <= len(w.events) <= size for w in windows)


@pytest.mark.parametrize(
    ("n", "size", "step", "expected"),
    [(10, 4, 1, 7), (10, 4, 2, 4), (10, 4, 3, 3), (11, 4, 3, 3), (10, 10, 5, 1), (3, 5, 1, 1)],
)
def test_sliding_window_counts(n: int, size: int, step: int, expected: int) -> None:
    events = [f"E{i}" for i in range(n)]
    windows = sliding_window(_parsed(events), size, step)
    assert len(windows) == expected
    assert windows[0].events == tuple(events[:size])
    if n >= size:
        assert all(len(w.events) == size for w in windows)
        assert windows[1:2] == [] or windows[1].events[0] == events[step]
    assert partition(_parsed(events), "sliding", size=size, step=step) == windows


def test_sliding_window_empty_input() -> None:
    assert sliding_window([], 3, 1) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: fixed_window(p, 0), "size must be >= 1"),
        (lambda p: sliding_window(p, 3, 0), "step must be >= 1"),
        (lambda p: sliding_window(p, -1, 1), "size must be >= 1"),
        (lambda p: fixed_window(p, 2.5), "size must be an integer"),
        (lambda p: partition(p, "tumbling", size=3), "known modes: session, fixed, sliding"),
        (lambda p: partition(p, "fixed"), "size"),
        (lambda p: partition(p, "fixed", size=3, bogus=1), "bogus"),
    ],
)
def test_partition_argument_errors(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(_parsed(["A", "B"]))
