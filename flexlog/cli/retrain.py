"""``flexlog retrain``: a new bundle trained on a bundle's training data and the human
corrections of its cache, compared with the old one on held-out data (see
:mod:`flexlog.retrain`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from flexlog.cli.common import (
    CliError,
    _evaluate,
    _metrics_table,
    _print_report,
    _read_labelled,
    _training_record,
    err,
    out,
)
from flexlog.cli.logs import add_label_options
from flexlog.retrain import DEFAULT_REPEAT

#: Where to correct labels, for the message when there is nothing to learn from.
HOW_TO_CORRECT = "correct labels with `flexlog cache update` or PUT /v1/cache/{key} first"
#: Who the corrections carried over into the new bundle's cache are recorded as made by.
ACTOR = "retrain"
#: The raw-log format options retrain does not take: data are read the bundle's way (its
#: parser and partitioning); only the labels of raw logs are asked for.
_BUNDLE_FORMAT = dict.fromkeys(
    (
        "format",
        "preset",
        "preset_file",
        "log_format",
        "sim_th",
        "depth",
        "unmatched",
        "partition",
        "session_pattern",
        "window",
        "step",
        "time_fields",
        "time_format",
    )
)


def _recorded(given: str | None, manifest: dict, bundle: Path, part: str, option: str) -> Path:
    """The file given with ``option``, else the one B's manifest records as ``data.<part>``,
    which must still be the file B was trained or evaluated with (same sha256)."""
    from flexlog.bundle import sha256_file

    if given:
        return Path(given)
    what = {"train": "training data", "eval": "held-out set"}[part]
    recorded = (manifest.get("data") or {}).get(part)
    if not isinstance(recorded, dict) or not recorded.get("path"):
        raise CliError(f"{bundle}: its manifest records no {what} (data.{part}); pass {option}")
    path = Path(recorded["path"])
    if not path.is_file():
        raise CliError(
            f"{path}: {what} of {bundle} (recorded in its manifest) is missing; pass {option}"
        )
    if sha256_file(path) != recorded.get("sha256"):
        raise CliError(
            f"{path}: {what} of {bundle} has changed since (its sha256 no longer matches the "
            f"manifest's); pass {option} to use it as it is now, or the original file"
        )
    return path


def _corrections(location: str | Path):
    """The human-corrected entries of the cache at ``location`` and its description (the
    server without password), read without writing anything there."""
    from flexlog.cache import CacheError, SequenceCache
    from flexlog.cache.postgres import is_postgres_url

    if not is_postgres_url(location) and not Path(location).is_file():
        raise CliError(f"no human corrections in {location} (no such cache); {HOW_TO_CORRECT}")
    try:
        with SequenceCache(location, read_only=True) as cache:
            entries = cache.corrected()
            history = {e.key: [c.to_dict() for c in cache.history(e.key)] for e in entries}
            where = cache.location
    except CacheError as exc:
        raise CliError(str(exc)) from exc
    if not entries:
        raise CliError(f"no human corrections in {where}; {HOW_TO_CORRECT}")
    return entries, history, where


def _carry_over(path: Path, entries: list, bundle: Path) -> None:
    """A fresh cache at ``path`` holding the human entries only (the old model's answers
    would not be the new model's), each recorded as carried over from ``bundle``."""
    from flexlog.cache import CacheError, SequenceCache

    comment = f"human correction carried over by flexlog retrain from {bundle}"[:1000]
    try:
        with SequenceCache(path) as cache:
            for entry in entries:
                cache.update(entry.events, entry.label, actor=ACTOR, comment=comment)
    except CacheError as exc:
        raise CliError(f"{path}: the bundle is written but not its cache ({exc})") from exc


def _retrain_record(source: Path, where: str, history: dict, merge, evaluation: dict) -> dict:
    """The manifest's ``data.retrain``: where the bundle came from, the corrections it
    learnt (labels, history, how they merged), their weight, and the comparison."""
    from flexlog.bundle import MANIFEST, sha256_file

    keys = merge.keys
    return {
        "from": {"path": str(source), "manifest_sha256": sha256_file(source / MANIFEST)},
        "corrections": {
            "cache": str(where),
            "count": len(keys),
            "keys": keys,
            "labels": {key: s.label for key, s in zip(keys, merge.corrections, strict=True)},
            "history": {key: history[key] for key in keys},
            "training_matches": merge.matched,
            "overridden_training_labels": merge.overridden,
            "unknown_events": merge.unknown_events,
            "skipped": merge.skipped,
        },
        "repeat": merge.repeat,
        "evaluation": evaluation,
    }


def _print_comparison(evaluation: dict, source: Path, target: Path) -> None:
    """Old against new on the held-out set, and which is better by F1."""
    old, new = evaluation["old"], evaluation["new"]
    title = (
        f"held-out metrics ({evaluation['path']}, {evaluation['sequences']} sequences; "
        f"{evaluation['excluded_corrected']} corrected excluded)"
    )
    rows = {escape(f"old ({source})"): old, escape(f"new ({target})"): new}
    out.print(_metrics_table(escape(title), rows))
    verdict = evaluation["better"]
    said = "no change in F1" if verdict == "no change" else f"{verdict} is better by F1"
    out.print(f"{said} ({old['f1']:.3f} → {new['f1']:.3f})")


def cmd_retrain(args: argparse.Namespace) -> int:
    from flexlog.bundle import load_bundle, save_bundle, sha256_file
    from flexlog.cache.postgres import is_postgres_url
    from flexlog.evidence import EventProfile
    from flexlog.retrain import better, merge_corrections, retrain_detector, without_keys

    source, target = Path(args.bundle), Path(args.out)
    if args.repeat < 1:
        raise CliError(f"--repeat must be at least 1, got {args.repeat}")
    if target.resolve() == source.resolve():
        raise CliError(
            f"{target}: --out is --bundle; retrain writes a new bundle and never modifies the "
            "one it retrains"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not args.force:
        raise CliError(f"{target}: directory is not empty (use --force to replace)")
    old = load_bundle(source)
    manifest = old.manifest
    train_path = _recorded(args.data, manifest, source, "train", "--data")
    eval_path = _recorded(args.eval, manifest, source, "eval", "--eval")
    location = args.cache or source / "cache.sqlite"
    entries, history, where = _corrections(location)
    err.print(f"read {len(entries)} human corrections from {escape(str(where))}")

    seqs, report, _ = _read_labelled(train_path, args, bundle=old)
    if report.rejected:
        _print_report(report)
    if not seqs:
        raise CliError(f"{train_path}: no usable training sequences ({report.summary()})")
    merge = merge_corrections(seqs, entries, repeat=args.repeat)
    for key, why in merge.skipped.items():
        err.print(f"[yellow]skipped[/] correction {key}: {escape(why)}", soft_wrap=True)
    if not merge.corrections:
        raise CliError(
            f"none of the {len(entries)} human corrections in {where} can be used: the events "
            f"of each are all unknown to {source} (none occur in {train_path})"
        )
    err.print(
        f"{len(merge.corrections)} corrections ×{merge.repeat} added to {len(seqs)} training "
        f"sequences ({len(merge.unknown_events)} with events unseen in training); "
        f"{merge.overridden} training labels overridden"
    )
    held_out, eval_report, _ = _read_labelled(eval_path, args, bundle=old)
    kept, excluded = without_keys(held_out, merge.keys)
    if not kept:
        raise CliError(f"{eval_path}: no held-out sequences left once the corrected are excluded")

    config = manifest["config"]
    err.print(
        f"training {', '.join(config['voters'])} ({config.get('rule', 'majority')} vote) on "
        f"{len(merge.sequences)} sequences, as {escape(str(source))} was trained"
    )
    try:
        detector, training = retrain_detector(
            manifest, merge, templates=old.templates, progress=True
        )
    except ValueError as exc:
        raise CliError(f"{source}: {exc}") from exc
    if "fallback" in training:
        err.print(f"[yellow]{escape(training['fallback'])}[/]")
    scores = {"old": _evaluate(old.detector, kept)["scores"]}
    scores["new"] = _evaluate(detector, kept)["scores"]
    evaluation = {
        "path": str(eval_path),
        "sequences": len(kept),
        "excluded_corrected": excluded,
        "rejected": eval_report.rejected,
        "old": scores["old"]["ensemble"],
        "new": scores["new"]["ensemble"],
        "better": better(scores["old"]["ensemble"], scores["new"]["ensemble"]),
    }
    data = {
        **(manifest.get("data") or {}),
        "train": _training_record(train_path, seqs, report),
        "eval": {"path": str(eval_path), "sha256": sha256_file(eval_path)},
        "retrain": _retrain_record(source, where, history, merge, evaluation),
    }
    path = save_bundle(
        detector,
        target,
        config={**config, "training": training},
        data=data,
        metrics=scores["new"],
        templates=old.templates,
        parser_state=old.parser_state,
        partitioning=old.partitioning,
        event_profile=EventProfile.fit(merge.training + merge.corrections),
        overwrite=args.force,
    )
    shared = is_postgres_url(str(location))
    if not shared:
        _carry_over(path / "cache.sqlite", entries, source)

    _print_comparison(evaluation, source, path)
    out.print(f"bundle written to {escape(str(path))}")
    if shared:
        out.print(
            f"the shared cache {escape(str(where))} keeps the corrections (nothing was written "
            "there); the model answers it holds came from the old bundle"
        )
    else:
        out.print(
            f"{escape(str(path / 'cache.sqlite'))} answers each of the {len(entries)} corrected "
            "sequences with its human label"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``retrain`` command."""
    r = subparsers.add_parser(
        "retrain",
        help="retrain a bundle on the human corrections of its cache",
        description="Train a new bundle with the configuration of --bundle on its training "
        "data plus the human-corrected entries of its cache, each weighted by --repeat, and "
        "compare old and new on held-out data (the corrected sequences excluded). The new "
        "bundle's cache answers the corrected sequences with their human labels.",
    )
    r.add_argument("--bundle", required=True, help="the bundle to retrain (never modified)")
    r.add_argument(
        "--data",
        help="labelled training data (default: the file the bundle was trained on, as its "
        "manifest records it, if unchanged)",
    )
    r.add_argument(
        "--eval",
        help="labelled held-out data to compare old and new on (default: the file "
        "`flexlog train --eval` recorded in the manifest, if unchanged)",
    )
    r.add_argument(
        "--cache",
        help="the cache holding the corrections: a path or a postgresql:// URL (default "
        "BUNDLE/cache.sqlite); read only",
    )
    r.add_argument(
        "--repeat",
        type=int,
        default=DEFAULT_REPEAT,
        help=f"copies of each correction in the training set (default {DEFAULT_REPEAT}, "
        "measured on ADFA-U: the corrected false alarms and near-copies of them turn normal, "
        "and a quarter of the other false alarms, for 1 %% of unseen attacks; README "
        "'Retraining from corrections')",
    )
    r.add_argument("--out", required=True, help="the new bundle's directory")
    r.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    add_label_options(r)
    r.set_defaults(func=cmd_retrain, mask=[], **_BUNDLE_FORMAT)
