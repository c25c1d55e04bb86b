"""``flexlog dataset build``: ULAD configurations as JSONL files."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from flexlog.cli.common import DATASETS, CliError, _print_report, out
from flexlog.data.records import IngestReport


def _default_source(*parts: str) -> Path:
    return DATASETS.joinpath(*parts)


def cmd_dataset_build(args: argparse.Namespace) -> int:
    from flexlog.data import ulad
    from flexlog.data.adfa import load_adfa
    from flexlog.data.hdfs import load_hdfs_sessions
    from flexlog.data.templates import read_templates

    if args.kind == "adfa-u":
        if not args.holdout:
            raise CliError("adfa-u needs --holdout")
        corpus = load_adfa(args.source or _default_source("adfa-ld"))
        if corpus.report.rejected:
            _print_report(corpus.report)
        ratio = None if args.test_normal_ratio == "all" else float(args.test_normal_ratio)
        ds = ulad.build_adfa_u(
            corpus,
            args.holdout,
            seed=args.seed,
            normal_train_fraction=args.normal_train_fraction,
            test_normal_ratio=ratio,
            per_class=args.per_class,
        )
    else:
        if args.ratio is None:
            raise CliError(f"{args.kind} needs --ratio")
        src = Path(args.source or _default_source("hdfs"))
        report = IngestReport()
        normal = load_hdfs_sessions(src / "hdfs_train", 0, report)
        abnormal = load_hdfs_sessions(src / "hdfs_test_abnormal", 1, report)
        templates = read_templates(src / "HDFS_templates.csv")
        if report.rejected:
            _print_report(report)
        kw = dict(
            seed=args.seed,
            train_fraction=args.train_fraction,
            anomaly_rate=args.anomaly_rate,
            normal_fraction=args.normal_fraction,
        )
        if args.kind == "synhdfs-u":
            ds = ulad.build_synhdfs_u(normal, abnormal, args.ratio, templates=templates, **kw)
        else:
            ds = ulad.build_template_evolution(normal, abnormal, templates, args.ratio, **kw)
    paths = ds.write(args.out)
    info = ds.info
    table = Table(title=f"{ds.name} (seed {args.seed})")
    for col in ("split", "normal", "anomalous", "total"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split in ("train", "limited_train", "test"):
        c = info[split]
        table.add_row(split, str(c["normal"]), str(c["anomalous"]), str(c["total"]))
    out.print(table)
    out.print(
        f"duplication ratio (test sequences also in train, removed): {info['duplication_ratio']:.3f}"
    )
    if isinstance(info.get("protocol"), str):
        out.print(f"protocol: {info['protocol']}")
    out.print(f"written to {Path(args.out)}: " + ", ".join(p.name for p in paths.values()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dataset`` command and its ``build`` action."""
    ds = subparsers.add_parser("dataset", help="build ULAD datasets").add_subparsers(
        dest="dataset_command", required=True, metavar="ACTION"
    )
    b = ds.add_parser("build", help="build a ULAD configuration as JSONL files")
    b.add_argument("kind", choices=("adfa-u", "synhdfs-u", "template-evolution"))
    b.add_argument("--holdout", choices=("adduser", "hydraFTP", "hydraSSH", "java", "meter", "web"))
    b.add_argument(
        "--ratio",
        type=float,
        help="share of test sequences changed (synhdfs-u, template-evolution)",
    )
    b.add_argument(
        "--source", help="dataset directory (default: ../shared/datasets/{adfa-ld,hdfs})"
    )
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--normal-train-fraction",
        type=float,
        default=0.8,
        help="adfa-u: share of normal traces that train (default 0.8, the paper's)",
    )
    b.add_argument(
        "--test-normal-ratio",
        default="all",
        help="adfa-u: 'all' remaining normal traces test (default, the paper's), or that many "
        "test normals per held-out attack trace (e.g. 1.0: balanced; not the paper's protocol)",
    )
    b.add_argument(
        "--per-class", type=int, default=500, help="adfa-u limited set: samples per class"
    )
    b.add_argument(
        "--train-fraction", type=float, default=0.5, help="hdfs: normal sessions to train"
    )
    b.add_argument(
        "--anomaly-rate", type=float, default=0.1, help="hdfs: anomalous share of each split"
    )
    b.add_argument(
        "--normal-fraction",
        type=float,
        default=0.2,
        help="hdfs limited set: share of unique normals",
    )
    b.set_defaults(func=cmd_dataset_build)
