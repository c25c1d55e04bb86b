"""Reloading the served bundle without dropping requests: real bundles (the ML bundle of the
shipped ADFA sample, and a one-voter bundle trained on the same data), uvicorn on loopback
in a background thread, and a real ``flexlog serve`` process for SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from flexlog.cache import key_of  # noqa: E402
from flexlog.cli import main  # noqa: E402
from flexlog.data.records import LogSequence, read_jsonl  # noqa: E402
from flexlog.serve import Settings, create_app  # noqa: E402
from flexlog.serve.errors import APIError  # noqa: E402
from flexlog.serve.runner import BackgroundServer  # noqa: E402
from flexlog.serve.service import Service  # noqa: E402

KEY = "sk-read"
ADMIN = "sk-admin"
A_VOTERS = ["knn", "dt", "slfn"]


@pytest.fixture(scope="module")
def bundles(adfa_demo: Path, tmp_path_factory) -> tuple[Path, Path]:
    """Bundle A (knn, dt, slfn: the demo's) and bundle B (dt alone, so every answer of B
    has exactly one vote, dt's, and none of A's has)."""
    b = tmp_path_factory.mktemp("bundle-b") / "bundle"
    train = ["train", "--train", str(adfa_demo / "data" / "limited_train.jsonl")]
    assert main([*train, "--voters", "dt", "--out", str(b)]) == 0
    return adfa_demo / "bundle", b


@pytest.fixture(scope="module")
def sequences(adfa_demo: Path) -> list[LogSequence]:
    seqs, _ = read_jsonl(adfa_demo / "data" / "test.jsonl")
    return seqs


def _point(link: Path, target: Path) -> None:
    """Point the symlink ``link`` at ``target`` atomically (what an operator's ``ln -sfn``
    followed by ``mv -T`` does)."""
    new = link.with_name(link.name + ".new")
    new.unlink(missing_ok=True)
    new.symlink_to(target, target_is_directory=True)
    os.replace(new, link)


@pytest.fixture
def served(bundles, tmp_path: Path):
    """The service on a symlink to bundle A, with read and admin keys and a cache file."""
    link = tmp_path / "live"
    _point(link, bundles[0])
    settings = Settings(
        api_keys=(KEY,), admin_api_keys=(ADMIN,), cache=str(tmp_path / "cache.sqlite")
    )
    with BackgroundServer(create_app(link, settings)) as server:
        yield server, link


@pytest.fixture
def clients(served):
    server, _ = served
    with (
        httpx.Client(base_url=server.url, headers=_bearer(KEY), timeout=60) as read,
        httpx.Client(base_url=server.url, headers=_bearer(ADMIN), timeout=60) as admin,
    ):
        yield read, admin


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _chat(http, seq: LogSequence) -> dict:
    body = {"model": "flexlog", "messages": [{"role": "user", "content": json.dumps(seq.events)}]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and "Traceback" not in response.text
    return error


def test_reload_serves_the_bundle_the_symlink_names(served, clients, bundles, sequences) -> None:
    _, link = served
    read, admin = clients
    before = _chat(read, sequences[0])
    assert len(before["flexlog"]["votes"]) >= 2  # A: a majority of three voters
    _point(link, bundles[1])
    response = admin.post("/v1/admin/reload")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "flexlog.reload" and body["changed"] is True
    assert body["previous_fingerprint"] == before["system_fingerprint"]
    assert body["system_fingerprint"] != before["system_fingerprint"]
    assert body["voters"] == ["dt"] and body["duration_ms"] > 0
    assert body["dropped_cache_answers"] == 1  # A's answer to sequences[0]
    after = _chat(read, sequences[0])
    assert after["system_fingerprint"] == body["system_fingerprint"]
    assert after["flexlog"]["votes"].keys() == {"dt"} and after["flexlog"]["cached"] is False
    assert [m["id"] for m in read.get("/v1/models").json()["data"]] == ["flexlog", "dt"]
    same = admin.post("/v1/admin/reload").json()  # the same bundle again: nothing to swap
    assert same["changed"] is False and same["dropped_cache_answers"] == 0
    assert same["system_fingerprint"] == body["system_fingerprint"]
    metrics = read.get("/metrics").text
    assert 'flexlog_bundle_reloads_total{outcome="changed"} 1.0' in metrics
    assert 'flexlog_bundle_reloads_total{outcome="unchanged"} 1.0' in metrics


def test_reload_needs_an_admin_key_and_takes_no_path(served, clients, bundles) -> None:
    server, _ = served
    read, admin = clients
    _error(httpx.post(f"{server.url}/v1/admin/reload"), 401, "invalid_api_key")
    _error(read.post("/v1/admin/reload"), 403, "forbidden")
    refused = admin.post("/v1/admin/reload", json={"bundle": str(bundles[1])})
    _error(refused, 400, "invalid_request")
    # without an admin key configured, nobody may reload (like cache corrections)
    app = create_app(bundles[0], Settings(api_keys=(KEY,), cache="memory"))
    with BackgroundServer(app) as open_server:
        url = f"{open_server.url}/v1/admin/reload"
        _error(httpx.post(url), 401, "invalid_api_key")
        _error(httpx.post(url, headers=_bearer(KEY)), 403, "admin_key_required")


def test_a_failed_reload_keeps_the_old_bundle(
    served, clients, bundles, sequences, tmp_path: Path
) -> None:
    _, link = served
    read, admin = clients
    fingerprint = _chat(read, sequences[1])["system_fingerprint"]
    empty = tmp_path / "not-a-bundle"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundles[1], corrupt)
    (corrupt / "voters" / "dt" / "vocabulary.json").write_text("[]")
    for target, reason in ((empty, "not a flexlog bundle"), (corrupt, "does not match")):
        _point(link, target)
        error = _error(admin.post("/v1/admin/reload"), 409, "reload_failed")
        assert reason in error["message"] and str(link) in error["message"]
        assert str(target) not in error["message"]  # paths only by the configured one
        answer = _chat(read, sequences[1])
        assert answer["system_fingerprint"] == fingerprint
        assert answer["flexlog"]["cached"] is True  # the old model's answers stay
    assert 'flexlog_bundle_reloads_total{outcome="failed"} 2.0' in read.get("/metrics").text


def test_requests_during_reloads_all_succeed_on_one_bundle(
    served, clients, bundles, sequences
) -> None:
    server, link = served
    _, admin = clients
    fingerprints: dict[str, bool] = {}  # each bundle's answers: only dt's vote or not
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]

    def client(offset: int) -> None:
        with httpx.Client(base_url=server.url, headers=_bearer(KEY), timeout=60) as http:
            i = offset
            while not stop.is_set():
                i += 1
                seq = sequences[i % 40]
                try:
                    if i % 2:
                        body = _chat(http, seq)
                        only_dt = body["flexlog"]["votes"].keys() == {"dt"}
                        if fingerprints.setdefault(body["system_fingerprint"], only_dt) != only_dt:
                            failures.append(f"mixed answer {body}")
                    else:
                        batch = [{"id": s.id, "events": list(s.events)} for s in sequences[i:][:5]]
                        response = http.post("/v1/detect", json={"sequences": batch})
                        if response.status_code != 200:
                            failures.append(response.text)
                            continue
                        kinds = {r["votes"].keys() == {"dt"} for r in response.json()["results"]}
                        if len(kinds) != 1:
                            failures.append(f"two bundles in one answer: {response.text}")
                except Exception as exc:  # every failure is reported
                    failures.append(repr(exc))
                answered[0] += 1

    threads = [threading.Thread(target=client, args=(k * 10,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for target in (bundles[1], bundles[0], bundles[1], bundles[0]):
            time.sleep(0.3)
            _point(link, target)
            response = admin.post("/v1/admin/reload")
            assert response.status_code == 200, response.text
            assert response.json()["changed"] is True
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:3]
    assert answered[0] > 20 and len(fingerprints) == 2


def test_the_cache_forgets_model_answers_but_keeps_corrections(
    served, clients, bundles, sequences
) -> None:
    _, link = served
    read, admin = clients
    model_seq, human_seq = sequences[2], sequences[3]
    _chat(read, model_seq)
    first = _chat(read, human_seq)["flexlog"]
    flipped = "normal" if first["label"] == "anomalous" else "anomalous"
    put = admin.put(
        f"/v1/cache/{first['key']}", json={"label": flipped, "comment": "checked by ops"}
    )
    assert put.status_code == 200, put.text
    _point(link, bundles[1])
    reloaded = admin.post("/v1/admin/reload").json()
    assert reloaded["dropped_cache_answers"] == 1  # model_seq's; the correction stays
    _error(read.get(f"/v1/cache/{key_of(model_seq.events)}"), 404, "cache_entry_not_found")
    kept = read.get(f"/v1/cache/{first['key']}").json()
    assert (kept["label"], kept["source"]) == (flipped, "human")
    answer = _chat(read, human_seq)
    assert answer["choices"][0]["message"]["content"] == flipped
    assert answer["flexlog"]["source"] == "human"
    history = read.get(f"/v1/cache/{first['key']}/history").json()["data"]
    assert [h["comment"] for h in history] == ["checked by ops"]


def test_one_reload_at_a_time_and_not_while_requests_hold_the_bundle(
    served, clients, bundles, sequences
) -> None:
    server, link = served
    _, admin = clients
    service = server.app.state.service
    fingerprint = service.fingerprint
    _point(link, bundles[1])
    with service._reloading:  # another reload is running
        _error(admin.post("/v1/admin/reload"), 409, "reload_in_progress")

    async def hold_then_reload() -> None:
        async with service.serving():  # a request in flight that does not finish in time
            await asyncio.to_thread(service.reload, drain_timeout=0.2)

    with pytest.raises(APIError) as busy:
        asyncio.run(hold_then_reload())
    assert (busy.value.status, busy.value.code) == (409, "reload_busy")
    assert service.fingerprint == fingerprint
    assert _chat(clients[0], sequences[4])["system_fingerprint"] == fingerprint
    assert admin.post("/v1/admin/reload").json()["changed"] is True  # nothing holds it now


@pytest.fixture(scope="module")
def llm_bundles(adfa_demo: Path, tmp_path_factory) -> dict[str, Path]:
    """Bundles with an LLM voter (over HTTP, with a LoRA adapter in the bundle): ``first``
    (dt and the adapter X), ``same_llm`` (knn and a copy of X), ``other_adapter`` (dt and
    Y), ``other_model`` (dt and X on another base model). The adapters are placeholders:
    no server is started."""
    pytest.importorskip("openai")
    root = tmp_path_factory.mktemp("llm-bundles")
    for name, weights in (("x", b"x" * 64), ("y", b"y" * 64)):
        (root / name).mkdir()
        (root / name / "adapter_config.json").write_text('{"r": 8}')
        (root / name / "adapter_model.safetensors").write_bytes(weights)
    shutil.copytree(root / "x", root / "x-copy")
    train = ["train", "--train", str(adfa_demo / "data" / "limited_train.jsonl")]
    llm = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "retrieval": "false"}
    bundles = {}
    for name, voters, adapter, model in (
        ("first", "dt,llm", "x", "smollm2"),
        ("same_llm", "knn,llm", "x-copy", "smollm2"),
        ("other_adapter", "dt,llm", "y", "smollm2"),
        ("other_model", "dt,llm", "x", "tiny-mistral"),
    ):
        params = {**llm, "adapter": str(root / adapter), "model": model}
        argv = [*train, "--voters", voters, "--out", str(root / name)]
        argv += [arg for k, v in params.items() for arg in ("--param", f"llm.{k}={v}")]
        assert main(argv) == 0
        bundles[name] = root / name
    return bundles


def test_with_vllm_a_reload_keeps_its_server_or_asks_for_a_restart(
    llm_bundles, tmp_path: Path
) -> None:
    link = tmp_path / "live"
    _point(link, llm_bundles["first"])
    service = Service(link, Settings(vllm="cpu", cache="memory"))  # vLLM prepared, not started
    try:
        url, fingerprint = service.vllm.base_url, service.fingerprint
        for name, differs in (("other_adapter", "adapter"), ("other_model", "base model")):
            _point(link, llm_bundles[name])
            with pytest.raises(APIError) as refused:
                service.reload()
            assert (refused.value.status, refused.value.code) == (409, "restart_required")
            assert f"another {differs} than" in refused.value.message
            assert service.fingerprint == fingerprint
        _point(link, llm_bundles["same_llm"])  # the same adapter, in another bundle
        result = service.reload()
        assert result.changed and result.voters == ("knn", "llm")
        assert dict(service.detector.ensemble.voters)["llm"].base_url == url
    finally:
        service.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_a_flexlog_serve_process(bundles, sequences, tmp_path: Path) -> None:
    link = tmp_path / "live"
    _point(link, bundles[0])
    port = _free_port()
    argv = [sys.executable, "-m", "flexlog.cli", "serve", "--bundle", str(link)]
    argv += ["--port", str(port), "--cache", "memory", "--api-key", KEY]
    log = tmp_path / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers=_bearer(KEY), timeout=60) as http:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if http.get("/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.2)
            first = _chat(http, sequences[0])["system_fingerprint"]

            def hang_up() -> str:
                """SIGHUP, then what the service logged about the reload."""
                seen = len(log.read_text())
                proc.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    assert proc.poll() is None, log.read_text()
                    news = log.read_text()[seen:]
                    if "reloaded " in news or "reload of " in news:
                        return news
                    time.sleep(0.1)
                raise AssertionError(f"no reload logged: {log.read_text()}")

            _point(link, tmp_path)  # not a bundle: logged, the old one serves on
            assert "not a flexlog bundle" in hang_up()
            assert _chat(http, sequences[0])["system_fingerprint"] == first
            _point(link, bundles[1])
            assert "reloaded " in hang_up()
            assert _chat(http, sequences[0])["system_fingerprint"] != first
            assert _chat(http, sequences[0])["flexlog"]["votes"].keys() == {"dt"}
            assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
