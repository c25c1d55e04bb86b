"""``flexlog retrain``: a bundle retrained on the human corrections of its cache, on the ADFA
demo data with real voters, real caches (SQLite, PostgreSQL) and the real command line."""

from __future__ import annotations

import json
import shutil
from contextlib import closing
from pathlib import Path

import pytest

from flexlog.bundle import load_bundle, sha256_file
from flexlog.cache import CacheEntry, SequenceCache, key_of
from flexlog.cli import main
from flexlog.data.records import LogSequence, read_jsonl
from flexlog.retrain import (
    CORRECTION_GROUP,
    DEFAULT_REPEAT,
    better,
    merge_corrections,
    training_options,
    without_keys,
)

UNKNOWN = ("no_such_syscall_a", "no_such_syscall_b")


def _run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture(scope="module")
def false_alarms(adfa_demo: Path) -> list[LogSequence]:
    """The demo bundle's false alarms on its test set (its model alone, no cache)."""
    test, _ = read_jsonl(adfa_demo / "data" / "test.jsonl")
    verdicts = load_bundle(adfa_demo / "bundle").detector.predict(test)
    found = [s for s, v in zip(test, verdicts, strict=True) if s.label == 0 and v.label == 1]
    assert len(found) >= 2, "the demo bundle needs false alarms to correct"
    return found[:5]


@pytest.fixture
def bundle(adfa_demo: Path, tmp_path: Path) -> Path:
    """A private copy of the demo bundle, with an empty cache of its own."""
    path = Path(shutil.copytree(adfa_demo / "bundle", tmp_path / "B"))
    (path / "cache.sqlite").unlink(missing_ok=True)
    return path


def _retrain(capsys, bundle: Path, out: Path, data: Path, *extra: str | Path):
    return _run(
        capsys,
        "retrain",
        "--bundle",
        bundle,
        "--data",
        data / "limited_train.jsonl",
        "--eval",
        data / "test.jsonl",
        "--out",
        out,
        *extra,
    )


def _snapshot(path: Path) -> dict[str, str]:
    """The bundle's files and their hashes; SQLite's -wal and -shm files aside (a reader of a
    WAL database may leave them, empty of changes, beside it)."""
    return {
        p.relative_to(path).as_posix(): sha256_file(p)
        for p in path.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


# ------------------------------------------------------------------ the retrain round


def test_retrain_learns_the_corrected_false_alarms(
    adfa_demo: Path, bundle: Path, false_alarms: list[LogSequence], tmp_path: Path, capsys
) -> None:
    partly_unknown = (*false_alarms[0].events[:20], "no_such_syscall")
    with SequenceCache(bundle / "cache.sqlite") as cache:
        # what serving left there: model answers, which the new bundle must not inherit
        cache.add_many([(s.events, 1, {"knn": 1}) for s in false_alarms])
        for seq in false_alarms:
            cache.update(seq.events, 0, actor="cli:reviewer", comment=f"{seq.id} is benign")
        cache.update(partly_unknown, 1, actor="cli:reviewer")
        cache.update(UNKNOWN, 1, actor="cli:reviewer")
    before = _snapshot(bundle)
    out = tmp_path / "B2"

    rc, stdout, stderr = _retrain(capsys, bundle, out, adfa_demo / "data")

    assert rc == 0, stderr
    assert _snapshot(bundle) == before  # B is never modified
    assert f"skipped correction {key_of(UNKNOWN)}" in stderr
    assert "none of its 2 events occur in the training data" in stderr
    assert f"{len(false_alarms) + 1} corrections ×{DEFAULT_REPEAT}" in stderr
    assert "old (" in stdout and "new (" in stdout
    assert "is better by F1" in stdout or "no change in F1" in stdout

    corrected = [key_of(s.events) for s in false_alarms]
    retrain = json.loads((out / "manifest.json").read_text())["data"]["retrain"]
    assert retrain["from"] == {
        "path": str(bundle),
        "manifest_sha256": sha256_file(bundle / "manifest.json"),
    }
    assert retrain["repeat"] == DEFAULT_REPEAT
    fixes = retrain["corrections"]
    assert fixes["keys"] == sorted([*corrected, key_of(partly_unknown)])
    assert fixes["count"] == len(false_alarms) + 1
    assert fixes["labels"] == {**dict.fromkeys(corrected, 0), key_of(partly_unknown): 1}
    assert fixes["unknown_events"] == {key_of(partly_unknown): 1}
    assert fixes["skipped"] == {key_of(UNKNOWN): "none of its 2 events occur in the training data"}
    assert fixes["overridden_training_labels"] == 0  # test sequences are not in training
    for seq, key in zip(false_alarms, corrected, strict=True):
        (record,) = fixes["history"][key]
        assert (record["actor"], record["comment"]) == ("cli:reviewer", f"{seq.id} is benign")
        assert (record["previous_label"], record["new_label"], record["new_source"]) == (
            1,
            0,
            "human",
        )

    # the corrected sequences are left out of both evaluations
    evaluation = retrain["evaluation"]
    assert evaluation["excluded_corrected"] == len(false_alarms)
    assert evaluation["sequences"] == 141 - len(false_alarms)
    assert evaluation["old"]["n"] == evaluation["new"]["n"] == evaluation["sequences"]
    assert evaluation["better"] == better(evaluation["old"], evaluation["new"])

    # the new model itself (no cache) answers the corrected false alarms normal
    retrained = load_bundle(out)
    assert retrained.manifest["config"]["voters"] == ["knn", "dt", "slfn"]
    assert retrained.metrics["ensemble"] == evaluation["new"]
    assert [v.label for v in retrained.detector.predict(false_alarms)] == [0] * len(false_alarms)

    # its cache holds the human answers only, carried over and recorded as such
    with SequenceCache(out / "cache.sqlite") as cache:
        humans = cache.corrected()
        assert len(cache) == len(humans) == len(false_alarms) + 2
        assert {e.key: e.label for e in humans} == {
            **fixes["labels"],
            key_of(UNKNOWN): 1,
        }
        (carried,) = cache.history(corrected[0])
        assert carried.actor == "retrain" and str(bundle) in carried.comment


def test_the_bundle_keeps_its_data_and_eval_files_in_its_manifest(
    adfa_demo: Path, false_alarms: list[LogSequence], tmp_path: Path, capsys
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("limited_train.jsonl", "test.jsonl"):
        shutil.copy(adfa_demo / "data" / name, data / name)
    bundle = tmp_path / "B"
    train = ["train", "--train", data / "limited_train.jsonl", "--voters", "knn,dt"]
    rc, _, stderr = _run(capsys, *train, "--eval", data / "test.jsonl", "--out", bundle)
    assert rc == 0, stderr
    recorded = json.loads((bundle / "manifest.json").read_text())["data"]["eval"]
    assert recorded == {
        "path": str(data / "test.jsonl"),
        "sha256": sha256_file(data / "test.jsonl"),
    }
    with SequenceCache(bundle / "cache.sqlite") as cache:
        cache.update(false_alarms[0].events, 0)

    rc, _, stderr = _run(capsys, "retrain", "--bundle", bundle, "--out", tmp_path / "B2")
    assert rc == 0, stderr  # the training and held-out files the manifest records
    manifest = json.loads((tmp_path / "B2" / "manifest.json").read_text())
    assert manifest["data"]["train"]["path"] == str(data / "limited_train.jsonl")
    assert manifest["data"]["retrain"]["evaluation"]["path"] == str(data / "test.jsonl")
    assert manifest["config"]["voters"] == ["knn", "dt"]

    rc, _, stderr = _run(capsys, "retrain", "--bundle", bundle, "--out", tmp_path / "B2")
    _error(rc, stderr, "B2: directory is not empty (use --force to replace)")

    with (data / "limited_train.jsonl").open("a") as fh:
        fh.write('{"id": "late", "events": ["open"], "label": 0}\n')
    rc, _, stderr = _run(capsys, "retrain", "--bundle", bundle, "--out", tmp_path / "B3")
    _error(rc, stderr, str(data / "limited_train.jsonl"), "sha256 no longer matches", "--data")
    (data / "test.jsonl").unlink()
    argv = ["retrain", "--bundle", bundle, "--data", data / "limited_train.jsonl"]
    rc, _, stderr = _run(capsys, *argv, "--out", tmp_path / "B3")
    _error(rc, stderr, str(data / "test.jsonl"), "is missing", "pass --eval")
    assert not (tmp_path / "B3").exists()


def test_a_shared_postgresql_cache_is_read_not_written(
    adfa_demo: Path,
    bundle: Path,
    false_alarms: list[LogSequence],
    postgres_url: str,
    tmp_path: Path,
    capsys,
) -> None:
    with SequenceCache(postgres_url) as cache:
        for seq in false_alarms[:2]:
            cache.update(seq.events, 0, actor="key:ops")
        before = (len(cache), [c.to_dict() for c in cache.history(false_alarms[0].events)])
    out = tmp_path / "B2"

    rc, stdout, stderr = _retrain(capsys, bundle, out, adfa_demo / "data", "--cache", postgres_url)

    assert rc == 0, stderr
    assert "the shared cache postgresql://" in stdout and "keeps the corrections" in stdout
    assert not (out / "cache.sqlite").exists()
    fixes = json.loads((out / "manifest.json").read_text())["data"]["retrain"]["corrections"]
    assert fixes["count"] == 2 and fixes["cache"].startswith("postgresql://")
    assert ":" not in fixes["cache"].removeprefix("postgresql://").split("@")[0]  # no password
    with SequenceCache(postgres_url) as cache:
        after = (len(cache), [c.to_dict() for c in cache.history(false_alarms[0].events)])
    assert after == before


def test_a_bundle_of_raw_logs_reads_them_with_its_own_parser(tmp_path: Path, capsys) -> None:
    from applog import FMT
    from test_cli_raw_logs import _write_log

    _write_log(tmp_path / "v1.log", 300, 0)
    _write_log(tmp_path / "v2.log", 150, 1, upgraded=True)
    labels = ["--label-field", "Label"]
    bundle, out = tmp_path / "B", tmp_path / "B2"
    train = ["train", "--train", tmp_path / "v1.log", "--log-format", FMT, *labels]
    train += ["--partition", "fixed", "--window", "20", "--voters", "knn,dt"]
    rc, _, stderr = _run(capsys, *train, "--eval", tmp_path / "v2.log", "--out", bundle)
    assert rc == 0, stderr
    argv = ["score", "--bundle", bundle, "--input", tmp_path / "v2.log", "--out", tmp_path / "P"]
    assert _run(capsys, *argv)[0] == 0
    window = next(events for events, label in _answers(bundle) if label == 0)
    with SequenceCache(bundle / "cache.sqlite") as cache:
        cache.update(window, 1, actor="cli:ops")  # the model found it normal; ops do not

    rc, _, stderr = _run(capsys, "retrain", "--bundle", bundle, "--out", out)
    _error(rc, stderr, "v1.log: raw logs need labels")
    rc, _, stderr = _run(capsys, "retrain", "--bundle", bundle, "--out", out, *labels)

    assert rc == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ingestion"] == json.loads((bundle / "manifest.json").read_text())["ingestion"]
    for name in ("parser.json", "templates.csv"):
        assert sha256_file(out / name) == sha256_file(bundle / name)
    assert manifest["data"]["retrain"]["evaluation"]["excluded_corrected"] == 1
    assert load_bundle(out).detector.predict([LogSequence("w", window)])[0].label == 1


def _answers(bundle: Path) -> list[tuple[tuple[str, ...], int]]:
    """The events and labels of the model answers in the bundle's cache, in key order."""
    import sqlite3

    with closing(sqlite3.connect(bundle / "cache.sqlite")) as conn:
        rows = conn.execute("SELECT events, label FROM entries ORDER BY key").fetchall()
    return [(tuple(json.loads(events)), label) for events, label in rows]


# ------------------------------------------------------------------ what cannot be used


def test_no_human_corrections_is_a_clear_error(
    adfa_demo: Path, bundle: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "B2"
    rc, _, stderr = _retrain(capsys, bundle, out, adfa_demo / "data")
    _error(rc, stderr, "no human corrections in", "flexlog cache update", "PUT /v1/cache/{key}")
    assert not (bundle / "cache.sqlite").exists()  # nothing created inside B

    with SequenceCache(bundle / "cache.sqlite") as cache:
        cache.add(("open", "read"), 1)  # a model answer
        cache.update(("open", "close"), 0)
        cache.undo(("open", "close"))  # a correction undone is no correction
    rc, _, stderr = _retrain(capsys, bundle, out, adfa_demo / "data")
    _error(rc, stderr, f"no human corrections in {bundle / 'cache.sqlite'}")
    assert not out.exists()


def test_corrections_of_unknown_events_only_are_a_clear_error(
    adfa_demo: Path, bundle: Path, tmp_path: Path, capsys
) -> None:
    with SequenceCache(bundle / "cache.sqlite") as cache:
        cache.update(UNKNOWN, 0)
    rc, _, stderr = _retrain(capsys, bundle, tmp_path / "B2", adfa_demo / "data")
    assert f"skipped correction {key_of(UNKNOWN)}" in stderr
    _error(rc, stderr, "none of the 1 human corrections", "can be used", "all unknown")


def test_out_must_not_be_the_bundle(adfa_demo: Path, bundle: Path, capsys) -> None:
    rc, _, stderr = _retrain(capsys, bundle, bundle, adfa_demo / "data", "--force")
    _error(rc, stderr, "--out is --bundle", "never modifies")


# ------------------------------------------------------------------ the pieces


def _seq(id_: str, events: tuple[str, ...], label: int, group: str | None = None):
    return LogSequence(id_, events, label, group)


def test_merge_relabels_training_copies_and_repeats_corrections() -> None:
    training = [
        _seq("a", ("open", "read"), 1, "web"),
        _seq("b", ("open", "read"), 1, "web"),
        _seq("c", ("open", "close"), 0),
        _seq("d", ("exec", "kill"), 1, "ssh"),
    ]
    fixes = [
        CacheEntry(key_of(("open", "read")), ("open", "read"), 0, "human"),
        CacheEntry(key_of(("open", "mmap")), ("open", "mmap"), 1, "human"),  # mmap unseen
        CacheEntry(key_of(("fork", "mmap")), ("fork", "mmap"), 0, "human"),
        CacheEntry(key_of(("open", "close")), ("open", "close"), 1, "human"),
    ]
    merge = merge_corrections(training, fixes, repeat=3)
    assert merge.overridden == 3
    assert merge.matched == {fixes[0].key: 2, fixes[3].key: 1}
    assert [s.label for s in merge.training] == [0, 0, 1, 1]
    assert merge.unknown_events == {fixes[1].key: 1}
    assert list(merge.skipped) == [fixes[2].key]
    assert merge.keys == [fixes[0].key, fixes[1].key, fixes[3].key]
    assert len(merge.sequences) == 4 + 3 * 3
    # anomalies nobody grouped join a group of their own, so group holdout still applies
    assert [c.group for c in merge.corrections] == [None, CORRECTION_GROUP, CORRECTION_GROUP]
    assert merge.training[2].group == CORRECTION_GROUP
    with pytest.raises(ValueError, match="repeat"):
        merge_corrections(training, fixes, repeat=0)


def test_training_options_repeat_the_bundle_configuration() -> None:
    manifest = {
        "config": {
            "voters": ["knn", "dt"],
            "params": {"knn": {"n_neighbors": 3}, "dt": {}},
            "seed": 7,
            "rule": "weighted",
            "training": {"rule": "weighted", "weights": "given", "anomaly_rate": 0.1},
        },
        "ensemble": {"rule": {"rule": "weighted", "weights": {"knn": 2.0, "dt": 1.0}}},
    }
    assert training_options(manifest) == {
        "voters": ["knn", "dt"],
        "params": {"knn": {"n_neighbors": 3}, "dt": {}},
        "seed": 7,
        "rule": "weighted",
        "weights": {"knn": 2.0, "dt": 1.0},
        "anomaly_rate": 0.1,
    }
    with pytest.raises(ValueError, match=r"config\.voters"):
        training_options({"config": {}})
    with pytest.raises(ValueError, match="fine-tuned"):
        training_options({**manifest, "data": {"finetune": {"recipe": "x"}}})


def test_without_keys_and_better() -> None:
    seqs = [_seq("a", ("x",), 0), _seq("b", ("y",), 1), _seq("c", ("x",), 0)]
    assert without_keys(seqs, [key_of(("x",))]) == ([seqs[1]], 2)
    assert better({"f1": 0.5}, {"f1": 0.6}) == "new"
    assert better({"f1": 0.6}, {"f1": 0.5}) == "old"
    assert better({"f1": 0.5}, {"f1": 0.5}) == "no change"
