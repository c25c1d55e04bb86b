"""Operators' raw logs end to end on the command line: a system the detector has never seen,
trained from the labels written in its own log lines, scored with explanations, evaluated,
and its parsing scored against ground truth, with only a format string and masks."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from applog import FMT, pick

from flexlog.cli import main


def _write_log(path: Path, n_windows: int, seed: int, *, upgraded: bool = False) -> list[str]:
    """Windows of 20 lines; about one in five holds a burst of faults (labelled FAIL)."""
    rng = random.Random(seed)
    truth = []
    with path.open("w") as fh:
        for w in range(n_windows):
            faulty = rng.random() < 0.2
            for i in range(20):
                fault = faulty and 8 <= i < 11
                level, comp, text, message = pick(rng, fault, upgraded=upgraded)
                label = "FAIL" if fault else "-"
                fh.write(
                    f"{label} 2026-11-{1 + w % 28:02d} 10:{w % 60:02d}:{i:02d} {level} {comp}: "
                    f"{message}\n"
                )
                truth.append(f"{comp}:{text}")
    return truth


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rawlogs")
    _write_log(root / "v1.log", 300, 0)
    _write_log(root / "v2.log", 150, 1, upgraded=True)
    return root


def test_train_score_explain_evaluate_from_raw_logs(logs: Path, capsys) -> None:
    bundle = logs / "bundle"
    argv = ["train", "--train", str(logs / "v1.log"), "--log-format", FMT]
    argv += ["--label-field", "Label", "--normal-value", "-", "--partition", "fixed"]
    argv += ["--window", "20", "--out", str(bundle)]
    assert main(argv) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["ingestion"]["partitioning"] == {
        "mode": "fixed",
        "window": 20,
        "step": None,
        "session_pattern": None,
        "time_fields": [],
        "time_format": None,
    }
    assert (bundle / "parser.json").is_file() and (bundle / "templates.csv").is_file()
    capsys.readouterr()

    # score: the bundle remembers the parser and the windows; answers point back to lines
    predictions = logs / "P.jsonl"
    assert (
        main(
            [
                "score",
                "--bundle",
                str(bundle),
                "--input",
                str(logs / "v2.log"),
                "--out",
                str(predictions),
                "--explain",
                "--no-cache",
            ]
        )
        == 0
    )
    shown = capsys.readouterr().out
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == 150
    assert records[0]["source"] in ("ensemble", "cache")  # the verdict's own source
    assert records[0]["origin"] == {
        "file": str(logs / "v2.log"),
        "first": 1,
        "last": 20,
        "lines": list(range(1, 21)),
    }
    flagged = [r for r in records if r["label"] == 1]
    assert flagged and all("evidence" in r for r in flagged)
    assert all(r["evidence"]["flagged_by"] for r in flagged)
    assert "anomalous" in shown and "v2.log:" in shown  # raw lines under each verdict
    assert "FAIL" in shown or "failure" in shown or "crash" in shown

    # evaluate with the labels of the upgraded system's own lines
    assert (
        main(
            [
                "evaluate",
                "--bundle",
                str(bundle),
                "--test",
                str(logs / "v2.log"),
                "--label-field",
                "Label",
                "--normal-value",
                "-",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["input"]["read"] == 3000
    assert result["input"]["accepted"] + result["input"]["rejected"] == 3000
    assert result["f1"] >= 0.8


def test_parse_accuracy_of_a_format_given_on_the_command_line(logs: Path, capsys) -> None:
    log = logs / "acc.log"
    truth = _write_log(log, 50, 7)
    structured = logs / "acc.log_structured.csv"
    ids = {t: f"E{i}" for i, t in enumerate(dict.fromkeys(truth))}
    with structured.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["LineId", "EventId"])
        for i, t in enumerate(truth, start=1):
            writer.writerow([i, ids[t]])
    argv = [
        "parse-accuracy",
        "--log",
        str(log),
        "--structured",
        str(structured),
        "--log-format",
        FMT,
        "--mask",
        "/dev/sd[a-z]=DEV",
        "--mask",
        "u[0-9]+=USER",
        "--json",
    ]
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["grouping_accuracy"] >= 0.95 and row["preset"] == "custom"


def test_raw_logs_without_labels_or_session_ids_are_clear_errors(logs: Path, capsys) -> None:
    out = str(logs / "nope")
    assert main(["train", "--train", str(logs / "v1.log"), "--log-format", FMT, "--out", out]) == 2
    assert "raw logs need labels" in capsys.readouterr().err
    argv = [
        "train",
        "--train",
        str(logs / "v1.log"),
        "--log-format",
        FMT,
        "--label-field",
        "Label",
        "--out",
        out,
    ]
    assert main(argv) == 2
    assert "has no session id" in capsys.readouterr().err.replace("\n", " ")
    argv = [
        "parse",
        "--input",
        str(logs / "v1.log"),
        "--out",
        out,
        "--log-format",
        "<Date> <Date> <Content>",
    ]
    assert main(argv) == 2
    assert "appears twice" in capsys.readouterr().err


def test_presets_list_and_show(capsys) -> None:
    assert main(["presets"]) == 0
    assert "hdfs" in capsys.readouterr().out
    assert main(["presets", "show", "hdfs"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("name: hdfs") and "log_format:" in text and "masking:" in text


def test_time_windows_on_the_command_line(datasets_dir: Path, tmp_path: Path, capsys) -> None:
    """`--partition time --window 5m` reads the preset's timestamp fields; --window in lines
    with time windows, or a duration with line windows, is a clear error."""
    log = datasets_dir / "hdfs" / "HDFS_2k.log"
    out = tmp_path / "t.jsonl"
    argv = ["parse", "--preset", "hdfs", "--input", str(log), "--out", str(out)]
    assert main([*argv, "--partition", "time", "--window", "5m", "--step", "150s"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    starts = [int(r["id"].rsplit(":t", 1)[1]) for r in records]
    assert starts == sorted(starts) and all(s % 150 == 0 for s in starts)
    capsys.readouterr()
    assert main([*argv, "--partition", "fixed", "--window", "5m"]) == 2
    assert "a number of lines" in capsys.readouterr().err
    assert main([*argv, "--log-format", "<Content>", "--partition", "time"]) == 2
    assert "which the log format" in capsys.readouterr().err.replace("\n", " ")
    custom = ["parse", "--log-format", "<Content>", "--input", str(log), "--out", str(out)]
    assert main([*custom, "--partition", "time"]) == 2
    assert "time windows need" in capsys.readouterr().err.replace("\n", " ")


def test_unmatched_lines_as_content(logs: Path, tmp_path: Path, capsys) -> None:
    """--unmatched content keeps a line that fits no format as one whole-line message."""
    log = tmp_path / "mixed.log"
    lines = (logs / "v1.log").read_text().splitlines()[:40]
    log.write_text("\n".join([*lines[:20], "a stack trace line without a header", *lines[20:]]))
    out = tmp_path / "m.jsonl"
    argv = ["parse", "--input", str(log), "--out", str(out), "--log-format", FMT]
    argv += ["--partition", "fixed", "--window", "41"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "rejected 1" in (captured.out + captured.err).replace("\n", " ")
    assert "mixed.log:21: does not match the custom log format" in captured.err.replace("\n", "")
    assert main([*argv, "--unmatched", "content"]) == 0
    captured = capsys.readouterr()
    assert "rejected 0" in (captured.out + captured.err).replace("\n", " ")
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(record["events"]) == 41


def test_a_preset_file_carries_its_timestamp(logs: Path, tmp_path: Path) -> None:
    """A YAML preset with the keys of a built-in one, timestamp included, drives time windows."""
    preset = tmp_path / "app.yaml"
    preset.write_text(
        "name: app\n"
        f"log_format: '{FMT}'\n"
        "masking: [{regex: 'u[0-9]+', name: USER}]\n"
        "timestamp_fields: [Date, Time]\n"
        "timestamp_format: '%Y-%m-%d %H:%M:%S'\n"
    )
    out = tmp_path / "t.jsonl"
    argv = ["parse", "--preset-file", str(preset), "--input", str(logs / "v1.log")]
    assert main([*argv, "--out", str(out), "--partition", "time", "--window", "1h"]) == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == 28  # 300 windows of 20 lines over 28 days, one hour each day
