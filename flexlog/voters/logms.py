"""LogMS (Yu et al., "LogMS: a multi-stage log anomaly detection method based on multi-source
information fusion and probability label estimation", Frontiers in Physics 12, 2024).

Stage 1, MSIF-LSTM, learns the normal flow of events: from a window of ``h`` events it
predicts the next one from three fused sources, the events' semantic vectors, their indices
(embedded) and the window's event counts. Stage 2, PLE-GRU, a GRU sequence classifier trained
on probabilistic labels estimated by HDBSCAN clustering, looks only at the sequences in which
stage 1 found nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.cluster import HDBSCAN
from sklearn.feature_extraction.text import TfidfVectorizer
from torch import nn
from torch.nn import functional as F

from flexlog.thresholds import best_f1_threshold
from flexlog.voters.neural import (
    PAD,
    UNSEEN,
    NeuralVoter,
    anomaly_f1,
    count_matrix,
    pad_sequences,
    resolve_device,
    split_validation,
    train,
    windows,
)

_WORD = re.compile(r"[a-z0-9]+")
_CAMEL = re.compile(r"([a-z])([A-Z])")
#: Windows scored per forward pass at prediction time.
_SCORE_BATCH = 4096
#: Fewest batches per epoch of stage 1 and stage 2 (see ``LogMSVoter._batch_size``).
_MIN_BATCHES = (50, 10)


def template_words(text: str) -> list[str]:
    """Lower-case words of a template or event key: ``<*>`` and punctuation split words,
    camelCase is split, so ``set_robust_list`` and ``setRobustList`` give the same words."""
    text = _CAMEL.sub(r"\1 \2", text.replace("<*>", " "))
    return _WORD.findall(text.lower())


def semantic_vectors(
    keys: Sequence[str], templates: Mapping[str, str] | None, dim: int
) -> np.ndarray:
    """One ``dim``-wide vector per key: the TF-IDF-weighted average of LSA word vectors.

    A key's text is its template when ``templates`` has one, else the key itself (a system
    call has no text beyond its name); a text without words becomes one word derived from
    the key's hash. Word vectors are the rows of ``V·S`` of the SVD of the TF-IDF matrix of
    all the template texts (the known keys' and any other template given), truncated to
    ``dim`` columns and zero-padded when the corpus has fewer dimensions. Rows are L2-normed.
    """
    templates = dict(templates or {})

    def words(key: str, text: str | None) -> list[str]:
        found = template_words(text) if text else []
        if not found:
            found = template_words(key) or ["k" + hashlib.sha1(key.encode()).hexdigest()[:12]]
        return found

    known = [words(k, templates.get(k)) for k in keys]
    key_set = set(keys)
    others = [words(k, t) for k, t in sorted(templates.items()) if k not in key_set]
    tfidf = TfidfVectorizer(analyzer=lambda doc: doc)
    corpus = tfidf.fit_transform(known + others).toarray()
    _, sing, vt = np.linalg.svd(corpus, full_matrices=False)
    rank = int(min(dim, (sing > 1e-10 * max(sing.max(), 1e-30)).sum()))
    word_vectors = vt[:rank].T * sing[:rank]
    weights = corpus[: len(keys)]
    vecs = weights @ word_vectors / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    out = np.zeros((len(keys), dim), dtype=np.float32)
    out[:, :rank] = vecs
    return out


def ple_probabilities(
    representations: np.ndarray, y: np.ndarray, min_cluster_size: int
) -> tuple[np.ndarray, dict]:
    """Probabilistic labels P(anomalous) of the training sequences (PLE, after PLELog).

    HDBSCAN clusters the sequences. A cluster holding a known-normal sequence is a normal
    cluster, any other cluster and the noise are anomalous. The confidence in that label is
    ``1 − score/2`` with ``score`` the point's outlier score, here ``1 − probabilities_``
    (scikit-learn's HDBSCAN gives the membership strength, not GLOSH; noise has strength 0,
    hence score 1 and confidence ½). So P(anomalous) is ``score/2`` in a normal cluster and
    ``1 − score/2`` elsewhere. The training set here is labelled, so known-anomalous
    sequences are set to 1; known-normal ones keep their PLE probability (at most ½: a
    typical normal sequence is near 0, an atypical one an uncertain ½).
    """
    n = len(representations)
    if n < 2:
        return y.astype(np.float32), {"n_clusters": 0, "noise_fraction": 0.0}
    clusterer = HDBSCAN(min_cluster_size=min(min_cluster_size, n), copy=True)
    labels = clusterer.fit_predict(representations)
    score = 1.0 - clusterer.probabilities_
    normal_clusters = set(labels[(y == 0) & (labels >= 0)].tolist())
    in_normal = np.isin(labels, list(normal_clusters)) & (labels >= 0)
    prob = np.where(in_normal, score / 2.0, 1.0 - score / 2.0)
    prob[y == 1] = 1.0
    stats = {
        "n_clusters": int(labels.max() + 1),
        "noise_fraction": float((labels < 0).mean()),
    }
    return prob.astype(np.float32), stats


# -- networks -------------------------------------------------------------------------------
class SemanticTable(nn.Module):
    """The fixed semantic vector of every vocabulary index (zero for padding and unseen
    events), kept as a buffer so that a saved voter never needs the template texts again."""

    def __init__(self, n_events: int, dim: int):
        super().__init__()
        self.register_buffer("table", torch.zeros(n_events, dim))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.table)


class MSIFLSTM(nn.Module):
    """Next-event predictor fusing semantic, sequential and quantitative information: an LSTM
    over [semantic vector; event embedding] of each step, and a dense layer over the window's
    event-count vector; both are concatenated before the output layer."""

    def __init__(self, n_events: int, semantic_dim: int, hidden_size: int):
        super().__init__()
        self.n_events = n_events
        self.embed = nn.Embedding(n_events, semantic_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(2 * semantic_dim, hidden_size, batch_first=True)
        self.quant = nn.Linear(n_events, hidden_size)
        self.out = nn.Linear(2 * hidden_size, n_events)

    def forward(self, history: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(torch.cat([semantic, self.embed(history)], dim=-1))
        counts = torch.zeros(len(history), self.n_events, device=history.device)
        counts.scatter_add_(1, history, torch.ones_like(history, dtype=counts.dtype))
        counts[:, PAD] = 0.0
        quant = torch.relu(self.quant(counts / history.shape[1]))
        return self.out(torch.cat([h[-1], quant], dim=-1))


class PLEGRU(nn.Module):
    """Sequence classifier: a GRU over [semantic vector; event embedding], attention pooling
    of its outputs (as PLELog's attention-based GRU) → one logit of P(anomalous)."""

    def __init__(self, n_events: int, semantic_dim: int, gru_hidden: int):
        super().__init__()
        self.embed = nn.Embedding(n_events, semantic_dim, padding_idx=PAD)
        self.gru = nn.GRU(2 * semantic_dim, gru_hidden, batch_first=True)
        self.attend = nn.Sequential(nn.Linear(gru_hidden, gru_hidden), nn.Tanh())
        self.query = nn.Linear(gru_hidden, 1, bias=False)
        self.out = nn.Linear(gru_hidden, 1)

    def forward(
        self, idx: torch.Tensor, lengths: torch.Tensor, semantic: torch.Tensor
    ) -> torch.Tensor:
        # right padding cannot reach the outputs before it, so a plain GRU (much faster on
        # a CPU than a packed one) gives every real step's exact output; padding is masked
        out, _ = self.gru(torch.cat([semantic, self.embed(idx)], dim=-1))
        steps = torch.arange(idx.shape[1], device=idx.device)[None, :]
        weights = self.query(self.attend(out)).squeeze(-1)
        weights = weights.masked_fill(steps >= lengths[:, None], -torch.inf).softmax(dim=1)
        pooled = (weights.unsqueeze(-1) * out).sum(dim=1)
        return self.out(pooled).squeeze(-1)


# -- the voter ------------------------------------------------------------------------------
class LogMSVoter(NeuralVoter):
    """LogMS: MSIF-LSTM next-event prediction, then a PLE-GRU classifier (Yu et al. 2024).

    Stage 1 (MSIF-LSTM) is trained on the normal sequences: every distinct (window of
    ``window`` events, next event) pair. An event is anomalous when it is not among the
    ``top_k`` most likely next events (an event never seen in training always is), and a
    sequence with an anomalous event is anomalous. Stage 2 (PLE-GRU) classifies the
    sequences stage 1 passed: a GRU trained with BCE on the soft labels of
    :func:`ple_probabilities` (HDBSCAN over each sequence's square-rooted event frequencies),
    anomalous when P(anomalous) exceeds its threshold.

    ``top_k`` and the stage-2 threshold are tuned together on a stratified validation split
    of the training data (``validation_fraction``), as the pair with the best F1 of the two
    stages combined; when that split has no anomalies, ``top_k`` and 0.5 are used.

    Substitutions: the paper's semantic vectors average pretrained FastText word vectors,
    which cannot be downloaded here; the word vectors are learnt from the template texts
    instead (TF-IDF + SVD, i.e. LSA), still averaged with TF-IDF weights (see
    :func:`semantic_vectors`). ``fit(..., templates=...)`` takes the texts; without them the
    event key is the text. Sequences are cut to ``max_len`` events (head and tail) in stage 2;
    the LSTM and GRU have one layer each.
    """

    name = "logms"
    supervised = False

    def __init__(
        self,
        window: int = 10,
        top_k: int = 9,
        hidden_size: int = 64,
        semantic_dim: int = 16,
        gru_hidden: int = 32,
        max_len: int = 128,
        epochs: int = 3,
        stage2_epochs: int = 10,
        batch_size: int = 128,
        lr: float = 5e-3,
        min_cluster_size: int = 5,
        validation_fraction: float = 0.2,
        device: str = "auto",
        random_state: int | None = 0,
    ):
        self.window = window
        self.top_k = top_k
        self.hidden_size = hidden_size
        self.semantic_dim = semantic_dim
        self.gru_hidden = gru_hidden
        self.max_len = max_len
        self.epochs = epochs
        self.stage2_epochs = stage2_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.min_cluster_size = min_cluster_size
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    # -- validation -----------------------------------------------------------------------
    def _check_params(self) -> None:
        minimum = {
            "window": 1,
            "top_k": 1,
            "hidden_size": 1,
            "semantic_dim": 1,
            "gru_hidden": 1,
            "max_len": 2,
            "epochs": 1,
            "stage2_epochs": 1,
            "batch_size": 1,
            "min_cluster_size": 2,
        }
        for param, low in minimum.items():
            value = getattr(self, param)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{param} must be an integer ≥ {low}, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        fraction = self.validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ValueError(f"validation_fraction must be a number in (0, 1), got {fraction!r}")
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string, got {self.device!r}")
        resolve_device(self.device)

    def fit(self, X, y=None, templates: Mapping[str, str] | None = None) -> LogMSVoter:
        """Fit on sequences ``X`` (labels ``y`` optional, 1 = anomalous); ``templates`` maps
        event keys to template texts for the semantic vectors (the key is the text without)."""
        self._check_params()
        if templates is not None and not (
            isinstance(templates, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in templates.items())
        ):
            raise ValueError("templates must map event keys (str) to template texts (str)")
        self._templates = dict(templates) if templates is not None else None
        try:
            return super().fit(X, y)
        finally:
            del self._templates

    # -- fitting ----------------------------------------------------------------------------
    def _fit(self, encoded: list[np.ndarray], y: np.ndarray) -> None:
        device = self.device_
        n_events = len(self.vocabulary_)
        keys = sorted(self.vocabulary_.index, key=self.vocabulary_.index.__getitem__)
        table = np.zeros((n_events, self.semantic_dim), dtype=np.float32)
        table[2:] = semantic_vectors([str(k) for k in keys], self._templates, self.semantic_dim)
        self.modules_ = self._build_modules()
        self.modules_["semantic"].table.copy_(torch.from_numpy(table))
        for module in self.modules_.values():
            module.to(device).eval()

        fit_idx, val_idx = self._split(y)
        normal = [encoded[i] for i in fit_idx if y[i] == 0]
        loss1 = self._train_stage1(normal)
        fit_seqs = [encoded[i] for i in fit_idx]
        soft, stats = ple_probabilities(
            self._representations(fit_seqs), y[fit_idx], self.min_cluster_size
        )
        loss2 = self._train_stage2(fit_seqs, soft)

        # an event unseen in training ranks len(vocabulary): top_k beyond that would pass it
        top_k, threshold = min(int(self.top_k), len(self.vocabulary_)), 0.5
        y_val = y[val_idx]
        if len(val_idx) and (y_val == 1).any():
            val = [encoded[i] for i in val_idx]
            with torch.inference_mode():
                ranks, probs = self._ranks(val), self._probabilities(val)
            top_k, threshold = self._tune(ranks, probs, y_val)
        self.fitted_ = {
            "top_k": int(top_k),
            "threshold": float(threshold),
            "stage1_loss": [float(v) for v in loss1],
            "stage2_loss": [float(v) for v in loss2],
            **stats,
        }

    def _split(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fit / validation indices; all for fitting when too few sequences to split or the
        fitting part would have no normal sequence."""
        everything = (np.arange(len(y)), np.zeros(0, dtype=np.int64))
        if len(y) < 2:
            return everything
        fit_idx, val_idx = split_validation(len(y), y, self.validation_fraction, self.random_state)
        if not (y[fit_idx] == 0).any():
            return everything
        return fit_idx, val_idx

    def _batch_size(self, n: int, stage: int) -> int:
        """``batch_size``, made smaller when ``n`` (distinct windows or sequences) would give
        fewer than ``_MIN_BATCHES`` updates per epoch: deduplication leaves few training
        items on short-sequence data such as HDFS, which would otherwise be under-trained."""
        return max(1, min(int(self.batch_size), -(-n // _MIN_BATCHES[stage - 1])))

    def _train_stage1(self, normal: list[np.ndarray]) -> list[float]:
        pairs = np.unique(
            np.concatenate([np.column_stack(windows(e, self.window)) for e in normal], axis=0),
            axis=0,
        )
        device = self.device_
        history = torch.from_numpy(pairs[:, :-1]).to(device)
        target = torch.from_numpy(pairs[:, -1]).to(device)
        semantic, msif = self.modules_["semantic"], self.modules_["msif"]

        def step(idx: np.ndarray) -> torch.Tensor:
            i = torch.from_numpy(idx).to(device)
            return F.cross_entropy(msif(history[i], semantic(history[i])), target[i])

        return train(
            msif,
            step,
            len(pairs),
            epochs=self.epochs,
            batch_size=self._batch_size(len(pairs), 1),
            lr=self.lr,
            seed=self.random_state,
            desc="logms stage 1",
        )

    def _representations(self, encoded: list[np.ndarray]) -> np.ndarray:
        """What HDBSCAN clusters: square-rooted event frequencies (Hellinger geometry)."""
        counts = count_matrix(encoded, len(self.vocabulary_))
        return np.sqrt(counts / counts.sum(axis=1, keepdims=True))

    def _train_stage2(self, encoded: list[np.ndarray], soft: np.ndarray) -> list[float]:
        padded, lengths = pad_sequences(encoded, self.max_len)
        # identical (sequence, soft label) rows are trained once, weighted by their count
        rows = np.column_stack([padded, soft.view(np.int32).astype(np.int64)])
        unique, first, counts = np.unique(rows, axis=0, return_index=True, return_counts=True)
        device = self.device_
        idx_all = torch.from_numpy(padded[first]).to(device)
        len_all = torch.from_numpy(lengths[first]).to(device)
        label = torch.from_numpy(soft[first]).to(device)
        weight = torch.from_numpy(counts.astype(np.float32)).to(device)
        semantic, gru = self.modules_["semantic"], self.modules_["ple"]

        def step(idx: np.ndarray) -> torch.Tensor:
            i = torch.from_numpy(idx).to(device)
            width = int(len_all[i].max())
            seqs = idx_all[i, :width]
            logits = gru(seqs, len_all[i], semantic(seqs))
            loss = F.binary_cross_entropy_with_logits(logits, label[i], reduction="none")
            return (loss * weight[i]).sum() / weight[i].sum()

        return train(
            gru,
            step,
            len(unique),
            epochs=self.stage2_epochs,
            batch_size=self._batch_size(len(unique), 2),
            lr=self.lr,
            seed=self.random_state,
            desc="logms stage 2",
        )

    def _tune(self, ranks: np.ndarray, probs: np.ndarray, y: np.ndarray) -> tuple[int, float]:
        """The (top_k, stage-2 threshold) with the best validation F1 of both stages; ties
        go to the larger top_k (fewer stage-1 alarms) and the larger threshold."""
        n_events = len(self.vocabulary_)
        candidates = np.unique(np.concatenate([np.clip(ranks, 1, n_events), [n_events]]))
        best_f1, best = -1.0, (int(self.top_k), 0.5)
        for k in candidates[::-1]:
            flagged = ranks >= k
            rest = ~flagged
            threshold = best_f1_threshold(probs[rest], y[rest])[0] if rest.any() else 0.5
            f1 = anomaly_f1(flagged | (rest & (probs > threshold)), y)
            if f1 > best_f1:
                best_f1, best = f1, (int(k), float(threshold))
        return best

    # -- scoring ----------------------------------------------------------------------------
    def _ranks(self, encoded: list[np.ndarray]) -> np.ndarray:
        """Per sequence, the worst rank of an actual next event among stage 1's predictions
        (0 = the most likely one); an event unseen in training ranks ``len(vocabulary)``."""
        n_events = len(self.vocabulary_)
        pairs = [np.column_stack(windows(e, self.window)) for e in encoded]
        owner = np.repeat(np.arange(len(encoded)), [len(p) for p in pairs])
        unique, inverse = np.unique(np.concatenate(pairs, axis=0), axis=0, return_inverse=True)
        device = self.device_
        semantic, msif = self.modules_["semantic"], self.modules_["msif"]
        rank = np.empty(len(unique), dtype=np.int64)
        for start in range(0, len(unique), _SCORE_BATCH):
            chunk = torch.from_numpy(unique[start : start + _SCORE_BATCH]).to(device)
            history, target = chunk[:, :-1], chunk[:, -1]
            logits = msif(history, semantic(history))
            logits[:, [PAD, UNSEEN]] = -torch.inf
            mine = logits.gather(1, target[:, None])
            r = (logits > mine).sum(dim=1)
            r[target == UNSEEN] = n_events
            rank[start : start + len(chunk)] = r.cpu().numpy()
        out = np.zeros(len(encoded), dtype=np.int64)
        np.maximum.at(out, owner, rank[inverse.reshape(-1)])
        return out

    def _probabilities(self, encoded: list[np.ndarray]) -> np.ndarray:
        """Stage 2's P(anomalous) of each sequence."""
        out = np.zeros(len(encoded), dtype=np.float64)
        if not encoded:
            return out
        padded, lengths = pad_sequences(encoded, self.max_len)
        order = np.argsort(lengths, kind="stable")
        device = self.device_
        semantic, gru = self.modules_["semantic"], self.modules_["ple"]
        for start in range(0, len(order), _SCORE_BATCH // 8):
            rows = order[start : start + _SCORE_BATCH // 8]
            width = int(lengths[rows].max())
            seqs = torch.from_numpy(padded[rows, :width]).to(device)
            lens = torch.from_numpy(lengths[rows]).to(device)
            out[rows] = torch.sigmoid(gru(seqs, lens, semantic(seqs))).cpu().numpy()
        return out

    def _predict(self, encoded: list[np.ndarray]) -> np.ndarray:
        flagged = self._ranks(encoded) >= self.fitted_["top_k"]
        pred = flagged.astype(np.int64)
        rest = np.flatnonzero(~flagged)
        if len(rest):
            probs = self._probabilities([encoded[i] for i in rest])
            pred[rest] = probs > self.fitted_["threshold"]
        return pred

    def _build_modules(self) -> dict[str, nn.Module]:
        n_events = len(self.vocabulary_)
        return {
            "semantic": SemanticTable(n_events, self.semantic_dim),
            "msif": MSIFLSTM(n_events, self.semantic_dim, self.hidden_size),
            "ple": PLEGRU(n_events, self.semantic_dim, self.gru_hidden),
        }
