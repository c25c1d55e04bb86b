"""Grouping accuracy of template mining against loghub's labelled 2k samples.

Grouping accuracy (Zhu et al., "Tools and Benchmarks for Automated Log Parsing", ICSE-SEIP
2019) counts a line as correctly parsed iff the set of lines in its predicted group equals the
set of lines in its ground-truth group; the accuracy is the fraction of such lines.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from flexlog.data.records import IngestReport, InputError
from flexlog.parsing.miner import TemplateParser, read_log_lines
from flexlog.parsing.presets import Preset

#: (preset, log file relative to the datasets directory) for :func:`grouping_report`.
BENCHMARKS: tuple[tuple[str, str], ...] = (
    ("hdfs", "hdfs/HDFS_2k.log"),
    ("hadoop", "loghub-2k/Hadoop/Hadoop_2k.log"),
    ("spark", "loghub-2k/Spark/Spark_2k.log"),
    ("openssh", "loghub-2k/OpenSSH/OpenSSH_2k.log"),
    ("zookeeper", "loghub-2k/Zookeeper/Zookeeper_2k.log"),
    ("linux", "loghub-2k/Linux/Linux_2k.log"),
    ("openstack", "loghub-2k/OpenStack/OpenStack_2k.log"),
    ("apache", "loghub-2k/Apache/Apache_2k.log"),
    ("hpc", "loghub-2k/HPC/HPC_2k.log"),
)


def grouping_accuracy(predicted_keys: Sequence[str], truth_keys: Sequence[str]) -> float:
    """Fraction of lines whose predicted group has exactly the lines of their true group.

    A predicted group ``p`` is correct iff all its lines share one true key ``t`` and ``t`` has
    no other lines, i.e. ``count(p, t) == count(p) == count(t)``. Linear time.
    """
    if len(predicted_keys) != len(truth_keys):
        raise ValueError(
            f"predicted ({len(predicted_keys)}) and truth ({len(truth_keys)}) differ in length"
        )
    if not predicted_keys:
        raise ValueError("no lines to score")
    pred_count = Counter(predicted_keys)
    truth_count = Counter(truth_keys)
    pair_count = Counter(zip(predicted_keys, truth_keys, strict=True))
    correct = sum(
        n for (p, t), n in pair_count.items() if n == pred_count[p] and n == truth_count[t]
    )
    return correct / len(predicted_keys)


def read_truth(structured_csv: str | Path) -> list[str]:
    """The ``EventId`` column of a loghub ``*_structured.csv``, in line order."""
    path = Path(structured_csv)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    reader = csv.DictReader(text.splitlines())
    if "EventId" not in (reader.fieldnames or []):
        raise InputError(f"{path}:1: header has no EventId column")
    return [row["EventId"] for row in reader]


def evaluate_preset(
    log_path: str | Path,
    structured_csv: str | Path,
    preset: str | Preset,
    *,
    fit_lines: int | None = None,
) -> dict:
    """Fit a fresh parser on a labelled log and score its grouping against the ground truth.

    With ``fit_lines``, the parser is fitted on the first ``fit_lines`` lines only and scored
    on the rest (a held-out check of how the preset generalises). Lines our parser rejects
    count as singleton groups, so they are wrong unless their true template occurs once.
    Returns accuracy, n_lines (lines scored), n_templates_predicted, n_templates_truth and
    n_rejected.
    """
    report = IngestReport()
    lines = list(read_log_lines(log_path, report))
    unreadable = [r.line for r in report.rejections]
    truth = read_truth(structured_csv)
    n_raw = len(lines) + len(unreadable)
    if n_raw != len(truth):
        raise InputError(f"{log_path}: {n_raw} log lines but {len(truth)} labelled rows")
    if fit_lines is not None and not 1 <= fit_lines < len(truth):
        raise ValueError(f"fit_lines must be in [1, {len(truth) - 1}], got {fit_lines}")
    parser = TemplateParser(preset)
    # Pair lines with ground-truth rows by their order among the non-blank lines.
    all_lines = sorted([n for n, _ in lines] + unreadable)
    start = 0
    if fit_lines is None:
        parser.fit(lines)
    else:
        parser.fit([(n, t) for n, t in lines if n <= all_lines[fit_lines - 1]])
        start = fit_lines
    parsed = parser.parse(lines, str(log_path), report)
    by_line = {p.line: p.event for p in parsed}
    predicted = [by_line.get(n, f"<rejected:{n}>") for n in all_lines[start:]]
    scored = truth[start:]
    return {
        "preset": parser.preset.name,
        "accuracy": grouping_accuracy(predicted, scored),
        "n_lines": len(scored),
        "n_templates_predicted": len(set(predicted)),
        "n_templates_truth": len(set(scored)),
        "n_rejected": report.rejected,
    }


def grouping_report(datasets_dir: str | Path) -> list[dict]:
    """Evaluate every preset's benchmark (eight loghub systems and HDFS_2k) under ``datasets_dir``.

    Each row is :func:`evaluate_preset`'s dict plus the ``log`` path it was measured on and
    ``heldout_accuracy``: fitted on the first half of the lines, scored on the second. The
    presets were tuned on these samples, so the held-out figure is the honest one.
    """
    root = Path(datasets_dir)
    rows = []
    for preset, rel in BENCHMARKS:
        log = root / rel
        structured = log.with_name(log.name + "_structured.csv")
        row = evaluate_preset(log, structured, preset)
        row["log"] = rel
        row["heldout_accuracy"] = evaluate_preset(
            log, structured, preset, fit_lines=row["n_lines"] // 2
        )["accuracy"]
        rows.append(row)
    return rows
