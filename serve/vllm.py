"""Launching the vLLM server that the bundle's LLM voter talks to.

``flexlog serve --vllm cpu|gpu|CONFIG.yaml`` reads a launch configuration (the two shipped
ones are in ``configs/``), starts a loopback vLLM server with the voter's base model and
adapter in the background, and points the voter at it (backend ``openai``). Until the server
is up the service answers without the LLM voter (degraded); afterwards it includes it by
itself. The server stops with the service.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flexlog.detector import Detector

if TYPE_CHECKING:
    from flexlog.llm.vllm_server import VLLMServer

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
SHIPPED = ("cpu", "gpu")


class LaunchConfig(BaseModel):
    """How to start vLLM for the LLM voter; null fields come from the voter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None
    merge_adapter: bool = True
    dtype: str | None = None
    enforce_eager: bool | None = None
    max_model_len: int = Field(4096, ge=64)
    max_lora_rank: int = 16
    port: int | None = Field(None, ge=1, le=65535)
    startup_timeout: float = Field(900.0, gt=0)
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


def load_launch_config(name_or_path: str | Path) -> LaunchConfig:
    """A shipped configuration (``cpu``, ``gpu``) or a YAML file; ValueError names the file."""
    name = str(name_or_path)
    path = CONFIGS_DIR / f"vllm-{name}.yaml" if name in SHIPPED else Path(name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the vLLM launch configuration ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    try:
        return LaunchConfig.model_validate(data or {})
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{path}: {errors}") from exc


def llm_voters(detector: Detector) -> list[tuple[str, Any]]:
    """The ensemble's LLM voters (those configured with an inference backend)."""
    out = []
    for name, voter in detector.ensemble.voters:
        params = voter.get_params() if hasattr(voter, "get_params") else {}
        if "backend" in params and "base_url" in params:
            out.append((name, voter))
    return out


def llm_voter_names(manifest: dict) -> list[str]:
    """The names of a bundle's LLM voters, read from its manifest before loading it (so that
    the service can load it with the LLM voter already pointed where it should be)."""
    from flexlog.voters.registry import voter_class

    names = []
    for entry in manifest.get("voters", []):
        try:
            params = voter_class(entry["voter"])().get_params()
        except (KeyError, TypeError, ValueError):
            continue  # load_bundle reports malformed entries
        if "backend" in params and "base_url" in params:
            names.append(entry["name"])
    return names


def server_url(config: LaunchConfig) -> str:
    """The loopback base URL the vLLM server of ``config`` will serve (a free port when the
    configuration names none)."""
    from flexlog.llm.vllm_server import free_port

    return f"http://127.0.0.1:{config.port or free_port()}/v1"


def prepare_server(
    detector: Detector, config: LaunchConfig, *, log_path: str | Path | None = None
) -> VLLMServer:
    """A (not yet started) vLLM server for the detector's LLM voter, which must already be
    pointed at it (backend ``openai``, a loopback ``base_url`` from :func:`server_url`).

    ValueError when the detector has no LLM voter, or more than one, or the voter points
    elsewhere.
    """
    from urllib.parse import urlsplit

    from flexlog.llm.vllm_server import VLLMServer

    voters = llm_voters(detector)
    if len(voters) != 1:
        found = [n for n, _ in voters] or "none"
        raise ValueError(f"--vllm needs a bundle with one LLM voter (found: {found})")
    name, voter = voters[0]
    url = urlsplit(str(voter.base_url or ""))
    if voter.backend != "openai" or url.hostname != "127.0.0.1" or url.port is None:
        raise ValueError(f"voter {name!r} is not pointed at a loopback vLLM server")
    return VLLMServer(
        config.model or voter.model,
        voter.adapter,
        port=url.port,
        served_name=voter.served_model,
        merge_adapter=config.merge_adapter,
        dtype=config.dtype,
        enforce_eager=config.enforce_eager,
        max_model_len=config.max_model_len,
        max_lora_rank=config.max_lora_rank,
        extra_args=config.extra_args,
        env=config.env,
        startup_timeout=config.startup_timeout,
        log_path=log_path,
    )
