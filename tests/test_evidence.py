"""Evidence behind verdicts: voters that flagged, unseen events, unlikely next events."""

from __future__ import annotations

import pytest

from flexlog.data.records import LogSequence
from flexlog.detector import make_detector
from flexlog.evidence import explain, known_events
from flexlog.ingest import SourceLines

pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = {"epochs": 2, "hidden_size": 16, "num_layers": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def detector(hdfs_small):
    train, _ = hdfs_small
    params = {"deeplog": {**QUICK, "top_k": 3}}
    return make_detector(["knn", "dt", "deeplog"], params, seed=0).fit(train)


def test_anomalous_verdicts_carry_their_evidence(detector, hdfs_small) -> None:
    train, test = hdfs_small
    known = known_events(detector)
    assert known >= {e for s in train for e in s.events}
    new = LogSequence("new", ("E5", "E22", "E-NEW-1", "E11", "E-NEW-2"))
    batch = [*test[:40], new]
    verdicts = detector.predict(batch)
    evidence = explain(detector, batch, verdicts)
    for seq, verdict, ev in zip(batch, verdicts, evidence, strict=True):
        if verdict.label == 0:
            assert ev is None
            continue
        assert set(ev.flagged_by) == {n for n, v in verdict.votes.items() if v == 1}
        assert all(seq.events[p] not in known for p in ev.unseen)
        for positions in ev.unlikely.values():
            assert all(0 <= p < len(seq.events) for p in positions)
    if verdicts[-1].label == 1:
        assert evidence[-1].unseen == (2, 4) and evidence[-1].strongest(1) == [2]
    flagged = [ev for ev in evidence if ev is not None]
    assert flagged and any(ev.unlikely for ev in flagged)  # DeepLog points at events


def test_evidence_names_the_lines(detector) -> None:
    seq = LogSequence("s", ("E5", "E-NEW", "E5"))
    (verdict,) = detector.predict([seq])
    (ev,) = explain(detector, [seq], [verdict], only_anomalous=False)
    record = ev.to_json(seq.events, SourceLines("app.log", (10, 11, 14)))
    assert record["unseen"] == [{"position": 1, "event": "E-NEW", "line": 11}]
    assert record["unseen_events"] == 1
    assert SourceLines("app.log", (10, 11, 14)).to_json() == {
        "file": "app.log",
        "first": 10,
        "last": 14,
        "lines": [10, 11, 14],
    }
