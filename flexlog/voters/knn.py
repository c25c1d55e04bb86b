"""k-nearest-neighbours voter; k is chosen by cross-validation on the training data."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier

from flexlog.voters.base import CountVoter


class KNNVoter(CountVoter):
    """KNN on template counts (FlexLog: k tuned by cross-validation; 2 for ADFA, 1 for HDFS).

    Parameters
    ----------
    n_neighbors : int or "cv"
        A fixed k, or "cv" to pick the best of ``candidates`` by F1 in ``cv``-fold
        cross-validation. Folds are grouped by identical sequences, so duplicates from
        sampling with replacement never sit on both sides of a split.
    candidates : tuple of int
    cv : int
    scaling, ngram : see :class:`flexlog.features.TemplateCounter`.
    random_state : int or None
    """

    name = "knn"
    cost = 2.0  # distances to every training vector
    trusted_types = (
        "sklearn.neighbors._classification.KNeighborsClassifier",
        "scipy.sparse._csr.csr_matrix",
    )

    def __init__(
        self,
        n_neighbors: int | str = "cv",
        candidates: tuple[int, ...] = (1, 2, 3, 4, 5, 7, 9),
        cv: int = 5,
        scaling: str = "none",
        ngram: int = 1,
        random_state: int | None = 0,
    ):
        self.n_neighbors = n_neighbors
        self.candidates = candidates
        self.cv = cv
        self.scaling = scaling
        self.ngram = ngram
        self.random_state = random_state

    def _fit_estimator(self, M, y):
        if self.n_neighbors != "cv":
            if not isinstance(self.n_neighbors, int) or self.n_neighbors < 1:
                raise ValueError(
                    f"n_neighbors must be a positive int or 'cv', got {self.n_neighbors!r}"
                )
            self.n_neighbors_ = min(self.n_neighbors, M.shape[0])
            return KNeighborsClassifier(n_neighbors=self.n_neighbors_).fit(M, y)
        if self.cv < 2:
            raise ValueError(f"cv must be at least 2, got {self.cv}")
        if not self.candidates or any(int(k) < 1 for k in self.candidates):
            raise ValueError(f"candidates must be positive ints, got {self.candidates!r}")
        groups = _duplicate_groups(M)
        n_groups_min = min(len(np.unique(groups[y == c])) for c in (0, 1))
        folds = min(self.cv, n_groups_min)
        if folds < 2:
            self.n_neighbors_ = 1
            return KNeighborsClassifier(n_neighbors=1).fit(M, y)
        splitter = StratifiedGroupKFold(
            n_splits=folds, shuffle=True, random_state=self.random_state
        )
        grid = [k for k in self.candidates if k <= M.shape[0] * (folds - 1) // folds]
        search = GridSearchCV(
            KNeighborsClassifier(),
            {"n_neighbors": grid or [1]},
            scoring="f1",
            cv=splitter,
            n_jobs=1,
        )
        search.fit(M, y, groups=groups)
        self.n_neighbors_ = int(search.best_params_["n_neighbors"])
        self.cv_scores_ = {
            int(k): float(s)
            for k, s in zip(grid, search.cv_results_["mean_test_score"], strict=True)
        }
        return search.best_estimator_


def _duplicate_groups(M) -> np.ndarray:
    """Group id per row: identical count vectors share one."""
    rows = [M.getrow(i) for i in range(M.shape[0])]
    keys = {}
    return np.array(
        [keys.setdefault((r.indices.tobytes(), r.data.tobytes()), len(keys)) for r in rows]
    )
