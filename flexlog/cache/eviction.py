"""The eviction policy, as pure functions.

When a store holds more than ``max_entries`` entries it evicts, in one batch, down to 90 % of
the bound: the least recently used *model* answers first; human corrections go only when
nothing else is left, again least recently used first. Batching keeps evictions rare (one
per 10 % of the bound written), so their cost does not fall on every write.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

__all__ = ["choose_victims", "evict_from_store", "excess", "victims_by_recency"]


def excess(count: int, max_entries: int) -> int:
    """How many of ``count`` entries to evict: none within the bound, else down to 90 % of it
    (to at least one entry below the bound, for tiny bounds)."""
    if count <= max_entries:
        return 0
    return count - max(1, max_entries * 9 // 10)


def choose_victims(
    count: int, max_entries: int, model: Iterable[str], human: Iterable[str]
) -> list[str]:
    """The keys to evict from a store of ``count`` entries bounded by ``max_entries``.

    ``model`` and ``human`` are the keys of each source, least recently used first. They are
    consumed lazily and only as far as needed, so a store can stream them from an index; the
    human keys are not even looked at while model answers remain.
    """
    n = excess(count, max_entries)
    if n == 0:
        return []
    victims = list(islice(model, n))
    if len(victims) < n:
        victims += islice(human, n - len(victims))
    return victims


def victims_by_recency(entries: Iterable[tuple[str, str, float]], max_entries: int) -> list[str]:
    """The same policy given every entry as ``(key, source, last_used)``: the keys to evict.

    Ties in ``last_used`` keep the order of ``entries``.
    """
    listing = sorted(entries, key=lambda e: e[2])
    return choose_victims(
        len(listing),
        max_entries,
        (key for key, source, _ in listing if source != "human"),
        (key for key, source, _ in listing if source == "human"),
    )


def evict_from_store(
    count: int,
    max_entries: int,
    *,
    stored: Callable[[str], Iterator[str]],
    recent: Any,
    held: Collection[str],
    fresh: Sequence[str],
    written: Callable[[str, list[str]], Collection[str]],
) -> list[str]:
    """The victims of a store on a file or a server, whose recency is in three places.

    Oldest first, per source: the rows ``stored(source)`` yields by ``last_used`` that are
    not in the in-memory LRU ``recent``; then the LRU's entries (their ``last_used`` is only
    written when they leave it), least recent first, except answers ``held`` for a write;
    then ``fresh``, the keys being written, in their order, as far as ``written(source,
    keys)`` finds them stored with that source. Read lazily, as :func:`choose_victims` asks.
    """
    spared = set(fresh)
    snapshot: list[Any] | None = None

    def by_recency(source: str) -> Iterator[str]:
        nonlocal snapshot
        rows = stored(source)
        try:
            yield from (key for key in rows if key not in recent and key not in spared)
        finally:
            rows.close()
        if snapshot is None:
            snapshot = recent.oldest_first()
        for e in snapshot:
            if e.source == source and e.key not in held and e.key not in spared:
                yield e.key
        found = written(source, list(spared)) if spared else ()
        yield from (key for key in fresh if key in found)

    model, human = by_recency("model"), by_recency("human")
    try:
        return choose_victims(count, max_entries, model, human)
    finally:
        model.close()
        human.close()
