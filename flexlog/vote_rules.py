"""How an ensemble turns its voters' answers into one label, and when it can stop asking.

Three rules, each deciding from the voters that voted (an abstaining voter leaves the count):

* ``majority`` (FlexLog's): anomalous with a strict majority of hard votes; a tie is normal.
* ``weighted``: anomalous when the weighted mean of the voters' scores is above ``threshold``.
* ``stacked``: a logistic combiner over the voters' scores, ``bias + Σ coef·score > 0``; a
  voter that abstains counts with its mean validation score.

A voter's *score* is its ``predict_proba`` of the anomalous class where it has one (the LLM's
is its calibrated log-probability margin) and its 0/1 vote otherwise; its *vote* is
``score > threshold`` with a per-voter threshold (0.5, scikit-learn's ``predict``, unless
fitted). Every rule also says, from the voters asked so far, which sequences the voters not
yet asked can no longer change (:meth:`VoteRule.settled`): the ensemble stops asking there,
and the labels are those of asking every voter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

RULES = ("majority", "weighted", "stacked")
LINKS = ("logit", "identity")
#: Margin kept from a decision boundary before a sequence counts as settled, so summing
#: floating-point scores in another order can never flip a settled label.
_EPS = 1e-9


def _check_weights(weights: Mapping[str, float], what: str) -> dict[str, float]:
    out = {}
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"{what} of voter {name!r} must be a finite number, got {w!r}")
        out[str(name)] = float(w)
    return out


@dataclass
class VoteRule:
    """Base class: per-voter thresholds and the settled test shared by the rules."""

    thresholds: dict[str, float] = field(default_factory=dict)

    name = ""
    #: Whether the rule reads scores (predict_proba) rather than hard votes.
    soft = False

    def __post_init__(self) -> None:
        self.thresholds = _check_weights(self.thresholds, "threshold")

    def vote(self, name: str, scores: np.ndarray) -> np.ndarray:
        """A voter's 0/1 votes from its scores."""
        return (np.asarray(scores, dtype=float) > self.thresholds.get(name, 0.5)).astype(np.int64)

    def needs_scores(self) -> bool:
        """Whether voters must be asked for probabilities (not only votes)."""
        return self.soft or bool(self.thresholds)

    # the rule proper ----------------------------------------------------------------------
    def start(self, n: int) -> dict[str, np.ndarray]:
        """Empty accumulators for ``n`` sequences."""
        raise NotImplementedError

    def add(self, acc: dict[str, np.ndarray], idx: np.ndarray, name: str, scores) -> None:
        """Fold voter ``name``'s scores on sequences ``idx`` into the accumulators."""
        raise NotImplementedError

    def abstain(self, acc: dict[str, np.ndarray], idx: np.ndarray, name: str) -> None:
        """Voter ``name`` could not answer on ``idx`` (default: it leaves the count)."""

    def settled(
        self, acc: dict[str, np.ndarray], remaining: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(settled, label) per sequence: whether no answer of the ``remaining`` voters (any
        score, or abstaining) can change the label, and that label."""
        raise NotImplementedError

    def labels(self, acc: dict[str, np.ndarray]) -> np.ndarray:
        """The labels once every voter was asked."""
        return self.settled(acc, [])[1]

    def combine(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        """The labels from every voter's scores on the same sequences."""
        if not scores:
            raise ValueError("no votes to combine")
        n = len(next(iter(scores.values())))
        acc, idx = self.start(n), np.arange(n)
        for name, column in scores.items():
            self.add(acc, idx, name, column)
        return self.labels(acc)

    def to_json(self) -> dict:
        return {"rule": self.name, "thresholds": dict(self.thresholds)}

    def with_voter(self, name: str) -> VoteRule:
        """This rule with voter ``name`` joining after it was fitted (``make finetune`` adds
        the LLM to a trained bundle): see each rule for the weight it gets."""
        return self


@dataclass
class WeightedRule(VoteRule):
    """Anomalous when ``Σ w·s / Σ w`` over the voters that voted is above ``threshold``
    (strictly, so a tie is normal). Voters missing from ``weights`` weigh ``default_weight``;
    ``soft=False`` combines hard votes instead of scores."""

    weights: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.5
    default_weight: float = 1.0
    soft: bool = True

    name = "weighted"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.weights = _check_weights(self.weights, "weight")
        if any(w < 0 for w in self.weights.values()) or not self.default_weight >= 0:
            raise ValueError("weights must not be negative")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold!r}")

    def weight(self, name: str) -> float:
        return self.weights.get(name, self.default_weight)

    def start(self, n: int) -> dict[str, np.ndarray]:
        return {"s": np.zeros(n), "w": np.zeros(n)}

    def add(self, acc, idx, name, scores) -> None:
        s = np.asarray(scores, dtype=float)
        if not self.soft:
            s = self.vote(name, s).astype(float)
        w = self.weight(name)
        acc["s"][idx] += w * s
        acc["w"][idx] += w

    def settled(self, acc, remaining):
        s, w = acc["s"], acc["w"]
        r = sum(self.weight(n) for n in remaining)
        theta = self.threshold
        if not remaining:
            return np.ones(len(s), dtype=bool), (s > theta * w + _EPS * (w > 0)).astype(np.int64)
        anomalous = s > theta * (w + r) + _EPS
        normal = s + r <= theta * (w + r) - _EPS
        return anomalous | normal, anomalous.astype(np.int64)

    def with_voter(self, name: str) -> WeightedRule:
        """A voter that joins later weighs ``default_weight`` (the median fitted weight)."""
        return self

    def to_json(self) -> dict:
        return {
            **super().to_json(),
            "weights": dict(self.weights),
            "threshold": self.threshold,
            "default_weight": self.default_weight,
            "soft": self.soft,
        }


@dataclass
class MajorityRule(WeightedRule):
    """FlexLog's rule: anomalous with a strict majority of the votes; a tie is normal. It is
    the weighted rule over hard votes with equal weights and threshold 1/2."""

    name = "majority"

    def __post_init__(self) -> None:
        self.weights, self.threshold, self.default_weight, self.soft = {}, 0.5, 1.0, False
        super().__post_init__()

    def settled(self, acc, remaining):
        # integer vote counts: exact, no floating-point margin needed
        a, n, r = acc["s"], acc["w"], len(remaining)
        anomalous = 2 * a > n + r
        if not remaining:
            return np.ones(len(a), dtype=bool), anomalous.astype(np.int64)
        return anomalous | (2 * (a + r) <= n + r), anomalous.astype(np.int64)

    def to_json(self) -> dict:
        return {"rule": self.name, "thresholds": dict(self.thresholds)}


@dataclass
class StackedRule(VoteRule):
    """A logistic combiner: anomalous when ``bias + Σ coef·link(score) > 0``.

    ``link`` "logit" (the default) combines the voters' log-odds, ``log((s + ε) / (1 + ε - s))``
    with ``ε = smoothing``, so a sure voter (0 or 1) counts as much as ±log((1 + ε) / ε) and no
    more; "identity" combines the scores as they are. A voter with no coefficient does not
    count; one that abstains counts with its ``fill`` (its mean validation score).
    """

    coef: dict[str, float] = field(default_factory=dict)
    bias: float = 0.0
    fill: dict[str, float] = field(default_factory=dict)
    link: str = "logit"
    smoothing: float = 0.02

    name = "stacked"
    soft = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.coef = _check_weights(self.coef, "coefficient")
        self.fill = _check_weights(self.fill, "fill")
        if isinstance(self.bias, bool) or not math.isfinite(self.bias):
            raise ValueError(f"bias must be a finite number, got {self.bias!r}")
        if not self.coef:
            raise ValueError("a stacked rule needs at least one coefficient")
        if self.link not in LINKS:
            raise ValueError(f"link must be one of {', '.join(LINKS)}, got {self.link!r}")
        if isinstance(self.smoothing, bool) or not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing!r}")

    def transform(self, scores) -> np.ndarray:
        """Scores in [0, 1] through the link."""
        s = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
        if self.link == "identity":
            return s
        eps = self.smoothing
        return np.log((s + eps) / (1.0 + eps - s))

    def _span(self) -> tuple[float, float]:
        """The range of a transformed score."""
        low, high = self.transform([0.0, 1.0])
        return float(low), float(high)

    def start(self, n: int) -> dict[str, np.ndarray]:
        return {"z": np.full(n, float(self.bias))}

    def add(self, acc, idx, name, scores) -> None:
        acc["z"][idx] += self.coef.get(name, 0.0) * self.transform(scores)

    def abstain(self, acc, idx, name) -> None:
        acc["z"][idx] += self.coef.get(name, 0.0) * self.transform(self.fill.get(name, 0.5))

    def settled(self, acc, remaining):
        z = acc["z"]
        if not remaining:
            return np.ones(len(z), dtype=bool), (z > 0).astype(np.int64)
        lo, hi = self._span()
        coefs = [self.coef.get(n, 0.0) for n in remaining]
        low = z + sum(min(c * lo, c * hi) for c in coefs)
        high = z + sum(max(c * lo, c * hi) for c in coefs)
        anomalous = low > _EPS
        return anomalous | (high <= -_EPS), anomalous.astype(np.int64)

    def with_voter(self, name: str) -> StackedRule:
        """A voter that joins later gets the median positive coefficient, centred so that a
        score of 0.5 leaves every decision as it was (``bias`` moves by ``-coef·link(0.5)``,
        which is 0 for the logit link)."""
        if name in self.coef:
            return self
        positive = [c for c in self.coef.values() if c > 0] or [1.0]
        c = float(np.median(positive))
        return StackedRule(
            thresholds=dict(self.thresholds),
            coef={**self.coef, name: c},
            bias=self.bias - c * float(self.transform(0.5)),
            fill={**self.fill, name: 0.5},
            link=self.link,
            smoothing=self.smoothing,
        )

    def to_json(self) -> dict:
        return {
            **super().to_json(),
            "coef": dict(self.coef),
            "bias": self.bias,
            "fill": dict(self.fill),
            "link": self.link,
            "smoothing": self.smoothing,
        }


def rule_from_json(spec: object) -> VoteRule:
    """A rule from its JSON form (a bundle manifest); ValueError names what is wrong."""
    if spec is None:
        return MajorityRule()
    if isinstance(spec, str):
        spec = {"rule": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"vote rule must be an object, got {type(spec).__name__}")
    kind = spec.get("rule")
    kw = {k: v for k, v in spec.items() if k != "rule"}
    try:
        if kind == "majority":
            return MajorityRule(thresholds=kw.get("thresholds", {}))
        if kind == "weighted":
            return WeightedRule(**kw)
        if kind == "stacked":
            return StackedRule(**kw)
    except TypeError as exc:
        raise ValueError(f"vote rule {kind!r}: {exc}") from exc
    raise ValueError(f"vote rule must be one of {', '.join(RULES)}, got {kind!r}")


def parse_weights(text: str) -> dict[str, float]:
    """``"knn=1,dt=0.5,llm=2"`` → weights; ValueError naming the item that does not parse."""
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not name.strip() or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight {item!r} must be VOTER=NUMBER with a non-negative number")
        out[name.strip()] = weight
    if not out:
        raise ValueError(f"no weights in {text!r}")
    return out


__all__ = [
    "RULES",
    "MajorityRule",
    "StackedRule",
    "VoteRule",
    "WeightedRule",
    "parse_weights",
    "rule_from_json",
]
