"""The attacker's probes of the service, replayed: each is answered as specified (a 4xx
OpenAI-style error, never a 5xx, the connection still usable, other clients not stalled).

Real uvicorn on loopback, real bundle (the shipped ADFA sample), raw sockets where a client
library would hide what is sent.
"""

from __future__ import annotations

import http.client as http_client
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from flexlog.bundle import BundleError, load_bundle  # noqa: E402
from flexlog.cache import key_of  # noqa: E402
from flexlog.cli import main  # noqa: E402
from flexlog.parsing import PRESETS  # noqa: E402
from flexlog.serve import Settings, create_app  # noqa: E402
from flexlog.serve.runner import BackgroundServer  # noqa: E402

READ, ADMIN = "sk-read", "sk-admin"
BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def server(adfa_demo: Path, tmp_path_factory):
    settings = Settings(
        api_keys=(READ,),
        admin_api_keys=(ADMIN,),
        cache=str(tmp_path_factory.mktemp("hardening") / "cache.sqlite"),
        body_timeout=BODY_TIMEOUT,
    )
    with BackgroundServer(create_app(adfa_demo / "bundle", settings)) as srv:
        yield srv


@pytest.fixture
def http(server):
    headers = {"Authorization": f"Bearer {READ}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
        yield client


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text and ".py" not in response.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def _raw(server, method: str, path: str, body: bytes, key: str = READ) -> httpx.Response:
    """A request whose JSON body is sent byte for byte (lone surrogates as JSON escapes)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.request(method, f"{server.url}{path}", content=body, headers=headers, timeout=60)


# -- 1. regular expressions ----------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_lines_that_almost_match_a_preset_are_answered(http, preset: str) -> None:
    """The lines that froze the server (`'a ' * 160` took 26 s with `hdfs`) are answered,
    for every preset, as raw lines of a batch and as a chat message, while /healthz keeps
    answering; the line counts add up."""
    lines = ["a " * 2000, "a" * 4000, "1." * 2000, "a:" * 2000, "<" * 4000, "a " * 160]
    statuses: list[int] = []
    ready, done = threading.Event(), threading.Event()

    def probe() -> None:  # another client, asking all the while
        with httpx.Client(base_url=http.base_url, timeout=120) as other:
            while not done.is_set():
                statuses.append(other.get("/healthz").status_code)
                ready.set()
                time.sleep(0.005)

    watcher = threading.Thread(target=probe)
    watcher.start()
    assert ready.wait(60)
    try:
        body = {"lines": lines, "format": preset, "partition": "fixed", "window": 2}
        resp = http.post("/v1/detect", json=body)
        message = {"role": "user", "content": "\n".join(lines)}
        chat = http.post(
            "/v1/chat/completions",
            json={"model": "flexlog", "messages": [message], "flexlog": {"format": preset}},
        )
    finally:
        done.set()
        watcher.join()
    assert resp.status_code == 200, resp.text
    counts = resp.json()["counts"]["lines"]
    assert counts["read"] == len(lines) and counts["accepted"] + counts["rejected"] == len(lines)
    assert chat.status_code in (200, 400), chat.text  # a line that fits no format: 400
    assert statuses and set(statuses) == {200}


def test_generic_masks_on_a_long_message(http) -> None:
    """A 32 KB chat message of alphanumeric tokens (10.7 s before) is one raw line."""
    content = " ".join(f"ab{i}cd{i}" for i in range(4000))[:32_000]
    resp = http.post(
        "/v1/chat/completions",
        json={"model": "flexlog", "messages": [{"role": "user", "content": content}]},
    )
    assert resp.status_code == 200, resp.text


def test_overlong_lines_are_refused_or_rejected(http) -> None:
    line = "x " * 40_000  # over max_line_chars (64 Ki)
    resp = http.post("/v1/detect", json={"lines": [line, "a b c"], "partition": "fixed"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["counts"]["lines"] == {"read": 2, "accepted": 1, "rejected": 1}
    assert "over the limit" in body["rejected_lines"][0]["reason"]
    msg = {"role": "user", "content": f"{line}\nopen"}
    err = _error(
        http.post("/v1/chat/completions", json={"model": "flexlog", "messages": [msg]}),
        400,
        "invalid_log_sequence",
    )
    assert "raw log line 1" in err["message"]


# -- 2 and 4. roles, fail closed -----------------------------------------------------------------
def test_a_read_key_cannot_correct_and_an_admin_key_is_audited(server, http) -> None:
    events = ["open", "read", "close", "execve"]
    key = key_of(events)
    put = {"label": "normal", "events": events, "comment": "known job"}
    _error(http.put(f"/v1/cache/{key}", json=put), 403, "forbidden")
    _error(http.get(f"/v1/cache/{key}"), 404)  # nothing was written
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60
    ) as admin:
        assert admin.put(f"/v1/cache/{key}", json=put).status_code == 200
        history = http.get(f"/v1/cache/{key}/history").json()["data"]
        assert [(h["action"], h["previous_label"], h["new_label"]) for h in history] == [
            ("set", None, "normal")
        ]
        assert history[0]["actor"].startswith("key:") and ADMIN not in json.dumps(history)
        undone = admin.post(f"/v1/cache/{key}/undo").json()["data"]
        assert [h["action"] for h in undone] == ["set", "undo"]
    _error(http.get(f"/v1/cache/{key}"), 404)  # the correction had created it: gone again


def test_corrections_need_an_admin_key_to_exist(adfa_demo: Path) -> None:
    with (
        BackgroundServer(create_app(adfa_demo / "bundle", Settings(cache="memory"))) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as http,
    ):
        events = ["open", "read"]
        body = {"label": "normal", "events": events}
        _error(http.put(f"/v1/cache/{key_of(events)}", json=body), 403, "admin_key_required")
        _error(http.delete(f"/v1/cache/{key_of(events)}"), 403, "admin_key_required")
        assert http.get("/metrics").status_code == 200  # no keys: nothing to protect


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--api-keys-file", "{empty}"], {}, "holds no key"),
        (["--admin-api-keys-file", "{empty}"], {}, "holds no key"),
        ([], {"FLEXLOG_API_KEYS": " , "}, "$FLEXLOG_API_KEYS is set but holds no API key"),
        ([], {"FLEXLOG_ADMIN_API_KEYS": ""}, "$FLEXLOG_ADMIN_API_KEYS"),
        (["--api-key", " "], {}, "--api-key was given an empty key"),
    ],
)
def test_configured_but_empty_keys_refuse_to_start(
    adfa_demo: Path, tmp_path: Path, monkeypatch, capsys, args, env, message
) -> None:
    empty = tmp_path / "keys.txt"
    empty.write_text("\n  \n# a comment\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = ["serve", "--bundle", str(adfa_demo / "bundle"), "--port", "1"]
    assert main(argv + [a.format(empty=empty) for a in args]) == 2
    assert message in capsys.readouterr().err.replace("\n", "")


# -- 5. no 5xx, and the connection stays usable ---------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "flexlog", "messages": [{"role": "user", "content": "[]"}]},
        ),
        (
            "/v1/chat/completions",
            {"model": "flexlog", "stream": True, "messages": [{"role": "user", "content": "[]"}]},
        ),
        ("/v1/completions", {"model": "flexlog", "prompt": "[]"}),
        ("/v1/completions", {"model": "flexlog", "prompt": ["[open]", "[ ]"]}),
    ],
)
def test_empty_lists_are_a_client_error(http, path: str, body: dict) -> None:
    _error(http.post(path, json=body), 400)


def test_huge_integers_in_a_list_message_are_no_server_error(server, http) -> None:
    content = '["open", ' + "7" * 5000 + ', "read"]'
    resp = http.post(
        "/v1/chat/completions",
        json={"model": "flexlog", "messages": [{"role": "user", "content": content}]},
    )
    assert resp.status_code < 500, resp.text
    huge = b'{"model": "flexlog", "prompt": "[open]", "max_tokens": ' + b"9" * 5000 + b"}"
    _error(_raw(server, "POST", "/v1/completions", huge), 400, "invalid_json")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            b'{"model": "flexlog", "messages": [{"role": "user", "content": "open \\udfff x"}]}',
        ),
        ("/v1/completions", b'{"model": "flexlog", "prompt": "a line \\udfff"}'),
        ("/v1/detect", b'{"lines": ["a line \\udfff here"]}'),
        ("/v1/detect", b'{"sequences": [{"id": "\\ud800", "events": ["open"]}]}'),
        ("/v1/models/\\udfff", b""),
    ],
)
def test_lone_surrogates_are_a_client_error(server, path: str, body: bytes) -> None:
    method = "GET" if not body else "POST"
    resp = _raw(server, method, path, body)
    assert 400 <= resp.status_code < 500, resp.text


def test_lone_surrogates_in_cache_events_write_nothing(server) -> None:
    body = b'{"label": "normal", "events": ["open", "\\udfff"]}'
    key = "ab" * 32  # no key can be computed from such events
    _error(_raw(server, "PUT", f"/v1/cache/{key}", body, key=ADMIN), 400, "invalid_json")
    resp = httpx.get(
        f"{server.url}/v1/cache/{key}", headers={"Authorization": f"Bearer {READ}"}, timeout=30
    )
    _error(resp, 404)


def test_the_connection_survives_an_error(server) -> None:
    """After a refused request the same connection answers the next one (no silent close)."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http_client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {READ}", "Content-Type": "application/json"}
    bad = b'{"model": "flexlog", "messages": [{"role": "user", "content": "\\udfff"}]}'
    conn.request("POST", "/v1/chat/completions", body=bad, headers=headers)
    first = conn.getresponse()
    assert 400 <= first.status < 500 and first.getheader("connection") != "close"
    first.read()
    sock = conn.sock
    conn.request("GET", "/v1/models", headers=headers)
    second = conn.getresponse()
    assert second.status == 200 and conn.sock is sock
    conn.close()


# -- 7. the smaller ones ---------------------------------------------------------------------------
def test_metrics_and_openapi_need_a_key_when_keys_are_set(server, http) -> None:
    for path in ("/metrics", "/openapi.json", "/docs"):
        _error(httpx.get(f"{server.url}{path}", timeout=30), 401, "invalid_api_key")
        assert http.get(path).status_code == 200
    assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200  # probes stay open


def test_public_metrics_opens_them(adfa_demo: Path) -> None:
    settings = Settings(api_keys=(READ,), cache="memory", public_metrics=True)
    with BackgroundServer(create_app(adfa_demo / "bundle", settings)) as srv:
        for path in ("/metrics", "/openapi.json"):
            assert httpx.get(f"{srv.url}{path}", timeout=30).status_code == 200
        _error(httpx.get(f"{srv.url}/v1/models", timeout=30), 401)


def test_no_server_path_and_no_host_echo(server, http) -> None:
    stats = http.get("/v1/cache/stats")
    assert stats.status_code == 200 and "path" not in stats.json()
    assert str(server.url) not in stats.text and "cache.sqlite" not in stats.text
    resp = http.get("/v1/models/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert resp.status_code == 404 and "location" not in resp.headers
    assert "evil.example" not in resp.text


def test_half_sent_requests_are_closed(server) -> None:
    """Headers or a body that never finish: the connection is closed (headers) or answered
    408 (body) after the body timeout, not held open."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: applic")
        start = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the server, not by our 30 s timeout
        assert time.monotonic() - start < 25
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + READ.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            + b'{"lines": ['
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 408"), data[:200]


def test_a_deeply_nested_manifest_is_a_clear_error(adfa_demo: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(adfa_demo / "bundle", bundle)
    (bundle / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        load_bundle(bundle)
