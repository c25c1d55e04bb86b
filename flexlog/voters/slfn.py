"""Single-layer feed-forward network voter (FlexLog: one hidden layer of 100, relu, adam)."""

from __future__ import annotations

import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler

from flexlog.voters.base import CountVoter


class SLFNVoter(CountVoter):
    """An MLP with one hidden layer on template counts.

    ``standardize`` scales each count column by its maximum on the training data (sparse-safe),
    which adam needs to converge on raw counts in the thousands; it does not change what the
    network can represent. ``scaling`` and ``ngram``: see
    :class:`flexlog.features.TemplateCounter`.
    """

    name = "slfn"
    trusted_types = (
        "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.MaxAbsScaler",
        "sklearn.preprocessing._label.LabelBinarizer",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    )

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (100,),
        activation: str = "relu",
        solver: str = "adam",
        max_iter: int = 200,
        standardize: bool = True,
        scaling: str = "none",
        ngram: int = 1,
        random_state: int | None = 0,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.max_iter = max_iter
        self.standardize = standardize
        self.scaling = scaling
        self.ngram = ngram
        self.random_state = random_state

    def _make_estimator(self):
        mlp = MLPClassifier(
            hidden_layer_sizes=tuple(self.hidden_layer_sizes),
            activation=self.activation,
            solver=self.solver,
            max_iter=self.max_iter,
            random_state=self.random_state,
        )
        return make_pipeline(MaxAbsScaler(), mlp) if self.standardize else mlp

    def _fit_estimator(self, M, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return self._make_estimator().fit(M, y)
