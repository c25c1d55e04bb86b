"""``flexlog voters``: the registered voters and the presets of ``--voters``."""

from __future__ import annotations

import argparse

from rich.table import Table

from flexlog.cli.common import out
from flexlog.voters.registry import DEFAULT_RULE


def cmd_voters(args: argparse.Namespace) -> int:
    from flexlog.voters.registry import VOTER_PRESETS, voter_class, voter_names

    table = Table(title="registered voters")
    table.add_column("name")
    table.add_column("class")
    for preset in VOTER_PRESETS:
        table.add_column(f"in '{preset}'", justify="center")
    for name in voter_names():
        try:
            cls = voter_class(name)
            where = f"{cls.__module__}.{cls.__qualname__}"
        except ValueError as exc:
            where = f"[dim]not importable here: {exc}[/dim]"
        marks = ["yes" if name in members else "" for members in VOTER_PRESETS.values()]
        table.add_row(name, where, *marks)
    out.print(table)
    presets = "; ".join(f"{k} = {','.join(v)}" for k, v in VOTER_PRESETS.items())
    out.print(
        f"presets for --voters: {presets} ('default' is what `flexlog train` uses, "
        f"with --rule {DEFAULT_RULE})"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``voters`` command."""
    v = subparsers.add_parser("voters", help="list the registered voters")
    v.set_defaults(func=cmd_voters)
