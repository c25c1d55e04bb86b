"""A synthetic application log for the raw-log tests: normal request lines and faults, each
line labelled in its first field (``FAIL`` or ``-``), as BGL and Thunderbird label theirs."""

from __future__ import annotations

import random

FMT = "<Label> <Date> <Time> <Level> <Component>: <Content>"
NORMAL = [
    ("INFO", "web", "GET /api/items/{n} answered 200 in {ms} ms"),
    ("INFO", "db", "query on table orders took {ms} ms"),
    ("INFO", "cache", "hit ratio {pct} percent for shard {n}"),
    ("DEBUG", "web", "session {hex} renewed for user u{n}"),
]
FAULTS = [
    ("ERROR", "db", "connection reset by peer after {ms} ms"),
    ("ERROR", "disk", "write failure on /dev/sd{c} sector {n}"),
    ("WARN", "web", "worker {n} restarted after crash"),
]
#: In the upgraded version, this message is reworded.
REWORDED = {"query on table orders took {ms} ms": "query on table orders completed in {ms} ms"}


def pick(rng: random.Random, fault: bool, *, upgraded: bool = False) -> tuple[str, str, str, str]:
    """A line's level, component, message template and message."""
    level, comp, text = rng.choice(FAULTS if fault else NORMAL)
    if upgraded and not fault:
        text = REWORDED.get(text, text)
    message = text.format(
        n=rng.randint(1, 9999),
        ms=rng.randint(1, 900),
        pct=rng.randint(50, 99),
        hex=f"{rng.getrandbits(32):08x}",
        c="abc"[rng.randint(0, 2)],
    )
    return level, comp, text, message
