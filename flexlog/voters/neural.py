"""What the neural sequence voters (DeepLog, LogLS, LogMS, the autoencoder RNNs, the LSTM
classifier) share: an event vocabulary, seeding, padding and windowing, a training loop with a
progress bar, tuning a threshold on a validation split of the training data, and persistence
as safetensors + JSON (nothing in a saved voter executes code when loaded).

A subclass sets ``name``, implements ``_fit(events, y)`` (encoded sequences and labels; it
sets ``modules_`` and ``fitted_``), ``_predict(events)`` and ``_build_modules()``, which
rebuilds the untrained networks from the hyper-parameters and ``fitted_`` so that a saved
state dict can be loaded into them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from flexlog.features import as_event_lists
from flexlog.thresholds import best_f1_threshold
from flexlog.voters.base import BundleFormatError, check_labels

try:
    import torch
    from safetensors.torch import load_file, save_file
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised only without the llm/seq extra
    raise ImportError(
        "the neural sequence voters need torch and safetensors (pip install 'flexlog[seq]')"
    ) from exc

PAD, UNSEEN = 0, 1
STATE_FILE = "state.safetensors"
VOCAB_FILE = "vocabulary.json"
FITTED_FILE = "fitted.json"


# -- vocabulary and tensors ---------------------------------------------------------------------
class EventVocabulary:
    """Event key → index, with 0 for padding and 1 for events not seen in training."""

    def __init__(self, index: dict[str, int] | None = None):
        self.index = dict(index or {})

    @classmethod
    def fit(cls, sequences: Iterable[Sequence[str]]) -> EventVocabulary:
        index: dict[str, int] = {}
        for events in sequences:
            for ev in events:
                if ev not in index:
                    index[ev] = len(index) + 2
        return cls(index)

    def __len__(self) -> int:
        """Embedding rows needed: the known events plus padding and unseen."""
        return len(self.index) + 2

    def encode(self, events: Sequence[str]) -> np.ndarray:
        get = self.index.get
        return np.fromiter((get(ev, UNSEEN) for ev in events), dtype=np.int64, count=len(events))

    def to_json(self) -> str:
        return json.dumps(self.index)

    @classmethod
    def from_json(cls, text: str) -> EventVocabulary:
        index = json.loads(text)
        if not isinstance(index, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v >= 2 for k, v in index.items()
        ):
            raise BundleFormatError("vocabulary: not an event key → index (≥ 2) mapping")
        return cls(index)


def seed_everything(seed: int | None) -> None:
    """Make weight initialisation, dropout and shuffling repeatable."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """ "auto" is the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return torch.device(device)


def pad_sequences(encoded: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``(n, L)`` index matrix and the lengths, ``L = min(longest, max_len)``.
    A longer sequence keeps its first ``max_len // 2`` and last ``max_len - max_len // 2``
    events, so that both how it starts and how it ends are seen."""
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    width = min(max(len(e) for e in encoded), max_len)
    out = np.full((len(encoded), width), PAD, dtype=np.int64)
    lengths = np.zeros(len(encoded), dtype=np.int64)
    head = max_len // 2
    for i, e in enumerate(encoded):
        if len(e) > max_len:
            e = np.concatenate([e[:head], e[len(e) - (max_len - head) :]])
        out[i, : len(e)] = e
        lengths[i] = len(e)
    return out, lengths


def windows(encoded: np.ndarray, h: int, *, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every (history of ``h`` events, next event) pair of one sequence; histories shorter
    than ``h`` at the start are left-padded. With ``reverse`` the sequence is read backwards
    (the history is what follows the event)."""
    seq = encoded[::-1] if reverse else encoded
    padded = np.concatenate([np.full(h, PAD, dtype=np.int64), seq])
    idx = np.arange(len(seq))[:, None] + np.arange(h)[None, :]
    return padded[idx], seq.copy()


def count_matrix(encoded: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Event-count vectors (one column per vocabulary index)."""
    out = np.zeros((len(encoded), size), dtype=np.float32)
    for i, e in enumerate(encoded):
        np.add.at(out[i], e, 1.0)
    return out


def batches(n: int, batch_size: int, *, shuffle: bool, rng: np.random.Generator | None = None):
    """Index arrays covering ``range(n)`` in batches (shuffled with ``rng``)."""
    order = rng.permutation(n) if shuffle and rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def train(
    modules: nn.Module | Sequence[nn.Module],
    step: Callable[[np.ndarray], torch.Tensor],
    n: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int | None,
    desc: str,
    weight_decay: float = 0.0,
) -> list[float]:
    """Adam over ``epochs`` passes of shuffled batches of ``range(n)``; ``step(idx)`` returns
    the batch's loss. Returns the mean loss of each epoch; shows a progress bar on a terminal."""
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    history = []
    for m in modules:
        m.train()
    bar = tqdm(
        total=epochs * -(-n // batch_size), desc=desc, unit="batch", disable=None, leave=False
    )
    try:
        for epoch in range(epochs):
            total, count = 0.0, 0
            for idx in batches(n, batch_size, shuffle=True, rng=rng):
                optimizer.zero_grad()
                loss = step(idx)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                bar.update()
            history.append(total / max(count, 1))
            bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.4f}")
    finally:
        bar.close()
        for m in modules:
            m.eval()
    return history


def split_validation(
    n: int, y: np.ndarray, fraction: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified (when both classes allow it) train / validation split of the
    training data, for the thresholds the papers tune on validation data."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}")
    idx = np.arange(n)
    counts = np.bincount(y, minlength=2)
    n_val = max(1, round(n * fraction))
    stratify = y if counts.min() >= 2 and n_val >= 2 else None
    if n - n_val < 1:
        raise ValueError(f"{n} training sequences are too few for a validation split")
    fit_idx, val_idx = train_test_split(
        idx, test_size=n_val, random_state=seed, stratify=stratify, shuffle=True
    )
    return np.sort(fit_idx), np.sort(val_idx)


def anomaly_f1(pred: np.ndarray, y: np.ndarray) -> float:
    """F1 of the anomalous class (label 1) for boolean predictions ``pred``."""
    tp = int((pred & (y == 1)).sum())
    return 2 * tp / (int(pred.sum()) + int((y == 1).sum())) if tp else 0.0


# -- the estimator ----------------------------------------------------------------------------
class NeuralVoter(ClassifierMixin, BaseEstimator):
    """Base class of the torch voters: scikit-learn's estimator protocol over event sequences.

    Subclasses define their hyper-parameters in ``__init__`` (including ``device`` and
    ``random_state``) and the hooks described in the module docstring.
    """

    name: ClassVar[str] = ""
    #: Rough relative cost per sequence (a small network per sequence): ensembles ask cheap voters first.
    cost: ClassVar[float] = 100.0
    #: Whether ``fit`` needs anomalous examples too (False: trained on normal sequences).
    supervised: ClassVar[bool] = True

    # hooks --------------------------------------------------------------------------------
    def _fit(self, encoded: list[np.ndarray], y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, encoded: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _build_modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    # protocol -----------------------------------------------------------------------------
    @property
    def device_(self) -> torch.device:
        return resolve_device(getattr(self, "device", "auto"))

    def fit(self, X, y=None) -> NeuralVoter:
        """Fit on sequences ``X`` with labels ``y`` (1 = anomalous). A voter trained on
        normal sequences only uses the anomalous ones, if any, to tune its threshold."""
        seqs = as_event_lists(X)
        if not seqs:
            raise ValueError("cannot fit on zero sequences")
        if y is None:
            if self.supervised:
                raise ValueError(f"{type(self).__name__} needs labels y")
            y = np.zeros(len(seqs), dtype=np.int64)
        elif self.supervised:
            y = check_labels(y, len(seqs))
        else:
            y = np.asarray(y)
            if y.ndim != 1 or len(y) != len(seqs) or not np.isin(y, (0, 1)).all():
                raise ValueError(f"y must be a 1-D array of {len(seqs)} labels in {{0, 1}}")
            y = y.astype(np.int64)
            if not (y == 0).any():
                raise ValueError(f"{type(self).__name__} needs normal (0) sequences to learn")
        seed_everything(getattr(self, "random_state", None))
        self.vocabulary_ = EventVocabulary.fit(seqs)
        self.fitted_: dict = {}
        self._fit([self.vocabulary_.encode(s) for s in seqs], y)
        self.classes_ = np.array([0, 1])
        return self

    def known_events(self) -> frozenset[str]:
        """The event keys seen in training (evidence: any other event is unseen)."""
        check_is_fitted(self, "vocabulary_")
        return frozenset(self.vocabulary_.index)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "modules_")
        seqs = as_event_lists(X)
        if not seqs:
            return np.zeros(0, dtype=np.int64)
        with torch.inference_mode():
            out = self._predict([self.vocabulary_.encode(s) for s in seqs])
        return np.asarray(out, dtype=np.int64)

    # persistence --------------------------------------------------------------------------
    def save_state(self, directory: Path) -> list[str]:
        check_is_fitted(self, "modules_")
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{name}.{key}": value.detach().to("cpu").contiguous()
            for name, module in self.modules_.items()
            for key, value in module.state_dict().items()
        }
        save_file(tensors, str(directory / STATE_FILE))
        (directory / VOCAB_FILE).write_text(self.vocabulary_.to_json())
        (directory / FITTED_FILE).write_text(json.dumps(self.fitted_, sort_keys=True))
        return [STATE_FILE, VOCAB_FILE, FITTED_FILE]

    @classmethod
    def load_state(cls, directory: Path, params: dict) -> NeuralVoter:
        voter = cls(**params)
        try:
            voter.vocabulary_ = EventVocabulary.from_json((directory / VOCAB_FILE).read_text())
            fitted = json.loads((directory / FITTED_FILE).read_text())
            tensors = load_file(str(directory / STATE_FILE))
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise BundleFormatError(f"{directory}: cannot load voter state ({exc})") from exc
        except Exception as exc:  # safetensors raises its own error type on a corrupt file
            raise BundleFormatError(f"{directory}/{STATE_FILE}: not readable ({exc})") from exc
        if not isinstance(fitted, dict):
            raise BundleFormatError(f"{directory}/{FITTED_FILE}: not a JSON object")
        voter.fitted_ = fitted
        try:
            modules = voter._build_modules()
            device = voter.device_
            for name, module in modules.items():
                prefix = f"{name}."
                state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
                module.load_state_dict(state, strict=True)
                module.to(device).eval()
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise BundleFormatError(
                f"{directory}/{STATE_FILE}: does not fit a {cls.__name__} with these "
                f"parameters ({exc})"
            ) from exc
        unknown = {k.split(".", 1)[0] for k in tensors} - set(modules)
        if unknown:
            raise BundleFormatError(f"{directory}/{STATE_FILE}: unexpected modules {unknown}")
        voter.modules_ = modules
        voter.classes_ = np.array([0, 1])
        return voter


def final_state(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The last hidden state of ``rnn``'s top layer for each padded sequence in ``x``
    (both directions concatenated for a bidirectional one); padding is never read."""
    packed = nn.utils.rnn.pack_padded_sequence(
        x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
    )
    _, h = rnn(packed)
    h = h[0] if isinstance(h, tuple) else h  # an LSTM returns (h, c)
    if rnn.bidirectional:
        return torch.cat([h[-2], h[-1]], dim=1)
    return h[-1]


def dedupe(
    encoded: Sequence[np.ndarray], y: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Distinct (sequence, label) pairs with how often each occurs, so repeated training
    sequences cost one forward pass and weigh as many."""
    seen: dict[tuple[bytes, int], int] = {}
    for e, label in zip(encoded, y, strict=True):
        key = (e.tobytes(), int(label))
        seen[key] = seen.get(key, 0) + 1
    seqs = [np.frombuffer(k[0], dtype=np.int64) for k in seen]
    labels = np.array([k[1] for k in seen], dtype=np.int64)
    weights = np.array(list(seen.values()), dtype=np.float32)
    return seqs, labels, weights


class ThresholdedVoter(NeuralVoter):
    """A supervised voter that outputs P(anomalous) per sequence: it trains on all but a
    validation split of the training data, then sets the decision threshold that gives the
    best F1 on that split (0.5 when the split lacks a class).

    Subclasses implement ``_train(encoded, y, weights)`` (set ``modules_``) and
    ``_proba(encoded)``; they take ``validation_fraction``.
    """

    supervised = True

    def _train(self, encoded: list[np.ndarray], y: np.ndarray, weights: np.ndarray) -> None:
        raise NotImplementedError

    def _proba(self, encoded: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _fit(self, encoded: list[np.ndarray], y: np.ndarray) -> None:
        fit_idx, val_idx = np.arange(len(encoded)), np.zeros(0, dtype=np.int64)
        if np.bincount(y, minlength=2).min() >= 2:
            split = split_validation(len(encoded), y, self.validation_fraction, self.random_state)
            if len(np.unique(y[split[0]])) == 2:
                fit_idx, val_idx = split
        # else too few of a class to hold any out: train on everything, threshold 0.5
        seqs, labels, weights = dedupe([encoded[i] for i in fit_idx], y[fit_idx])
        self._train(seqs, labels, weights)
        for module in self.modules_.values():
            module.eval()
        threshold = 0.5
        if len(np.unique(y[val_idx])) == 2:
            with torch.inference_mode():
                p = self._proba([encoded[i] for i in val_idx])
            threshold = min(max(best_f1_threshold(p, y[val_idx])[0], 0.0), 1.0)
        self.fitted_["threshold"] = float(threshold)

    def predict_proba(self, X) -> np.ndarray:
        """Columns P(normal), P(anomalous)."""
        check_is_fitted(self, "modules_")
        seqs = as_event_lists(X)
        if not seqs:
            return np.zeros((0, 2))
        with torch.inference_mode():
            p = self._proba([self.vocabulary_.encode(s) for s in seqs])
        return np.column_stack([1.0 - p, p])

    def _predict(self, encoded: list[np.ndarray]) -> np.ndarray:
        return (self._proba(encoded) > self.fitted_["threshold"]).astype(np.int64)


def check_int(name: str, value, minimum: int = 1, *, auto: bool = False) -> None:
    """ValueError naming ``name`` unless ``value`` is an int ≥ ``minimum`` (or, with
    ``auto``, the string "auto")."""
    if auto and value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def check_positive(**values) -> None:
    """ValueError naming the first hyper-parameter that is not a positive number."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
