"""``flexlog cache``: inspect the sequence cache, correct an entry, see and undo corrections."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from flexlog.cli.common import CliError, out


def _cache_target(args: argparse.Namespace):
    from flexlog.cache import SequenceCache

    if args.cache:
        return SequenceCache(args.cache)
    if args.bundle:
        bundle = Path(args.bundle)
        if not (bundle / "manifest.json").is_file():  # a typo must not create a directory
            raise CliError(f"{bundle}: not a flexlog bundle (no manifest.json)")
        return SequenceCache(bundle / "cache.sqlite")
    raise CliError("give --bundle or --cache")


def _cache_key(args: argparse.Namespace):
    if sum(bool(x) for x in (args.events, args.key, args.target)) != 1:
        raise CliError("give exactly one of --events or --key (or the KEY argument)")
    if args.events:
        events = tuple(args.events.replace(",", " ").split())
        if not events:
            raise CliError("--events is empty")
        return events
    return args.key or args.target


def _cli_actor() -> str:
    """Who corrects the cache from this command line: ``cli:<login name>``, else ``cli``."""
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # no USER/LOGNAME and no password entry
        return "cli"
    user = user.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return f"cli:{user}"[:200] if user.strip() else "cli"


def _cache_label(label: int | None, source: str | None) -> str:
    if label is None:
        return "-"
    return f"{('normal', 'anomalous')[label]} ({source})"


def _print_history(key: str, corrections: list, as_json: bool) -> None:
    from datetime import datetime, timezone

    if as_json:
        print(json.dumps([c.to_dict() for c in corrections]))
        return
    if not corrections:
        out.print(f"no corrections recorded for {key}")
        return
    table = Table(title=f"corrections of {key}")
    for name in ("id", "time (UTC)", "actor", "action", "previous", "new", "comment"):
        table.add_column(name, justify="right" if name == "id" else "left")
    for c in corrections:
        when = datetime.fromtimestamp(c.time, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        action = f"undo #{c.undoes}" if c.action == "undo" else c.action
        table.add_row(
            str(c.id),
            when,
            escape(c.actor),
            action,
            _cache_label(c.previous_label, c.previous_source),
            _cache_label(c.new_label, c.new_source),
            escape(c.comment or ""),
        )
    out.print(table)


def cmd_cache(args: argparse.Namespace) -> int:
    from flexlog.cache import CacheError

    try:
        return _cache_action(args)
    except CacheError as exc:  # locked or read-only database: one line, not a traceback
        raise CliError(str(exc)) from exc


def _cache_action(args: argparse.Namespace) -> int:
    from flexlog.data.records import parse_label

    if args.action == "stats" and args.target:
        raise CliError("cache stats takes no KEY")
    with _cache_target(args) as cache:
        if args.action == "stats":
            stats = cache.stats()
            if args.json:
                print(json.dumps(stats))
            else:
                table = Table(title="sequence cache")
                table.add_column("statistic")
                table.add_column("value", justify="right")
                for k, v in stats.items():
                    table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
                out.print(table)
        elif args.action == "update":
            if args.label is None:
                raise CliError("cache update needs --label normal|anomalous")
            try:
                label = parse_label(args.label)
            except ValueError as exc:
                raise CliError(str(exc)) from exc
            try:
                entry = cache.update(
                    _cache_key(args), label, actor=_cli_actor(), comment=args.comment
                )
            except KeyError as exc:
                raise CliError(exc.args[0] if exc.args else "no such cache entry") from exc
            out.print(f"label of {entry.key} set to {('normal', 'anomalous')[entry.label]} (human)")
        elif args.action == "delete":
            key = _cache_key(args)
            if cache.delete(key, actor=_cli_actor(), comment=args.comment):
                out.print("deleted")
            else:
                raise CliError("no such cache entry")
        elif args.action == "history":
            key = _cache_key(args)
            corrections = cache.history(key)
            _print_history(corrections[0].key if corrections else str(key), corrections, args.json)
        elif args.action == "undo":
            key = _cache_key(args)
            try:
                entry = cache.undo(key, actor=_cli_actor(), comment=args.comment)
            except KeyError as exc:
                raise CliError(exc.args[0] if exc.args else "nothing to undo") from exc
            undo = cache.history(key)[-1]
            now = "no entry" if entry is None else _cache_label(entry.label, entry.source)
            if args.json:
                print(json.dumps(undo.to_dict()))
            else:
                out.print(f"undid correction #{undo.undoes} of {undo.key}: now {now}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``cache`` command."""
    c = subparsers.add_parser(
        "cache",
        help="inspect or correct the sequence cache",
        description="stats; update or delete an entry (a human correction, recorded); "
        "history of an entry's corrections; undo its latest correction not undone yet",
    )
    c.add_argument("action", choices=("stats", "update", "delete", "history", "undo"))
    c.add_argument(
        "target",
        nargs="?",
        metavar="KEY",
        help="the entry's hex key, right after the action (or --key KEY anywhere)",
    )
    c.add_argument("--bundle", help="use BUNDLE/cache.sqlite")
    c.add_argument("--cache", help="cache database: a path or a postgresql:// URL")
    c.add_argument("--events", help="the sequence, space- or comma-separated event keys")
    c.add_argument("--key", help="the entry's hex key")
    c.add_argument("--label", help="normal or anomalous (update)")
    c.add_argument("--comment", help="why (update, delete, undo); kept in the history")
    c.add_argument("--json", action="store_true", help="JSON output (stats, history, undo)")
    c.set_defaults(func=cmd_cache)
