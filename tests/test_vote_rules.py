"""Vote rules and short-circuit voting: asking voters cheapest first and stopping where the
rest cannot change the label gives exactly the labels of asking every voter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexlog.detector import Detector, make_voters
from flexlog.ensemble import NOT_ASKED, VotingEnsemble
from flexlog.vote_rules import (
    MajorityRule,
    StackedRule,
    WeightedRule,
    parse_weights,
    rule_from_json,
)


class TableVoter:
    """A voter whose answers are a fixed column, looked up by the sequence's one event (the
    event is the row number); it records which rows it was asked about. A test fixture for
    arbitrary vote matrices, not a stand-in for a real voter."""

    def __init__(self, column, *, soft: bool, fails: bool = False):
        self.column = np.asarray(column, dtype=float)
        self.soft = soft
        self.fails = fails
        self.asked: list[int] = []

    def _rows(self, X) -> list[int]:
        rows = [int(events[0]) for events in X]
        self.asked.extend(rows)
        if self.fails:
            raise TimeoutError("backend down")
        return rows

    def predict(self, X):
        return (self.column[self._rows(X)] > 0.5).astype(np.int64)

    def __getattr__(self, name):
        if name == "predict_proba" and self.__dict__.get("soft"):

            def predict_proba(X):
                p = self.column[self._rows(X)]
                return np.column_stack([1 - p, p])

            return predict_proba
        raise AttributeError(name)


@st.composite
def vote_matrices(draw):
    n_voters = draw(st.integers(1, 6))
    n_rows = draw(st.integers(1, 30))
    hard = draw(st.booleans())
    values = st.sampled_from([0.0, 1.0]) if hard else st.floats(0, 1)
    matrix = np.array(
        draw(
            st.lists(
                st.lists(values, min_size=n_rows, max_size=n_rows),
                min_size=n_voters,
                max_size=n_voters,
            )
        )
    )
    names = [f"v{i}" for i in range(n_voters)]
    order = draw(st.permutations(names))
    kind = draw(st.sampled_from(["majority", "weighted", "stacked"]))
    unit = st.floats(0, 1)
    if kind == "majority":
        thresholds = draw(st.sampled_from([{}, {n: 0.3 for n in names}]))
        rule = MajorityRule(thresholds=thresholds)
    elif kind == "weighted":
        rule = WeightedRule(
            weights={n: draw(unit) for n in names},
            threshold=draw(st.floats(0, 0.99)),
            soft=draw(st.booleans()),
        )
    else:
        coef = st.floats(-5, 5)
        rule = StackedRule(
            coef={n: draw(coef) for n in names},
            bias=draw(coef),
            fill={n: draw(unit) for n in names},
        )
    failing = draw(st.sets(st.sampled_from(names), max_size=max(0, n_voters - 1)))
    return matrix, names, list(order), rule, failing


def _ensemble(matrix, names, order, rule, failing=()):
    voters = [
        (n, TableVoter(matrix[i], soft=rule.needs_scores(), fails=n in failing))
        for i, n in enumerate(names)
    ]
    return VotingEnsemble(voters, rule, order=order), dict(voters)


@settings(max_examples=400, deadline=None)
@given(vote_matrices())
def test_short_circuit_labels_equal_asking_every_voter(case) -> None:
    matrix, names, order, rule, failing = case
    rows = [(str(i),) for i in range(matrix.shape[1])]
    full, _ = _ensemble(matrix, names, order, rule, failing)
    short, voters = _ensemble(matrix, names, order, rule, failing)
    every = full.poll(rows, short_circuit=False, tolerate=(TimeoutError,))
    fewer = short.poll(rows, tolerate=(TimeoutError,))
    if every.decided is None:  # every voter failed: no label either way
        assert fewer.decided is None
        return
    assert fewer.labels().tolist() == every.labels().tolist()
    # votes that were asked agree; the others are marked as not asked
    for name, column in fewer.votes.items():
        asked = column != NOT_ASKED
        assert (column[asked] == every.votes[name][asked]).all()
        assert asked.sum() == fewer.asked[name] == len(voters[name].asked)
    # the first voter in order that answers is asked about everything
    first = next(n for n in order if n not in failing)
    assert fewer.asked[first] == len(rows)


def test_majority_short_circuit_skips_the_last_voter_when_the_rest_agree() -> None:
    # three cheap voters agree on rows 0 and 1 and split on row 2: the LLM-like fourth voter
    # is asked only about row 2
    matrix = np.array([[1, 0, 1], [1, 0, 0], [1, 0, 1], [0, 1, 1]], dtype=float)
    names = ["knn", "dt", "slfn", "llm"]
    ens, voters = _ensemble(matrix, names, names, MajorityRule())
    poll = ens.poll([("0",), ("1",), ("2",)])
    assert voters["llm"].asked == [2]
    assert poll.labels().tolist() == [1, 0, 1]  # row 2: 3 of 4 anomalous
    assert poll.votes["llm"].tolist() == [NOT_ASKED, NOT_ASKED, 1]


def test_ensemble_asks_cheapest_first() -> None:
    voters = make_voters(["slfn", "knn", "dt", "llm"])
    order = VotingEnsemble(voters).order
    assert order[-1] == "llm" and order.index("knn") > order.index("dt")


def test_short_circuit_on_real_data_same_labels_fewer_questions(hdfs_small) -> None:
    train, test = hdfs_small
    from flexlog.training import train_detector

    for rule in ("majority", "weighted", "stacked"):
        det, _ = train_detector(train, ["knn", "dt", "slfn"], rule=rule, seed=0)
        slow = Detector(det.ensemble, short_circuit=False)
        fast = Detector(det.ensemble)
        a, b = slow.vote(test), fast.vote(test)
        assert [v.label for v in a] == [v.label for v in b]
        assert all(not v.not_asked for v in a)
        last = det.ensemble.order[-1]
        assert fast.stats.asked.get(last, 0) < slow.stats.asked[last] == slow.stats.voted
        skipped = [v for v in b if v.not_asked]
        assert skipped and all(last in v.not_asked and last not in v.votes for v in skipped)
        assert all("not_asked" in v.to_json() for v in skipped)
        assert fast.asked_share()[last] < 1 == fast.asked_share()[det.ensemble.order[0]]


def test_rule_json_round_trip_and_errors() -> None:
    for rule in (
        MajorityRule(),
        WeightedRule(weights={"a": 1.0, "b": 2.0}, threshold=0.4),
        StackedRule(coef={"a": 1.5}, bias=-0.5, fill={"a": 0.2}, thresholds={"a": 0.7}),
    ):
        assert rule_from_json(rule.to_json()).to_json() == rule.to_json()
    assert isinstance(rule_from_json(None), MajorityRule)
    with pytest.raises(ValueError, match="vote rule must be one of"):
        rule_from_json({"rule": "plurality"})
    with pytest.raises(ValueError, match="weight of voter 'a' must be a finite number"):
        rule_from_json({"rule": "weighted", "weights": {"a": "heavy"}})
    with pytest.raises(ValueError, match="threshold must be in"):
        WeightedRule(threshold=1.5)
    with pytest.raises(ValueError, match="unexpected keyword"):
        rule_from_json({"rule": "stacked", "coef": {"a": 1}, "colour": 1})


def test_parse_weights() -> None:
    assert parse_weights("knn=1, dt=0.5") == {"knn": 1.0, "dt": 0.5}
    for bad in ("knn", "knn=heavy", "=1", "knn=-1", "knn=nan", ","):
        with pytest.raises(ValueError):
            parse_weights(bad)


def test_stacked_with_a_new_voter_keeps_decisions_at_a_neutral_score() -> None:
    rule = StackedRule(coef={"a": 2.0, "b": 1.0}, bias=-1.2, fill={"a": 0.3, "b": 0.3})
    grown = rule.with_voter("llm")
    scores = {"a": np.array([0.1, 0.5, 0.9]), "b": np.array([0.2, 0.6, 0.4])}
    neutral = {**scores, "llm": np.full(3, 0.5)}
    assert grown.combine(neutral).tolist() == rule.combine(scores).tolist()
    assert grown.coef["llm"] > 0
