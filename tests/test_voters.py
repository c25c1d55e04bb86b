"""Voters: the scikit-learn protocol, input validation, persistence, and the registry."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from flexlog.ensemble import VotingEnsemble
from flexlog.features import TemplateCounter, as_event_lists
from flexlog.voters import (
    DEFAULT_VOTERS,
    ML_VOTERS,
    RECOMMENDED_CPU_VOTERS,
    DecisionTreeVoter,
    ExtraTreesVoter,
    FeatureMemo,
    KNNVoter,
    RandomForestVoter,
    SLFNVoter,
    available_voters,
    make_voter,
    parse_voter_list,
    voter_class,
)

VOTERS = [KNNVoter, DecisionTreeVoter, SLFNVoter, RandomForestVoter, ExtraTreesVoter]


@pytest.fixture(scope="module")
def fitted(hdfs_xy) -> dict[str, object]:
    X, y, _, _ = hdfs_xy
    return {cls.name: cls().fit(X, y) for cls in VOTERS}


# ------------------------------------------------------------------ scikit-learn protocol


@pytest.mark.parametrize("cls", VOTERS, ids=lambda c: c.name)
def test_params_and_clone(cls) -> None:
    voter = cls(random_state=7)
    params = voter.get_params()
    assert params["random_state"] == 7 and "scaling" in params
    assert voter.set_params(scaling="log1p") is voter
    assert voter.get_params()["scaling"] == "log1p"
    copy = clone(voter)
    assert copy is not voter and copy.get_params() == voter.get_params()
    with pytest.raises(ValueError):
        voter.set_params(no_such_param=1)


@pytest.mark.parametrize("cls", VOTERS, ids=lambda c: c.name)
def test_fit_predict_shapes(cls, fitted, hdfs_xy) -> None:
    _, _, X_test, y_test = hdfs_xy
    voter = fitted[cls.name]
    pred = voter.predict(X_test)
    assert pred.shape == (len(X_test),) and pred.dtype == np.int64
    assert set(np.unique(pred)) <= {0, 1}
    proba = voter.predict_proba(X_test)
    assert proba.shape == (len(X_test), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(voter.classes_, [0, 1])
    # HDFS anomalies are easy for every voter: clearly better than chance
    assert (pred == y_test).mean() > 0.9
    assert voter.predict([]).shape == (0,)
    assert voter.predict_proba([]).shape == (0, 2)


@pytest.mark.parametrize("cls", VOTERS, ids=lambda c: c.name)
def test_fit_accepts_log_sequences(cls, hdfs_small, fitted) -> None:
    train, test = hdfs_small
    voter = cls().fit(train, [s.label for s in train])
    np.testing.assert_array_equal(voter.predict(test), fitted[cls.name].predict(test))


@pytest.mark.parametrize("cls", VOTERS, ids=lambda c: c.name)
@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        ([["a"], ["b"]], [0, 0], "both normal"),
        ([["a"], ["b"]], [0, 1, 1], "2 labels"),
        ([["a"], ["b"]], [0, 2], "only 0"),
        ([["a"], []], [0, 1], "sequence 1 is empty"),
        ("a b", [0, 1], "single string"),
        ([["a"], "b"], [0, 1], "sequence 1 must be a list"),
        ([["a"], 5], [0, 1], "sequence 1 must be a list"),
    ],
    ids=["one-class", "wrong-length", "bad-label", "empty-seq", "bare-string", "str-item", "int"],
)
def test_fit_rejects(cls, X, y, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls().fit(X, y)


@pytest.mark.parametrize("cls", VOTERS, ids=lambda c: c.name)
def test_predict_rejects_bad_input(cls, fitted) -> None:
    voter = fitted[cls.name]
    with pytest.raises(ValueError, match="single string"):
        voter.predict("E5 E22")
    with pytest.raises(ValueError, match="empty"):
        voter.predict([["E5"], []])


@pytest.mark.parametrize("cls", VOTERS, ids=lambda c: c.name)
def test_unfitted_predict_raises(cls) -> None:
    with pytest.raises(NotFittedError):
        cls().predict([["a"]])


# ------------------------------------------------------------------ features


def test_unseen_templates_counted_in_last_column() -> None:
    counter = TemplateCounter().fit([["a", "b"], ["b", "c"]])
    assert counter.n_features == 4
    assert counter.feature_names() == ["a", "b", "c", "<unseen>"]
    M = counter.transform([["a", "a", "x", "y", "x"], ["c"]]).toarray()
    np.testing.assert_array_equal(M, [[2, 0, 0, 3], [0, 0, 1, 0]])


def test_counter_scalings() -> None:
    seqs = [["a", "a", "a", "b"]]
    log = TemplateCounter(scaling="log1p").fit(seqs).transform(seqs).toarray()
    np.testing.assert_allclose(log, [[np.log1p(3), np.log1p(1), 0]], rtol=1e-6)
    l1 = TemplateCounter(scaling="l1").fit(seqs).transform(seqs).toarray()
    np.testing.assert_allclose(l1, [[0.75, 0.25, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="scaling"):
        TemplateCounter(scaling="tfidf").fit(seqs)
    with pytest.raises(ValueError, match="zero sequences"):
        TemplateCounter().fit([])


def test_as_event_lists_accepts_sequences(hdfs_small) -> None:
    train, _ = hdfs_small
    assert as_event_lists(train[:3]) == [s.events for s in train[:3]]
    with pytest.raises(ValueError, match="single string"):
        as_event_lists(b"abc")


# ------------------------------------------------------------------ KNN


def test_knn_picks_k_by_cv(hdfs_xy) -> None:
    X, y, _, _ = hdfs_xy
    knn = KNNVoter(candidates=(1, 3, 5), cv=3).fit(X, y)
    assert knn.n_neighbors_ in (1, 3, 5)
    assert set(knn.cv_scores_) == {1, 3, 5}
    assert knn.cv_scores_[knn.n_neighbors_] == max(knn.cv_scores_.values())
    assert knn.estimator_.n_neighbors == knn.n_neighbors_


def test_knn_fixed_k(hdfs_xy) -> None:
    X, y, _, _ = hdfs_xy
    knn = KNNVoter(n_neighbors=2).fit(X, y)
    assert knn.n_neighbors_ == 2 and not hasattr(knn, "cv_scores_")
    with pytest.raises(ValueError, match="n_neighbors"):
        KNNVoter(n_neighbors=0).fit(X, y)
    with pytest.raises(ValueError, match="cv must be"):
        KNNVoter(cv=1).fit(X, y)


def test_knn_tiny_training_set() -> None:
    # one distinct sequence per class: no folds possible, k falls back to 1
    knn = KNNVoter().fit([["a"], ["a"], ["b"]], [0, 0, 1])
    assert knn.n_neighbors_ == 1
    np.testing.assert_array_equal(knn.predict([["a"], ["b"]]), [0, 1])


# ------------------------------------------------------------------ persistence


@pytest.mark.parametrize("cls", VOTERS, ids=lambda c: c.name)
def test_save_load_state_same_predictions(cls, fitted, hdfs_xy, tmp_path: Path) -> None:
    _, _, X_test, _ = hdfs_xy
    voter = fitted[cls.name]
    files = voter.save_state(tmp_path / cls.name)
    assert files == ["vocabulary.json", "estimator.skops"]
    loaded = cls.load_state(tmp_path / cls.name, voter.get_params())
    assert type(loaded) is cls
    np.testing.assert_array_equal(loaded.predict(X_test), voter.predict(X_test))
    np.testing.assert_allclose(loaded.predict_proba(X_test), voter.predict_proba(X_test))
    assert loaded.counter_.vocabulary_ == voter.counter_.vocabulary_


# ------------------------------------------------------------------ registry and ensemble


def test_registry_lists_builtins() -> None:
    voters = available_voters()
    assert {"knn", "dt", "slfn"} <= set(voters)
    assert voters["knn"] is KNNVoter and voters["dt"] is DecisionTreeVoter
    assert voters["slfn"] is SLFNVoter
    assert ML_VOTERS == ("knn", "dt", "slfn")
    assert voters["rf"] is RandomForestVoter and voters["et"] is ExtraTreesVoter
    # the built-ins are also declared as entry points of the installed distribution
    assert {"knn", "dt", "slfn"} <= {ep.name for ep in entry_points(group="flexlog.voters")}


def test_registry_rejects_unknown_with_list() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown voter 'svm'; available: auto-blstm, .*, dt, et, knn, llm, logls, logms, lstm, rf, slfn",
    ):
        voter_class("svm")
    with pytest.raises(ValueError, match="unknown voter"):
        make_voter("svm")
    with pytest.raises(ValueError, match="voter 'dt'"):
        make_voter("dt", depth=3)
    assert make_voter("dt", max_depth=3).max_depth == 3


def test_parse_voter_list() -> None:
    assert parse_voter_list(" knn, dt ,slfn") == ["knn", "dt", "slfn"]
    assert parse_voter_list(["dt"]) == ["dt"]
    with pytest.raises(ValueError, match="at least one"):
        parse_voter_list(" , ")
    with pytest.raises(ValueError, match="twice"):
        parse_voter_list("dt,dt")
    with pytest.raises(ValueError, match="unknown voter 'svm'"):
        parse_voter_list("dt,svm")


def test_voter_presets() -> None:
    assert parse_voter_list("ml") == list(ML_VOTERS)
    assert parse_voter_list("default") == list(DEFAULT_VOTERS)
    assert parse_voter_list("cpu,llm") == [*RECOMMENDED_CPU_VOTERS, "llm"]
    assert set(ML_VOTERS) < set(RECOMMENDED_CPU_VOTERS)
    with pytest.raises(ValueError, match="twice"):
        parse_voter_list("ml,knn")


def test_ensemble_votes_match_each_voter(fitted, hdfs_xy) -> None:
    _, _, X_test, _ = hdfs_xy
    ensemble = VotingEnsemble(list(fitted.items()))
    batch = FeatureMemo(X_test)
    votes = ensemble.votes(batch)
    assert list(votes) == [cls.name for cls in VOTERS]
    for name, voter in fitted.items():
        np.testing.assert_array_equal(votes[name], voter.predict(X_test))
    # the voters share one vocabulary: the batch was featurized once
    assert len(batch.memo) == 1


def test_ensemble_names_errors(hdfs_xy) -> None:
    X, y, _, _ = hdfs_xy
    with pytest.raises(ValueError, match="at least one voter"):
        VotingEnsemble([])
    with pytest.raises(ValueError, match="unique"):
        VotingEnsemble([("a", DecisionTreeVoter()), ("a", KNNVoter())])
    ensemble = VotingEnsemble([("tree", DecisionTreeVoter()), ("knn", KNNVoter(n_neighbors=0))])
    with pytest.raises(ValueError, match="voter 'knn'"):
        ensemble.fit(X, y)
