"""Regenerate ``syscalls_i386.jsonl``: i386 system-call numbers, names and one-line descriptions.

ADFA-LD traces are i386 system-call numbers. Names come from the kernel headers
(``asm/unistd_32.h``); descriptions from the NAME line of each section-2 man page
(Debian package ``manpages-dev``). Run from anywhere::

    python knowledge/build_syscalls.py [--header H] [--man-dir D] [--out F]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

HEADER = Path("/usr/include/x86_64-linux-gnu/asm/unistd_32.h")
MAN_DIR = Path("/usr/share/man/man2")
OUT = Path(__file__).with_name("syscalls_i386.jsonl")

_NR = re.compile(r"^#define\s+__NR_(\w+)\s+(\d+)\s*$")


def read_numbers(header: Path) -> dict[int, str]:
    """Map i386 system-call number to name from ``#define __NR_<name> <n>`` lines."""
    table = {}
    for line in header.read_text().splitlines():
        m = _NR.match(line)
        if m:
            table[int(m.group(2))] = m.group(1)
    if not table:
        raise SystemExit(f"{header}: no __NR_ definitions found")
    return table


def _man_text(man_dir: Path, name: str, depth: int = 0) -> str | None:
    page = man_dir / f"{name}.2.gz"
    if not page.exists() or depth > 3:
        return None
    with gzip.open(page, "rt", encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    so = re.match(r"\.so\s+man2/(\S+)\.2", text.strip())
    if so:  # a redirect page: ".so man2/other.2"
        return _man_text(man_dir, so.group(1), depth + 1)
    return text


def describe(man_dir: Path, name: str) -> str:
    """The NAME line's description ("open and possibly create a file"), or '' if no page."""
    candidates = [name, name.removesuffix("64"), name.removesuffix("32"), name.lstrip("_")]
    if name.startswith("old"):
        candidates.append(name[3:])
    for cand in candidates:
        text = _man_text(man_dir, cand)
        if not text:
            continue
        m = re.search(r"^\.SH NAME\s*\n(.+?)(?=^\.SH)", text, re.S | re.M)
        if not m:
            continue
        line = " ".join(m.group(1).split())
        if "\\-" in line:
            return line.split("\\-", 1)[1].strip().replace("\\", "")
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--header", type=Path, default=HEADER)
    ap.add_argument("--man-dir", type=Path, default=MAN_DIR)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    numbers = read_numbers(args.header)
    with args.out.open("w", encoding="utf-8") as fh:
        for number, name in sorted(numbers.items()):
            record = {
                "key": name,
                "kind": "syscall",
                "number": number,
                "description": describe(args.man_dir, name),
            }
            fh.write(json.dumps(record) + "\n")
    described = sum(1 for n in numbers.values() if describe(args.man_dir, n))
    print(f"wrote {len(numbers)} system calls ({described} described) to {args.out}")


if __name__ == "__main__":
    main()
