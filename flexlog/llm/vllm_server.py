"""Start and stop a vLLM OpenAI-compatible server in a subprocess (loopback only).

Used by the tests and by the HTTP service: ``VLLMServer("smollm2", adapter)`` serves the base
model with a LoRA adapter under the model name ``flexlog``; :attr:`VLLMServer.base_url` is what
:class:`flexlog.llm.backends.openai_http.OpenAIBackend` (or any OpenAI client) talks to.

On a CPU-only machine it sets what vLLM needs there (:func:`cpu_engine_defaults`): bfloat16
where the CPU computes it natively (AVX512-BF16 or AMX), else float32; the model compiled
(torch.compile, not eager); OpenMP threads bound to this process's cores
(``VLLM_CPU_OMP_THREADS_BIND``; vLLM's default binding stalls every batch on a small machine)
and a small KV cache (``VLLM_CPU_KVCACHE_SPACE``, GiB). On a 2-core AVX512-BF16 machine, with
SmolLM2 and the voter's ~490-token prompts, bfloat16 and compilation together raise the
prompt rate from ~1,000 to ~1,850 tokens/s (``flexlog bench --llm openai-fp32-eager,openai``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from flexlog.llm.backends.base import BackendError
from flexlog.llm.models import flexlog_home, materialized, resolve_model

LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: LoRA ranks vLLM accepts for ``--max-lora-rank``.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
MERGED_MARKER = "flexlog-merged.json"


def has_gpu() -> bool:
    """Whether torch sees a CUDA device (vLLM then runs on it, not on the CPU)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def cpu_threads_bind() -> str:
    """The cores this process may run on, as vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` list."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = list(range(os.cpu_count() or 1))
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16): without them vLLM
    emulates bfloat16, slower than float32."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_engine_defaults() -> dict[str, object]:
    """The engine settings vLLM runs fastest with on this CPU: ``dtype`` (bfloat16 where it
    is native, else float32) and ``enforce_eager`` (False: compiled; the first start of a
    model compiles it, later starts reuse vLLM's compile cache)."""
    return {"dtype": "bfloat16" if cpu_has_native_bf16() else "float32", "enforce_eager": False}


def cpu_env(kv_cache_gib: int = 1) -> dict[str, str]:
    """Environment defaults for vLLM on a CPU-only machine."""
    return {
        "VLLM_CPU_OMP_THREADS_BIND": cpu_threads_bind(),
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
    }


def adapter_rank(adapter: str | Path) -> int:
    """The LoRA rank ``r`` in an adapter's ``adapter_config.json``."""
    path = Path(adapter) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text())
    except OSError as exc:
        raise BackendError(f"{adapter}: not a LoRA adapter (no adapter_config.json)") from exc
    except json.JSONDecodeError as exc:
        raise BackendError(f"{path}: corrupt adapter config ({exc})") from exc
    rank = int(cfg.get("r", 8))
    rank = max([rank, *(int(v) for v in (cfg.get("rank_pattern") or {}).values())])
    return rank


def check_vllm_adapter(adapter: str | Path, model_path: str, max_lora_rank: int) -> None:
    """Refuse, before a slow engine start, an adapter vLLM would fail on: not PEFT
    safetensors, fine-tuned on another base model, or of a rank above ``max_lora_rank``."""
    from flexlog.llm.backends.hf import check_adapter

    check_adapter(adapter, model_path)
    rank = adapter_rank(adapter)
    if rank > max_lora_rank:
        raise BackendError(
            f"{adapter}: LoRA rank {rank} exceeds max_lora_rank={max_lora_rank}; "
            f"raise max_lora_rank (one of {VLLM_LORA_RANKS})"
        )


def merged_checkpoint(model: str | Path, adapter: str | Path, out: Path | None = None) -> Path:
    """The base model with the LoRA adapter merged into its weights, as a float32 safetensors
    checkpoint (built once, in ``$FLEXLOG_HOME/merged/``, keyed by the adapter's and the base's
    contents).

    vLLM's LoRA kernels on CPU gather a copy of the adapter weights per token, which makes
    prefill about ten times slower than the base model's; a merged checkpoint runs at base speed
    (one adapter per server, no hot-swapping).
    """
    import hashlib

    model_path, adapter = Path(resolve_model(model)), Path(adapter)
    digest = hashlib.sha256()
    for path in (adapter / "adapter_config.json", adapter / "adapter_model.safetensors"):
        digest.update(path.read_bytes())
    for path in sorted(model_path.glob("*.json")):  # config + the flexlog marker
        digest.update(path.name.encode() + path.read_bytes())
    out = out or flexlog_home() / "merged" / f"{model_path.name}-{digest.hexdigest()[:16]}"
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def build(tmp: Path) -> dict:
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        check_vllm_adapter(adapter, str(model_path), max_lora_rank=max(VLLM_LORA_RANKS))
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(model_path).save_pretrained(tmp)
        return {"base": str(model_path), "adapter": str(adapter), "sha256": digest.hexdigest()}

    return materialized(out, build, marker=MERGED_MARKER)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """A vLLM OpenAI-compatible server subprocess.

    Parameters
    ----------
    model : base model (``smollm2``, ``tiny-mistral``, a checkpoint directory or a hub id).
    adapter : LoRA adapter directory served as ``served_name``; None serves the base model
        under that name.
    merge_adapter : serve the base model with the adapter merged into it
        (:func:`merged_checkpoint`) instead of vLLM's LoRA support: about ten times faster on
        CPU, but the base model is then not served beside it.
    host, port : loopback address; ``port=None`` picks a free one.
    dtype : None means "auto" on GPU and, on CPU, :func:`cpu_engine_defaults`'s.
    enforce_eager : None means compiled (vLLM's default on GPU, ours on CPU).
    max_model_len, max_lora_rank : engine limits.
    extra_args : further command-line arguments for vLLM.
    env : environment overrides for the subprocess (on CPU, over :func:`cpu_env`).
    startup_timeout : seconds :meth:`wait_ready` waits for ``GET /v1/models``.
    log_path : where the server's output goes (default: a temporary file).
    """

    def __init__(
        self,
        model: str = "smollm2",
        adapter: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        served_name: str = "flexlog",
        merge_adapter: bool = False,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        max_model_len: int = 4096,
        max_lora_rank: int = 16,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 300.0,
        log_path: str | Path | None = None,
    ):
        if host not in LOOPBACK:
            raise ValueError(f"VLLMServer binds to loopback only, got host={host!r}")
        if max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {VLLM_LORA_RANKS}")
        self.model = model
        self.adapter = None if adapter is None else Path(adapter)
        self.host = host
        self.port = port
        self.served_name = served_name
        self.merge_adapter = merge_adapter
        self.dtype = dtype
        self.enforce_eager = enforce_eager
        self.max_model_len = max_model_len
        self.max_lora_rank = max_lora_rank
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self._log_path = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._gpu: bool | None = None
        self.start_seconds: float | None = None

    # -- configuration ---------------------------------------------------------------------
    @property
    def on_gpu(self) -> bool:
        if self._gpu is None:
            self._gpu = has_gpu()
        return self._gpu

    def _model_path(self) -> str:
        """What vLLM loads: the base model, or the merged checkpoint (the adapter is checked
        either way)."""
        path = resolve_model(self.model)
        if self.adapter is None:
            return path
        check_vllm_adapter(self.adapter, path, self.max_lora_rank)
        return str(merged_checkpoint(path, self.adapter)) if self.merge_adapter else path

    @property
    def base_url(self) -> str:
        """``http://host:port/v1`` (the port is fixed by :meth:`start` when it was None)."""
        if self.port is None:
            raise RuntimeError("the server has no port yet; call start()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def launch_command(self, model_path: str | None = None) -> list[str]:
        """The server's argv (``port`` must be set; ``model_path`` defaults to the resolved
        model, or the merged checkpoint with ``merge_adapter``)."""
        if self.port is None:
            raise RuntimeError("launch_command needs a port; pass port= or call start()")
        path = model_path or self._model_path()
        cpu = {} if self.on_gpu else cpu_engine_defaults()
        dtype = self.dtype or cpu.get("dtype", "auto")
        argv = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(path),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            dtype,
            "--max-model-len",
            str(self.max_model_len),
            "--disable-uvicorn-access-log",
        ]
        if self.enforce_eager or (self.enforce_eager is None and cpu.get("enforce_eager")):
            argv.append("--enforce-eager")
        if self.adapter is not None and not self.merge_adapter:
            argv += [
                "--enable-lora",
                "--max-lora-rank",
                str(self.max_lora_rank),
                "--lora-modules",
                f"{self.served_name}={self.adapter}",
            ]
        else:
            argv += ["--served-model-name", self.served_name]
        return [*argv, *self.extra_args]

    def launch_env(self) -> dict[str, str]:
        """The subprocess environment: ours, CPU defaults where on CPU, then ``env``."""
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        if not self.on_gpu:
            for key, value in cpu_env().items():
                env.setdefault(key, value)
        env.update(self.env)
        return env

    # -- life cycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, wait: bool = True) -> VLLMServer:
        """Launch the server (and, by default, wait until it answers)."""
        if self.running:
            return self
        path = self._model_path()
        if self.port is None:
            self.port = free_port(self.host if ":" not in self.host else "127.0.0.1")
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="flexlog-vllm-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            self.launch_command(path),
            env=self.launch_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its engine workers die with it in stop()
        )
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
            self.start_seconds = time.monotonic() - t0
        return self

    def log_tail(self, lines: int = 30) -> str:
        if self._log_path is None or not self._log_path.is_file():
            return ""
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll ``GET /v1/models`` until it answers; raise BackendError with the log tail if
        the process exits or ``timeout`` (default ``startup_timeout``) passes."""
        if self._proc is None:
            raise RuntimeError("the server was not started")
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        url = f"{self.base_url}/models"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BackendError(
                    f"vLLM server exited with code {code} before it was ready "
                    f"(log {self._log_path}):\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise BackendError(
                    f"vLLM server at {self.base_url} not ready after "
                    f"{self.startup_timeout:g} s (log {self._log_path}):\n{self.log_tail()}"
                )
            time.sleep(1.0)

    def stop(self, grace: float = 20.0) -> None:
        """Terminate the server's process group, killing it after ``grace`` seconds."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)  # SIGKILL cannot be ignored; only reaping is left
        if proc is not None:  # engine workers left behind in its process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self.stop(grace=5.0)
