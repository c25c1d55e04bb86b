"""LogLS (Chen et al., "LogLS: System Log Anomaly Detection Method Based on Dual LSTM",
Symmetry 2022): two next-event LSTMs, one reading the events before an event (pre-log) and
one reading the events after it (post-log); an event is anomalous only when both find it
unlikely."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from torch import nn

from flexlog.voters.deeplog import (
    EMBEDDING_DIM,
    TOLERANCE_CANDIDATES,
    NextEventLSTM,
    check_next_event_params,
    next_event_scores,
    train_next_event,
    tune_rule,
    validation_split,
)
from flexlog.voters.neural import NeuralVoter

#: Thresholds used when ``g1``/``g2`` are "auto" and there is nothing to tune them on.
DEFAULT_G1 = DEFAULT_G2 = 1e-3
#: Candidate thresholds for "auto" (ascending).
THRESHOLD_GRID = (1e-7, 1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7)

#: How an event is judged: by both directions, by the forward model alone, by the backward.
BOTH, FORWARD, BACKWARD = 0, 1, 2


def judging_modes(n: int, h: int) -> np.ndarray:
    """Per event of a sequence of ``n`` events, which direction(s) judge it.

    A sequence shorter than ``h + 1`` events is judged by the forward model alone, on the
    (padded) history it has. Otherwise an event with ``h`` events before it but fewer than
    ``h`` after (the tail) is judged by the forward model alone, one with fewer than ``h``
    before but ``h`` after (the head) by the backward model alone, and every other event —
    both contexts complete, or (when ``n < 2h``) both incomplete — by both."""
    if n < h + 1:
        return np.full(n, FORWARD, dtype=np.int64)
    i = np.arange(n)
    full_fwd, full_bwd = i >= h, (n - 1 - i) >= h
    mode = np.full(n, BOTH, dtype=np.int64)
    mode[full_fwd & ~full_bwd] = FORWARD
    mode[full_bwd & ~full_fwd] = BACKWARD
    return mode


def anomalous_share(
    p_fwd: np.ndarray, p_bwd: np.ndarray, mode: np.ndarray, g1: np.ndarray, g2: np.ndarray
) -> np.ndarray:
    """The share of a sequence's events that are anomalous, for every pair of thresholds:
    ``(len(g1), len(g2))``. An event judged by both directions is anomalous when its forward
    probability is below ``g1`` and its backward probability below ``g2``."""
    low_f = p_fwd[:, None] < g1[None, :]  # (n, G1)
    low_b = p_bwd[:, None] < g2[None, :]  # (n, G2)
    both = mode == BOTH
    count = (low_f[both][:, :, None] & low_b[both][:, None, :]).sum(axis=0)
    count += low_f[mode == FORWARD].sum(axis=0)[:, None]
    count += low_b[mode == BACKWARD].sum(axis=0)[None, :]
    return count / max(len(mode), 1)


class LogLSVoter(NeuralVoter):
    """LogLS's dual-LSTM detector (Chen et al., Symmetry 2022).

    Architecture as in the paper: a forward (pre-log) LSTM predicts an event from the
    ``window`` (``h``) events before it and a backward (post-log) LSTM from the ``h`` events
    after it; both are next-event models (embedding, ``num_layers`` stacked LSTM layers of
    ``hidden_size``, softmax over the vocabulary) trained on normal sequences only. An event
    is anomalous when it deviates from both directions: the forward model gives it a
    probability below ``g1`` and the backward model below ``g2``. The sequence-length rule
    is implemented as in :func:`judging_modes`: events near the start are judged by the
    backward model alone, events near the end by the forward model alone, and a sequence
    shorter than ``h + 1`` by the forward model alone on its padded history. A sequence is
    anomalous when more than ``tolerance`` of its events are (0: any event, the paper's rule);
    an event unseen in training has probability 0 both ways.

    ``epochs="auto"`` is as for :class:`~flexlog.voters.deeplog.DeepLogVoter` (per model).

    Substitutions: events enter through a learned embedding; each model trains on the
    distinct (window, next event) pairs once. With ``g1``, ``g2`` or ``tolerance`` "auto" and
    anomalous sequences in the training data, the models train on the normal sequences of
    all but ``validation_fraction`` of the training data and the "auto" ones are the grid
    values with the best F1 on the held-out part (ties: fewer alarms); otherwise "auto"
    means 1e-3 for the thresholds and 0 for the tolerance, and all normal sequences train.
    """

    name: ClassVar[str] = "logls"
    supervised: ClassVar[bool] = False

    def __init__(
        self,
        window: int = 10,
        g1: float | str = "auto",
        g2: float | str = "auto",
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
        self.g1 = g1
        self.g2 = g2
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
        for name in ("g1", "g2"):
            value = getattr(self, name)
            if value == "auto":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (0.0 < value <= 1.0)
            ):
                raise ValueError(f"{name} must be 'auto' or a probability in (0, 1], got {value!r}")

    def _build_modules(self) -> dict[str, nn.Module]:
        dim = int(self.fitted_.get("embedding_dim", EMBEDDING_DIM))
        vocab = len(self.vocabulary_)
        return {
            direction: NextEventLSTM(vocab, dim, int(self.hidden_size), int(self.num_layers)).to(
                self.device_
            )
            for direction in ("forward", "backward")
        }

    def _fit(self, encoded: list[np.ndarray], y: np.ndarray) -> None:
        self._check_params()
        self.fitted_["embedding_dim"] = EMBEDDING_DIM
        if "auto" in (self.g1, self.g2, self.tolerance):
            train_idx, val_idx = validation_split(
                len(encoded), y, self.validation_fraction, self.random_state
            )
        else:
            train_idx, val_idx = np.arange(len(encoded)), np.zeros(0, dtype=np.int64)
        normal = [encoded[i] for i in train_idx if y[i] == 0]
        self.modules_ = self._build_modules()
        for direction, reverse in (("forward", False), ("backward", True)):
            info = train_next_event(
                self.modules_[direction],
                normal,
                self.window,
                reverse=reverse,
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                seed=self.random_state,
                device=self.device_,
                desc=f"logls {direction}",
            )
            self.fitted_.update({f"{direction}_{k}": v for k, v in info.items()})
        g1 = DEFAULT_G1 if self.g1 == "auto" else float(self.g1)
        g2 = DEFAULT_G2 if self.g2 == "auto" else float(self.g2)
        tolerance = 0.0 if self.tolerance == "auto" else float(self.tolerance)
        if len(val_idx):
            g1, g2, tolerance = self._tune(
                [encoded[i] for i in val_idx], y[val_idx], g1, g2, tolerance
            )
        self.fitted_.update(
            g1=float(g1), g2=float(g2), tolerance=float(tolerance), tuned=bool(len(val_idx))
        )

    def _shares(self, encoded: list[np.ndarray], g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
        """``(n_sequences, len(g1), len(g2))``: the share of each sequence's events that are
        anomalous under each pair of thresholds."""
        h, device = self.window, self.device_
        fwd = next_event_scores(self.modules_["forward"], encoded, h, device=device)
        bwd = next_event_scores(self.modules_["backward"], encoded, h, reverse=True, device=device)
        return np.stack(
            [
                anomalous_share(pf, pb, judging_modes(len(e), h), g1, g2)
                for e, (pf, _), (pb, _) in zip(encoded, fwd, bwd, strict=True)
            ]
        )

    def _tune(
        self, encoded: list[np.ndarray], y: np.ndarray, g1: float, g2: float, tolerance: float
    ) -> tuple[float, float, float]:
        # descending thresholds: from the most alarms to the fewest, as tune_rule expects
        grid1 = np.array(THRESHOLD_GRID[::-1]) if self.g1 == "auto" else np.array([g1])
        grid2 = np.array(THRESHOLD_GRID[::-1]) if self.g2 == "auto" else np.array([g2])
        tolerances = TOLERANCE_CANDIDATES if self.tolerance == "auto" else (tolerance,)
        shares = self._shares(encoded, grid1, grid2).reshape(len(encoded), -1)
        j, tolerance, _ = tune_rule(shares, y, tolerances)
        a, b = divmod(j, len(grid2))
        return float(grid1[a]), float(grid2[b]), tolerance

    def _predict(self, encoded: list[np.ndarray]) -> np.ndarray:
        g1 = np.array([self.fitted_["g1"]])
        g2 = np.array([self.fitted_["g2"]])
        tolerance = self.fitted_.get("tolerance", 0.0)
        return (self._shares(encoded, g1, g2)[:, 0, 0] > tolerance).astype(np.int64)
