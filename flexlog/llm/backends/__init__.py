"""Inference backends of the LLM voter, behind one interface (:class:`LLMBackend`)."""

from __future__ import annotations

from flexlog.llm.backends.base import BackendError, LLMBackend

#: Backend name → "module:class", imported only when used (each needs its own extra).
BACKENDS = {
    "transformers": "flexlog.llm.backends.hf:TransformersBackend",
    "openai": "flexlog.llm.backends.openai_http:OpenAIBackend",
    "vllm": "flexlog.llm.backends.vllm_local:VLLMBackend",
}
#: The backend the LLM voter uses unless told otherwise (in-process, float32).
DEFAULT_BACKEND = "transformers"


def make_backend(name: str, **options) -> LLMBackend:
    """Instantiate a backend by name, passing it the options its constructor accepts."""
    import importlib
    import inspect

    if name not in BACKENDS:
        raise ValueError(f"unknown LLM backend {name!r}; available: {', '.join(sorted(BACKENDS))}")
    module, _, cls_name = BACKENDS[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except ImportError as exc:
        raise ValueError(f"LLM backend {name!r} needs the 'llm' extra of flexlog: {exc}") from exc
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted and v is not None})


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "BackendError", "LLMBackend", "make_backend"]
