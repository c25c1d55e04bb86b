"""hypothesis on the service's content reader and its raw-line path.

In process, on :mod:`flexlog.serve.content`: whatever text a chat message or prompt holds
(JSON-ish and bracketed lists, ``x3`` runs, huge numbers, control characters, any Unicode),
reading it gives a log sequence of event keys or a :class:`ContentError`, never another
exception; and partitioning any batch of raw lines, for every log preset and partition mode,
accounts for every line (``accepted + rejected == read``) in non-empty sequences.

Through HTTP, on a live server: generated ``lines`` batches posted to ``/v1/detect`` are
answered within a generous timeout, never with a 5xx, and the counts add up.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from preset_examples import EXAMPLES

from flexlog.data.records import LogSequence, parse_record
from flexlog.parsing import PRESETS, TemplateParser, get_preset
from flexlog.serve.app import _canonical, _canonical_fast
from flexlog.serve.content import ContentError, Item, SequenceReader, is_key, split_items

#: Small limits, so that generated inputs reach them (a window can be over max_events).
MAX_EVENTS, MAX_LINES, MAX_LINE_CHARS = 24, 48, 300
FORMATS = [None, *sorted(PRESETS)]
MODES = ["session", "fixed", "sliding"]
#: Formats for raw lines: half the time the default (every line fits ``generic``).
FORMAT_CHOICES = st.one_of(st.none(), st.sampled_from(FORMATS))
#: Windows: mostly small (many sequences), sometimes over max_events.
WINDOWS = st.one_of(st.integers(1, 6), st.integers(1, MAX_EVENTS + 8))
WHITESPACE = re.compile(r"\s")


def _header(name: str) -> str:
    """The example line of a preset less its content: a line in that format, to complete."""
    example = EXAMPLES[name]
    parts = get_preset(name).split(example)
    assert parts is not None, f"the {name} example does not fit its format"
    return example[: len(example) - len(parts["Content"])]


HEADERS = [_header(name) for name in sorted(PRESETS)]

# -- strategies ---------------------------------------------------------------------------------
#: Any Unicode but lone surrogates (the HTTP layer refuses those before the reader sees them;
#: see test_lone_surrogates_are_keys_or_a_content_error).
CHARS = st.characters(exclude_categories=("Cs",))
TRICKY = st.sampled_from(
    [
        "[", "]", "[]", ",", ", ", '"', "'", ":", "{", "}", " ", "  ", "\t", "\n", "\r\n", "\r",
        "\x00", "\x0b", "\x0c", "\x1c", "\x1f", "\x7f", "\x85", "\xa0", "\u2028", "\u3000",
        "\ufeff", "x3", " x3", " x0", " x1", " x9999999", " x10000000", " x-1", "x", "e\u0301",
        "log sequence:", "LOG SEQUENCE: ", "null", "true", "1e400", "NaN", "-0", "\\u0000",
        "\\ud800", "blk_-1608999687919862906", "<*>", "T1a2b3c4d", "9" * 300, "7" * 5000,
    ]
)  # fmt: skip
TOKENS = st.one_of(st.text(CHARS, max_size=12), TRICKY)
FREE_TEXT = st.lists(TOKENS, max_size=24).map("".join)
KEYS = st.from_regex(r"[A-Za-z0-9_.:$<>*-]{1,12}", fullmatch=True)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | KEYS
    | st.text(CHARS, max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12,
)
RUNS = st.builds(lambda k, n: f"{k} x{n}", KEYS, st.integers(-2, 10**8))
ITEMS = st.one_of(KEYS, RUNS, TOKENS, st.text(CHARS, max_size=30))
CONTENT = st.one_of(
    FREE_TEXT,
    st.lists(JSON_VALUES, max_size=6).map(json.dumps),  # JSON lists, nested, huge numbers
    st.lists(ITEMS, max_size=8).map(lambda xs: "[" + ", ".join(xs) + "]"),  # bracketed
    st.lists(ITEMS, max_size=8).map(lambda xs: "log sequence: [" + ",".join(xs) + "]"),
    st.lists(st.one_of(ITEMS, st.sampled_from(list(EXAMPLES.values()))), max_size=8).map(
        "\n".join
    ),  # one item per line: keys, runs and raw log lines
)
LINES = st.one_of(
    st.sampled_from(list(EXAMPLES.values())),
    st.builds(str.__add__, st.sampled_from(HEADERS), FREE_TEXT),  # a format, any content
    st.builds(
        lambda header, n: header + "blk_" + str(n), st.sampled_from(HEADERS), st.integers()
    ),  # HDFS sessions
    FREE_TEXT,
    st.sampled_from(["", " ", "\t", "\u2028", "a " * 200, "x" * (MAX_LINE_CHARS + 1)]),
)
#: Batches of raw lines: short ones, and long ones (many windows, over max_lines).
BATCHES = st.one_of(
    st.lists(LINES, max_size=8), st.lists(LINES, min_size=8, max_size=MAX_LINES + 2)
)


def _reader(saved: bool) -> SequenceReader:
    """A reader with the small limits: without a bundle parser, or with a saved HDFS parser
    and its templates (the shared parser and the template alignment)."""
    if not saved:
        return SequenceReader(
            max_events=MAX_EVENTS, max_lines=MAX_LINES, max_line_chars=MAX_LINE_CHARS
        )
    parser = TemplateParser("hdfs")
    parser.fit([_header("hdfs") + text for text in ("Receiving block blk_1 src: /10.0.0.1", "a b")])
    return SequenceReader(
        parser.to_dict(),
        parser.templates(),
        max_events=MAX_EVENTS,
        max_lines=MAX_LINES,
        max_line_chars=MAX_LINE_CHARS,
    )


READERS = {"plain": _reader(False), "saved": _reader(True)}


def _check_events(events: tuple[str, ...]) -> None:
    assert events, "an empty sequence"
    for key in events:
        assert isinstance(key, str) and key, repr(key)
        assert is_key(key) and not WHITESPACE.search(key), repr(key)


# -- the content reader -----------------------------------------------------------------------
@settings(max_examples=500, deadline=None)
@given(content=CONTENT)
@example(content='["open", ' + "7" * 5000 + ', "read"]')
@example(content="[" * 100_000 + "]" * 100_000)
@example(content="[read x9999999, write]")
@example(content="log sequence: [ ]")
def test_split_items_gives_items_or_a_content_error(content: str) -> None:
    try:
        items = split_items(content)
    except ContentError:
        event("ContentError")
        return
    kind = "raw lines" if any(i.raw for i in items) else "keys"
    event(f"{kind}, {'with' if any(i.repeat > 1 for i in items) else 'no'} runs")
    assert items, "no items and no ContentError"
    for item in items:
        assert isinstance(item, Item) and item.text and item.text == item.text.strip()
        assert item.repeat >= 1
        assert item.raw == (not is_key(item.text))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=CONTENT,
    fmt=st.sampled_from([*FORMATS, "", "nope", "HDFS", "hdfs "]),  # and unknown names
    reader=st.sampled_from(sorted(READERS)),
)
@example(content='["open", ' + "7" * 5000 + ', "read"]', fmt=None, reader="plain")
@example(content="[a x20, b x20]", fmt=None, reader="plain")  # over max_events together
@example(content="\n".join(["a b c"] * (MAX_LINES + 1)), fmt=None, reader="plain")
@example(content="open\n" + "x " * MAX_LINE_CHARS, fmt=None, reader="saved")
@example(content=EXAMPLES["hdfs"], fmt="hdfs", reader="saved")
def test_sequence_is_event_keys_or_a_content_error(content: str, fmt, reader: str) -> None:
    """A message gives a sequence of 1 to max_events event keys (1-256 characters, no
    whitespace or control characters), its items' count, or a ContentError."""
    try:
        seq = READERS[reader].sequence(content, "msg-1", fmt)
    except ContentError as exc:
        assert str(exc)
        event("ContentError")
        return
    event("a sequence of one event" if len(seq.events) == 1 else "a longer sequence")
    assert isinstance(seq, LogSequence) and seq.id == "msg-1"
    _check_events(seq.events)
    assert len(seq.events) <= MAX_EVENTS
    assert len(seq.events) == sum(item.repeat for item in split_items(content))


@settings(max_examples=100, deadline=None)
@given(
    content=st.lists(
        st.one_of(TOKENS, st.characters(categories=("Cs",))), min_size=1, max_size=12
    ).map("".join),
    fmt=st.sampled_from(FORMATS),
)
def test_lone_surrogates_are_keys_or_a_content_error(content: str, fmt) -> None:
    """In process a string may hold lone surrogates (HTTP refuses them as invalid JSON): a
    raw line with one is a ContentError, never an encoding error."""
    try:
        seq = READERS["plain"].sequence(content, "s", fmt)
    except ContentError:
        return
    assert all(is_key(e) for e in seq.events)


# -- the raw-line path ------------------------------------------------------------------------
def _read(lines: list[str], limit: int = MAX_LINE_CHARS) -> int:
    """The lines a report must count: every non-blank one, and the over-long ones."""
    return sum(1 for line in lines if len(line) > limit or line.strip())


def _canonical_reference(item: object, max_events: int) -> LogSequence:
    """What ``/v1/detect`` accepted before its fast path: parse_record, then is_key per event."""
    seq = parse_record(item)
    if len(seq.events) > max_events or not all(is_key(e) for e in seq.events):
        raise ValueError("refused")
    return seq


#: Events: keys, and what is not one (empty, whitespace, controls, too long, surrogates,
#: non-strings).
EVENTS = st.one_of(
    st.sampled_from(["open", "read", "x" * 256, "x" * 257, "", " ", "a b", "a\x7f", "\udfff"]),
    st.text(max_size=8),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Zs", "Cc"]), max_size=4),
    st.integers(-5, 5),
    st.booleans(),
    st.none(),
    st.lists(st.just("a"), max_size=1),
)
ITEMS = st.one_of(
    st.fixed_dictionaries(
        {"id": st.one_of(st.text(max_size=3), st.integers(), st.booleans(), st.none())},
        optional={
            "events": st.one_of(st.lists(EVENTS, max_size=12), st.text(max_size=3)),
            "label": st.sampled_from([0, 1, "normal", "anomalous", "x", 2, None]),
            "group": st.one_of(st.none(), st.text(max_size=3), st.integers(), st.booleans()),
            "extra": st.integers(),
        },
    ),
    st.lists(st.text(max_size=3), max_size=2),
    st.text(max_size=3),
    st.none(),
)


@settings(max_examples=600, deadline=None)
@given(item=ITEMS, max_events=st.integers(1, 14))
@example(item={"id": "a", "events": ["a"] * 15}, max_events=14)
@example(item={"id": "a", "events": ["ok", "\udfff"]}, max_events=14)
@example(item={"id": "a", "events": ["ok", 7]}, max_events=14)
@example(item={"id": "a", "events": ["ok", "b\u2028c"]}, max_events=14)
def test_canonical_fast_path_accepts_what_the_checks_accept(item, max_events: int) -> None:
    """The batch path of canonical sequences (one check over each sequence's distinct
    events) accepts exactly the items that parse_record and a per-event is_key accept, with
    the same record; what it refuses, the slow path names."""
    try:
        expected = _canonical_reference(item, max_events)
    except ValueError:
        expected = None
    fast = _canonical_fast(item, max_events)
    if fast is not None:
        assert fast == expected
    if expected is None:
        with pytest.raises(ValueError):
            _canonical(item, max_events)
    else:
        assert _canonical(item, max_events) == expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=BATCHES,
    fmt=FORMAT_CHOICES,
    mode=st.sampled_from(MODES),
    window=WINDOWS,
    step=st.integers(1, 8),
    reader=st.sampled_from(sorted(READERS)),
)
@example(lines=[EXAMPLES["hdfs"], "x" * 301, "", "a b"], fmt="hdfs", mode="session", window=1,
         step=1, reader="saved")  # fmt: skip
@example(lines=["a"] * 10, fmt=None, mode="sliding", window=3, step=4, reader="plain")
@example(lines=["a b"] * 30, fmt=None, mode="fixed", window=30, step=1, reader="plain")
@example(lines=["a"] * (MAX_LINES + 1), fmt=None, mode="fixed", window=1, step=1, reader="plain")
def test_partition_accounts_for_every_line(lines, fmt, mode, window, step, reader) -> None:
    """Every non-blank line is read once and accepted or rejected; the accepted lines are the
    sequences' events (session, fixed) or fill the sliding windows; no sequence is empty."""
    r = READERS[reader]
    name = fmt or r.default_format
    try:
        seqs, report, origins = r.partition(lines, fmt, mode, window=window, step=step)
    except ContentError as exc:
        reasons = {
            "no session id": mode == "session" and get_preset(name).session_pattern is None,
            "too many lines": len(lines) > MAX_LINES,
            "a sequence too long": f"more than {MAX_EVENTS} events" in str(exc),
        }
        assert any(reasons.values()), exc
        event(f"ContentError: {next(r for r, hit in reasons.items() if hit)}")
        return
    rejected = "some" if report.rejected else "no"
    event(f"{mode}: {'some' if seqs else 'no'} sequences, {rejected} rejected lines")
    assert not (mode == "session" and get_preset(name).session_pattern is None)
    assert report.accepted + report.rejected == report.read == _read(lines)
    assert sorted({rej.line for rej in report.rejections}) == sorted(
        rej.line for rej in report.rejections
    ), "a line rejected twice"
    assert all(1 <= rej.line <= len(lines) and rej.reason for rej in report.rejections)
    for seq in seqs:
        _check_events(seq.events)
        assert len(seq.events) <= MAX_EVENTS
    assert len({s.id for s in seqs}) == len(seqs)
    # each sequence knows its lines: as many as events, in range, not rejected ones
    assert len(origins) == len(seqs)
    rejected_lines = {rej.line for rej in report.rejections}
    for seq, origin in zip(seqs, origins, strict=True):
        assert len(origin.lines) == len(seq.events)
        assert all(1 <= n <= len(lines) and n not in rejected_lines for n in origin.lines)
    total = sum(len(s.events) for s in seqs)
    if mode in ("session", "fixed"):
        assert total == report.accepted
    if mode == "fixed":
        assert len(seqs) == math.ceil(report.accepted / window)
    if mode == "sliding":
        n = report.accepted
        assert len(seqs) == ((n - window) // step + 1 if n >= window else int(n > 0))


# -- through HTTP -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(adfa_demo: Path):
    pytest.importorskip("fastapi")
    from flexlog.serve import Settings, create_app
    from flexlog.serve.runner import BackgroundServer

    settings = Settings(
        cache="memory", max_line_chars=256, max_lines=MAX_LINES, max_events=MAX_EVENTS, max_batch=8
    )
    with BackgroundServer(create_app(adfa_demo / "bundle", settings)) as server:
        yield server


@pytest.fixture(scope="module")
def client(live):
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=live.url, timeout=httpx.Timeout(60.0)) as http:
        yield http


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lines=BATCHES,
    fmt=FORMAT_CHOICES,
    mode=st.sampled_from(MODES),
    window=WINDOWS,
    step=st.integers(1, 8),
    surrogate=st.sampled_from([False, False, False, True]),
)
def test_detect_lines_no_server_error_and_counts_add_up(
    client, lines, fmt, mode, window, step, surrogate
) -> None:
    """POST /v1/detect with generated raw lines: an answer within the client's 60 s (no hang),
    never a 5xx; a 200 answers every sequence it made and counts every line; a 4xx is an
    OpenAI error object. ``surrogate`` adds a line with a lone surrogate, sent as the JSON
    escape: the whole body is refused."""
    if surrogate:
        lines = [*lines, "bad \ud800 line"]
    body = {"lines": lines, "partition": mode, "window": window, "step": step}
    if fmt is not None:
        body["format"] = fmt
    resp = client.post(
        "/v1/detect",
        content=json.dumps(body).encode(),  # ASCII: lone surrogates as \\ud800 escapes
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code < 500, resp.text
    payload = resp.json()
    if resp.status_code != 200:
        event(f"{resp.status_code} {payload['error']['code']}")
    else:
        event(f"200, {'several' if len(payload['results']) > 1 else 'one or no'} sequences")
    if surrogate:
        assert resp.status_code == 400 and payload["error"]["code"] == "invalid_json", payload
    if resp.status_code != 200:
        assert set(payload) == {"error"} and payload["error"]["message"], payload
        return
    counts, results = payload["counts"], payload["results"]
    assert counts["sequences"] == len(results) <= 8
    assert counts["answered"] + counts["errors"] == counts["sequences"]
    assert counts["errors"] == 0 and 0 <= counts["anomalous"] <= counts["answered"]
    assert [r["index"] for r in results] == list(range(len(results)))
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["key"]) for r in results)
    line_counts = counts["lines"]
    assert line_counts["accepted"] + line_counts["rejected"] == line_counts["read"]
    assert line_counts["read"] == _read(lines, 256)
    assert len(payload["rejected_lines"]) == line_counts["rejected"]


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=CONTENT, fmt=FORMAT_CHOICES)
def test_chat_content_no_server_error(client, content: str, fmt) -> None:
    """The content reader behind HTTP: a generated chat message is answered (its sequence of 1
    to max_events events counted as prompt tokens) or refused with a 4xx, never a 5xx."""
    body: dict = {"model": "flexlog", "messages": [{"role": "user", "content": content}]}
    if fmt is not None:
        body["flexlog"] = {"format": fmt}
    resp = client.post(
        "/v1/chat/completions",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code < 500, resp.text
    payload = resp.json()
    event(str(resp.status_code))
    if resp.status_code != 200:
        assert set(payload) == {"error"} and payload["error"]["message"], payload
        return
    info = payload["flexlog"]
    assert 1 <= info["events"] == payload["usage"]["prompt_tokens"] <= MAX_EVENTS
    assert payload["choices"][0]["message"]["content"] == info["label"]
    assert re.fullmatch(r"[0-9a-f]{64}", info["key"])
