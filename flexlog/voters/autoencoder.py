"""Auto-LSTM, Auto-BLSTM and Auto-GRU: two sparse autoencoders, one trained on normal and one on
anomalous windows of events, whose codes feed a one-layer recurrent classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from flexlog.voters.neural import (
    ThresholdedVoter,
    batches,
    check_int,
    final_state,
    nn,
    torch,
    train,
)

PREDICT_CHUNK = 1024  # sequences whose windows are counted at once (bounds memory)
FEATURE_BATCH = 4096  # windows encoded per forward pass of the autoencoders
EPS = 1e-8


# -- hyper-parameter checks -------------------------------------------------------------------
def _check_int(name: str, value, minimum: int = 1) -> int:
    check_int(name, value, minimum)
    return int(value)


def _check_number(name: str, value, *, zero_ok: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.number))
    if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = "≥ 0" if zero_ok else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _check_sizes(name: str, value) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {value!r}")
    return tuple(_check_int(f"{name}[{i}]", v) for i, v in enumerate(value))


# -- windows of events ------------------------------------------------------------------------
def window_ids(
    encoded: Sequence[np.ndarray], window: int, max_steps: int, size: int, table: dict[bytes, int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cut each sequence into consecutive windows of ``window`` events and describe each window
    by its event counts divided by ``window``. A sequence of more than ``max_steps`` windows
    keeps its first ``max_steps // 2`` and its last ones (``pad_sequences``' rule, by
    window). Returns each sequence as an array of ids into ``table`` (count-row bytes → id,
    extended in place) and the rows of the ids new to the table, so every distinct window is
    encoded once."""
    ids: list[np.ndarray] = []
    new_rows: list[np.ndarray] = []
    head = max_steps // 2
    for start in range(0, len(encoded), PREDICT_CHUNK):
        chunk = encoded[start : start + PREDICT_CHUNK]
        rows, events, lengths, offset = [], [], [], 0
        for e in chunk:
            w = np.arange(len(e)) // window
            n = int(w[-1]) + 1
            if n > max_steps:
                cut = n - (max_steps - head)
                keep = (w < head) | (w >= cut)
                e, w = e[keep], w[keep]
                w = np.where(w >= cut, w - cut + head, w)
                n = max_steps
            rows.append(w + offset)
            events.append(e)
            lengths.append(n)
            offset += n
        flat = np.concatenate(rows) * size + np.concatenate(events)
        counts = np.bincount(flat, minlength=offset * size).reshape(offset, size)
        counts = counts.astype(np.float32) / window
        uniq, inverse = np.unique(counts, axis=0, return_inverse=True)
        local = np.empty(len(uniq), dtype=np.int64)
        for i, row in enumerate(uniq):
            key = row.tobytes()
            if key not in table:
                table[key] = len(table)
                new_rows.append(row)
            local[i] = table[key]
        seq_ids = local[inverse.reshape(-1)]
        ids.extend(np.split(seq_ids, np.cumsum(lengths)[:-1]))
    return ids, new_rows


# -- networks ---------------------------------------------------------------------------------
class SparseAutoencoder(nn.Module):
    """Dense encoder ``n_in → sizes[0] → … → sizes[-1]`` (ReLU; the last layer is the code,
    L1-penalised in training) and the mirrored decoder back to ``n_in`` (linear output)."""

    def __init__(self, n_in: int, sizes: tuple[int, ...]):
        super().__init__()
        enc: list[nn.Module] = []
        prev = n_in
        for s in sizes:
            enc += [nn.Linear(prev, s), nn.ReLU()]
            prev = s
        dec: list[nn.Module] = []
        for s in (*sizes[-2::-1], n_in):
            dec += [nn.Linear(prev, s), nn.ReLU()]
            prev = s
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec[:-1])  # no ReLU on the reconstruction

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        return code, self.decoder(code)


class RecurrentClassifier(nn.Module):
    """Standardise the per-window features (fitted mean and scale kept as buffers), run one
    recurrent layer over the windows and map its last state to one logit."""

    def __init__(self, n_in: int, units: int, cell: str):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("scale", torch.ones(n_in))
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(n_in, units, batch_first=True, bidirectional=cell == "blstm")
        self.out = nn.Linear(units * (2 if cell == "blstm" else 1), 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = final_state(self.rnn, (x - self.mean) / self.scale, lengths)
        return self.out(h).squeeze(1)


# -- the voters -------------------------------------------------------------------------------
class AutoencoderRNNVoter(ThresholdedVoter):
    """Autoencoder features + a recurrent classifier (Zhao et al., "A Novel System Log Anomaly
    Detection Method Based on Autoencoders and Recurrent Networks": Auto-LSTM, Auto-BLSTM,
    Auto-GRU). Subclasses set ``cell`` to "lstm", "blstm" or "gru".

    As in the paper, two autoencoders are trained first: a positive one on normal data and a
    negative one on anomalous data, each an encoder of ``encoder_sizes`` = (400, 200) dense
    ReLU units with an L1 activity penalty (``l1``) on the 200-unit code and a mirrored decoder
    (200 → 400 → input). Their frozen encoders then turn each time step into features for a
    one-layer recurrent classifier of ``units`` = 100 cells (LSTM, bidirectional LSTM or GRU)
    with a sigmoid output, trained with binary cross-entropy; it needs both classes.

    What this implementation fixes where the paper leaves room or had to be adapted:

    * A time step is a window of ``window`` consecutive events (non-overlapping), given as its
      event counts divided by ``window`` (a one-hot per event summed over the window; unseen
      events share one column). ``window="auto"`` picks the window so that the median training
      sequence spans ``max_steps / 2`` steps (HDFS sessions: about 2 events per step, ADFA-LD
      traces: about 18), which keeps long system-call traces affordable on a CPU. A sequence
      longer than ``max_steps`` windows keeps its first and last ones (``pad_sequences``).
    * The features of a step are both codes and both reconstruction errors: [positive code,
      negative code, log MSE of the positive autoencoder, log MSE of the negative one] (402
      values), standardised with the training mean and scale. The errors say directly which
      autoencoder recognises the window.
    * Distinct windows are encoded once and the autoencoders train on the distinct windows,
      each weighted by how often it occurs; identical training sequences are trained on once,
      weighted by their count.
    * The decision threshold on the predicted probability is the best-F1 one on a stratified
      validation split of the training data (``validation_fraction``); 0.5 when that split has
      a single class.

    Parameters
    ----------
    window : int or "auto" — events per time step.
    max_steps : int — time steps kept per sequence.
    encoder_sizes : tuple of int — encoder layer sizes; the last is the code.
    l1 : float — L1 activity penalty on the code (mean absolute code value per window).
    units : int — recurrent cells (per direction).
    ae_epochs : int — autoencoder training passes.
    epochs, batch_size, lr : classifier training (the autoencoders use ``lr`` and
        ``4 * batch_size``).
    validation_fraction : float in (0, 1)
    device : "auto", "cpu" or "cuda[:N]"
    random_state : int or None
    """

    cell: ClassVar[str] = "lstm"

    def __init__(
        self,
        window: int | str = "auto",
        max_steps: int = 32,
        encoder_sizes: tuple[int, ...] = (400, 200),
        l1: float = 1e-4,
        units: int = 100,
        ae_epochs: int = 10,
        epochs: int = 15,
        batch_size: int = 32,
        lr: float = 1e-3,
        validation_fraction: float = 0.2,
        device: str = "auto",
        random_state: int | None = 0,
    ):
        self.window = window
        self.max_steps = max_steps
        self.encoder_sizes = encoder_sizes
        self.l1 = l1
        self.units = units
        self.ae_epochs = ae_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.window != "auto":
            _check_int("window", self.window)
        _check_int("max_steps", self.max_steps)
        _check_sizes("encoder_sizes", self.encoder_sizes)
        _check_number("l1", self.l1, zero_ok=True)
        _check_int("units", self.units)
        _check_int("ae_epochs", self.ae_epochs)
        _check_int("epochs", self.epochs)
        _check_int("batch_size", self.batch_size)
        _check_number("lr", self.lr)
        _check_number("validation_fraction", self.validation_fraction)
        if self.validation_fraction >= 1:
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        _ = self.device_

    def fit(self, X, y=None) -> AutoencoderRNNVoter:
        """Fit on sequences ``X`` with labels ``y`` (1 = anomalous; both classes needed)."""
        self._check_params()
        return super().fit(X, y)

    # networks -----------------------------------------------------------------------------
    def _build_modules(self) -> dict[str, nn.Module]:
        sizes = _check_sizes("encoder_sizes", self.encoder_sizes)
        n_in = len(self.vocabulary_)
        modules = {
            "positive": SparseAutoencoder(n_in, sizes),
            "negative": SparseAutoencoder(n_in, sizes),
            "classifier": RecurrentClassifier(2 * sizes[-1] + 2, int(self.units), self.cell),
        }
        return {k: m.to(self.device_) for k, m in modules.items()}

    def _features(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-window classifier input: both codes and both log reconstruction errors."""
        out = []
        for b in batches(len(rows), FEATURE_BATCH, shuffle=False):
            x = rows[b]
            parts, errors = [], []
            for name in ("positive", "negative"):
                code, recon = self.modules_[name](x)
                parts.append(code)
                errors.append(torch.log(((recon - x) ** 2).mean(1, keepdim=True) + EPS))
            out.append(torch.cat(parts + errors, dim=1))
        return torch.cat(out) if out else torch.zeros(0, device=rows.device)

    def _windows(self, encoded: list[np.ndarray]) -> tuple[list[np.ndarray], torch.Tensor]:
        table: dict[bytes, int] = {}
        ids, rows = window_ids(
            encoded,
            int(self.fitted_["window"]),
            int(self.max_steps),
            len(self.vocabulary_),
            table,
        )
        return ids, torch.from_numpy(np.stack(rows)).to(self.device_)

    def _padded(self, ids: list[np.ndarray], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = np.array([len(i) for i in ids], dtype=np.int64)
        out = np.full((len(ids), int(lengths.max())), pad, dtype=np.int64)
        for k, i in enumerate(ids):
            out[k, : len(i)] = i
        return torch.from_numpy(out).to(self.device_), torch.from_numpy(lengths)

    # training -----------------------------------------------------------------------------
    def _train_autoencoder(self, name: str, rows: torch.Tensor, weight: np.ndarray) -> None:
        net = self.modules_[name]
        keep = np.flatnonzero(weight > 0)
        x_all = rows[torch.from_numpy(keep).to(rows.device)]
        w_all = torch.from_numpy((weight[keep] / weight[keep].mean()).astype(np.float32))
        w_all = w_all.to(rows.device)
        l1 = float(self.l1)

        def step(idx: np.ndarray) -> torch.Tensor:
            i = torch.from_numpy(idx).to(rows.device)
            x, w = x_all[i], w_all[i]
            code, recon = net(x)
            per_row = ((recon - x) ** 2).mean(1) + l1 * code.abs().mean(1)
            return (per_row * w).sum() / w.sum()

        self.fitted_[f"{name}_loss"] = train(
            net,
            step,
            len(keep),
            epochs=int(self.ae_epochs),
            batch_size=4 * int(self.batch_size),
            lr=float(self.lr),
            seed=self.random_state,
            desc=f"{self.name} {name} autoencoder",
        )

    def _train(self, encoded: list[np.ndarray], y: np.ndarray, weights: np.ndarray) -> None:
        self._check_params()
        if self.window == "auto":
            median = float(np.median([len(e) for e in encoded]))
            window = max(1, math.ceil(median / max(1.0, self.max_steps / 2)))
        else:
            window = int(self.window)
        self.fitted_["window"] = window
        self.modules_ = self._build_modules()
        ids, rows = self._windows(encoded)
        n_rows = len(rows)

        # how often each distinct window occurs in normal and in anomalous training sequences
        occurs = {}
        for label in (0, 1):
            idx = np.flatnonzero(y == label)
            flat = np.concatenate([ids[i] for i in idx])
            w = np.concatenate([np.full(len(ids[i]), weights[i]) for i in idx])
            occurs[label] = np.bincount(flat, weights=w, minlength=n_rows)
        self._train_autoencoder("positive", rows, occurs[0])
        self._train_autoencoder("negative", rows, occurs[1])

        with torch.no_grad():
            feats = self._features(rows)
        total = torch.from_numpy((occurs[0] + occurs[1]).astype(np.float32)).to(feats.device)
        mean = (feats * total[:, None]).sum(0) / total.sum()
        var = (((feats - mean) ** 2) * total[:, None]).sum(0) / total.sum()
        clf = self.modules_["classifier"]
        clf.mean.copy_(mean)
        clf.scale.copy_(var.sqrt().clamp(min=1e-4))

        table = torch.cat([feats, torch.zeros(1, feats.shape[1], device=feats.device)])
        x_ids, lengths = self._padded(ids, pad=n_rows)
        target = torch.from_numpy(y.astype(np.float32)).to(feats.device)
        w_seq = torch.from_numpy((weights / weights.mean()).astype(np.float32)).to(feats.device)
        loss_fn = nn.BCEWithLogitsLoss(reduction="none")

        def step(idx: np.ndarray) -> torch.Tensor:
            i = torch.from_numpy(idx)
            width = int(lengths[i].max())
            i_dev = i.to(feats.device)
            logits = clf(table[x_ids[i_dev, :width]], lengths[i])
            w = w_seq[i_dev]
            return (loss_fn(logits, target[i_dev]) * w).sum() / w.sum()

        self.fitted_["loss"] = train(
            clf,
            step,
            len(ids),
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            lr=float(self.lr),
            seed=self.random_state,
            desc=f"{self.name} classifier",
        )
        self.fitted_["n_windows"] = n_rows

    # prediction ---------------------------------------------------------------------------
    def _proba(self, encoded: list[np.ndarray]) -> np.ndarray:
        ids, rows = self._windows(encoded)
        feats = self._features(rows)
        table = torch.cat([feats, torch.zeros(1, feats.shape[1], device=feats.device)])
        clf = self.modules_["classifier"]
        out = np.zeros(len(ids), dtype=np.float64)
        for b in batches(len(ids), PREDICT_CHUNK, shuffle=False):
            x_ids, lengths = self._padded([ids[i] for i in b], pad=len(rows))
            out[b] = torch.sigmoid(clf(table[x_ids], lengths)).double().cpu().numpy()
        return out


class AutoLSTMVoter(AutoencoderRNNVoter):
    """Auto-LSTM: the autoencoder features classified by one LSTM layer."""

    name = "auto-lstm"
    cell = "lstm"


class AutoBLSTMVoter(AutoencoderRNNVoter):
    """Auto-BLSTM: the autoencoder features classified by one bidirectional LSTM layer."""

    name = "auto-blstm"
    cell = "blstm"


class AutoGRUVoter(AutoencoderRNNVoter):
    """Auto-GRU: the autoencoder features classified by one GRU layer."""

    name = "auto-gru"
    cell = "gru"
