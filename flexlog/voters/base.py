"""The voter protocol and the base class of the count-vector ML voters.

A voter is a scikit-learn classifier over log sequences: ``fit(sequences, y)``,
``predict(sequences)`` → 0/1 array (1 = anomalous), optional ``predict_proba``;
hyper-parameters are constructor arguments. A voter that can be saved in a bundle also
implements ``save_state(directory)`` and the class method ``load_state(directory, params)``,
writing only formats that execute no code when loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import skops.io as sio
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from flexlog.features import TemplateCounter, as_event_lists


class BundleFormatError(ValueError):
    """A saved voter or bundle that is missing, corrupt or not trusted."""


def _estimator_types(estimator) -> set[str]:
    """Qualified class names of an estimator and, for a pipeline, of its steps. skops trusts
    many scikit-learn types by default; this pins a loaded voter to the ones it is built of."""
    names = {f"{type(estimator).__module__}.{type(estimator).__qualname__}"}
    for _, step in getattr(estimator, "steps", []):
        names |= _estimator_types(step)
    return names


class FeatureMemo(list):
    """A batch of sequences that remembers its count matrices, so voters sharing a vocabulary
    featurize it once. Behaves as the plain list of sequences it wraps."""

    def __init__(self, sequences):
        super().__init__(sequences)
        self.memo: dict = {}


def check_labels(y, n: int) -> np.ndarray:
    """Validate binary labels: length ``n``, values in {0, 1}, both classes present."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y must be a 1-D array of {n} labels, got shape {y.shape}")
    if len(y) and not np.isin(y, (0, 1)).all():
        raise ValueError("y must contain only 0 (normal) and 1 (anomalous)")
    y = y.astype(np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError("training needs both normal (0) and anomalous (1) sequences")
    return y


class CountVoter(ClassifierMixin, BaseEstimator):
    """Base class: a scikit-learn classifier on template-count vectors.

    Subclasses set ``name``, implement ``_make_estimator()`` and list in
    ``trusted_types`` the classes their fitted estimator is made of (checked on load).
    """

    name: ClassVar[str] = ""
    #: Rough relative cost per sequence (microseconds per sequence): ensembles ask cheap voters first.
    cost: ClassVar[float] = 1.0
    trusted_types: ClassVar[tuple[str, ...]] = ()

    def _make_estimator(self):
        raise NotImplementedError

    def known_events(self) -> frozenset[str]:
        """The event keys seen in training (evidence: any other event is unseen)."""
        check_is_fitted(self, "counter_")
        return frozenset(self.counter_.vocabulary_)

    def _counts(self, X):
        seqs = X if isinstance(X, FeatureMemo) else as_event_lists(X)
        if isinstance(X, FeatureMemo):
            fingerprint = (
                self.counter_.scaling,
                self.counter_.ngram,
                tuple(self.counter_.vocabulary_),
            )
            if fingerprint not in X.memo:
                X.memo[fingerprint] = self.counter_.transform(seqs)
            return X.memo[fingerprint]
        return self.counter_.transform(seqs)

    def fit(self, X, y) -> CountVoter:
        seqs = as_event_lists(X)
        y = check_labels(y, len(seqs))
        self.counter_ = TemplateCounter(
            scaling=getattr(self, "scaling", "none"), ngram=getattr(self, "ngram", 1)
        ).fit(seqs)
        self.estimator_ = self._fit_estimator(self.counter_.transform(seqs), y)
        self.classes_ = np.array([0, 1])
        return self

    def _fit_estimator(self, M, y):
        return self._make_estimator().fit(M, y)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        if len(X) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.estimator_.predict(self._counts(X)), dtype=np.int64)

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        if len(X) == 0:
            return np.zeros((0, 2))
        return self.estimator_.predict_proba(self._counts(X))

    # -- persistence: vocabulary as JSON, estimator as skops, params as JSON --------------
    def save_state(self, directory: Path) -> list[str]:
        check_is_fitted(self, "estimator_")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocabulary.json").write_text(json.dumps(self.counter_.vocabulary_))
        sio.dump(self.estimator_, directory / "estimator.skops")
        return ["vocabulary.json", "estimator.skops"]

    @classmethod
    def load_state(cls, directory: Path, params: dict) -> CountVoter:
        voter = cls(**params)
        path = directory / "estimator.skops"
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as exc:  # skops raises several types on a corrupt archive
            raise BundleFormatError(f"{path}: not a readable skops file ({exc})") from exc
        refused = sorted(set(untrusted) - set(cls.trusted_types))
        if refused:
            raise BundleFormatError(f"{path}: refusing untrusted types {refused}")
        try:
            voter.estimator_ = sio.load(path, trusted=untrusted)
            vocab = json.loads((directory / "vocabulary.json").read_text())
        except Exception as exc:
            raise BundleFormatError(f"{directory}: cannot load voter state ({exc})") from exc
        built = _estimator_types(voter.estimator_)
        if not built <= set(cls.trusted_types):
            raise BundleFormatError(
                f"{path}: estimator of types {sorted(built - set(cls.trusted_types))} "
                f"is not what a {cls.__name__} is made of"
            )
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise BundleFormatError(f"{directory}/vocabulary.json: not a key → column mapping")
        voter.counter_ = TemplateCounter(
            scaling=params.get("scaling", "none"), ngram=params.get("ngram", 1)
        )
        voter.counter_.vocabulary_ = vocab
        voter.classes_ = np.array([0, 1])
        return voter
