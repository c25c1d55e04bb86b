"""Voters by name. Built-ins are registered as entry points of the group ``flexlog.voters``
(see pyproject.toml); a third-party package adds a voter by declaring one there. The neural
sequence voters need torch, so they are imported only when asked for by name."""

from __future__ import annotations

from functools import lru_cache
from importlib import import_module
from importlib.metadata import entry_points

from flexlog.voters.forest import ExtraTreesVoter, RandomForestVoter
from flexlog.voters.knn import KNNVoter
from flexlog.voters.llm import LLMVoter
from flexlog.voters.slfn import SLFNVoter
from flexlog.voters.tree import DecisionTreeVoter

ENTRY_POINT_GROUP = "flexlog.voters"
_BUILTIN = {
    "knn": KNNVoter,
    "dt": DecisionTreeVoter,
    "slfn": SLFNVoter,
    "rf": RandomForestVoter,
    "et": ExtraTreesVoter,
    "llm": LLMVoter,
}
#: The FlexLog paper's ML voters.
ML_VOTERS = ("knn", "dt", "slfn")
#: What ``flexlog train`` uses without ``--voters`` / ``--rule``: the paper's ML voters plus
#: extremely randomized trees, by the paper's majority vote (a 2-2 tie is normal, so three of
#: four must agree). Chosen by the 5-seed ADFA-U and SynHDFS-U figures in the README ("Vote
#: rules and the default"): the best mean and the smallest spread over seeds, and it needs no
#: anomaly rate, so it does not depend on how the training set was drawn.
DEFAULT_VOTERS = ("knn", "dt", "slfn", "et")
DEFAULT_RULE = "majority"
#: The ensemble recommended for CPU-only deployments, chosen by the ADFA-U and SynHDFS-U
#: figures in the README ("Sequence voters"): the only one measured at least as good as the
#: ML voters on both, five voters so that no vote ties.
RECOMMENDED_CPU_VOTERS = ("knn", "dt", "slfn", "auto-blstm", "logms")
#: Names that stand for a list of voters wherever voters are listed (``--voters cpu,llm``).
VOTER_PRESETS = {"default": DEFAULT_VOTERS, "ml": ML_VOTERS, "cpu": RECOMMENDED_CPU_VOTERS}
#: The LSTM/GRU detectors from the literature (torch), as "module:class".
NEURAL_VOTERS = {
    "deeplog": "flexlog.voters.deeplog:DeepLogVoter",
    "logls": "flexlog.voters.logls:LogLSVoter",
    "logms": "flexlog.voters.logms:LogMSVoter",
    "auto-lstm": "flexlog.voters.autoencoder:AutoLSTMVoter",
    "auto-blstm": "flexlog.voters.autoencoder:AutoBLSTMVoter",
    "auto-gru": "flexlog.voters.autoencoder:AutoGRUVoter",
    "lstm": "flexlog.voters.lstm:LSTMVoter",
}


def _load(target: str) -> type:
    module, _, attr = target.partition(":")
    try:
        return getattr(import_module(module), attr)
    except ImportError as exc:
        raise ValueError(f"{target}: cannot be imported ({exc})") from exc


@lru_cache(maxsize=1)
def _registered() -> dict[str, type | str]:
    """Registered voters by name: a class, or "module:class" not imported yet."""
    found: dict[str, type | str] = {**_BUILTIN, **NEURAL_VOTERS}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = ep.value
    return found


def voter_names() -> list[str]:
    """Every registered voter's name, without importing any of them."""
    return sorted(_registered())


def available_voters() -> dict[str, type]:
    """Every registered voter class by name that can be imported here."""
    out = {}
    for name in voter_names():
        try:
            out[name] = voter_class(name)
        except ValueError:
            continue
    return out


def voter_class(name: str) -> type:
    registered = _registered()
    if name not in registered:
        raise ValueError(f"unknown voter {name!r}; available: {', '.join(sorted(registered))}")
    target = registered[name]
    return _load(target) if isinstance(target, str) else target


def make_voter(name: str, **params):
    """A new, unfitted voter of that name; unknown parameters are a ValueError."""
    cls = voter_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"voter {name!r}: {exc}") from exc


def parse_voter_list(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"knn,dt,slfn"`` → ``["knn", "dt", "slfn"]``, checked against the registry; a preset
    name (``ml``, ``cpu``) stands for its voters."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for item in items if item for n in VOTER_PRESETS.get(item, (item,))]
    if not names:
        raise ValueError("at least one voter is needed")
    if len(set(names)) != len(names):
        raise ValueError(f"voter listed twice in {names}")
    for n in names:
        voter_class(n)
    return names
