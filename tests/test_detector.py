"""The detection pipeline: majority vote, input order, de-duplication, the SQLite cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from flexlog.cache import SequenceCache
from flexlog.data.records import LogSequence
from flexlog.detector import Detector, Verdict, make_detector
from flexlog.ensemble import VotingEnsemble, majority_vote


@pytest.fixture(scope="module")
def trained(hdfs_small) -> Detector:
    train, _ = hdfs_small
    return make_detector(["knn", "dt", "slfn"], seed=0).fit(train)


def _fresh(trained: Detector, cache: SequenceCache | None = None) -> Detector:
    """A detector sharing the fitted voters, with its own stats and cache."""
    return Detector(trained.ensemble, cache)


def test_majority_vote_tie_is_normal() -> None:
    votes = {"a": np.array([1, 1, 0, 0]), "b": np.array([1, 0, 1, 0])}
    np.testing.assert_array_equal(majority_vote(votes), [1, 0, 0, 0])


def test_majority_vote_three_voters() -> None:
    votes = {"a": [1, 1, 0, 0], "b": [1, 0, 1, 0], "c": [0, 1, 1, 0]}
    np.testing.assert_array_equal(majority_vote(votes), [1, 1, 1, 0])
    with pytest.raises(ValueError, match="no votes"):
        majority_vote({})


def test_predict_keeps_input_order(trained: Detector, hdfs_small) -> None:
    _, test = hdfs_small
    batch = test[:120]
    verdicts = _fresh(trained).predict(batch)
    assert [v.id for v in verdicts] == [s.id for s in batch]
    votes = trained.ensemble.votes([s.events for s in batch])
    expected = majority_vote(votes)
    assert [v.label for v in verdicts] == expected.tolist()
    for i, v in enumerate(verdicts):
        # short-circuit voting: the votes asked agree, the rest are reported as not asked
        every = {name: int(col[i]) for name, col in votes.items()}
        assert v.votes == {name: every[name] for name in v.votes}
        assert sorted([*v.votes, *v.not_asked]) == sorted(every)
        assert v.source == "ensemble" and v.cached is False
    assert _fresh(trained).predict([]) == []


def test_predict_votes_once_per_distinct_sequence(trained: Detector, hdfs_small) -> None:
    _, test = hdfs_small
    batch = [*test[:50], *test[:50], *test[10:30]]
    batch = [LogSequence(f"q{i}", s.events, s.label) for i, s in enumerate(batch)]
    det = _fresh(trained)
    verdicts = det.predict(batch)
    distinct = len({s.events for s in batch})
    assert det.stats.voted == distinct
    assert det.stats.sequences == len(batch)
    assert det.stats.cache_hits == 0
    # identical sequences get identical answers
    by_events: dict[tuple[str, ...], int] = {}
    for seq, v in zip(batch, verdicts, strict=True):
        assert by_events.setdefault(seq.events, v.label) == v.label


def test_cache_hits_on_second_call(trained: Detector, hdfs_small, tmp_path: Path) -> None:
    _, test = hdfs_small
    batch = test[:80]
    distinct = len({s.events for s in batch})
    with SequenceCache(tmp_path / "cache.sqlite") as cache:
        det = _fresh(trained, cache)
        first = det.predict(batch)
        assert not any(v.cached for v in first)
        assert len(cache) == distinct
        second = det.predict(batch)
        assert all(v.cached and v.source == "cache" for v in second)
        assert [v.label for v in second] == [v.label for v in first]
        assert [v.votes for v in second] == [v.votes for v in first]
        assert det.stats.voted == distinct
        assert det.stats.cache_hits == len(batch)
    # a new process (new cache object on the same file) still hits
    with SequenceCache(tmp_path / "cache.sqlite") as cache:
        det = _fresh(trained, cache)
        third = det.predict(batch)
        assert all(v.cached for v in third) and det.stats.voted == 0


def test_human_correction_wins(trained: Detector, hdfs_small, tmp_path: Path) -> None:
    _, test = hdfs_small
    seq = next(s for s in test if s.label == 0)
    with SequenceCache(tmp_path / "cache.sqlite") as cache:
        det = _fresh(trained, cache)
        (before,) = det.predict([seq])
        assert before.label == 0 and before.source == "ensemble"
        cache.update(seq.events, 1)
        (after,) = det.predict([seq])
        assert after.label == 1 and after.source == "human" and after.cached
        assert after.verdict == "anomalous"
        # a later model answer for the same sequence does not overwrite the correction
        cache.add_many([(seq.events, 0, before.votes)])
        (again,) = det.predict([LogSequence("other-id", seq.events)])
        assert (again.id, again.label, again.source) == ("other-id", 1, "human")
    with SequenceCache(tmp_path / "cache.sqlite") as cache:
        (reopened,) = _fresh(trained, cache).predict([seq])
        assert reopened.label == 1 and reopened.source == "human"


def test_predict_stream_equals_predict(trained: Detector, hdfs_small) -> None:
    _, test = hdfs_small
    whole = _fresh(trained).predict(test)
    streamed = list(_fresh(trained).predict_stream(iter(test), batch_size=37))
    assert streamed == whole
    with pytest.raises(ValueError, match="batch_size"):
        list(_fresh(trained).predict_stream(test, batch_size=0))


def test_fit_needs_labels(hdfs_small) -> None:
    train, _ = hdfs_small
    det = make_detector(["dt"])
    with pytest.raises(ValueError, match="'nolabel' has no label"):
        det.fit([*train[:10], LogSequence("nolabel", ("E5",))])


def test_make_detector_seeds_voters() -> None:
    det = make_detector(["knn", "dt"], {"dt": {"max_depth": 4}}, seed=11)
    assert det.voter_names == ["knn", "dt"]
    voters = dict(det.ensemble.voters)
    assert voters["dt"].random_state == 11 and voters["dt"].max_depth == 4
    assert voters["knn"].random_state == 11
    det = make_detector(["dt"], {"dt": {"random_state": 3}}, seed=11)
    assert det.ensemble.voters[0][1].random_state == 3


def test_verdict_json() -> None:
    v = Verdict("x", 1, {"dt": 1, "knn": 0}, cached=True, source="cache")
    assert v.to_json() == {
        "id": "x",
        "label": 1,
        "verdict": "anomalous",
        "votes": {"dt": 1, "knn": 0},
        "cached": True,
        "source": "cache",
    }


def test_ensemble_fit_checks_labels() -> None:
    ens = VotingEnsemble([("dt", make_detector(["dt"]).ensemble.voters[0][1])])
    with pytest.raises(ValueError, match="both normal"):
        ens.fit([["a"], ["b"]], [1, 1])


# -- voters that fail: degraded answers ----------------------------------------------------
class _Flaky:
    """A voter whose backend can be switched off: it then raises BackendError, as the LLM
    voter does when its server is unreachable."""

    def __init__(self, vote: int) -> None:
        self.vote = vote
        self.down = False
        self.calls = 0

    def predict(self, X) -> np.ndarray:
        from flexlog.llm.backends.base import BackendError

        self.calls += 1
        if self.down:
            raise BackendError("LLM server unreachable")
        return np.full(len(X), self.vote)


class _Const:
    def __init__(self, vote: int) -> None:
        self.vote = vote

    def predict(self, X) -> np.ndarray:
        return np.full(len(X), self.vote)


def _flaky_detector(cache: SequenceCache | None = None, retry_after: float = 0.0):
    from flexlog.detector import transient_errors

    flaky = _Flaky(1)
    members = [("a", _Const(1)), ("b", _Const(0)), ("c", _Const(1)), ("llm", flaky)]
    det = Detector(
        VotingEnsemble(members), cache, tolerate=transient_errors(), retry_after=retry_after
    )
    return det, flaky


def test_a_failing_voter_abstains_and_the_rest_decide(tmp_path: Path) -> None:
    seq = LogSequence("s", ("x", "y"))
    with SequenceCache(tmp_path / "cache.sqlite") as cache:
        det, flaky = _flaky_detector(cache)
        flaky.down = True
        (v,) = det.predict([seq])
        # 2 of the 3 voters that voted say anomalous: a strict majority of those voting
        assert v.label == 1 and v.degraded and v.abstained == ("llm",)
        assert v.votes == {"a": 1, "b": 0, "c": 1}
        assert v.to_json()["degraded"] is True and v.to_json()["abstained"] == ["llm"]
        assert len(cache) == 0  # a degraded answer is not cached
        assert det.stats.voter_errors == {"llm": 1} and det.stats.degraded == 1
        assert "llm" in det.unavailable()
        flaky.down = False  # the backend is back: the next call asks it again
        (again,) = det.predict([seq])
        assert not again.degraded and again.votes["llm"] == 1 and not again.cached
        assert det.unavailable() == {} and len(cache) == 1
        (third,) = det.predict([seq])
        assert third.cached and not third.degraded


def test_a_failed_voter_rests_before_it_is_asked_again() -> None:
    det, flaky = _flaky_detector(retry_after=0.5)
    flaky.down = True
    det.predict([LogSequence("1", ("a",))])
    flaky.down = False
    (v,) = det.predict([LogSequence("2", ("b",))])
    assert flaky.calls == 1  # resting: not asked, still abstains
    assert v.abstained == ("llm",) and "unreachable" in det.unavailable()["llm"]
    time.sleep(0.6)  # the rest is over
    (w,) = det.predict([LogSequence("3", ("c",))])
    assert flaky.calls == 2 and not w.degraded and det.unavailable() == {}


def test_without_tolerance_a_voter_error_propagates() -> None:
    from flexlog.llm.backends.base import BackendError

    flaky = _Flaky(1)
    flaky.down = True
    det = Detector(VotingEnsemble([("a", _Const(1)), ("llm", flaky)]))
    with pytest.raises(BackendError):
        det.predict([LogSequence("s", ("x",))])


def test_no_voter_left_is_an_error_and_one_voter_can_answer_alone() -> None:
    from flexlog.ensemble import NoVotersError

    det, flaky = _flaky_detector()
    flaky.down = True
    with pytest.raises(NoVotersError, match="llm") as info:
        det.predict_voter([LogSequence("s", ("x",))], "llm")
    assert set(info.value.abstained) == {"llm"}
    (v,) = det.predict_voter([LogSequence("s", ("x",))], "b")
    assert (v.label, v.votes, v.source, v.cached) == (0, {"b": 0}, "voter", False)
    with pytest.raises(ValueError, match="unknown voter"):
        det.predict_voter([LogSequence("s", ("x",))], "zz")
