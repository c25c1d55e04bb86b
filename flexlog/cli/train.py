"""``flexlog train``: a detector trained on labelled sequences, written as a bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from flexlog.cli.common import (
    CliError,
    _evaluate,
    _metrics_table,
    _parse_params,
    _print_report,
    _read_labelled,
    _training_record,
    err,
    out,
)
from flexlog.cli.logs import add_label_options, add_parser_options, add_partition_options
from flexlog.vote_rules import RULES
from flexlog.voters.registry import DEFAULT_RULE


def cmd_train(args: argparse.Namespace) -> int:
    from flexlog.bundle import save_bundle, sha256_file
    from flexlog.data.templates import read_templates
    from flexlog.evidence import EventProfile
    from flexlog.training import check_anomaly_rate, train_detector
    from flexlog.vote_rules import parse_weights
    from flexlog.voters.registry import parse_voter_list

    voters = parse_voter_list(args.voters)
    params = _parse_params(args.param, voters)
    try:
        weights = parse_weights(args.weights) if args.weights else None
    except ValueError as exc:
        raise CliError(f"--weights: {exc}") from exc
    try:
        rate = None if args.anomaly_rate is None else check_anomaly_rate(args.anomaly_rate)
    except ValueError as exc:
        raise CliError(f"--anomaly-rate: {exc}") from exc
    if weights is not None and args.rule != "weighted":
        raise CliError("--weights: only the weighted rule takes weights (--rule weighted)")
    train_path = Path(args.train)
    seqs, report, raw = _read_labelled(train_path, args)
    if report.rejected:
        _print_report(report)
    if not seqs:
        raise CliError(f"{train_path}: no usable training sequences ({report.summary()})")
    if raw is not None:  # raw logs: the bundle keeps the parser, its templates, the windows
        if args.templates:
            raise CliError("--templates is for canonical JSONL; raw logs bring their own")
        templates = raw.parser.templates()
        err.print(
            f"parsed {report.read} lines ({report.rejected} rejected) with the "
            f"{raw.parser.preset.name} format into {len(templates)} templates"
        )
    else:
        templates = read_templates(args.templates) if args.templates else None
    err.print(
        f"training {', '.join(voters)} ({args.rule} vote) on {len(seqs)} sequences "
        f"from {train_path}"
    )
    detector, training = train_detector(
        seqs,
        voters,
        params=params,
        seed=args.seed,
        rule=args.rule,
        anomaly_rate=rate,
        weights=weights,
        templates=templates,
        progress=True,
    )
    if "fallback" in training:
        err.print(f"[yellow]{escape(training['fallback'])}[/]")
    elif "validation" in training:
        err.print(
            f"vote rule {training['rule']} fitted on {training['validation']['scheme']}, for "
            f"an anomaly rate of {training['anomaly_rate']:.3f} "
            f"({training['anomaly_rate_from']})"
        )
    data = {"train": _training_record(train_path, seqs, report)}
    if args.templates:
        data["templates"] = {
            "path": str(args.templates),
            "sha256": sha256_file(Path(args.templates)),
        }
    config = {
        "voters": voters,
        "params": params,
        "seed": args.seed,
        "rule": args.rule,
        "training": training,
    }
    metrics = {}
    if args.eval:
        from flexlog.bundle import Bundle

        trained = Bundle(Path(args.out), detector, {}, templates, raw and raw.parser.to_dict())
        if raw is not None:
            trained.manifest["ingestion"] = {"partitioning": raw.partitioning.to_json()}
        held_out, _, _ = _read_labelled(Path(args.eval), args, bundle=trained)
        metrics = _evaluate(detector, held_out)["scores"]
        # `flexlog retrain` compares old and new bundles on the same held-out set
        data["eval"] = {"path": str(args.eval), "sha256": sha256_file(Path(args.eval))}
    path = save_bundle(
        detector,
        args.out,
        config=config,
        data=data,
        metrics=metrics,
        templates=templates,
        parser_state=raw.parser.to_dict() if raw is not None else None,
        partitioning=raw.partitioning if raw is not None else None,
        event_profile=EventProfile.fit(seqs),
        overwrite=args.force,
    )
    if metrics:
        out.print(_metrics_table(f"held-out metrics ({args.eval})", metrics))
    out.print(f"bundle written to {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` command."""
    t = subparsers.add_parser("train", help="train a detector and write a bundle")
    t.add_argument(
        "--train",
        required=True,
        help="labelled canonical JSONL, or raw logs with --label-field or --labels",
    )
    t.add_argument("--templates", help="EventId,EventTemplate CSV of the events")
    t.add_argument(
        "--voters",
        default="default",
        help="comma-separated voter names or presets (default, ml, cpu: see `flexlog voters`)",
    )
    t.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="VOTER.NAME=VALUE",
        help="voter hyper-parameter",
    )
    t.add_argument(
        "--rule",
        choices=RULES,
        default=DEFAULT_RULE,
        help=f"how votes combine (default {DEFAULT_RULE}); majority is the paper's, weighted and "
        "stacked are fitted on inner validation that holds out one anomaly group at a time",
    )
    t.add_argument(
        "--weights", help="weighted rule: fixed voter weights, e.g. knn=1,dt=0.5 (not fitted)"
    )
    t.add_argument(
        "--anomaly-rate",
        help="share of anomalies expected in deployment, in (0, 1), that weighted and stacked "
        "rules are tuned for (default: the training set's; for a set drawn with replacement, "
        "that of the set it was drawn from, estimated from repeated ids)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--eval", help="labelled JSONL or raw logs to evaluate on and record in the manifest"
    )
    t.add_argument("--out", required=True, help="bundle directory")
    t.add_argument("--force", action="store_true", help="replace an existing bundle")
    add_parser_options(t)
    add_partition_options(t)
    add_label_options(t)
    t.set_defaults(func=cmd_train)
