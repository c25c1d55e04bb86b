"""The ``flexlog`` command line. Command names and flags are a public contract.

Each built-in command lives in its own module with a ``register(subparsers)`` that adds its
parser(s) and sets ``func``, as the commands of other packages do through the
``flexlog.commands`` entry points (e.g. ``flexlog serve``); what several commands share is in
:mod:`flexlog.cli.common`.
"""

from __future__ import annotations

import argparse

from rich.markup import escape

from flexlog import __version__
from flexlog.cli import (
    bench,
    cache,
    dataset,
    evaluate,
    experiment,
    parse,
    report,
    retrain,
    score,
    train,
    voters,
)
from flexlog.cli.common import DATASETS, CliError, err, out
from flexlog.data.records import InputError

__all__ = ["COMMANDS_GROUP", "DATASETS", "CliError", "build_parser", "err", "main", "out"]

#: The built-in commands, registered in this order (the order of ``flexlog --help``).
BUILTIN_COMMANDS = (
    dataset,
    train,
    retrain,
    score,
    evaluate,
    cache,
    voters,
    parse,
    bench,
    report,
    experiment,
)

#: Entry-point group of commands that other packages add, each ``register(subparsers)``.
COMMANDS_GROUP = "flexlog.commands"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="flexlog", description="Anomaly detection on unstable logs (FlexLog method)."
    )
    ap.add_argument("--version", action="version", version=f"flexlog {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in BUILTIN_COMMANDS:
        module.register(sub)
    _add_plugin_commands(sub)
    return ap


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Let installed packages add subcommands (e.g. ``flexlog serve`` from flexlog.serve).

    Each entry point of :data:`COMMANDS_GROUP` names a function ``register(subparsers)`` that
    adds its parsers and sets ``func``; one that shadows a built-in command or fails to load
    is skipped with a warning, so a broken plugin never breaks the built-in commands.
    """
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        if ep.name in sub.choices:
            err.print(f"[yellow]warning:[/] plugin command {ep.name!r} shadows a built-in; skipped")
            continue
        try:
            ep.load()(sub)
        except Exception as exc:  # a third party's bug: report it, keep the CLI usable
            err.print(
                f"[yellow]warning:[/] command {escape(ep.name)!r} from {escape(ep.value)} "
                f"is unavailable: {escape(str(exc))}",
                soft_wrap=True,
            )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, InputError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        err.print(f"[bold red]error:[/] {escape(str(msg))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
