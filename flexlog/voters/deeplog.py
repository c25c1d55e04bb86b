"""DeepLog (Du et al., CCS 2017): an LSTM that predicts the next log event from the previous
``h`` and flags a sequence when an event is not among its ``g`` most likely predictions.

This module also holds what the next-event detectors share (LogLS imports it): the
next-event LSTM, training it on the distinct (history, next event) pairs of a set of
sequences, and scoring every event of a batch of sequences (probability and rank of the
event that actually occurred).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from flexlog.features import as_event_lists
from flexlog.voters.neural import (
    PAD,
    UNSEEN,
    NeuralVoter,
    anomaly_f1,
    check_int,
    check_positive,
    split_validation,
    train,
    windows,
)

#: Width of the event embedding fed to the LSTM (recorded in ``fitted_``).
EMBEDDING_DIM = 32
#: DeepLog's default ``g`` (top-k), used when ``top_k="auto"`` has nothing to tune on.
DEFAULT_TOP_K = 9
#: Candidate ``k`` for ``top_k="auto"`` (those below the vocabulary size are tried).
TOP_K_CANDIDATES = (1, 2, 3, 4, 5, 7, 9, 12, 15, 20, 30, 40, 60, 80, 120, 160, 240)
#: Candidate ``tolerance`` for ``tolerance="auto"``: the share of a sequence's events that may
#: be anomalous before the sequence is (0 is the papers' rule: any anomalous event).
TOLERANCE_CANDIDATES = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
#: Windows scored per forward pass at predict time.
SCORE_BATCH = 4096
#: ``epochs="auto"``: about this many (window, next) examples per model in all, as a whole
#: number of epochs between 1 and ``MAX_AUTO_EPOCHS``. Small data sets (HDFS: a few hundred
#: distinct pairs) then get enough optimiser steps and large ones (ADFA: ~50,000 pairs, 2 epochs) stay
#: within a CPU time budget.
AUTO_EXAMPLES = 60_000
MAX_AUTO_EPOCHS = 30


class NextEventLSTM(nn.Module):
    """Embedding → ``num_layers`` stacked LSTM layers → linear layer: logits over the
    vocabulary for the event that follows a window of ``h`` events."""

    def __init__(self, vocab: int, embedding_dim: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.out = nn.Linear(hidden_size, vocab)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """``(batch, h)`` event indices (left-padded with PAD) → ``(batch, vocab)`` logits."""
        hidden, _ = self.lstm(self.embedding(history))
        return self.out(hidden[:, -1])


def all_windows(encoded: Sequence[np.ndarray], h: int, *, reverse: bool = False) -> np.ndarray:
    """Every window of every sequence as one ``(events, h + 1)`` matrix: the ``h`` context
    events, then the event itself (in each sequence's reading order)."""
    return np.concatenate(
        [np.column_stack(windows(e, h, reverse=reverse)) for e in encoded], axis=0
    )


def train_next_event(
    net: NextEventLSTM,
    encoded: Sequence[np.ndarray],
    h: int,
    *,
    reverse: bool = False,
    epochs: int | str,
    batch_size: int,
    lr: float,
    seed: int | None,
    device: torch.device,
    desc: str,
) -> dict:
    """Train ``net`` (cross-entropy) on the distinct (history, next) pairs of ``encoded``.

    Deduplicating the pairs makes training time depend on the variety of the data rather
    than its volume; every successor seen after a history counts once, which is what a
    top-k (or probability-threshold) test needs: that each observed successor is likely.
    Returns what was trained on, for ``fitted_``."""
    rows = np.unique(all_windows(encoded, h, reverse=reverse), axis=0)
    if epochs == "auto":
        epochs = int(min(max(-(-AUTO_EXAMPLES // len(rows)), 1), MAX_AUTO_EPOCHS))
    x = torch.from_numpy(np.ascontiguousarray(rows[:, :h])).to(device)
    target = torch.from_numpy(np.ascontiguousarray(rows[:, h])).to(device)
    loss_fn = nn.CrossEntropyLoss()

    def step(idx: np.ndarray) -> torch.Tensor:
        i = torch.from_numpy(idx).to(device)
        return loss_fn(net(x[i]), target[i])

    losses = train(
        net, step, len(rows), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, desc=desc
    )
    return {"pairs": len(rows), "epochs": int(epochs), "final_loss": float(losses[-1])}


@torch.inference_mode()
def next_event_scores(
    net: NextEventLSTM,
    encoded: Sequence[np.ndarray],
    h: int,
    *,
    reverse: bool = False,
    device: torch.device,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each sequence, per event (in the sequence's own order): the probability the model
    gives the event that occurred after its window, and its rank among all predictions
    (0 = the most likely). PAD and UNSEEN are never predicted: an event unseen in training
    gets probability 0 and rank ``vocab`` (outside any top-k). With ``reverse`` the window
    is the ``h`` events that follow the event. Identical windows are scored once."""
    if not encoded:
        return []
    net.eval()
    uniq, inverse = np.unique(all_windows(encoded, h, reverse=reverse), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    prob = np.empty(len(uniq), dtype=np.float64)
    rank = np.empty(len(uniq), dtype=np.int64)
    for start in range(0, len(uniq), SCORE_BATCH):
        chunk = torch.from_numpy(np.ascontiguousarray(uniq[start : start + SCORE_BATCH]))
        chunk = chunk.to(device)
        logits = net(chunk[:, :h]).float()
        vocab = logits.shape[1]
        logits[:, PAD] = -torch.inf
        logits[:, UNSEEN] = -torch.inf
        actual = chunk[:, h : h + 1]
        p = torch.softmax(logits, dim=1).gather(1, actual).squeeze(1)
        r = (logits > logits.gather(1, actual)).sum(dim=1)
        unseen = actual.squeeze(1) == UNSEEN
        p = torch.where(unseen, torch.zeros_like(p), p)
        r = torch.where(unseen, torch.full_like(r, vocab), r)
        prob[start : start + len(chunk)] = p.cpu().numpy()
        rank[start : start + len(chunk)] = r.cpu().numpy()
    out = []
    start = 0
    for e in encoded:
        idx = inverse[start : start + len(e)]
        start += len(e)
        p, r = prob[idx], rank[idx]
        out.append((p[::-1].copy(), r[::-1].copy()) if reverse else (p, r))
    return out


def check_tolerance(value) -> None:
    """ValueError unless ``value`` is "auto" or a share in [0, 1)."""
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"tolerance must be 'auto' or a share in [0, 1), got {value!r}")


def check_next_event_params(voter: NeuralVoter) -> None:
    """ValueError naming the first bad hyper-parameter that the next-event voters (DeepLog,
    LogLS) share: window, model size, training, tolerance, validation split, device."""
    for name in ("window", "hidden_size", "num_layers", "batch_size"):
        check_int(name, getattr(voter, name))
    check_int("epochs", voter.epochs, auto=True)
    check_positive(lr=voter.lr)
    check_tolerance(voter.tolerance)
    if not 0.0 < voter.validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be in (0, 1), got {voter.validation_fraction!r}"
        )
    voter.device_  # noqa: B018 - raises on a bad ``device``


def tune_rule(
    shares: np.ndarray, y: np.ndarray, tolerances: Sequence[float]
) -> tuple[int, float, float]:
    """Pick the event test and the tolerance with the best F1 on validation data.

    ``shares[i, j]`` is the share of sequence ``i``'s events that event test ``j`` flags;
    tests are ordered from the most alarms to the fewest and ``tolerances`` ascend. Ties go
    to the smaller tolerance (nearest the papers' any-event rule), then to the later test
    (fewer alarms). Returns the index of the test, the tolerance and the F1."""
    best, best_key = (0, float(tolerances[0]), 0.0), None
    for t, tol in enumerate(tolerances):
        for j in range(shares.shape[1]):
            score = anomaly_f1(shares[:, j] > tol, y)
            key = (score, -t, j)
            if best_key is None or key > best_key:
                best, best_key = (j, float(tol), score), key
    return best


def validation_split(
    n: int, y: np.ndarray, fraction: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices to train on and to tune on. The split is taken only when the training data has
    anomalous sequences and both parts end up useful (normal sequences to train on, anomalous
    ones to tune on); otherwise everything trains and nothing is tuned."""
    everything, nothing = np.arange(n), np.zeros(0, dtype=np.int64)
    if not (y == 1).any():
        return everything, nothing
    fit_idx, val_idx = split_validation(n, y, fraction, seed)
    if (y[fit_idx] == 0).any() and (y[val_idx] == 1).any():
        return fit_idx, val_idx
    return everything, nothing


class DeepLogVoter(NeuralVoter):
    """DeepLog's execution-path model (Du et al., CCS 2017).

    Architecture as in the paper: a window of the last ``window`` (``h`` = 10) events feeds
    ``num_layers`` (2) stacked LSTM layers of ``hidden_size`` (64) units and a softmax over
    the event vocabulary; it is trained on normal sequences only. An event is anomalous when
    it is not among the ``top_k`` (``g`` = 9) most likely next events for its window, and a
    sequence is anomalous when more than ``tolerance`` of its events are (0: any event, the
    paper's rule). The first events of a sequence use
    windows left-padded with PAD. An event never seen in training is never predicted, so it
    is always anomalous.

    ``epochs="auto"`` trains for about ``AUTO_EXAMPLES`` examples (1 to 30 epochs of the
    distinct pairs), which keeps training to seconds on a CPU for both small and large data.

    Substitutions: events enter through a learned embedding (the paper uses one-hot input);
    training uses each distinct (window, next event) pair once; the parameter-value models
    and online model update of the paper are not implemented (flexlog votes on event keys).
    With ``top_k`` or ``tolerance`` "auto" and anomalous sequences in the training data, the
    model is trained on the normal sequences of all but ``validation_fraction`` of the
    training data, and the "auto" ones are the candidates with the best F1 on the held-out
    part (ties: fewer alarms); otherwise "auto" means ``k`` = 9 and tolerance 0, and all
    normal sequences train. The tolerance matters on long traces such as system calls, where
    some event of almost every sequence, normal or not, falls outside any small top-k.
    """

    name: ClassVar[str] = "deeplog"
    supervised: ClassVar[bool] = False

    def __init__(
        self,
        window: int = 10,
        top_k: int | str = "auto",
        tolerance: float | str = "auto",
        hidden_size: int = 64,
        num_layers: int = 2,
        epochs: int | str = "auto",
        batch_size: int = 256,
        lr: float = 5e-3,
        validation_fraction: float = 0.2,
        device: str = "auto",
        random_state: int | None = 0,
    ):
        self.window = window
        self.top_k = top_k
        self.tolerance = tolerance
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    def _check_params(self) -> None:
        check_next_event_params(self)
        if self.top_k != "auto":
            check_int("top_k", self.top_k)

    def _build_modules(self) -> dict[str, nn.Module]:
        net = NextEventLSTM(
            len(self.vocabulary_),
            int(self.fitted_.get("embedding_dim", EMBEDDING_DIM)),
            int(self.hidden_size),
            int(self.num_layers),
        )
        return {"net": net.to(self.device_)}

    def _fit(self, encoded: list[np.ndarray], y: np.ndarray) -> None:
        self._check_params()
        self.fitted_["embedding_dim"] = EMBEDDING_DIM
        if self.top_k == "auto":
            train_idx, val_idx = validation_split(
                len(encoded), y, self.validation_fraction, self.random_state
            )
        else:
            train_idx, val_idx = np.arange(len(encoded)), np.zeros(0, dtype=np.int64)
        normal = [encoded[i] for i in train_idx if y[i] == 0]
        self.modules_ = self._build_modules()
        self.fitted_.update(
            train_next_event(
                self.modules_["net"],
                normal,
                self.window,
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                seed=self.random_state,
                device=self.device_,
                desc="deeplog",
            )
        )
        k = DEFAULT_TOP_K if self.top_k == "auto" else int(self.top_k)
        tolerance = 0.0 if self.tolerance == "auto" else float(self.tolerance)
        if len(val_idx):
            k, tolerance = self._tune([encoded[i] for i in val_idx], y[val_idx], k, tolerance)
        self.fitted_.update(top_k=int(k), tolerance=float(tolerance), tuned=bool(len(val_idx)))

    def _ranks(self, encoded: list[np.ndarray]) -> list[np.ndarray]:
        """The rank of every event of each sequence among the model's predictions."""
        scores = next_event_scores(self.modules_["net"], encoded, self.window, device=self.device_)
        return [r for _, r in scores]

    def _tune(
        self, encoded: list[np.ndarray], y: np.ndarray, k: int, tolerance: float
    ) -> tuple[int, float]:
        vocab = len(self.vocabulary_)
        ks = [c for c in TOP_K_CANDIDATES if c < vocab] if self.top_k == "auto" else [k]
        tolerances = TOLERANCE_CANDIDATES if self.tolerance == "auto" else (tolerance,)
        ranks = self._ranks(encoded)
        shares = np.array([[float((r >= c).mean()) for c in ks] for r in ranks])
        j, tolerance, _ = tune_rule(shares, y, tolerances)
        return ks[j], tolerance

    def unlikely(self, X) -> list[list[int]]:
        """For each sequence, the positions of the events outside the model's top-k next
        events after their window (DeepLog's evidence for an anomaly)."""
        check_is_fitted(self, "modules_")
        seqs = as_event_lists(X)
        if not seqs:
            return []
        k = self.fitted_["top_k"]
        with torch.inference_mode():
            ranks = self._ranks([self.vocabulary_.encode(s) for s in seqs])
        return [np.flatnonzero(r >= k).tolist() for r in ranks]

    def _predict(self, encoded: list[np.ndarray]) -> np.ndarray:
        k, tolerance = self.fitted_["top_k"], self.fitted_.get("tolerance", 0.0)
        return np.array([(r >= k).mean() > tolerance for r in self._ranks(encoded)], dtype=np.int64)
