"""``flexlog bench``: throughput of the ML path with and without the cache, and cache memory.

The workload is HDFS sessions (the DeepLog files) with random delete / duplicate / shuffle
changes, so that a large batch holds many distinct sequences, as logs of an upgraded system do.
Four paths are timed on the same batch:

* ``voters``: every voter on every sequence (no de-duplication, no cache);
* ``detector``: the pipeline without a cache (distinct sequences voted once per batch);
* ``cache cold``: the pipeline with an empty SQLite cache (lookups, votes, inserts);
* ``cache warm``: the same batch again, answered from the cache.

Results go to ``OUT/bench.json``, ``OUT/bench.md`` and ``OUT/bench.png``.

:func:`bench_parse` (``flexlog bench --parse``) measures the step before: raw HDFS log lines
through the parser (fit, then parse, as ``flexlog parse`` does), lines per second and peak
memory from 100k to 10M generated lines; its results go to ``OUT/parse_bench.*``.
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from flexlog.cache import SequenceCache
from flexlog.data.hdfs import load_hdfs_sessions
from flexlog.data.records import LogSequence
from flexlog.data.ulad import INJECTIONS, build_synhdfs_u, inject
from flexlog.detector import Detector, make_detector
from flexlog.environment import environment

PATHS = ("voters", "detector", "cache cold", "cache warm")


def workload(pool: Sequence[LogSequence], n: int, seed: int = 0) -> list[LogSequence]:
    """``n`` sessions drawn from ``pool``, each changed 0-3 times at random."""
    rng = random.Random(seed)
    templates = {ev for s in pool for ev in s.events}
    out = []
    for i in range(n):
        base = rng.choice(pool)
        events = base.events
        for _ in range(rng.randrange(4)):
            events = inject(events, rng.choice(INJECTIONS), templates, rng) or events
        out.append(LogSequence(f"b{i}", events, base.label))
    return out


def _timed(fn) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _predict_all(detector: Detector, seqs: list[LogSequence], batch_size: int) -> None:
    for _ in detector.predict_stream(seqs, batch_size=batch_size):
        pass


def cache_memory(n: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Bytes per entry of the in-memory LRU (traced allocations) and of the SQLite file,
    measured on ``n`` distinct entries and scaled to one million."""
    rng = random.Random(seed)
    keys = [tuple(f"E{rng.randrange(30)}" for _ in range(rng.randrange(5, 30))) for _ in range(n)]
    votes = {"knn": 0, "dt": 1, "slfn": 0}
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    mem = SequenceCache(None, max_entries=n + 1, memory_entries=n + 1)
    mem.add_many((k, 1, votes) for k in keys)
    lru_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    mem.close()
    tmp = Path(tempfile.mkdtemp(prefix="flexlog-bench-"))
    try:
        db = SequenceCache(tmp / "cache.sqlite", max_entries=n + 1, memory_entries=1000)
        for i in range(0, n, 50_000):
            db.add_many((k, 1, votes) for k in keys[i : i + 50_000])
        db_bytes = db.stats()["db_bytes"]
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "entries_measured": n,
        "lru_bytes_per_entry": lru_bytes / n,
        "lru_mb_per_million": lru_bytes / n * 1e6 / 2**20,
        "sqlite_bytes_per_entry": db_bytes / n,
        "sqlite_mb_per_million": db_bytes / n * 1e6 / 2**20,
    }


def run_bench(
    sizes: Sequence[int],
    *,
    out_dir: Path,
    datasets: Path,
    console: Console | None = None,
    batch_size: int = 8192,
    voters: Sequence[str] = ("knn", "dt", "slfn"),
) -> dict:
    """Time the four paths for each batch size; write and print the report."""
    console = console or Console()
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"sizes must be positive integers, got {list(sizes)}")
    src = datasets / "hdfs"
    normal = load_hdfs_sessions(src / "hdfs_train", 0)
    abnormal = load_hdfs_sessions(src / "hdfs_test_abnormal", 1)
    ds = build_synhdfs_u(normal, abnormal, 0.1, seed=0)
    detector = make_detector(list(voters), {}, 0).fit(ds.limited_train)
    pool = normal + abnormal
    rows = []
    for n in tqdm(sizes, desc="bench", unit="size"):
        seqs = workload(pool, n, seed=n)
        distinct = len({s.events for s in seqs})
        times = {}
        times["voters"] = _timed(
            lambda seqs=seqs: [
                detector.ensemble.votes([s.events for s in seqs[i : i + batch_size]])
                for i in range(0, len(seqs), batch_size)
            ]
        )
        plain = Detector(detector.ensemble)
        times["detector"] = _timed(lambda seqs=seqs, d=plain: _predict_all(d, seqs, batch_size))
        tmp = Path(tempfile.mkdtemp(prefix="flexlog-bench-"))
        try:
            cache = SequenceCache(
                tmp / "cache.sqlite", max_entries=max(n, 1000), memory_entries=max(n, 1000)
            )
            cached = Detector(detector.ensemble, cache)
            times["cache cold"] = _timed(
                lambda seqs=seqs, d=cached: _predict_all(d, seqs, batch_size)
            )
            times["cache warm"] = _timed(
                lambda seqs=seqs, d=cached: _predict_all(d, seqs, batch_size)
            )
            hit_rate = cache.stats()["hit_rate"]
            cache.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append(
            {
                "sequences": n,
                "distinct": distinct,
                "seconds": times,
                "per_second": {k: n / t for k, t in times.items()},
                "cache_hit_rate_after_warm": hit_rate,
            }
        )
    memory = cache_memory()
    report = {
        **environment(),
        "voters": list(voters),
        "batch_size": batch_size,
        "rows": rows,
        "cache_memory": memory,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "bench.md").write_text(_markdown(report))
    _plot(report, out_dir / "bench.png")
    console.print(_table(report))
    console.print(
        f"cache memory per million entries: LRU {memory['lru_mb_per_million']:.0f} MiB, "
        f"SQLite {memory['sqlite_mb_per_million']:.0f} MiB"
    )
    console.print(f"report written to {out_dir}/bench.md, bench.json, bench.png")
    return report


def _table(report: dict) -> Table:
    table = Table(title="ML path throughput (sequences per second)")
    table.add_column("sequences", justify="right")
    table.add_column("distinct", justify="right")
    for p in PATHS:
        table.add_column(p, justify="right")
    for r in report["rows"]:
        table.add_row(
            f"{r['sequences']:,}",
            f"{r['distinct']:,}",
            *(f"{r['per_second'][p]:,.0f}" for p in PATHS),
        )
    return table


def _markdown(report: dict) -> str:
    lines = [
        "# flexlog bench: ML path throughput (sequences per second)",
        "",
        f"Voters: {', '.join(report['voters'])}; batch size {report['batch_size']}.",
        "",
        "| sequences | distinct | " + " | ".join(PATHS) + " |",
        "|---:|---:|" + "---:|" * len(PATHS),
    ]
    for r in report["rows"]:
        cells = [f"{r['per_second'][p]:,.0f}" for p in PATHS]
        lines.append(f"| {r['sequences']:,} | {r['distinct']:,} | " + " | ".join(cells) + " |")
    m = report["cache_memory"]
    lines += [
        "",
        f"Cache memory per million entries: in-memory LRU {m['lru_mb_per_million']:.0f} MiB "
        f"({m['lru_bytes_per_entry']:.0f} B/entry), SQLite file {m['sqlite_mb_per_million']:.0f} MiB "
        f"({m['sqlite_bytes_per_entry']:.0f} B/entry), measured on {m['entries_measured']:,} entries.",
    ]
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = [r["sequences"] for r in report["rows"]]
    for p in PATHS:
        ax.plot(sizes, [r["per_second"][p] for r in report["rows"]], marker="o", label=p)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequences in the run")
    ax.set_ylabel("sequences per second")
    ax.set_title("flexlog ML path throughput")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- parser throughput (flexlog bench --parse) -------------------------------------------------

#: Line counts ``bench_parse`` measures unless told otherwise; add 10_000_000 for the full
#: range (minutes: about 1.4 GB of generated log is written, fitted and parsed).
PARSE_SIZES = (100_000, 1_000_000)


def bench_parse(
    preset: str = "hdfs",
    sizes: Sequence[int] = PARSE_SIZES,
    *,
    out_dir: Path | None = None,
    console: Console | None = None,
    progress: bool = True,
    seed: int = 0,
) -> list[dict]:
    """Throughput and memory of raw-log parsing, as ``flexlog parse --preset PRESET`` runs it.

    For each size, ``n`` realistic HDFS lines (:func:`flexlog.parsing.throughput.hdfs_lines`:
    the HDFS templates with varying block ids, addresses, sizes...) are written to a temporary
    file, then a fresh process (``python -m flexlog.parsing.throughput``) fits the preset's
    parser on the file and parses it, streaming (lines are not held in memory). One row per
    size, with ``lines``, ``seconds`` (``fit_s`` + ``parse_s``, wall clock), ``lines_per_s``,
    ``cpu_s`` and ``lines_per_cpu_s`` (CPU time: one core's throughput even on a busy
    machine), ``peak_rss_mib`` (the measuring process's peak resident memory) and
    ``parser_mib`` (what fitting and parsing added to it), ``templates``, ``with_session``,
    ``rejected``, ``file_mib`` and ``generate_s`` (writing the file, not timed). Prints a
    table; with ``out_dir``, also writes ``parse_bench.json``, ``.md`` and ``.png`` there.
    """
    if not sizes or any(int(n) < 1 for n in sizes):
        raise ValueError(f"sizes must be positive integers, got {list(sizes)}")
    from flexlog.parsing import get_preset
    from flexlog.parsing.throughput import write_hdfs_log

    preset = get_preset(preset).name  # a ValueError names the known presets
    console = console or Console()
    rows = []
    with tempfile.TemporaryDirectory(prefix="flexlog-parse-bench-") as tmp:
        for n in sizes:
            n = int(n)
            log = Path(tmp) / f"hdfs-{n}.log"
            if progress:
                console.print(f"writing {n:,} generated HDFS lines")
            start = time.perf_counter()
            write_hdfs_log(log, n, seed)
            generated = time.perf_counter() - start
            command = [sys.executable, "-m", "flexlog.parsing.throughput", preset, str(log)]
            run = subprocess.run(
                command + (["--progress"] if progress else []),
                stdout=subprocess.PIPE,
                stderr=None if progress else subprocess.PIPE,
                text=True,
                check=False,
            )
            log.unlink()
            if run.returncode != 0:
                raise RuntimeError(
                    f"parser benchmark on {n:,} lines failed (exit {run.returncode}): "
                    f"{(run.stderr or '').strip()[-2000:]}"
                )
            row = json.loads(run.stdout.strip().splitlines()[-1])
            row["generate_s"] = generated
            rows.append(row)
    report = {
        **environment(),
        "preset": preset,
        "seed": seed,
        "rows": rows,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "parse_bench.json").write_text(json.dumps(report, indent=1) + "\n")
        (out_dir / "parse_bench.md").write_text(_parse_markdown(report))
        _parse_plot(report, out_dir / "parse_bench.png")
    console.print(_parse_table(report))
    if out_dir is not None:
        console.print(f"report written to {out_dir}/parse_bench.md, parse_bench.json, .png")
    return rows


_PARSE_COLUMNS = (
    ("lines", "lines", "{:,}"),
    ("seconds", "seconds", "{:,.1f}"),
    ("lines/s", "lines_per_s", "{:,.0f}"),
    ("lines/CPU s", "lines_per_cpu_s", "{:,.0f}"),
    ("peak MiB", "peak_rss_mib", "{:,.0f}"),
    ("parser MiB", "parser_mib", "{:,.0f}"),
    ("templates", "templates", "{:,}"),
)


def _parse_table(report: dict) -> Table:
    table = Table(title=f"Raw-log parsing, preset {report['preset']} (fit + parse)")
    for title, _, _ in _PARSE_COLUMNS:
        table.add_column(title, justify="right")
    for r in report["rows"]:
        table.add_row(*(fmt.format(r[key]) for _, key, fmt in _PARSE_COLUMNS))
    return table


def _parse_markdown(report: dict) -> str:
    lines = [
        f"# flexlog bench --parse: raw-log parsing, preset {report['preset']}",
        "",
        "Generated HDFS lines (HDFS templates, varying block ids, addresses and sizes), fitted",
        "then parsed, streaming, in a process of their own. lines/s: both passes, wall clock;",
        "lines/CPU s: the same over CPU time (one core). peak MiB: that process's peak resident",
        "memory; parser MiB: what fitting and parsing added to it.",
        "",
        "| " + " | ".join(title for title, _, _ in _PARSE_COLUMNS) + " |",
        "|" + "---:|" * len(_PARSE_COLUMNS),
    ]
    for r in report["rows"]:
        lines.append("| " + " | ".join(fmt.format(r[key]) for _, key, fmt in _PARSE_COLUMNS) + " |")
    m = report["machine"]
    lines += ["", f"Python {m['python']} on {m['processor']}, seed {report['seed']}."]
    return "\n".join(lines) + "\n"


def _parse_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    sizes = [r["lines"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [r["lines_per_s"] for r in rows], marker="o", label="lines/s (wall)")
    ax.plot(sizes, [r["lines_per_cpu_s"] for r in rows], marker="o", label="lines/s (CPU)")
    ax.set_xscale("log")
    ax.set_xlabel("lines in the log")
    ax.set_ylabel("lines per second (fit + parse)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"flexlog raw-log parsing, preset {report['preset']}")
    ax.grid(alpha=0.3, which="both")
    mem = ax.twinx()
    mem.plot(sizes, [r["peak_rss_mib"] for r in rows], marker="s", color="gray", label="peak MiB")
    mem.set_ylabel("peak resident memory (MiB)")
    mem.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = mem.get_legend_handles_labels()
    ax.legend(handles + more, labels + more_labels, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
