"""Voters by name. Built-ins are registered as entry points of the group ``flexlog.voters``
(see pyproject.toml); a third-party package adds a voter by declaring one there."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from flexlog.voters.knn import KNNVoter
from flexlog.voters.llm import LLMVoter
from flexlog.voters.slfn import SLFNVoter
from flexlog.voters.tree import DecisionTreeVoter

ENTRY_POINT_GROUP = "flexlog.voters"
_BUILTIN = {"knn": KNNVoter, "dt": DecisionTreeVoter, "slfn": SLFNVoter, "llm": LLMVoter}
DEFAULT_VOTERS = ("knn", "dt", "slfn")


@lru_cache(maxsize=1)
def available_voters() -> dict[str, type]:
    """Every registered voter class by name (built-ins even when not installed as a dist)."""
    found = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = ep.load()
    return found


def voter_class(name: str) -> type:
    voters = available_voters()
    if name not in voters:
        raise ValueError(f"unknown voter {name!r}; available: {', '.join(sorted(voters))}")
    return voters[name]


def make_voter(name: str, **params):
    """A new, unfitted voter of that name; unknown parameters are a ValueError."""
    cls = voter_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"voter {name!r}: {exc}") from exc


def parse_voter_list(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"knn,dt,slfn"`` → ``["knn", "dt", "slfn"]``, checked against the registry."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise ValueError("at least one voter is needed")
    if len(set(names)) != len(names):
        raise ValueError(f"voter listed twice in {names}")
    for n in names:
        voter_class(n)
    return names
