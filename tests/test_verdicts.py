"""The review page's verdict log: bounded, persistent, filtered and paged on a real SQLite
file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flexlog.cache import key_of
from flexlog.serve.verdicts import MAX_EVENTS_KEPT, Recorded, VerdictLog


def _answer(i: int, label: int = 0, source: str = "ensemble", when: float | None = None):
    events = (f"e{i % 7}", f"e{i}", "e1")
    return Recorded(
        key=key_of(events),
        seq_id=f"s{i}",
        model="flexlog",
        label=label,
        source=source,
        votes={"knn": label, "dt": 0},
        events=events,
        not_asked=("slfn",),
        time=time.time() if when is None else when,
    )


def test_keeps_the_latest_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "verdicts.sqlite"
    log = VerdictLog(path, keep=25)
    for start in range(0, 60, 10):
        log.record([_answer(i) for i in range(start, start + 10)])
    assert log.flush()
    assert len(log) == 25
    log.close()
    reopened = VerdictLog(path, keep=25)
    page = reopened.page(per_page=50)
    assert [v.seq_id for v in page.items] == [f"s{i}" for i in range(59, 34, -1)]
    assert page.items[0].not_asked == ["slfn"] and page.items[0].votes == {"knn": 0, "dt": 0}
    # the events of forgotten verdicts are forgotten too
    assert reopened.events(_answer(0).key) is None
    assert reopened.events(_answer(59).key) == (list(_answer(59).events), 3)
    reopened.close()


def test_filters_order_and_pages(tmp_path: Path) -> None:
    log = VerdictLog(tmp_path / "v.sqlite")
    old = time.time() - 7200
    log.record([_answer(i, label=i % 3 == 0, when=old if i < 10 else None) for i in range(30)])
    log.record([_answer(100, source="human")])
    log.flush()
    page = log.page(per_page=10)
    assert page.total == 31 and page.pages == 4
    labels = [v.label for v in log.page(per_page=50).items]
    assert labels == sorted(labels, reverse=True)  # anomalous first
    assert {v.label for v in log.page(label="anomalous").items} == {1}
    assert [v.seq_id for v in log.page(source="human").items] == ["s100"]
    assert log.page(window="1h").total == 21
    assert len(log.page(page=4, per_page=10).items) == 1
    assert [v.seq_id for v in log.of_key(_answer(100).key)] == ["s100"]
    log.close()


def test_long_sequences_and_lines_are_capped(tmp_path: Path) -> None:
    log = VerdictLog(None)
    events = tuple(f"e{i}" for i in range(MAX_EVENTS_KEPT + 10))
    long = Recorded(
        key=key_of(events),
        seq_id="long",
        model="flexlog",
        label=1,
        source="ensemble",
        votes={},
        events=events,
        lines=[(n, "x" * 5000) for n in range(1, 400)],
        evidence={"flagged_by": ["knn"], "unseen_events": 0, "unseen": []},
    )
    log.record([long])
    log.flush()
    (item,) = log.page().items
    assert item.length == len(events) and len(item.events) == MAX_EVENTS_KEPT
    assert len(item.lines) == 200 and len(item.lines[0][1]) == 2000
    assert item.evidence["flagged_by"] == ["knn"]
    log.close()


def test_never_blocks_a_request_past_its_bound(tmp_path: Path) -> None:
    log = VerdictLog(None, max_pending=5, flush_every=3.0)
    log.record([_answer(i) for i in range(5)])
    log.record([_answer(i) for i in range(5, 8)])  # over the bound while the first waits
    log.flush()
    assert log.dropped == 3 and len(log) == 5
    log.close()
    log.record([_answer(9)])  # after close: ignored, not an error


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot open the verdict log"):
        VerdictLog(blocker / "verdicts.sqlite")
    with pytest.raises(ValueError, match="keep"):
        VerdictLog(None, keep=0)


def test_keeps_anomalous_verdicts_first_within_the_rate() -> None:
    log = VerdictLog(None, rate=10.0)  # a burst of 20, then 10 a second
    answers = [_answer(i, label=int(i % 4 == 0)) for i in range(40)]
    log.record(answers)
    log.flush()
    kept = log.page(per_page=50).items
    assert len(kept) == 20 and log.skipped == 20
    assert sum(v.label for v in kept) == 10  # every anomalous one of the 40
    log.record([_answer(99, source="human")], always=True)  # a correction is always kept
    log.flush()
    assert len(log) == 21
    with pytest.raises(ValueError, match="rate"):
        VerdictLog(None, rate=0)
    log.close()
