"""``flexlog report``: tables and plots of the experiment runs (``make report``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexlog.cli.common import CliError, out


def cmd_report(args: argparse.Namespace) -> int:
    from flexlog.report import build_report, update_readme

    runs = Path(args.runs)
    if not runs.is_dir():
        raise CliError(f"{runs}: no such runs directory (run the experiments first)")
    out_dir = Path(args.out)
    (out_dir / "results.md").parent.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(build_report(runs, out_dir), encoding="utf-8")
    if args.readme:
        readme = Path(args.readme)
        try:
            update_readme(readme, build_report(runs, out_dir, readme.parent))
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    out.print(
        f"report written to {args.out}/results.md" + (f" and {args.readme}" if args.readme else "")
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command."""
    rp = subparsers.add_parser(
        "report", help="tables and plots of the experiment runs (make report)"
    )
    rp.add_argument("--runs", default="runs", help="folder of experiment runs (results.json)")
    rp.add_argument("--out", default="docs/results", help="folder for results.md and the plots")
    rp.add_argument("--readme", help="also replace the results between the README's markers")
    rp.set_defaults(func=cmd_report)
