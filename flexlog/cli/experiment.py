"""``flexlog experiment``: a ULAD experiment, the voters and the ensemble over seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexlog.cli.common import DATASETS, CliError, _parse_params, out
from flexlog.vote_rules import RULES


def cmd_experiment(args: argparse.Namespace) -> int:
    from flexlog.experiment import AdfaOptions, run_experiment
    from flexlog.voters.registry import parse_voter_list

    if args.out is None:
        args.out = f"runs/experiment-{args.kind}"

    voters = parse_voter_list(args.voters)
    added = parse_voter_list(args.add) if args.add else []
    if set(added) & set(voters):
        raise CliError(f"--add repeats ensemble voters: {sorted(set(added) & set(voters))}")
    if args.seeds < 1:
        raise CliError(f"--seeds: the number of seeds must be at least 1, got {args.seeds}")
    seeds = list(range(args.seeds))
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    bad = [r for r in rules if r not in RULES]
    if bad or not rules or len(set(rules)) != len(rules):
        raise CliError(
            f"--rules: a list of distinct rules from {', '.join(RULES)}, got {args.rules!r}"
        )
    try:
        run_experiment(
            args.kind,
            seeds=seeds,
            voters=voters,
            added=added,
            rules=rules,
            variants=args.variants.split(",") if args.variants else None,
            params=_parse_params(args.param, [*voters, *added]),
            datasets=Path(args.datasets),
            out_dir=Path(args.out),
            adfa=AdfaOptions(
                test_normal_ratio=None
                if args.test_normal_ratio == "all"
                else float(args.test_normal_ratio),
                per_class=args.per_class,
                dedup=not args.no_dedup,
                normal_train_fraction=args.normal_train_fraction,
            ),
            console=out,
            jobs=args.jobs,
            threads=args.threads,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``experiment`` command."""
    x = subparsers.add_parser("experiment", help="ULAD experiment: voters and ensemble over seeds")
    x.add_argument("kind", choices=("adfa-u", "synhdfs-u", "template-evolution"))
    x.add_argument("--seeds", type=int, default=5, help="how many seeds: 0, 1, ... N-1 (default 5)")
    x.add_argument(
        "--voters", default="ml", help="the ensemble's voters (names or presets; default ml)"
    )
    x.add_argument(
        "--rules",
        default="majority",
        help="comma-separated vote rules, each scored as an ensemble (the first is 'ensemble', "
        "the reference of the Mann-Whitney tests; e.g. majority,weighted,stacked)",
    )
    x.add_argument(
        "--add",
        default="",
        metavar="VOTERS",
        help="voters scored alone and each as an extra member of the ensemble",
    )
    x.add_argument(
        "--variants", default="", help="comma-separated holdouts or ratios (default all)"
    )
    x.add_argument("--param", action="append", default=[], metavar="VOTER.NAME=VALUE")
    x.add_argument(
        "--test-normal-ratio",
        default="all",
        help="adfa-u: 'all' held-out normals test (the paper's protocol, default), or that "
        "many normals per attack (non-paper)",
    )
    x.add_argument(
        "--normal-train-fraction",
        type=float,
        default=0.8,
        help="adfa-u: share of normal traces that train (default 0.8, the paper's)",
    )
    x.add_argument(
        "--per-class",
        type=int,
        default=500,
        help="adfa-u: limited training set per class (default 500: 1,000 samples, the paper's)",
    )
    x.add_argument(
        "--no-dedup",
        action="store_true",
        help="adfa-u: keep test traces that also occur in training (the paper's comparison)",
    )
    x.add_argument("--datasets", default=str(DATASETS))
    x.add_argument("--out", default=None, help="report directory (default runs/experiment-KIND)")
    x.add_argument(
        "--jobs", type=int, default=1, help="(holdout or ratio, seed) runs in parallel processes"
    )
    x.add_argument(
        "--threads", type=int, default=1, help="torch threads per run (small networks: 1 is best)"
    )
    x.set_defaults(func=cmd_experiment)
