"""Decision-tree voter (FlexLog: scikit-learn defaults, gini, unbounded depth)."""

from __future__ import annotations

from sklearn.tree import DecisionTreeClassifier

from flexlog.voters.base import CountVoter


class DecisionTreeVoter(CountVoter):
    """A decision tree on template counts.

    Parameters mirror :class:`sklearn.tree.DecisionTreeClassifier`; ``scaling`` and ``ngram``
    are those of :class:`flexlog.features.TemplateCounter`.
    """

    name = "dt"
    trusted_types = ("sklearn.tree._classes.DecisionTreeClassifier", "sklearn.tree._tree.Tree")

    def __init__(
        self,
        criterion: str = "gini",
        max_depth: int | None = None,
        min_samples_leaf: int = 1,
        class_weight: str | None = None,
        scaling: str = "none",
        ngram: int = 1,
        random_state: int | None = 0,
    ):
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.class_weight = class_weight
        self.scaling = scaling
        self.ngram = ngram
        self.random_state = random_state

    def _make_estimator(self):
        return DecisionTreeClassifier(
            criterion=self.criterion,
            max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf,
            class_weight=self.class_weight,
            random_state=self.random_state,
        )
