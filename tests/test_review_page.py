"""The review page in a real browser: Playwright driving Debian's headless Chromium against a
real ``flexlog serve`` (uvicorn on loopback) with a real SQLite cache and verdict log.

Playwright's own browser download cannot work here; ``make test`` installs Debian's
``chromium`` package and the tests launch it through ``executable_path``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from flexlog.data.records import read_jsonl
from flexlog.serve.app import create_app
from flexlog.serve.runner import BackgroundServer
from flexlog.serve.settings import Settings

playwright = pytest.importorskip("playwright.sync_api")

READ, ADMIN = "read-key-review-0001", "admin-key-review-0001"
pytestmark = pytest.mark.slow


def _chromium() -> str:
    found = os.environ.get("FLEXLOG_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("no Chromium: `make test` installs Debian's chromium package")
    return found


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def sequences(adfa_demo: Path):
    seqs, _ = read_jsonl(adfa_demo / "data" / "test.jsonl")
    return seqs


def _serve(adfa_demo: Path, tmp: Path, **settings) -> BackgroundServer:
    bundle = tmp / "bundle"
    # without the cache and verdicts other tests left in the shared bundle
    shutil.copytree(adfa_demo / "bundle", bundle, ignore=shutil.ignore_patterns("*.sqlite*"))
    app = create_app(bundle, Settings(**settings))
    return BackgroundServer(app).start()


@pytest.fixture(scope="module")
def server(adfa_demo: Path, tmp_path_factory, sequences):
    """A service with keys, answered 60 sequences and one raw-lines request."""
    srv = _serve(
        adfa_demo,
        tmp_path_factory.mktemp("review"),
        api_keys=(READ,),
        admin_api_keys=(ADMIN,),
    )
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {READ}"}) as h:
        body = {"sequences": [s.to_json() for s in sequences[:60]]}
        assert h.post("/v1/detect", json=body, timeout=120).status_code == 200
        lines = [f"worker {i % 3} started job {i}" for i in range(6)]
        body = {"lines": lines, "partition": "fixed", "window": 3}
        assert h.post("/v1/detect", json=body, timeout=60).status_code == 200
    srv.app.state.verdicts.flush()
    yield srv
    srv.stop()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    yield page
    context.close()


def _sign_in(page, key: str) -> None:
    page.goto("/review")
    page.get_by_test_id("api-key").fill(key)
    page.get_by_test_id("sign-in").click()
    page.wait_for_url("**/review")


def _history(server, key: str) -> list[dict]:
    headers = {"Authorization": f"Bearer {READ}"}
    resp = httpx.get(f"{server.url}/v1/cache/{key}/history", headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def _detect(server, seq) -> dict:
    headers = {"Authorization": f"Bearer {READ}"}
    resp = httpx.post(
        f"{server.url}/v1/detect", json={"sequences": [seq.to_json()]}, headers=headers
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["results"][0]


def test_sign_in_with_a_session_cookie_and_no_key_in_urls(page, server) -> None:
    page.goto("/review")
    assert page.get_by_test_id("verdict").count() == 0
    page.get_by_test_id("api-key").fill("not-a-key")
    page.get_by_test_id("sign-in").click()
    assert "Incorrect API key" in page.get_by_test_id("error").inner_text()
    _sign_in(page, READ)
    assert page.get_by_test_id("verdict").count() == 50
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/review"
    assert READ not in cookie["value"]
    for url in (f"/review?api_key={READ}", f"/review?token={READ}"):
        response = page.goto(url)
        assert response.status == 400
        assert "do not belong in URLs" in page.get_by_test_id("error").inner_text()
    page.get_by_test_id("sign-out").click()
    page.wait_for_url("**/review")
    assert page.get_by_test_id("sign-in").is_visible()


def test_a_read_key_sees_verdicts_but_cannot_correct(page, server) -> None:
    _sign_in(page, READ)
    row = page.get_by_test_id("verdict").first
    key = row.get_attribute("data-key")
    before = _history(server, key)
    row.get_by_test_id("mark-normal").click()
    assert "admin key" in page.get_by_test_id("error").inner_text()
    assert _history(server, key) == before


def test_list_anomalous_first_filter_and_paginate(page, server) -> None:
    _sign_in(page, ADMIN)
    labels = page.get_by_test_id("verdict").evaluate_all("rows => rows.map(r => r.dataset.label)")
    assert "anomalous" in labels and "normal" in labels
    assert labels == sorted(labels)  # anomalous (a) before normal (n)
    page.get_by_test_id("filter-label").select_option("normal")
    page.get_by_test_id("apply-filters").click()
    page.wait_for_url("**label=normal**")
    rows = page.get_by_test_id("verdict")
    assert rows.count() > 0
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.label)")) == {"normal"}
    page.get_by_test_id("filter-label").select_option("")
    page.get_by_test_id("filter-window").select_option("1h")
    page.get_by_test_id("apply-filters").click()
    page.wait_for_url("**window=1h**")
    assert "62 verdicts" in page.get_by_test_id("summary").inner_text()
    page.get_by_test_id("next-page").click()
    page.wait_for_url("**page=2**")
    assert page.get_by_test_id("verdict").count() == 12
    page.get_by_test_id("prev-page").click()
    page.wait_for_url("**page=1**")
    assert page.get_by_test_id("verdict").count() == 50


def test_correct_a_false_alarm_and_see_it_answered_and_in_history(page, server, sequences):
    _sign_in(page, ADMIN)
    page.get_by_test_id("filter-label").select_option("anomalous")
    page.get_by_test_id("filter-source").select_option("ensemble")
    page.get_by_test_id("apply-filters").click()
    page.wait_for_url("**label=anomalous**")
    shown = page.get_by_test_id("verdict").evaluate_all("rows => rows.map(r => r.dataset.key)")
    by_key = {_key(s): s for s in sequences[:60]}
    key = next(k for k in shown if k in by_key)  # not the raw-lines windows
    seq = by_key[key]
    row = page.locator(f'[data-testid="verdict"][data-key="{key}"]').first
    assert _detect(server, seq)["label"] == "anomalous"
    row.get_by_test_id("mark-normal").click()
    assert "normal" in page.get_by_test_id("notice").inner_text()
    answer = _detect(server, seq)
    assert (answer["label"], answer["source"]) == ("normal", "human")
    # the correction is the newest human verdict, and its page has the history
    page.goto("/review?source=human")
    human = page.locator(f'[data-testid="verdict"][data-key="{key}"]').first
    assert human.get_attribute("data-label") == "normal"
    human.get_by_test_id("open").click()
    page.wait_for_url(f"**/review/sequence/{key}")
    assert page.get_by_test_id("current-label").inner_text() == "normal"
    history = page.get_by_test_id("correction")
    assert history.count() == 1
    assert (
        "key:" in history.first.inner_text() and "anomalous (model)" in history.first.inner_text()
    )
    assert page.get_by_test_id("events").locator("tbody tr").count() == min(seq_len(seq), 500)
    (entry,) = _history(server, key)
    assert entry["actor"].startswith("key:") and entry["new_label"] == "normal"


def test_keyboard_navigation(page, server) -> None:
    _sign_in(page, ADMIN)
    page.goto("/review?label=normal&source=ensemble")
    rows = page.get_by_test_id("verdict")
    page.keyboard.press("j")
    assert rows.nth(0).evaluate("r => r === document.activeElement")
    page.keyboard.press("j")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("k")
    assert rows.nth(1).evaluate("r => r === document.activeElement")
    key = rows.nth(1).get_attribute("data-key")
    page.keyboard.press("a")
    page.wait_for_selector('[data-testid="notice"]')
    (entry,) = _history(server, key)
    assert entry["new_label"] == "anomalous"
    # Tab reaches the buttons; Enter on a focused button submits it
    page.goto(f"/review/sequence/{key}")
    page.get_by_test_id("mark-normal").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector('[data-testid="notice"]')
    assert [c["new_label"] for c in _history(server, key)] == ["anomalous", "normal"]
    page.goto("/review")
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    page.wait_for_url("**/review/sequence/*")


def test_raw_lines_and_votes_on_the_sequence_page(page, server) -> None:
    _sign_in(page, READ)
    page.goto("/review?per_page=200")
    row = page.locator('[data-testid="verdict"]', has_text="request:w0").first
    row.get_by_test_id("open").click()
    raw = page.get_by_test_id("raw-lines")
    # both windows have the same events (one sequence): the latest one's lines are shown
    rows = raw.locator("tbody tr")
    assert rows.count() == 3 and "worker 2 started job 5" in raw.inner_text()
    voters = page.get_by_test_id("vote").evaluate_all("vs => vs.map(v => v.dataset.voter)")
    assert set(voters) == {"knn", "dt", "slfn"}


def test_bad_corrections_show_an_error_and_write_nothing(page, server) -> None:
    _sign_in(page, ADMIN)
    key = page.get_by_test_id("verdict").first.get_attribute("data-key")
    before = _history(server, key)
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    post = page.context.request.post
    origin = {"Origin": server.url}
    cases = [
        ({"csrf": csrf, "key": key, "label": "maybe"}, origin, 400, "must be &#39;normal&#39; or"),
        ({"csrf": csrf, "key": "0" * 64, "label": "normal"}, origin, 404, "No verdict"),
        ({"csrf": "forged", "key": key, "label": "normal"}, origin, 403, "expired"),
        (
            {"csrf": csrf, "key": key, "label": "normal"},
            {"Origin": "http://evil.example"},
            403,
            "from this site",
        ),
    ]
    for form, headers, status, text in cases:
        response = post("/review/correct", form=form, headers=headers, max_redirects=0)
        assert response.status == status, (form, response.status)
        assert text in response.text()
    assert _history(server, key) == before
    # a form on another site that posts here: refused, nothing written
    forged = (
        f'<form method="post" action="{server.url}/review/correct">'
        f'<input name="csrf" value="{csrf}"><input name="key" value="{key}">'
        '<input name="label" value="normal"><button id="go">go</button></form>'
    )
    page.route(
        "http://evil.test/**", lambda route: route.fulfill(body=forged, content_type="text/html")
    )
    page.goto("http://evil.test/")
    with page.expect_navigation():
        page.click("#go")
    assert page.get_by_test_id("error").is_visible()
    assert _history(server, key) == before


def test_without_keys_the_page_is_open_and_corrections_are_refused(
    browser, adfa_demo: Path, tmp_path: Path, sequences
) -> None:
    srv = _serve(adfa_demo, tmp_path, verdict_log="memory")
    try:
        httpx.post(f"{srv.url}/v1/detect", json={"sequences": [sequences[0].to_json()]})
        srv.app.state.verdicts.flush()
        context = browser.new_context(base_url=srv.url)
        page = context.new_page()
        page.goto("/review")
        assert page.get_by_test_id("verdict").count() == 1
        page.get_by_test_id("mark-anomalous").click()
        assert "admin key" in page.get_by_test_id("error").inner_text()
        context.close()
    finally:
        srv.stop()


def test_screenshot(page, server, tmp_path: Path) -> None:
    """The README's picture of the page (``FLEXLOG_SCREENSHOT=docs/review.png`` keeps it)."""
    _sign_in(page, ADMIN)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto("/review?per_page=10")
    target = Path(os.environ.get("FLEXLOG_SCREENSHOT") or tmp_path / "review.png")
    page.screenshot(path=str(target), full_page=True)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _key(seq) -> str:
    from flexlog.cache import key_of

    return key_of(seq.events)


def seq_len(seq) -> int:
    return len(seq.events)


def test_hostile_requests_get_a_4xx(server) -> None:
    """Odd query values, oversized, mistyped or undecodable forms: a 4xx page, never a 5xx."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {READ}"}) as h:
        for query in ("label=maybe", "page=0", "page=9999999", "per_page=7", "window=1y"):
            assert h.get(f"/review?{query}").status_code == 400, query
        assert h.get("/review/sequence/" + "z" * 64).status_code == 400
        assert h.get("/review/sequence/" + "0" * 64).status_code == 404
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        cases = [
            (b"label=normal", {"Content-Type": "application/json"}, 415),
            (b"a=" + b"x" * 20_000, form, 413),
            (b"label=\xff\xfe", form, 400),
            (b"&".join(b"f%d=1" % i for i in range(50)), form, 400),
        ]
        for body, headers, status in cases:
            assert h.post("/review/correct", content=body, headers=headers).status_code == status
