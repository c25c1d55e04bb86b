"""The plain supervised LSTM classifier, the baseline of the deep log detectors: event
embeddings → LSTM 128 → dropout → LSTM 64 → dropout → one sigmoid unit."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from flexlog.voters.neural import (
    ThresholdedVoter,
    batches,
    check_positive,
    final_state,
    pad_sequences,
    train,
)


class StackedLSTM(nn.Module):
    """Embedding, two LSTM layers with dropout after each, and a logit."""

    def __init__(self, vocab: int, embedding_dim: int, units: tuple[int, int], dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding_dim, padding_idx=0)
        self.first = nn.LSTM(embedding_dim, units[0], batch_first=True)
        self.second = nn.LSTM(units[0], units[1], batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(units[1], 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embedding(x), lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        hidden, _ = self.first(packed)
        hidden, _ = nn.utils.rnn.pad_packed_sequence(
            hidden, batch_first=True, total_length=x.shape[1]
        )
        h = final_state(self.second, self.dropout(hidden), lengths)
        return self.out(self.dropout(h)).squeeze(1)


class LSTMVoter(ThresholdedVoter):
    """Supervised LSTM classifier over the event sequence.

    Sequences longer than ``max_len`` keep their first and last halves; identical training
    sequences are trained on once, weighted by their count; the decision threshold is tuned
    on ``validation_fraction`` of the training data.
    """

    name: ClassVar[str] = "lstm"

    def __init__(
        self,
        embedding_dim: int = 32,
        units: tuple[int, int] = (128, 64),
        dropout: float = 0.2,
        max_len: int = 48,
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 3e-3,
        validation_fraction: float = 0.2,
        device: str = "auto",
        random_state: int | None = 0,
    ):
        self.embedding_dim = embedding_dim
        self.units = units
        self.dropout = dropout
        self.max_len = max_len
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    def _check_params(self) -> None:
        check_positive(
            embedding_dim=self.embedding_dim,
            max_len=self.max_len,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
        )
        if len(tuple(self.units)) != 2 or any(int(u) < 1 for u in self.units):
            raise ValueError(f"units must be two positive layer sizes, got {self.units!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def _build_modules(self) -> dict[str, nn.Module]:
        units = tuple(int(u) for u in self.units)
        net = StackedLSTM(len(self.vocabulary_), self.embedding_dim, units, self.dropout)
        return {"net": net.to(self.device_)}

    def _tensors(self, encoded: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = pad_sequences(encoded, self.max_len)
        return torch.from_numpy(x).to(self.device_), torch.from_numpy(lengths)

    def _train(self, encoded: list[np.ndarray], y: np.ndarray, weights: np.ndarray) -> None:
        self._check_params()
        self.modules_ = self._build_modules()
        net = self.modules_["net"]
        x, lengths = self._tensors(encoded)
        target = torch.from_numpy(y.astype(np.float32)).to(self.device_)
        w = torch.from_numpy(weights).to(self.device_)
        loss_fn = nn.BCEWithLogitsLoss(reduction="none")

        def step(idx: np.ndarray) -> torch.Tensor:
            i = torch.from_numpy(idx)
            loss = loss_fn(net(x[i.to(self.device_)], lengths[i]), target[i.to(self.device_)])
            wi = w[i.to(self.device_)]
            return (loss * wi).sum() / wi.sum()

        train(
            net,
            step,
            len(encoded),
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.random_state,
            desc="lstm",
        )

    def _proba(self, encoded: list[np.ndarray]) -> np.ndarray:
        net = self.modules_["net"]
        out = []
        for idx in batches(len(encoded), 256, shuffle=False):
            x, lengths = self._tensors([encoded[i] for i in idx])
            out.append(torch.sigmoid(net(x, lengths)).cpu().numpy())
        return np.concatenate(out)
