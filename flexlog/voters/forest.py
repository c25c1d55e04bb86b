"""Tree-ensemble voters: a random forest and extremely randomized trees on template counts.

Not in the FlexLog paper. A single decision tree (the paper's ``dt``) memorizes the attack
types it was trained on; averaging many randomized trees gives probabilities that rank an
unseen kind of anomaly between normal and known-anomalous, which the weighted and stacked vote
rules use.
"""

from __future__ import annotations

from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from flexlog.voters.base import CountVoter

_TREE_TYPES = ("sklearn.tree._classes.DecisionTreeClassifier", "sklearn.tree._tree.Tree")


class _ForestVoter(CountVoter):
    """Parameters mirror scikit-learn's forests; ``scaling`` and ``ngram`` are those of
    :class:`flexlog.features.TemplateCounter`. One job: on a shared CPU, parallel trees wait
    on each other."""

    forest: type

    def __init__(
        self,
        n_estimators: int = 300,
        max_features: str | float | None = "sqrt",
        min_samples_leaf: int = 1,
        class_weight: str | None = None,
        scaling: str = "none",
        ngram: int = 1,
        random_state: int | None = 0,
    ):
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.class_weight = class_weight
        self.scaling = scaling
        self.ngram = ngram
        self.random_state = random_state

    def _make_estimator(self):
        if isinstance(self.n_estimators, bool) or not isinstance(self.n_estimators, int):
            raise ValueError(f"n_estimators must be a positive integer, got {self.n_estimators!r}")
        if self.n_estimators < 1:
            raise ValueError(f"n_estimators must be a positive integer, got {self.n_estimators!r}")
        return self.forest(
            n_estimators=self.n_estimators,
            max_features=self.max_features,
            min_samples_leaf=self.min_samples_leaf,
            class_weight=self.class_weight,
            random_state=self.random_state,
            n_jobs=1,
        )


class RandomForestVoter(_ForestVoter):
    """A random forest (bootstrap samples, best split among random features)."""

    name = "rf"
    cost = 3.0
    forest = RandomForestClassifier
    trusted_types = ("sklearn.ensemble._forest.RandomForestClassifier", *_TREE_TYPES)


class ExtraTreesVoter(_ForestVoter):
    """Extremely randomized trees (random split points on the whole training set)."""

    name = "et"
    cost = 3.0
    forest = ExtraTreesClassifier
    trusted_types = ("sklearn.ensemble._forest.ExtraTreesClassifier", *_TREE_TYPES)
