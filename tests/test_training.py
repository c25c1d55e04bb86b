"""Training with a fitted vote rule: inner validation by anomaly group, the deployment's
anomaly rate, fallbacks and the errors that name the bad field."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from flexlog.cli import main
from flexlog.data.records import LogSequence, write_jsonl
from flexlog.data.ulad import build_adfa_u
from flexlog.inner_validation import anomaly_groups, fit_rule, out_of_fold_scores
from flexlog.training import (
    check_anomaly_rate,
    deployment_anomaly_rate,
    pool_size,
    train_detector,
    training_anomaly_rate,
)
from flexlog.vote_rules import StackedRule, WeightedRule


@pytest.fixture(scope="module")
def adfa_java(adfa_sample):
    """ADFA-U (java held out) on the shipped sample: a limited set drawn with replacement."""
    return build_adfa_u(adfa_sample, "java", seed=0, per_class=200)


def test_pool_size_recovers_the_pool() -> None:
    rng = random.Random(0)
    for pool in (300, 600, 3000):
        draws = [rng.randrange(pool) for _ in range(500)]
        estimate = pool_size(500, len(set(draws)))
        assert estimate == pytest.approx(pool, rel=0.3)
    assert pool_size(500, 500) is None  # nothing repeated: any size fits


def test_deployment_rate_of_a_set_drawn_with_replacement(adfa_corpus) -> None:
    ds = build_adfa_u(adfa_corpus, "meter", seed=0)
    full = training_anomaly_rate(ds.train)
    assert training_anomaly_rate(ds.limited_train) == 0.5
    rate, how = deployment_anomaly_rate(ds.limited_train)
    assert abs(rate - full) < 0.06 and "repeated ids" in how
    # a set whose ids never repeat stands for itself
    assert deployment_anomaly_rate(ds.train) == (pytest.approx(full), "the training set's rate")


def test_anomaly_groups_from_the_group_field_or_clusters(adfa_java) -> None:
    train = adfa_java.limited_train
    fold, scheme, names = anomaly_groups(train)
    assert scheme == "group holdout (5 groups)"
    assert sorted(names) == ["adduser", "hydraFTP", "hydraSSH", "meter", "web"]
    assert all(fold[i] == -1 for i, s in enumerate(train) if s.label == 0)
    # the same attack type always lands in the same fold
    by_group = {}
    for i, s in enumerate(train):
        if s.label == 1:
            by_group.setdefault(s.group, set()).add(int(fold[i]))
    assert all(len(f) == 1 for f in by_group.values())
    bare = [LogSequence(s.id, s.events, s.label) for s in train]
    _, scheme, names = anomaly_groups(bare)
    assert scheme.startswith("clusters of the anomalies") and "no group field" in scheme
    one = [LogSequence(s.id, s.events, s.label, "x" if s.label else None) for s in train]
    assert "a single group" in anomaly_groups(one)[1]


def test_inner_validation_holds_out_each_group(adfa_java) -> None:
    from flexlog.detector import make_voters
    from flexlog.ensemble import VotingEnsemble

    val = out_of_fold_scores(
        lambda: VotingEnsemble(make_voters(["dt", "slfn"])), adfa_java.limited_train
    )
    # every distinct sequence once
    assert len(val.y) == len({s.events for s in adfa_java.limited_train})
    assert set(val.scores) == {"dt", "slfn"}
    assert all(((s >= 0) & (s <= 1)).all() for s in val.scores.values())
    rule, report = fit_rule("stacked", val, anomaly_rate=0.1)
    assert isinstance(rule, StackedRule) and report["validation"]["scheme"].startswith("group")
    weighted, _ = fit_rule("weighted", val, anomaly_rate=0.1)
    assert isinstance(weighted, WeightedRule) and sum(weighted.weights.values()) == pytest.approx(1)
    # tuned for rare anomalies, the cut is stricter than for balanced data
    balanced, _ = fit_rule("weighted", val, anomaly_rate=0.5)
    assert weighted.threshold >= balanced.threshold


@pytest.mark.parametrize("rule", ["weighted", "stacked"])
def test_train_detector_fits_the_rule(adfa_java, rule: str) -> None:
    det, report = train_detector(adfa_java.limited_train, ["knn", "dt", "slfn"], rule=rule)
    assert det.ensemble.rule.name == rule
    assert report["validation"]["scheme"] == "group holdout (5 groups)"
    assert "repeated ids" in report["anomaly_rate_from"]
    verdicts = det.vote(adfa_java.test)
    assert len(verdicts) == len(adfa_java.test)


def test_train_detector_falls_back_to_majority_without_varied_anomalies(adfa_java) -> None:
    normal = [s for s in adfa_java.limited_train if s.label == 0]
    attack = next(s for s in adfa_java.limited_train if s.label == 1)
    train = normal + [attack] * 5
    det, report = train_detector(train, ["dt", "slfn"], rule="stacked")
    assert det.ensemble.rule.name == "majority"
    assert report["rule"] == "majority" and "stacked → majority" in report["fallback"]


def test_train_detector_bad_input(adfa_java) -> None:
    train = adfa_java.limited_train
    with pytest.raises(ValueError, match="vote rule must be one of"):
        train_detector(train, ["dt"], rule="plurality")
    with pytest.raises(ValueError, match="both normal"):
        train_detector([s for s in train if s.label == 0], ["dt"])
    with pytest.raises(ValueError, match="anomaly rate must be in"):
        train_detector(train, ["dt"], rule="stacked", anomaly_rate=1.0)
    with pytest.raises(ValueError, match="weights name voters not in the ensemble"):
        train_detector(train, ["dt"], rule="weighted", weights={"llm": 1.0})
    for bad in (0, 1, -0.2, "often", float("nan")):
        with pytest.raises(ValueError, match="anomaly rate"):
            check_anomaly_rate(bad)


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture
def files(tmp_path: Path, adfa_java) -> Path:
    """The java-held-out training and test sets as canonical JSONL in a temporary folder."""
    write_jsonl(tmp_path / "train.jsonl", adfa_java.limited_train)
    write_jsonl(tmp_path / "test.jsonl", adfa_java.test)
    return tmp_path


def _train(capsys, files: Path, *options) -> tuple[int, str]:
    rc, _, err = _run(
        capsys, "train", "--train", files / "train.jsonl", *options, "--out", files / "B"
    )
    return rc, err


def _evaluate(capsys, files: Path, *options) -> dict:
    rc, out, err = _run(
        capsys,
        "evaluate",
        "--bundle",
        files / "B",
        "--test",
        files / "test.jsonl",
        "--json",
        *options,
    )
    assert rc == 0, err
    return json.loads(out)


def test_cli_train_stacked_records_the_rule(capsys, files: Path) -> None:
    rc, err = _train(capsys, files, "--voters", "ml", "--rule", "stacked")
    assert rc == 0, err
    assert "fitted on group holdout (5 groups)" in err
    manifest = json.loads((files / "B" / "manifest.json").read_text())
    assert manifest["ensemble"]["rule"]["rule"] == "stacked"
    assert manifest["config"]["training"]["validation"]["folds"]
    payload = _evaluate(capsys, files)
    assert set(payload["asked_share"]) == {"knn", "dt", "slfn"}
    assert max(payload["asked_share"].values()) == 1.0
    every = _evaluate(capsys, files, "--all-votes")
    assert every["f1"] == payload["f1"] and set(every["asked_share"].values()) == {1.0}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--anomaly-rate", "1.5"], "--anomaly-rate: anomaly rate must be in (0, 1)"),
        (["--anomaly-rate", "often"], "--anomaly-rate: anomaly rate must be a number"),
        (["--rule", "weighted", "--weights", "knn=heavy"], "--weights: weight 'knn=heavy'"),
        (["--weights", "knn=1"], "--weights: only the weighted rule takes weights"),
        (["--rule", "weighted", "--weights", "llm=1"], "weights name voters not in the ensemble"),
    ],
)
def test_cli_train_bad_rule_options(capsys, files: Path, extra, needle) -> None:
    rc, err = _train(capsys, files, *extra)
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (files / "B").exists()


def test_cli_train_weighted_with_given_weights(capsys, files: Path) -> None:
    rc, err = _train(
        capsys, files, "--voters", "ml", "--rule", "weighted", "--weights", "knn=1,dt=1,slfn=2"
    )
    assert rc == 0, err
    rule = json.loads((files / "B" / "manifest.json").read_text())["ensemble"]["rule"]
    assert rule["weights"] == {"knn": 1.0, "dt": 1.0, "slfn": 2.0}
    assert np.isclose(rule["threshold"], 0.5)
