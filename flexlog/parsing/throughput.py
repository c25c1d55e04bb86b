"""Parser throughput on generated HDFS logs: the measuring side of ``flexlog bench --parse``.

:func:`hdfs_lines` generates realistic raw HDFS DataNode/NameNode lines, in loghub's HDFS
format (``081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block
blk_38865049064139660 terminating``), from the HDFS v1 templates: the 14 of loghub's 2k sample
in the sample's proportions, plus the rarer ones of the full log (exceptions, replication,
re-opens) at a few per thousand. Block ids, IP addresses, ports, sizes, paths, pids and clock
vary from line to line, and a block comes back in later lines (a session), so the masks have
real work to do: the lines are not one line repeated.

(:func:`write_hdfs_log` writes them to a file.) :func:`measure` times what ``flexlog parse``
does with such a file: read it and :meth:`~flexlog.parsing.TemplateParser.fit`, then read it
again and parse every line (streamed with :meth:`~flexlog.parsing.TemplateParser.iter_parse`,
so that 10 million lines need no 10 million results in memory). Run as ``python -m
flexlog.parsing.throughput PRESET LOG``, it prints the measurement as JSON: one process per
file (``flexlog.bench.bench_parse`` starts them), so that its peak resident memory belongs to
that file alone. This module imports only the parser, so the process starts in a fraction of
a second and holds little but the parser.
"""

from __future__ import annotations

import gc
import json
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from flexlog.data.records import IngestReport
from flexlog.parsing.miner import TemplateParser, read_log_lines

_DN = "dfs.DataNode"
_DX = "dfs.DataNode$DataXceiver"
_PR = "dfs.DataNode$PacketResponder"
_FS = "dfs.FSNamesystem"
_DS = "dfs.FSDataset"
_BS = "dfs.DataBlockScanner"
_DNS = "dfs.DataNode$BlockReceiver"
_PRM = "dfs.PendingReplicationMonitor"

#: (weight per 10,000 lines, level, component, template). Fields in braces are filled per line:
#: ``blk`` the line's block (``blk2`` another block), ``ip``/``ip2`` data-node addresses,
#: ``port`` an ephemeral port, ``size`` a block size, ``n`` a PacketResponder number, and so on.
#: The first 14 are loghub's HDFS_2k templates at its counts (x 5); the rest are the other
#: templates of HDFS v1 (HDFS_templates.csv), rare as in the full log.
HDFS_EVENTS: tuple[tuple[int, str, str, str], ...] = (
    (
        1570,
        "INFO",
        _FS,
        "BLOCK* NameSystem.addStoredBlock: blockMap updated: {ip}:50010 is added to {blk} "
        "size {size}",
    ),
    (1555, "INFO", _PR, "PacketResponder {n} for block {blk} terminating"),
    (1460, "INFO", _PR, "Received block {blk} of size {size} from /{ip}"),
    (1460, "INFO", _DX, "Receiving block {blk} src: /{ip}:{port} dest: /{ip}:50010"),
    (1315, "INFO", _DS, "Deleting block {blk} file /mnt/hadoop/dfs/data/current/subdir{sub}/{blk}"),
    (1120, "INFO", _FS, "BLOCK* NameSystem.delete: {blk} is added to invalidSet of {ip}:50010"),
    (575, "INFO", _FS, "BLOCK* NameSystem.allocateBlock: {path}. {blk}"),
    (400, "INFO", _DX, "{ip}:50010 Served block {blk} to /{ip2}"),
    (400, "WARN", _DX, "{ip}:50010:Got exception while serving {blk} to /{ip2}:"),
    (100, "INFO", _BS, "Verification succeeded for {blk}"),
    (25, "INFO", _FS, "BLOCK* ask {ip}:50010 to delete  {blks}"),
    (
        10,
        "INFO",
        _DX,
        "Received block {blk} src: /{ip}:{port} dest: /{ip}:50010 of size {size}",
    ),
    (5, "INFO", _DN, "{ip}:50010 Starting thread to transfer block {blk} to {ip2}:50010"),
    (
        5,
        "INFO",
        _FS,
        "BLOCK* ask {ip}:50010 to replicate {blk} to datanode(s) {ip2}:50010",
    ),
    # The rest of HDFS v1's templates: anomalies, rare in the log.
    (5, "WARN", _DS, "Adding an already existing block {blk}"),
    (5, "INFO", _DN, "{ip}:50010:Transmitted block {blk} to /{ip2}:50010"),
    (
        4,
        "WARN",
        _DN,
        "{ip}:50010:Failed to transfer {blk} to {ip2}:50010 got java.io.IOException: "
        "Connection reset by peer",
    ),
    (4, "INFO", _PR, "PacketResponder {blk} {n} Exception java.io.IOException: Broken pipe"),
    (
        4,
        "INFO",
        _PR,
        "PacketResponder {n} for block {blk} Interrupted.",
    ),
    (4, "INFO", _DX, "writeBlock {blk} received exception java.io.IOException: Connection reset"),
    (3, "INFO", _DNS, "Receiving empty packet for block {blk}"),
    (
        3,
        "INFO",
        _DNS,
        "Exception in receiveBlock for block {blk} java.io.IOException: Connection reset by peer",
    ),
    (3, "INFO", _DNS, "{ip}:50010:Exception writing block {blk} to mirror {ip2}:50010"),
    (
        3,
        "INFO",
        _DNS,
        "Changing block file offset of block {blk} from {off} to {size} meta file offset to {meta}",
    ),
    (2, "INFO", _DS, "Reopen Block {blk}"),
    (
        2,
        "WARN",
        _DS,
        "Unexpected error trying to delete block {blk}. BlockInfo not found in volumeMap.",
    ),
    (
        3,
        "INFO",
        _FS,
        "BLOCK* Removing block {blk} from neededReplications as it does not belong to any file.",
    ),
    (
        3,
        "INFO",
        _FS,
        "BLOCK* NameSystem.addStoredBlock: Redundant addStoredBlock request received for "
        "{blk} on {ip}:50010 size {size}",
    ),
    (
        2,
        "INFO",
        _FS,
        "BLOCK* NameSystem.addStoredBlock: addStoredBlock request received for {blk} on "
        "{ip}:50010 size {size} But it does not belong to any file.",
    ),
    (2, "WARN", _PRM, "PendingReplicationMonitor timed out block {blk}"),
)


def hdfs_lines(n: int, seed: int = 0) -> Iterator[str]:
    """``n`` raw HDFS log lines (no newline), generated one at a time from ``seed``.

    Lines are in time order (``081109 203518`` onwards), from about 200 data nodes; each
    block appears in several lines, as in a real log's sessions. The same ``n`` and ``seed``
    give the same lines.
    """
    rng = random.Random(seed)
    rand = rng.random
    randrange = rng.randrange
    choice = rng.choice
    weights = [w for w, _, _, _ in HDFS_EVENTS]
    kinds = range(len(HDFS_EVENTS))
    nodes = [f"10.25{rng.randrange(2)}.{randrange(1, 256)}.{randrange(1, 256)}" for _ in range(200)]
    pids = [randrange(13, 30000) for _ in range(1000)]
    live: list[str] = []  # blocks still being written to, read or deleted
    clock = 20 * 3600 + 35 * 60 + 18  # 20:35:18 on 2008-11-09
    day = 9

    def new_block() -> str:
        block = f"blk_{'-' if rand() < 0.5 else ''}{randrange(10**15, 2**63)}"
        if len(live) < 2000:
            live.append(block)
        else:
            live[randrange(2000)] = block
        return block

    def block() -> str:
        return choice(live) if live and rand() < 0.9 else new_block()

    def path() -> str:
        task = randrange(1000)
        if rand() < 0.9:
            return (
                f"/user/root/rand{randrange(10) or ''}/_temporary/_task_200811092030_"
                f"{randrange(1, 20):04d}_m_{task:06d}_0/part-{task:05d}"
            )
        return f"/mnt/hadoop/mapred/system/job_200811092030_{randrange(1, 20):04d}/job.jar"

    def size() -> int:
        return 67108864 if rand() < 0.7 else randrange(1, 67108864)

    fields: dict[str, Callable[[], object]] = {
        "ip": lambda: choice(nodes),
        "ip2": lambda: choice(nodes),
        "port": lambda: randrange(32768, 61000),
        "size": size,
        "n": lambda: randrange(3),
        "sub": lambda: randrange(64),
        "off": lambda: randrange(67108864),
        "meta": lambda: randrange(524295),
        "blks": lambda: " ".join(block() for _ in range(1 + int(rand() ** 4 * 8))),
    }
    # Each template once, with its fields, so a line only fills what its template names.
    plans = []
    for _, level, component, template in HDFS_EVENTS:
        names = sorted({name for name in fields if "{" + name + "}" in template})
        plans.append((level, component, template, "{blk}" in template, "{path}" in template, names))
    events: list[int] = []
    for i in range(n):
        if not i % 10_000:
            events = rng.choices(kinds, weights=weights, k=10_000)
        if rand() < 0.3:
            clock += 1
            if clock >= 86400:
                clock, day = 0, day + 1
        level, component, template, has_blk, has_path, names = plans[events[i % 10_000]]
        values = {name: fields[name]() for name in names}
        if has_path:
            values["path"], values["blk"] = path(), new_block()
        elif has_blk:
            values["blk"] = block()
        hh, rest = divmod(clock, 3600)
        stamp = f"0811{day:02d} {hh:02d}{rest // 60:02d}{rest % 60:02d}"
        yield f"{stamp} {choice(pids)} {level} {component}: {template.format(**values)}"


def write_hdfs_log(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write :func:`hdfs_lines` ``(n, seed)`` to ``path``, one per line; returns the path."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        batch: list[str] = []
        for line in hdfs_lines(n, seed):
            batch.append(line)
            if len(batch) >= 10_000:
                fh.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            fh.write("\n".join(batch) + "\n")
    return path


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB: Linux's VmHWM, which starts afresh
    when the process starts (``ru_maxrss`` also counts the parent it was forked from)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # Linux reports KiB


def measure(preset: str, log: str | Path, *, progress: bool = False) -> dict:
    """Time what ``flexlog parse`` does with the raw log file ``log``: fit, then parse.

    Fitting reads the file and learns templates; parsing reads it again and maps every line
    to its event (one :class:`~flexlog.parsing.ParsedLine` at a time: the lines are counted,
    not kept). Returns a row: ``lines`` (accepted), ``rejected``, ``fit_s``, ``parse_s`` and
    ``seconds`` (wall clock), ``cpu_s`` (this process's CPU time for both), ``lines_per_s``
    and ``lines_per_cpu_s`` (lines over both passes' time), ``templates``, ``with_session``
    (lines with a session id), ``peak_rss_mib`` (this process's peak resident memory) and
    ``parser_mib`` (how far fitting and parsing raised it over the process before them: the
    interpreter and its modules). Run it in a fresh process per file (``python -m
    flexlog.parsing.throughput``) for memory figures that belong to that file alone.
    """
    log = Path(log)
    total = None
    if progress:
        with log.open("rb") as fh:
            total = 2 * sum(1 for _ in fh)
    bar = _progress(total, preset) if progress else None
    gc.collect()
    base = _peak_rss_mib()
    parser = TemplateParser(preset)
    report = IngestReport()
    cpu0 = time.process_time()
    start = time.perf_counter()
    parser.fit(_counted(read_log_lines(log, report), bar))
    fitted = time.perf_counter()
    with_session = 0
    for parsed in parser.iter_parse(_counted(read_log_lines(log, report), bar), str(log), report):
        with_session += parsed.session is not None
    done = time.perf_counter()
    cpu = time.process_time() - cpu0
    peak = _peak_rss_mib()
    if bar is not None:
        bar.close()
    n = report.accepted
    seconds = done - start
    return {
        "preset": preset,
        "lines": n,
        "rejected": report.rejected,
        "file_mib": log.stat().st_size / 2**20,
        "fit_s": fitted - start,
        "parse_s": done - fitted,
        "seconds": seconds,
        "cpu_s": cpu,
        "lines_per_s": n / seconds if seconds > 0 else 0.0,
        "lines_per_cpu_s": n / cpu if cpu > 0 else 0.0,
        "templates": len(parser.templates()),
        "with_session": with_session,
        "peak_rss_mib": peak,
        "parser_mib": max(peak - base, 0.0),
    }


def _progress(total: int | None, preset: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=f"{preset} fit + parse", unit="line", unit_scale=True, mininterval=1.0
    )


def _counted(lines: Iterator[tuple[int, str]], bar) -> Iterator[tuple[int, str]]:
    if bar is None:
        yield from lines
        return
    k = 0
    for item in lines:
        yield item
        k += 1
        if k == 50_000:
            bar.update(k)
            k = 0
    bar.update(k)


def main(argv: list[str] | None = None) -> int:
    """``python -m flexlog.parsing.throughput PRESET LOG [--progress]``: :func:`measure`'s row
    as one line of JSON on stdout (progress, if asked for, on stderr)."""
    args = list(sys.argv[1:] if argv is None else argv)
    progress = "--progress" in args
    args = [a for a in args if a != "--progress"]
    if len(args) != 2:
        print(main.__doc__, file=sys.stderr)
        return 2
    print(json.dumps(measure(args[0], args[1], progress=progress)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
