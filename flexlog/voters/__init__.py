"""Detectors that vote: one module per family, registered by name."""

from flexlog.voters.base import BundleFormatError, CountVoter, FeatureMemo
from flexlog.voters.forest import ExtraTreesVoter, RandomForestVoter
from flexlog.voters.knn import KNNVoter
from flexlog.voters.registry import (
    DEFAULT_RULE,
    DEFAULT_VOTERS,
    ML_VOTERS,
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
    "DEFAULT_RULE",
    "DEFAULT_VOTERS",
    "ML_VOTERS",
    "RECOMMENDED_CPU_VOTERS",
    "VOTER_PRESETS",
    "BundleFormatError",
    "CountVoter",
    "DecisionTreeVoter",
    "ExtraTreesVoter",
    "FeatureMemo",
    "KNNVoter",
    "RandomForestVoter",
    "SLFNVoter",
    "available_voters",
    "make_voter",
    "parse_voter_list",
    "voter_class",
]
