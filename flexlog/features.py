"""Template-count vectors: one column per known template, plus one that counts unseen ones.

The ML voters of the FlexLog method see a sequence as the counts of its templates. A template
that was not in the training data is counted in the last column rather than dropped, so that an
evolved system's new templates still move the vector.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

SCALINGS = ("none", "log1p", "l1")
#: Joins the events of an n-gram into one vocabulary key (a control character no template
#: key contains).
NGRAM_JOIN = "\x1f"


def ngram_keys(events: Sequence[str], ngram: int) -> list[str]:
    """The events of a sequence followed by its contiguous 2..``ngram``-grams as keys."""
    out = list(events)
    for n in range(2, ngram + 1):
        out.extend(NGRAM_JOIN.join(events[i : i + n]) for i in range(len(events) - n + 1))
    return out


def as_event_lists(X: Iterable) -> list[Sequence[str]]:
    """Accept sequences as LogSequence objects or as sequences of event keys.

    Raises ValueError naming the first item that is neither (or is empty).
    """
    if isinstance(X, (str, bytes)):
        raise ValueError("expected a list of sequences, got a single string")
    out = []
    for i, item in enumerate(X):
        events = getattr(item, "events", item)
        if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
            raise ValueError(
                f"sequence {i} must be a list of event keys, got {type(item).__name__}"
            )
        if len(events) == 0:
            raise ValueError(f"sequence {i} is empty")
        out.append(events)
    return out


class TemplateCounter(TransformerMixin, BaseEstimator):
    """Turn event sequences into sparse template-count vectors with a fitted vocabulary.

    Parameters
    ----------
    scaling : {"none", "log1p", "l1"}
        "none" is the paper's raw counts; "log1p" damps long repetitive traces; "l1" makes each
        row a template distribution, independent of the sequence length.
    ngram : int
        1 (the paper's) counts templates; n > 1 also counts every run of 2..n consecutive
        templates, so the order of events counts too (n-grams of system calls are the
        classic features of host intrusion detection). N-grams unseen in training go to the
        unseen column.
    """

    def __init__(self, scaling: str = "none", ngram: int = 1):
        self.scaling = scaling
        self.ngram = ngram

    def _keys(self, events: Sequence[str]) -> Sequence[str]:
        return events if self.ngram == 1 else ngram_keys(events, self.ngram)

    def fit(self, X: Iterable, y=None) -> TemplateCounter:
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if (
            isinstance(self.ngram, bool)
            or not isinstance(self.ngram, int)
            or not 1 <= self.ngram <= 5
        ):
            raise ValueError(f"ngram must be an integer from 1 to 5, got {self.ngram!r}")
        seqs = as_event_lists(X)
        if not seqs:
            raise ValueError("cannot fit a vocabulary on zero sequences")
        vocab: dict[str, int] = {}
        for events in seqs:
            for ev in self._keys(events):
                if ev not in vocab:
                    vocab[ev] = len(vocab)
        self.vocabulary_ = vocab
        return self

    @property
    def n_features(self) -> int:
        """Vocabulary size plus the unseen-template column."""
        check_is_fitted(self, "vocabulary_")
        return len(self.vocabulary_) + 1

    def transform(self, X: Iterable) -> sp.csr_matrix:
        check_is_fitted(self, "vocabulary_")
        seqs = [self._keys(events) for events in as_event_lists(X)]
        vocab, unseen = self.vocabulary_, len(self.vocabulary_)
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        indptr = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        get = vocab.get
        indices = np.fromiter(
            (get(ev, unseen) for events in seqs for ev in events),
            dtype=np.int32,
            count=int(indptr[-1]),
        )
        data = np.ones(len(indices), dtype=np.float32)
        M = sp.csr_matrix((data, indices, indptr), shape=(len(seqs), unseen + 1))
        M.sum_duplicates()
        if self.scaling == "log1p":
            M.data = np.log1p(M.data)
        elif self.scaling == "l1":
            M = sp.csr_matrix(M.multiply(1.0 / lengths[:, None]), dtype=np.float32)
        return M

    def feature_names(self) -> list[str]:
        check_is_fitted(self, "vocabulary_")
        return [*self.vocabulary_, "<unseen>"]
