"""The ``flexlog`` command line, end to end on the shipped ADFA-LD sample and on HDFS."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import kept_by_git

from flexlog.cli import build_parser, main
from flexlog.experiment import run_experiment
from flexlog.report import measured_with
from flexlog.voters.registry import DEFAULT_RULE, DEFAULT_VOTERS

SPLITS = ("train.jsonl", "limited_train.jsonl", "test.jsonl", "info.json")


def _run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def adfa_data(tmp_path_factory, adfa_sample_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("cli") / "D"
    rc = main(
        [
            "dataset",
            "build",
            "adfa-u",
            "--holdout",
            "web",
            "--source",
            str(adfa_sample_dir),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def trained_bundle(adfa_data: Path) -> Path:
    out = adfa_data.parent / "B"
    rc = main(["train", "--train", str(adfa_data / "limited_train.jsonl"), "--out", str(out)])
    assert rc == 0
    return out


@pytest.fixture
def bundle(trained_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the trained bundle (its cache.sqlite lives inside it)."""
    return Path(shutil.copytree(trained_bundle, tmp_path / "B"))


# ------------------------------------------------------------------ dataset, train, evaluate


def test_dataset_build_adfa_u(adfa_data: Path) -> None:
    for name in SPLITS:
        assert (adfa_data / name).is_file(), name
    info = json.loads((adfa_data / "info.json").read_text())
    assert info["holdout"] == "web"
    test = _jsonl(adfa_data / "test.jsonl")
    assert len(test) == info["test"]["total"]
    assert all(r["label"] == 1 for r in test if r["id"].startswith("UAD-WS"))
    train = _jsonl(adfa_data / "train.jsonl")
    assert not any(r["id"].startswith("UAD-WS") for r in train)
    limited = _jsonl(adfa_data / "limited_train.jsonl")
    assert sum(r["label"] for r in limited) == 500 and len(limited) == 1000


def test_dataset_build_prints_table(capsys, tmp_path: Path, adfa_sample_dir: Path) -> None:
    rc, out, _ = _run(
        capsys,
        "dataset",
        "build",
        "adfa-u",
        "--holdout",
        "meter",
        "--source",
        adfa_sample_dir,
        "--out",
        tmp_path / "D",
        "--per-class",
        "20",
    )
    assert rc == 0
    assert "adfa-u-meter" in out and "limited_train" in out and "duplication ratio" in out
    limited = _jsonl(tmp_path / "D" / "limited_train.jsonl")
    assert len(limited) == 40


def test_dataset_build_needs_holdout(capsys, tmp_path: Path, adfa_sample_dir: Path) -> None:
    rc, _, err = _run(
        capsys, "dataset", "build", "adfa-u", "--source", adfa_sample_dir, "--out", tmp_path
    )
    _one_line_error(rc, err, "--holdout")


def test_train_records_manifest(trained_bundle: Path, adfa_data: Path) -> None:
    manifest = json.loads((trained_bundle / "manifest.json").read_text())
    # the default ensemble and vote rule
    assert [v["name"] for v in manifest["voters"]] == list(DEFAULT_VOTERS)
    assert manifest["ensemble"]["rule"]["rule"] == DEFAULT_RULE == manifest["config"]["rule"]
    data = manifest["data"]["train"]
    assert data["sequences"] == 1000 and data["anomalous"] == 500 and data["rejected"] == 0
    assert data["path"] == str(adfa_data / "limited_train.jsonl")
    assert manifest["config"]["seed"] == 0


def test_evaluate_json(capsys, trained_bundle: Path, adfa_data: Path) -> None:
    rc, out, _ = _run(
        capsys, "evaluate", "--bundle", trained_bundle, "--test", adfa_data / "test.jsonl", "--json"
    )
    assert rc == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    for key in ("precision", "recall", "f1", "tp", "fp", "fn", "tn"):
        assert key in result, key
    n = len(_jsonl(adfa_data / "test.jsonl"))
    assert result["tp"] + result["fp"] + result["fn"] + result["tn"] == n
    assert 0 <= result["f1"] <= 1
    # short-circuit voting: per-voter scores on the sequences each voter was asked about
    assert set(result["voters"]) <= set(DEFAULT_VOTERS) == set(result["asked_share"])
    assert all(v["asked"] == v["n"] for v in result["voters"].values())
    assert result["input"] == {"read": n, "accepted": n, "rejected": 0}


def test_evaluate_through_cache(capsys, bundle: Path, adfa_data: Path) -> None:
    test_path = adfa_data / "test.jsonl"
    rc, out, err = _run(
        capsys, "evaluate", "--bundle", bundle, "--test", test_path, "--cache", "--json"
    )
    assert rc == 0, err
    result = json.loads(out)
    assert set(result["voters"]) <= set(DEFAULT_VOTERS)
    assert result["with_cache"]["f1"] == result["f1"]  # an empty cache changes nothing
    assert (bundle / "cache.sqlite").is_file()


def test_evaluate_table(capsys, trained_bundle: Path, adfa_data: Path) -> None:
    rc, out, _ = _run(
        capsys, "evaluate", "--bundle", trained_bundle, "--test", adfa_data / "test.jsonl"
    )
    assert rc == 0
    for word in ("precision", "ensemble", "knn", "dt", "slfn"):
        assert word in out


def test_train_without_labels_is_clear_error(capsys, tmp_path: Path) -> None:
    path = tmp_path / "unlabelled.jsonl"
    path.write_text('{"id": "a", "events": ["open"]}\n{"id": "b", "events": ["read"]}\n')
    rc, _, err = _run(capsys, "train", "--train", path, "--out", tmp_path / "B")
    assert rc == 2
    assert "missing field 'label'" in err
    assert f"error: {path}: no usable training sequences" in err
    assert "Traceback" not in err
    assert not (tmp_path / "B").exists()


def test_train_one_class_is_clear_error(capsys, tmp_path: Path) -> None:
    path = tmp_path / "normal.jsonl"
    path.write_text('{"id": "a", "events": ["open"], "label": 0}\n')
    rc, _, err = _run(capsys, "train", "--train", path, "--voters", "dt", "--out", tmp_path / "B")
    assert rc == 2
    assert "both normal (0) and anomalous (1)" in err and "Traceback" not in err


def test_train_unknown_voter(capsys, tmp_path: Path) -> None:
    rc, _, err = _run(
        capsys, "train", "--train", tmp_path / "x", "--voters", "knn,svm", "--out", tmp_path / "B"
    )
    _one_line_error(
        rc, err, "unknown voter 'svm'", "deeplog, dt, et, knn, llm, logls, logms, lstm, rf, slfn"
    )


# ------------------------------------------------------------------ score and the cache


def test_score_one_line_per_sequence(capsys, bundle: Path, adfa_data: Path) -> None:
    test = _jsonl(adfa_data / "test.jsonl")
    out = bundle.parent / "pred.jsonl"
    rc, _, _ = _run(
        capsys, "score", "--bundle", bundle, "--input", adfa_data / "test.jsonl", "--out", out
    )
    assert rc == 0
    preds = _jsonl(out)
    assert [p["id"] for p in preds] == [r["id"] for r in test]
    for p in preds:
        assert p["label"] in (0, 1)
        assert set(p["votes"]) | set(p.get("not_asked", [])) == set(DEFAULT_VOTERS)
        assert p["verdict"] == ("normal", "anomalous")[p["label"]]
        # a strict majority of all voters; the votes not asked could not have changed it
        assert p["label"] == int(2 * sum(p["votes"].values()) > len(DEFAULT_VOTERS))
    assert not out.with_name(out.name + ".rejected.jsonl").exists()


def test_cache_correction_flow(capsys, bundle: Path, adfa_data: Path) -> None:
    test_path = adfa_data / "test.jsonl"
    test = _jsonl(test_path)
    out = bundle.parent / "pred.jsonl"
    assert _run(capsys, "score", "--bundle", bundle, "--input", test_path, "--out", out)[0] == 0
    first = _jsonl(out)
    assert all(p["source"] == "ensemble" and not p["cached"] for p in first)

    rc, stdout, _ = _run(capsys, "cache", "stats", "--bundle", bundle, "--json")
    assert rc == 0
    stats = json.loads(stdout)
    assert stats["entries"] == len({tuple(r["events"]) for r in test})
    assert stats["human_entries"] == 0
    assert stats["path"] == str(bundle / "cache.sqlite")

    i = next(i for i, p in enumerate(first) if p["label"] == 0)
    events = " ".join(test[i]["events"])
    rc, stdout, _ = _run(
        capsys, "cache", "update", "--bundle", bundle, "--events", events, "--label", "anomalous"
    )
    assert rc == 0 and "anomalous" in stdout

    assert _run(capsys, "score", "--bundle", bundle, "--input", test_path, "--out", out)[0] == 0
    second = _jsonl(out)
    assert (second[i]["label"], second[i]["source"], second[i]["cached"]) == (1, "human", True)
    same = [j for j, r in enumerate(test) if r["events"] == test[i]["events"]]
    for j, p in enumerate(second):
        if j in same:
            assert p["source"] == "human"
        else:
            assert p["source"] == "cache" and p["label"] == first[j]["label"]

    stats = json.loads(_run(capsys, "cache", "stats", "--bundle", bundle, "--json")[1])
    assert stats["human_entries"] == 1

    rc, stdout, _ = _run(capsys, "cache", "delete", "--bundle", bundle, "--events", events)
    assert rc == 0 and "deleted" in stdout
    rc, _, err = _run(capsys, "cache", "delete", "--bundle", bundle, "--events", events)
    _one_line_error(rc, err, "no such cache entry")

    assert _run(capsys, "score", "--bundle", bundle, "--input", test_path, "--out", out)[0] == 0
    third = _jsonl(out)
    assert third[i]["label"] == 0 and third[i]["source"] == "ensemble"


def test_cache_command_errors(capsys, bundle: Path, tmp_path: Path) -> None:
    rc, _, err = _run(capsys, "cache", "stats")
    _one_line_error(rc, err, "--bundle or --cache")
    typo = tmp_path / "no-such-bundle"
    rc, _, err = _run(capsys, "cache", "stats", "--bundle", typo)
    _one_line_error(rc, err, str(typo), "not a flexlog bundle")
    assert not typo.exists()
    rc, _, err = _run(capsys, "cache", "update", "--bundle", bundle, "--events", "open")
    _one_line_error(rc, err, "--label")
    rc, _, err = _run(
        capsys, "cache", "update", "--bundle", bundle, "--events", "open", "--label", "maybe"
    )
    _one_line_error(rc, err, "'maybe'")
    rc, _, err = _run(capsys, "cache", "update", "--bundle", bundle, "--label", "normal")
    _one_line_error(rc, err, "exactly one of --events or --key")


def test_score_no_cache(capsys, bundle: Path, adfa_data: Path) -> None:
    out = bundle.parent / "pred.jsonl"
    rc, _, _ = _run(
        capsys,
        "score",
        "--bundle",
        bundle,
        "--input",
        adfa_data / "test.jsonl",
        "--out",
        out,
        "--no-cache",
    )
    assert rc == 0
    assert not (bundle / "cache.sqlite").exists()
    assert len(_jsonl(out)) == len(_jsonl(adfa_data / "test.jsonl"))


def test_score_bad_input_lines(capsys, bundle: Path, tmp_path: Path) -> None:
    good = [
        {"id": "g1", "events": ["open", "read", "close"]},
        {"id": "g2", "events": ["mmap2", "execve"], "label": 1},
        {"id": "g3", "events": ["open"]},
    ]
    lines = [
        json.dumps(good[0]).encode(),  # 1
        b'{"id": "m", "events": ["open", ',  # 2 malformed
        b'{"id": "noevents"}',  # 3
        json.dumps(good[1]).encode(),  # 4
        b'{"id": "empty", "events": []}',  # 5
        b'{"id": "bin\xff\xfe", "events": ["open"]}',  # 6 not UTF-8
        b'{"id": "huge", "events": ["' + b"x" * (17 * 1024 * 1024) + b'"]}',  # 7 > 16 MiB
        b'{"id": "markup", "events": ["open"], "label": "[/red]"}',  # 8 bad label
        json.dumps(good[2]).encode(),  # 9
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "pred.jsonl"
    rc, _, err = _run(
        capsys, "score", "--bundle", bundle, "--input", src, "--out", out, "--no-cache"
    )
    assert rc == 0
    assert "Traceback" not in err
    preds = _jsonl(out)
    assert [p["id"] for p in preds] == ["g1", "g2", "g3"]
    bad_lines = [2, 3, 5, 6, 7, 8]
    for n in bad_lines:
        assert f"{src}:{n}:" in err, n
    rejected = _jsonl(out.with_name("pred.jsonl.rejected.jsonl"))
    assert [r["line"] for r in rejected] == bad_lines
    assert all(r["source"] == str(src) for r in rejected)
    assert "malformed JSON" in rejected[0]["reason"]
    assert "missing field 'events'" in rejected[1]["reason"]
    assert "empty" in rejected[2]["reason"]
    assert "UTF-8" in rejected[3]["reason"]
    assert "bytes, over" in rejected[4]["reason"]
    assert "[/red]" in rejected[5]["reason"]
    assert len(preds) + len(rejected) == len(lines)  # answered + rejected == read

    # a clean re-run to the same output leaves no stale list of rejections behind
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps(good[0]) + "\n")
    rc, _, _ = _run(
        capsys, "score", "--bundle", bundle, "--input", clean, "--out", out, "--no-cache"
    )
    assert rc == 0 and [p["id"] for p in _jsonl(out)] == ["g1"]
    assert not out.with_name("pred.jsonl.rejected.jsonl").exists()


def test_score_missing_bundle(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bundle"
    rc, _, err = _run(
        capsys, "score", "--bundle", missing, "--input", tmp_path / "x", "--out", tmp_path / "o"
    )
    _one_line_error(rc, err, str(missing), "no such bundle directory")


def test_corrupt_manifest(capsys, bundle: Path, adfa_data: Path) -> None:
    (bundle / "manifest.json").write_text("{not json")
    test_path = adfa_data / "test.jsonl"
    rc, _, err = _run(
        capsys, "score", "--bundle", bundle, "--input", test_path, "--out", bundle.parent / "o"
    )
    _one_line_error(rc, err, str(bundle / "manifest.json"), "corrupt manifest")
    rc, _, err = _run(capsys, "evaluate", "--bundle", bundle, "--test", test_path, "--json")
    _one_line_error(rc, err, str(bundle / "manifest.json"), "corrupt manifest")


def test_score_missing_input(capsys, bundle: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    rc, _, err = _run(
        capsys, "score", "--bundle", bundle, "--input", missing, "--out", tmp_path / "o"
    )
    _one_line_error(rc, err, str(missing), "cannot open")


# ------------------------------------------------------------------ voters and help


def test_voters_lists_builtins(capsys) -> None:
    rc, out, _ = _run(capsys, "voters")
    assert rc == 0
    for name, cls in (("knn", "KNNVoter"), ("dt", "DecisionTreeVoter"), ("slfn", "SLFNVoter")):
        assert name in out and cls in out
    assert "presets for --voters: default = " in out
    assert "ml = knn,dt,slfn; cpu = knn,dt,slfn," in out


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _command_paths(sub, (*prefix, name))


COMMANDS = list(_command_paths(build_parser()))


def test_all_subcommands_discovered() -> None:
    names = {" ".join(p) for p in COMMANDS}
    expected = {"", "dataset", "dataset build", "train", "score", "evaluate", "cache", "voters"}
    assert expected <= names
    assert {"parse", "parse-accuracy", "bench", "experiment"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "flexlog")
def test_help_exits_zero(capsys, path: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: flexlog")


def test_version(capsys) -> None:
    from flexlog import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"flexlog {__version__}"


def test_bad_usage_exits_two(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["score", "--bundle", "B"])
    assert exc.value.code == 2
    assert "--input" in capsys.readouterr().err


def test_console_script_help() -> None:
    exe = Path(sys.executable).with_name("flexlog")
    if not exe.exists():
        exe = Path(shutil.which("flexlog") or "flexlog")
    proc = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: flexlog")
    for command in ("dataset", "train", "score", "evaluate", "cache", "voters"):
        assert command in proc.stdout


# ------------------------------------------------------------------ HDFS datasets, experiment


@pytest.mark.parametrize("kind", ["synhdfs-u", "template-evolution"])
def test_dataset_build_hdfs(capsys, kind: str, datasets_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / kind
    rc, stdout, _ = _run(
        capsys,
        "dataset",
        "build",
        kind,
        "--ratio",
        "0.1",
        "--source",
        datasets_dir / "hdfs",
        "--out",
        out,
    )
    assert rc == 0
    for name in (*SPLITS, "templates.csv"):
        assert (out / name).is_file(), name
    assert f"{kind}-0.1" in stdout
    info = json.loads((out / "info.json").read_text())
    assert info["ratio"] == 0.1
    test = _jsonl(out / "test.jsonl")
    assert len(test) == info["test"]["total"]
    changed = [r for r in test if "~" in r["id"]]
    assert changed
    if kind == "template-evolution":
        table = (out / "templates.csv").read_text()
        keys = {ev for r in test for ev in r["events"] if "~" in ev}
        assert keys and all(f"\n{k}," in table for k in keys)


def test_dataset_build_hdfs_needs_ratio(capsys, datasets_dir: Path, tmp_path: Path) -> None:
    rc, _, err = _run(
        capsys,
        "dataset",
        "build",
        "synhdfs-u",
        "--source",
        datasets_dir / "hdfs",
        "--out",
        tmp_path,
    )
    _one_line_error(rc, err, "--ratio")


def test_train_with_templates_and_eval(capsys, datasets_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "D"
    assert (
        _run(
            capsys,
            "dataset",
            "build",
            "template-evolution",
            "--ratio",
            "0.3",
            "--source",
            datasets_dir / "hdfs",
            "--out",
            data,
        )[0]
        == 0
    )
    rc, out, _ = _run(
        capsys,
        "train",
        "--train",
        data / "limited_train.jsonl",
        "--templates",
        data / "templates.csv",
        "--voters",
        "dt",
        "--eval",
        data / "test.jsonl",
        "--out",
        tmp_path / "B",
    )
    assert rc == 0 and "held-out metrics" in out
    manifest = json.loads((tmp_path / "B" / "manifest.json").read_text())
    assert manifest["metrics"]["ensemble"]["f1"] > 0.5
    assert "templates.csv" in manifest["files"]
    rc, out, _ = _run(
        capsys,
        "evaluate",
        "--bundle",
        tmp_path / "B",
        "--test",
        data / "test.jsonl",
        "--templates",
        data / "templates.csv",
        "--json",
    )
    assert rc == 0
    # evolved templates are aligned to their originals: at least as good as without
    assert json.loads(out)["f1"] >= manifest["metrics"]["ensemble"]["f1"]


def test_experiment_synhdfs(datasets_dir: Path, tmp_path: Path) -> None:
    report = run_experiment(
        "synhdfs-u",
        seeds=[0],
        voters=["dt"],
        datasets=datasets_dir,
        out_dir=tmp_path,
        variants=[0.1],
        progress=False,
    )
    for name in ("results.json", "results.md", "f1.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["kind"] == "synhdfs-u" and saved["voters"] == ["dt"]
    f1 = saved["runs"]["0.1"]["0"]["ensemble"]["f1"]
    assert f1 > 0.8
    assert report["summary"]["variants"]["0.1"]["ensemble"]["mean"] == pytest.approx(f1)
    assert "| 0.1 |" in (tmp_path / "results.md").read_text()


def test_experiment_added_voter_and_resume(datasets_dir: Path, tmp_path: Path) -> None:
    """A voter given with ``added`` is scored alone and as a fourth member of the ensemble,
    with its timings; a rerun with the same configuration resumes from progress.json."""
    kw = dict(seeds=[0], voters=["dt", "slfn"], datasets=datasets_dir, out_dir=tmp_path)
    report = run_experiment("synhdfs-u", **kw, added=["knn"], variants=["0.1"], progress=False)
    run = report["runs"]["0.1"][0]
    assert {"dt", "slfn", "knn", "ensemble", "ensemble+knn"} <= set(run)
    assert run["knn"]["fit_seconds"] > 0 and run["knn"]["predict_seconds"] > 0
    assert report["summary"]["models"] == ["dt", "slfn", "knn", "ensemble", "ensemble+knn"]
    assert set(report["summary"]["timing"]) == {"dt", "slfn", "knn"}
    assert "ensemble+knn" in report["summary"]["mann_whitney"]
    assert "predict ms / sequence" in (tmp_path / "results.md").read_text()
    saved = json.loads((tmp_path / "progress.json").read_text())
    saved["runs"]["0.1/0"]["result"]["knn"]["f1"] = -1.0  # a marker: resumed, not recomputed
    (tmp_path / "progress.json").write_text(json.dumps(saved))
    again = run_experiment("synhdfs-u", **kw, added=["knn"], variants=["0.1"], progress=False)
    assert again["runs"]["0.1"][0]["knn"]["f1"] == -1.0
    other = run_experiment("synhdfs-u", **kw, variants=["0.1"], progress=False)  # new config
    assert "knn" not in other["runs"]["0.1"][0]
    with pytest.raises(ValueError, match="unknown synhdfs-u variants"):
        run_experiment("synhdfs-u", **kw, variants=["0.7"], progress=False)


def test_experiment_parallel_jobs_match_serial(datasets_dir: Path, tmp_path: Path) -> None:
    """``jobs`` runs cells in worker processes: the same scores as one process, and every
    cell is recorded in progress.json."""
    kw = dict(seeds=[0, 1], voters=["dt", "knn"], datasets=datasets_dir, variants=["0.1"])
    serial = run_experiment("synhdfs-u", **kw, out_dir=tmp_path / "a", progress=False)
    parallel = run_experiment("synhdfs-u", **kw, out_dir=tmp_path / "b", progress=False, jobs=2)
    for seed in (0, 1):
        for model in ("dt", "knn", "ensemble"):
            assert (
                parallel["runs"]["0.1"][seed][model]["f1"]
                == serial["runs"]["0.1"][seed][model]["f1"]
            )
    assert set(json.loads((tmp_path / "b" / "progress.json").read_text())["runs"]) == {
        "0.1/0",
        "0.1/1",
    }
    # git keeps the result records (the report's input, the resume point), not the plots
    records = {f"{d}/{name}" for d in "ab" for name in ("results.json", "progress.json")}
    assert kept_by_git(tmp_path) == records


@pytest.mark.parametrize("flag", ["--jobs", "--threads"])
def test_experiment_rejects_bad_parallelism(capsys, flag: str, tmp_path: Path) -> None:
    rc, _, err = _run(capsys, "experiment", "synhdfs-u", flag, "0", "--out", tmp_path)
    _one_line_error(rc, err, f"{flag.lstrip('-')} must be an integer ≥ 1")


def test_experiment_rejects_no_seeds(capsys, tmp_path: Path) -> None:
    rc, _, err = _run(capsys, "experiment", "synhdfs-u", "--seeds", "0", "--out", tmp_path)
    _one_line_error(rc, err, "--seeds: the number of seeds must be at least 1, got 0")


def test_report_names_what_records_were_measured_with() -> None:
    """Versions that differ between records are all given, and records that predate
    recording them are counted, not passed off as measured with today's libraries."""
    m = {"python": "3.11.7", "processor": "x86_64", "cores": 2, "memory_gib": 23.4, "gpu": False}
    runs = [
        {"machine": m, "versions": {"numpy": "2.3.5", "scikit-learn": "1.9.1"}},
        {"machine": m, "versions": {"numpy": "2.4.0", "scikit-learn": "1.9.1"}},
        {},
    ]
    lines = measured_with(runs)
    assert lines[0] == "Machine: 2 CPU cores (x86_64), 23 GiB, no GPU, Python 3.11.7."
    assert lines[1] == (
        "Libraries (as recorded by 2 of the 3 records; the others predate recording them): "
        "numpy 2.3.5 / 2.4.0, scikit-learn 1.9.1."
    )
    assert measured_with(runs[:1])[1] == "Libraries: numpy 2.3.5, scikit-learn 1.9.1."


def test_experiment_rules_and_report(capsys, datasets_dir: Path, tmp_path: Path) -> None:
    """Each vote rule is scored as its own ensemble row; `flexlog report` turns the runs into
    Markdown tables (published figures only beside rows on the paper's protocol) and PNG plots,
    and replaces the README's results between its markers."""
    runs = tmp_path / "runs"
    for per_class in (25, 50):
        rc, _, err = _run(
            capsys,
            "experiment",
            "adfa-u",
            "--seeds",
            "2",
            "--voters",
            "ml",
            "--rules",
            "majority,stacked",
            "--variants",
            "web,meter",
            "--per-class",
            per_class,
            "--datasets",
            datasets_dir,
            "--out",
            runs / f"adfa-{per_class}",
        )
        assert rc == 0, err
    saved = json.loads((runs / "adfa-25" / "results.json").read_text())
    assert saved["rules"] == ["majority", "stacked"] and saved["adfa"]["per_class"] == 25
    assert {"ensemble", "ensemble:stacked"} <= set(saved["summary"]["models"])
    info = saved["datasets"]["web/0"]
    assert info["protocol"] == "paper" and info["limited_train"]["total"] == 50
    # what it was measured with: figures can move a little from one install to another
    assert saved["versions"]["numpy"] == np.__version__ and saved["machine"]["cores"] >= 1
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\ntail\n")
    rc, _, err = _run(
        capsys, "report", "--runs", runs, "--out", tmp_path / "docs", "--readme", readme
    )
    assert rc == 0, err
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- results:end -->\n\ntail\n")
    assert f"Libraries: flexlog {saved['versions']['flexlog']}, numpy {np.__version__}" in text
    assert "### ADFA-U by training-set size" in text and "| 50 | 100 |" in text
    assert "knn+dt+slfn (stacked)" in text
    assert "![F1 against the training-set size](docs/training-size.png)" in text
    assert (tmp_path / "docs" / "training-size.png").read_bytes()[:4] == b"\x89PNG"
    assert "(./training-size.png)" in (tmp_path / "docs" / "results.md").read_text()
    readme.write_text("no markers\n")
    rc, _, err = _run(
        capsys, "report", "--runs", runs, "--out", tmp_path / "docs", "--readme", readme
    )
    _one_line_error(rc, err, "no <!-- results:start -->")


def test_experiment_rejects_bad_rules(capsys, tmp_path: Path) -> None:
    rc, _, err = _run(capsys, "experiment", "adfa-u", "--rules", "majority,plurality")
    _one_line_error(rc, err, "--rules: a list of distinct rules from majority, weighted, stacked")
