"""Batch-scoring throughput, the local engine against Ray Data (``flexlog bench --score``).

What an operator runs on a day of raw logs: ``flexlog score --no-cache`` on generated HDFS
lines (:func:`flexlog.parsing.throughput.hdfs_lines`), read, parsed with the bundle's fitted
parser, grouped by block and scored, once with ``--engine local`` and once with ``--engine ray``
per number of actors. Each run is a process of its own, started the way a user starts it, so
its wall clock includes what a user waits for (the start of Ray and of its actors included) and
its memory is its own: the resident memory of every process of the run is sampled (psutil), the
driver's and each Ray worker's peak kept.

The bundle is trained here, unless one is given: on 100,000 generated lines of its own, a
block labelled anomalous when one of its lines is a WARN (a rule that only gives the voters
something to learn: the benchmark measures speed, not accuracy). The bundle's voters are
those of ``flexlog train`` with no ``--voters``; a bundle with an LLM voter can be given with
``bundle=`` and the share of sequences each voter was asked (short-circuit voting) is read
from the run's summary, so that :func:`scaling_model` can price the LLM.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flexlog.environment import environment

__all__ = ["SCORE_SIZES", "bench_score", "scaling_model"]

#: Line counts measured unless told otherwise (10,000,000 takes minutes per engine here).
SCORE_SIZES = (1_000_000,)
#: Lines of the log the bundle is trained on, when none is given.
TRAIN_LINES = 100_000
#: The generated log is split into this many files, read in parallel by the Ray engine.
FILES = 8
_BLOCK = re.compile(r"blk_-?\d+")
_ASKED = re.compile(r"asked per voter: (.*)")
_SCORED = re.compile(r"scored:\S* (\d+) sequences answered .*?(\d+) read = (\d+) accepted")


def bench_score(
    sizes: Sequence[int] = SCORE_SIZES,
    *,
    actors: Sequence[int] = (1, 2),
    bundle: Path | None = None,
    files: int = FILES,
    out_dir: Path | None = None,
    console: Console | None = None,
    seed: int = 0,
) -> dict:
    """Lines/s and sequences/s of ``flexlog score`` per size: the local engine, and Ray with
    each number of ``actors`` (an empty ``actors`` measures the local engine alone). Writes
    ``score_bench.json``/``.md``/``.png`` to ``out_dir`` when given; returns the report."""
    if not sizes or any(int(n) < 1 for n in sizes):
        raise ValueError(f"sizes must be positive integers, got {list(sizes)}")
    if any(int(a) < 1 for a in actors) or files < 1:
        raise ValueError("actors and files must be positive")
    from flexlog.parsing.throughput import write_hdfs_log

    console = console or Console(stderr=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="flexlog-score-bench-") as tmp:
        work = Path(tmp)
        if bundle is None:
            console.print(f"training a bundle on {TRAIN_LINES:,} generated HDFS lines")
            bundle = _train_bundle(work, seed)
        for n in sizes:
            n = int(n)
            console.print(f"writing {n:,} generated HDFS lines in {files} files")
            logs = []
            for k in range(files):
                share = n // files + (1 if k < n % files else 0)
                logs.append(write_hdfs_log(work / f"hdfs-{n}-{k}.log", share, seed + 1 + k))
            runs = [("local", None)] + [("ray", int(a)) for a in actors]
            for engine, k in runs:
                label = engine if k is None else f"ray, {k} actor{'s' if k > 1 else ''}"
                console.print(f"  {n:,} lines: {label}")
                row = _run(bundle, logs, work / "out.jsonl", engine, k)
                row.update(lines=n, engine=engine, actors=k)
                rows.append(row)
                console.print(
                    f"    {row['lines_per_s']:,.0f} lines/s, {row['sequences_per_s']:,.0f} "
                    f"sequences/s, peak {row['peak_worker_mib']:,.0f} MiB per worker"
                )
            for log in logs:
                log.unlink()
    report = {
        **environment(),
        "files": files,
        "seed": seed,
        "rows": rows,
    }
    console.print(_table(report))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "score_bench.json").write_text(json.dumps(report, indent=1) + "\n")
        (out_dir / "score_bench.md").write_text(_markdown(report))
        _plot(report, out_dir / "score_bench.png")
        console.print(f"report written to {out_dir}/score_bench.md, .json, .png")
    return report


def _train_bundle(work: Path, seed: int) -> Path:
    """A bundle trained on generated lines (see the module doc), with a fitted hdfs parser."""
    from flexlog.cli import main
    from flexlog.parsing.throughput import write_hdfs_log

    log = write_hdfs_log(work / "train.log", TRAIN_LINES, seed)
    anomalous: dict[str, int] = {}
    with log.open(encoding="utf-8") as fh:
        for line in fh:
            match = _BLOCK.search(line)
            if match is not None:
                block = match.group(0)
                anomalous[block] = anomalous.get(block, 0) | (" WARN " in line)
    labels = work / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["BlockId", "Label"])
        writer.writerows((b, "Anomaly" if a else "Normal") for b, a in anomalous.items())
    bundle = work / "bundle"
    argv = ["train", "--train", str(log), "--preset", "hdfs", "--labels", str(labels)]
    if main([*argv, "--out", str(bundle), "--force"]) != 0:
        raise RuntimeError("training the benchmark's bundle failed")
    log.unlink()
    return bundle


def _run(bundle: Path, logs: list[Path], out: Path, engine: str, actors: int | None) -> dict:
    """One ``flexlog score`` process: its wall clock, counts and the peak memory of each of
    its processes (sampled every 0.2 s)."""
    argv = [sys.executable, "-m", "flexlog.cli", "score", "--bundle", str(bundle)]
    for log in logs:
        argv += ["--input", str(log)]
    argv += ["--out", str(out), "--no-cache", "--engine", engine]
    if actors is not None:
        argv += ["--actors", str(actors)]
    import psutil

    start = time.perf_counter()
    env = {**os.environ, "COLUMNS": "400"}  # the summary is read back: no wrapped lines
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    peaks: dict[int, tuple[str, float]] = {}
    stop = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for p in family:
                try:
                    rss = p.memory_info().rss / 2**20
                    name = " ".join(p.cmdline()[:1]) or p.name()
                except psutil.Error:
                    continue
                if rss > peaks.get(p.pid, ("", 0.0))[1]:
                    peaks[p.pid] = (name, rss)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"flexlog score --engine {engine} failed: {err.strip()[-2000:]}")
    summary = " ".join(err.split())
    scored = _SCORED.search(summary)
    if scored is None:
        raise RuntimeError(f"no summary in the output of flexlog score: {err.strip()[-500:]}")
    sequences, read, accepted = map(int, scored.groups())
    asked = _ASKED.search(summary)
    driver = peaks.pop(proc.pid, ("", 0.0))[1]
    workers = [rss for name, rss in peaks.values() if name.startswith("ray::")]
    return {
        "seconds": round(seconds, 2),
        "sequences": sequences,
        "lines_read": read,
        "lines_accepted": accepted,
        "lines_per_s": round(read / seconds, 1),
        "sequences_per_s": round(sequences / seconds, 1),
        "peak_driver_mib": round(driver, 1),
        "peak_worker_mib": round(max(workers) if workers else driver, 1),
        "workers": len(workers),
        "asked": _shares(asked.group(1)) if asked else {},
    }


def _shares(text: str) -> dict[str, float]:
    """``"knn 100 %, llm 7 %"`` → ``{"knn": 1.0, "llm": 0.07}``."""
    out = {}
    for part in text.split(","):
        name, _, value = part.strip().partition(" ")
        try:
            out[name] = float(value.rstrip(" %")) / 100
        except ValueError:
            continue
    return out


_COLUMNS = (
    ("lines", "lines", "{:,}"),
    ("engine", "engine", "{}"),
    ("actors", "actors", "{}"),
    ("seconds", "seconds", "{:,.1f}"),
    ("lines/s", "lines_per_s", "{:,.0f}"),
    ("sequences/s", "sequences_per_s", "{:,.0f}"),
    ("peak MiB per worker", "peak_worker_mib", "{:,.0f}"),
    ("driver MiB", "peak_driver_mib", "{:,.0f}"),
)


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def _table(report: dict) -> Table:
    table = Table(title="flexlog score: generated HDFS lines, local against Ray")
    for title, _, _ in _COLUMNS:
        table.add_column(title, justify="right")
    for r in report["rows"]:
        table.add_row(*(_cell(r, key, fmt) for _, key, fmt in _COLUMNS))
    return table


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# flexlog bench --score: batch scoring, local against Ray",
        "",
        f"`flexlog score --no-cache` on generated HDFS lines in {report['files']} files: read,",
        "parsed with the bundle's fitted parser, grouped by block, scored. Each run is a process",
        "of its own; seconds are wall clock including Ray's start; peak MiB per worker is the",
        "largest resident memory of one Ray worker (the process itself for the local engine).",
        "",
        "| " + " | ".join(title for title, _, _ in _COLUMNS) + " |",
        "|" + "---:|" * len(_COLUMNS),
    ]
    for r in report["rows"]:
        lines.append("| " + " | ".join(_cell(r, k, f) for _, k, f in _COLUMNS) + " |")
    lines += ["", f"Python {m['python']} on {m['processor']}, {m['cores']} cores."]
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = sorted({(r["engine"], r["actors"] or 0) for r in report["rows"]})
    for engine, k in labels:
        rows = [r for r in report["rows"] if r["engine"] == engine and (r["actors"] or 0) == k]
        name = engine if engine == "local" else f"ray, {k} actors"
        ax.plot([r["lines"] for r in rows], [r["lines_per_s"] for r in rows], "o-", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("lines in the log")
    ax.set_ylabel("lines scored per second")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title("flexlog score, generated HDFS lines")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scaling_model(
    lines_per_worker_s: float,
    sequences_per_line: float,
    *,
    lines_per_day: float = 1e9,
    llm_share: float,
    llm_sequences_per_s: float,
    headroom: float = 2.0,
) -> dict:
    """Workers for ``lines_per_day``: CPU workers at ``lines_per_worker_s`` (read, parse,
    group, ML voters), and LLM workers at ``llm_sequences_per_s`` for the ``llm_share`` of
    sequences that short-circuit voting still sends to the LLM, with ``headroom`` for peaks
    (the day's traffic is not flat). Returns the rates and the worker counts (rounded up)."""
    import math

    lines_s = lines_per_day / 86_400
    sequences_s = lines_s * sequences_per_line
    llm_s = sequences_s * llm_share
    return {
        "lines_per_s": round(lines_s, 1),
        "sequences_per_s": round(sequences_s, 1),
        "llm_sequences_per_s": round(llm_s, 2),
        "cpu_workers": math.ceil(headroom * lines_s / lines_per_worker_s),
        "llm_workers": math.ceil(headroom * llm_s / llm_sequences_per_s) if llm_s else 0,
    }
