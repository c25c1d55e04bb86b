"""What several ``flexlog`` commands share: the consoles, :class:`CliError`, the tables and
reports they print, loading a bundle with its cache, evaluating on labelled data, and turning
raw log files into sequences."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm.auto import tqdm

from flexlog.data.records import IngestReport, LogSequence, read_jsonl


def _datasets_dir() -> Path:
    """Where the public datasets live: $FLEXLOG_DATASETS, else ../shared/datasets beside the
    working directory or beside the source checkout."""
    if env := os.environ.get("FLEXLOG_DATASETS"):
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base.parent / "shared" / "datasets"
        if candidate.is_dir():
            return candidate
    return Path("../shared/datasets")


DATASETS = _datasets_dir()
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


class CliError(Exception):
    """An error to print as one line and exit with status 2."""


# -- output ------------------------------------------------------------------------------------
def _print_report(report: IngestReport, *, limit: int = 20) -> None:
    err.print(f"[bold]input:[/] {report.summary()}")
    for rej in report.rejections[:limit]:
        err.print(f"  rejected {escape(str(rej))}", soft_wrap=True)
    if report.rejected > limit:
        err.print(f"  ... and {report.rejected - limit} more rejected")


def _metrics_table(title: str, rows: dict[str, dict]) -> Table:
    """Precision, recall, F1 and counts per model; a voter asked about fewer sequences than the
    ensemble answered (short-circuit voting) says how many."""
    total = next(iter(rows.values()), {}).get("n")
    table = Table(title=title)
    for col in ("model", "precision", "recall", "F1", "TP", "FP", "FN", "TN"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, m in rows.items():
        table.add_row(
            name if m.get("asked", total) == total else f"{name} (asked {m['asked']})",
            f"{m['precision']:.3f}",
            f"{m['recall']:.3f}",
            f"[bold]{m['f1']:.3f}[/]",
            *(str(m[k]) for k in ("tp", "fp", "fn", "tn")),
        )
    return table


# -- options -----------------------------------------------------------------------------------
def _parse_params(specs: list[str], voters: list[str]) -> dict[str, dict]:
    """``--param knn.scaling=log1p`` → {"knn": {"scaling": "log1p"}} (values parsed as JSON)."""
    params: dict[str, dict] = {v: {} for v in voters}
    for spec in specs:
        key, sep, value = spec.partition("=")
        voter, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise CliError(f"--param {spec!r}: expected VOTER.NAME=VALUE")
        if voter not in params:
            raise CliError(f"--param {spec!r}: voter {voter!r} is not among {voters}")
        try:
            params[voter][name] = json.loads(value)
        except json.JSONDecodeError:
            params[voter][name] = value
    return params


# -- bundles, cache, evaluation ----------------------------------------------------------------
def _open_cache(args: argparse.Namespace, bundle_path: Path):
    if getattr(args, "no_cache", False):
        return None
    from flexlog.cache import SequenceCache

    # `evaluate --cache` is a flag (the bundle's own cache); `score --cache` is a path or a
    # postgresql:// URL
    location = args.cache if isinstance(args.cache, str) else bundle_path / "cache.sqlite"
    return SequenceCache(location)


def _load_with_cache(bundle_path: Path, open_cache):
    """The bundle with its detector built around the cache ``open_cache()`` returns, which
    is opened once the bundle is known to be one (and closed if loading fails)."""
    from flexlog.bundle import load_bundle, read_manifest

    read_manifest(bundle_path)
    cache = open_cache()
    try:
        return load_bundle(bundle_path, cache=cache)
    except BaseException:
        if cache is not None:
            cache.close()
        raise


def _aligned(bundle, seqs: list[LogSequence], templates: dict[str, str] | None):
    """Map events unknown to the bundle onto its closest known templates, if both sides
    have template texts. Returns the sequences and how many keys were remapped."""
    from flexlog.ingest import KeyAligner

    return KeyAligner(bundle.templates).align(seqs, templates)


def _has_slow_voters(ensemble) -> bool:
    """Whether some voter costs a model call or a network per sequence: then long runs show
    progress however few sequences there are."""
    from flexlog.ensemble import voter_cost

    return max(voter_cost(v) for _, v in ensemble.voters) >= 100


def _read_labelled(path: Path, args: argparse.Namespace, *, bundle=None, templates=None):
    """Labelled sequences from canonical JSONL or raw logs (with --label-field or --labels),
    aligned to the bundle's templates; and the ingestion report."""
    from flexlog.cli.logs import labels_from_args, read_raw, wants_raw

    if wants_raw(args, path, bundle=bundle):
        labels = labels_from_args(args)
        if labels is None:
            raise CliError(
                f"{path}: raw logs need labels: --label-field FIELD [--normal-value V] "
                "(a label on every line) or --labels FILE.csv (a label per session)"
            )
        report = IngestReport()
        raw = read_raw([path], args, report, bundle=bundle, labels=labels)
        if raw.unlabelled or raw.unused_labels:
            err.print(
                f"{raw.unlabelled} sequences without a label were left out (their lines "
                f"rejected); {raw.unused_labels} labelled sessions never appear in {path}"
            )
        return raw.sequences, report, raw
    seqs, report = read_jsonl(path, require_label=True)
    if bundle is not None:
        seqs, _ = _aligned(bundle, seqs, templates)
    return seqs, report, None


def _training_record(path: Path, seqs: list[LogSequence], report: IngestReport) -> dict:
    """The manifest's record of a training set: where, its hash, what it held."""
    from flexlog.bundle import sha256_file

    return {
        "path": str(path),
        "sha256": sha256_file(path),
        "sequences": len(seqs),
        "anomalous": sum(s.label == 1 for s in seqs),
        "rejected": report.rejected,
    }


def _evaluate(detector, seqs: list[LogSequence], *, all_votes: bool = False) -> dict:
    """Scores of the ensemble and of each voter on labelled sequences. Voting short-circuits
    (each voter's scores are on the sequences it was asked about, ``asked`` of them) unless
    ``all_votes``; long runs show progress (sequences done, rate, ETA)."""
    from flexlog.detector import Detector
    from flexlog.evaluate import scores as score

    voting = Detector(detector.ensemble, short_circuit=not all_votes)
    slow = _has_slow_voters(voting.ensemble)
    batch = 64 if slow else 4096
    verdicts = []
    quiet = len(seqs) < 1000 and not slow
    with tqdm(total=len(seqs), desc="evaluating", unit="seq", disable=quiet) as bar:
        for start in range(0, len(seqs), batch):
            part = seqs[start : start + batch]
            verdicts.extend(voting.vote(part))
            bar.update(len(part))
    y = [s.label for s in seqs]
    result = {"ensemble": score(y, [v.label for v in verdicts])}
    for name in voting.voter_names:
        asked = [
            (s.label, v.votes[name]) for s, v in zip(seqs, verdicts, strict=True) if name in v.votes
        ]
        if asked:
            result[name] = {**score(*zip(*asked, strict=True)), "asked": len(asked)}
    if detector.cache is not None:  # what the service would answer, human corrections included
        result["with_cache"] = score(y, [v.label for v in detector.predict(seqs)])
    return {"scores": result, "asked_share": voting.asked_share()}
