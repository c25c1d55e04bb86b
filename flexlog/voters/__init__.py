"""Detectors that vote: one module per family, registered by name."""

from flexlog.voters.base import BundleFormatError, CountVoter, FeatureMemo
from flexlog.voters.knn import KNNVoter
from flexlog.voters.registry import (
    DEFAULT_VOTERS,
    RECOMMENDED_CPU_VOTERS,
    VOTER_PRESETS,
    available_voters,
    make_voter,
    parse_voter_list,
    voter_class,
)
from flexlog.voters.slfn import SLFNVoter
from flexlog.voters.tree import DecisionTreeVoter

__all__ = [
    "DEFAULT_VOTERS",
    "RECOMMENDED_CPU_VOTERS",
    "VOTER_PRESETS",
    "BundleFormatError",
    "CountVoter",
    "DecisionTreeVoter",
    "FeatureMemo",
    "KNNVoter",
    "SLFNVoter",
    "available_voters",
    "make_voter",
    "parse_voter_list",
    "voter_class",
]
