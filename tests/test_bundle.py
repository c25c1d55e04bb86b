"""Bundles on disk: round trip, and refusal of anything missing, edited or untrusted."""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.preprocessing import FunctionTransformer

from flexlog.bundle import (
    FORMAT_VERSION,
    MANIFEST,
    BundleError,
    load_bundle,
    read_manifest,
    save_bundle,
    sha256_file,
)
from flexlog.data.records import InputError
from flexlog.detector import Detector, make_detector


@pytest.fixture(scope="module")
def trained(hdfs_small) -> Detector:
    train, _ = hdfs_small
    return make_detector(["knn", "dt", "slfn"], seed=0).fit(train)


@pytest.fixture(scope="module")
def saved(trained: Detector, hdfs_templates, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bundles") / "bundle"
    return save_bundle(
        trained,
        path,
        config={"voters": ["knn", "dt", "slfn"], "seed": 0},
        data={"train": {"sequences": 300}},
        metrics={"ensemble": {"f1": np.float64(0.9)}},
        templates=hdfs_templates,
    )


@pytest.fixture
def bundle(saved: Path, tmp_path: Path) -> Path:
    """A private copy of the saved bundle, free to tamper with."""
    return Path(shutil.copytree(saved, tmp_path / "bundle"))


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def _write_manifest(path: Path, manifest: dict) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest))


def _rehash(path: Path) -> None:
    manifest = _manifest(path)
    manifest["files"] = {rel: sha256_file(path / rel) for rel in manifest["files"]}
    _write_manifest(path, manifest)


# ------------------------------------------------------------------ round trip


def test_round_trip_identical_votes(saved: Path, trained: Detector, hdfs_small) -> None:
    _, test = hdfs_small
    loaded = load_bundle(saved)
    assert loaded.detector.voter_names == ["knn", "dt", "slfn"]
    events = [s.events for s in test]
    original, again = trained.ensemble.votes(events), loaded.detector.ensemble.votes(events)
    assert list(again) == list(original)
    for name in original:
        np.testing.assert_array_equal(again[name], original[name])
    assert [v.label for v in loaded.detector.predict(test)] == [
        v.label for v in Detector(trained.ensemble).predict(test)
    ]


def test_manifest_contents(saved: Path, trained: Detector, hdfs_templates) -> None:
    loaded = load_bundle(saved)
    manifest = loaded.manifest
    assert manifest["format"] == "flexlog-bundle"
    assert manifest["format_version"] == FORMAT_VERSION
    assert set(manifest["versions"]) >= {"flexlog", "python", "scikit-learn", "numpy"}
    assert loaded.metrics == {"ensemble": {"f1": 0.9}}
    assert manifest["config"]["seed"] == 0
    knn = next(v for v in manifest["voters"] if v["name"] == "knn")
    assert knn["fitted"]["n_neighbors_"] == dict(trained.ensemble.voters)["knn"].n_neighbors_
    assert knn["params"]["candidates"] == [1, 2, 3, 4, 5, 7, 9]
    files = manifest["files"]
    assert "templates.csv" in files and "voters/dt/estimator.skops" in files
    on_disk = {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()} - {
        MANIFEST
    }
    assert set(files) == on_disk
    assert all(sha256_file(saved / rel) == digest for rel, digest in files.items())
    assert loaded.templates == hdfs_templates
    assert loaded.parser_state is None


def test_load_attaches_cache(saved: Path, tmp_path: Path) -> None:
    from flexlog.cache import SequenceCache

    with SequenceCache(tmp_path / "c.sqlite") as cache:
        assert load_bundle(saved, cache=cache).detector.cache is cache


def test_parser_state_round_trip(trained: Detector, tmp_path: Path) -> None:
    path = save_bundle(trained, tmp_path / "b", parser_state={"preset": "hdfs", "n": 1})
    loaded = load_bundle(path)
    assert loaded.parser_state == {"preset": "hdfs", "n": 1}
    assert loaded.templates is None


# ------------------------------------------------------------------ load refuses


def test_refuses_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle directory"):
        load_bundle(tmp_path / "nope")


def test_refuses_missing_manifest(bundle: Path) -> None:
    (bundle / MANIFEST).unlink()
    with pytest.raises(BundleError, match=re.escape(f"{bundle}: no manifest.json")):
        load_bundle(bundle)


def test_refuses_corrupt_manifest(bundle: Path) -> None:
    (bundle / MANIFEST).write_text('{"format": "flexlog-bundle", ')
    with pytest.raises(BundleError, match="corrupt manifest"):
        load_bundle(bundle)
    (bundle / MANIFEST).write_bytes(b"\xff\xfe")
    with pytest.raises(BundleError, match="corrupt manifest"):
        load_bundle(bundle)


def test_refuses_foreign_or_newer_manifest(bundle: Path) -> None:
    manifest = _manifest(bundle)
    _write_manifest(bundle, {**manifest, "format": "something-else"})
    with pytest.raises(BundleError, match="not a flexlog bundle manifest"):
        load_bundle(bundle)
    _write_manifest(bundle, {**manifest, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(BundleError, match="format version"):
        load_bundle(bundle)
    _write_manifest(bundle, {k: v for k, v in manifest.items() if k != "files"})
    with pytest.raises(BundleError, match="lacks 'files'"):
        load_bundle(bundle)


def test_refuses_tampered_voter_file(bundle: Path) -> None:
    target = bundle / "voters" / "dt" / "vocabulary.json"
    vocab = json.loads(target.read_text())
    vocab["E5"], vocab["E22"] = vocab["E22"], vocab["E5"]
    target.write_text(json.dumps(vocab))
    with pytest.raises(
        BundleError, match=re.escape("voters/dt/vocabulary.json does not match its hash")
    ):
        load_bundle(bundle)


def test_refuses_missing_listed_file(bundle: Path) -> None:
    (bundle / "voters" / "knn" / "estimator.skops").unlink()
    with pytest.raises(BundleError, match=re.escape("missing file voters/knn/estimator.skops")):
        load_bundle(bundle)


def test_refuses_entry_outside_bundle(bundle: Path) -> None:
    outside = bundle.parent / "x"
    outside.write_text("looks harmless")
    manifest = _manifest(bundle)
    manifest["files"]["../x"] = sha256_file(outside)
    _write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match=re.escape("'../x' points outside the bundle")):
        read_manifest(bundle)


def test_refuses_symlink_out_of_bundle(bundle: Path) -> None:
    target = bundle / "voters" / "dt" / "estimator.skops"
    outside = bundle.parent / "elsewhere.skops"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(BundleError, match="points outside the bundle"):
        load_bundle(bundle)


def test_refuses_unknown_voter(bundle: Path) -> None:
    manifest = _manifest(bundle)
    manifest["voters"][1]["voter"] = "svm"
    _write_manifest(bundle, manifest)
    with pytest.raises(
        BundleError, match=r"unknown voter 'svm'; available: .*deeplog, dt, et, knn, llm.*slfn"
    ):
        load_bundle(bundle)


def test_refuses_voter_name_outside_bundle(bundle: Path) -> None:
    outside = bundle.parent / "outside_dt"
    shutil.copytree(bundle / "voters" / "dt", outside)
    manifest = _manifest(bundle)
    manifest["voters"][1]["name"] = "../../outside_dt"
    _write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match=re.escape("'../../outside_dt' points outside voters/")):
        load_bundle(bundle)


def test_refuses_unlisted_voter_file(bundle: Path) -> None:
    # dropping a file from the manifest must not let an edited copy through unchecked
    manifest = _manifest(bundle)
    del manifest["files"]["voters/knn/vocabulary.json"]
    _write_manifest(bundle, manifest)
    (bundle / "voters" / "knn" / "vocabulary.json").write_text('{"E5": 0}')
    with pytest.raises(BundleError, match=re.escape("voters/knn/vocabulary.json is not listed")):
        load_bundle(bundle)


def test_vote_rule_and_order_round_trip(trained: Detector, hdfs_small, tmp_path: Path) -> None:
    from flexlog.training import train_detector

    train, test = hdfs_small
    det, _ = train_detector(train, ["knn", "dt", "slfn"], rule="stacked", seed=0)
    loaded = load_bundle(save_bundle(det, tmp_path / "stacked")).detector
    assert loaded.ensemble.rule.to_json() == det.ensemble.rule.to_json()
    assert loaded.ensemble.order == det.ensemble.order
    assert [v.label for v in loaded.vote(test)] == [v.label for v in det.vote(test)]


@pytest.mark.parametrize(
    ("ensemble", "message"),
    [
        ({"rule": {"rule": "plurality"}}, "vote rule must be one of"),
        ({"rule": {"rule": "weighted", "weights": {"knn": "x"}}}, "weight of voter 'knn'"),
        ({"rule": "majority", "order": ["knn"]}, "order must name every voter once"),
        ({"rule": "majority", "order": "knn,dt,slfn"}, "order must be a list"),
        ([1], "'ensemble' must be an object"),
    ],
)
def test_refuses_bad_vote_rule(bundle: Path, ensemble, message: str) -> None:
    manifest = _manifest(bundle)
    manifest["ensemble"] = ensemble
    _write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_refuses_malformed_voter_entry(bundle: Path) -> None:
    manifest = _manifest(bundle)
    del manifest["voters"][0]["params"]
    _write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="malformed voter entry"):
        load_bundle(bundle)
    manifest["voters"] = []
    _write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="no voters"):
        load_bundle(bundle)


@pytest.mark.parametrize("func", [os.system, builtins.eval], ids=["os.system", "eval"])
def test_refuses_untrusted_skops_type(bundle: Path, func) -> None:
    target = bundle / "voters" / "dt" / "estimator.skops"
    sio.dump(FunctionTransformer(func=func), target)
    _rehash(bundle)
    read_manifest(bundle)  # the hashes match: only the type check can catch it
    with pytest.raises(BundleError, match="refusing untrusted types") as info:
        load_bundle(bundle)
    assert func.__name__ in str(info.value)
    assert "voter 'dt'" in str(info.value)


def test_refuses_default_trusted_type_foreign_to_the_voter(bundle: Path) -> None:
    # skops trusts scikit-learn's own types by default; a voter accepts only its own.
    target = bundle / "voters" / "dt" / "estimator.skops"
    sio.dump(FunctionTransformer(), target)
    _rehash(bundle)
    with pytest.raises(BundleError, match="is not what a DecisionTreeVoter is made of"):
        load_bundle(bundle)


def test_refuses_unreadable_skops(bundle: Path) -> None:
    (bundle / "voters" / "slfn" / "estimator.skops").write_bytes(b"not a zip file")
    _rehash(bundle)
    with pytest.raises(BundleError, match="not a readable skops file"):
        load_bundle(bundle)


def test_refuses_bad_vocabulary(bundle: Path) -> None:
    (bundle / "voters" / "knn" / "vocabulary.json").write_text('["E5", "E22"]')
    _rehash(bundle)
    with pytest.raises(BundleError, match="not a key → column mapping"):
        load_bundle(bundle)


def test_bundle_error_is_input_error() -> None:
    assert issubclass(BundleError, InputError)


# ------------------------------------------------------------------ save refuses


def test_save_refuses_non_bundle_directory(trained: Detector, tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not empty"):
        save_bundle(trained, precious)
    with pytest.raises(BundleError, match="not a bundle; refusing"):
        save_bundle(trained, precious, overwrite=True)
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    assert (precious / "notes.txt").read_text() == "keep me"
    # no temporary directories are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_save_refuses_file(trained: Detector, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="not a directory"):
        save_bundle(trained, tmp_path / "file")


def test_save_replaces_bundle_only_with_overwrite(
    trained: Detector, bundle: Path, hdfs_small
) -> None:
    with pytest.raises(BundleError, match="not empty"):
        save_bundle(trained, bundle)
    dt_only = make_detector(["dt"]).fit(hdfs_small[0])
    save_bundle(dt_only, bundle, overwrite=True)
    loaded = load_bundle(bundle)
    assert loaded.detector.voter_names == ["dt"]
    assert not (bundle / "voters" / "knn").exists()
    assert loaded.templates is None


def test_save_into_empty_directory(trained: Detector, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    save_bundle(trained, tmp_path / "empty")
    assert load_bundle(tmp_path / "empty").detector.voter_names == ["knn", "dt", "slfn"]
