"""The in-memory LRU in front of a store, on :class:`cachetools.LRUCache`.

It holds the most recently used entries, so a lookup that finds its answer here costs no
store access, and it tells the store (``on_evict``) when an entry leaves it: the store then
records that entry's recency. While an entry sits in the LRU it is by construction more
recent than anything the store holds, which is how recency costs no write per lookup.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cachetools import Cache, LRUCache

from .entries import CacheEntry

__all__ = ["MemoryLRU", "approx_entries_bytes", "approx_table_bytes"]

# Entries sampled to estimate the memory footprint.
SIZE_SAMPLE = 64


class _NotifyingLRU(LRUCache):
    """An LRUCache that reports each entry it pushes out (cachetools evicts via popitem)."""

    def __init__(self, maxsize: int, on_evict: Callable[[str, CacheEntry], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, CacheEntry]:
        key, entry = super().popitem()
        self._on_evict(key, entry)
        return key, entry


class MemoryLRU:
    """At most ``capacity`` entries, least recently used pushed out first (0: holds nothing).

    ``on_evict(key)`` is called for each entry pushed out by the bound (not for
    :meth:`discard`, :meth:`drain` or :meth:`clear`), and, with capacity 0, for each entry
    offered to :meth:`put`. Not thread-safe: the cache's lock guards it.
    """

    def __init__(self, capacity: int, on_evict: Callable[[str], None]) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.evictions = 0  # entries pushed out by the bound
        self._on_evict = on_evict
        self._lru = _NotifyingLRU(max(capacity, 1), self._pushed_out)

    def _pushed_out(self, key: str, _entry: CacheEntry) -> None:
        self.evictions += 1
        self._on_evict(key)

    def get(self, key: str) -> CacheEntry | None:
        """The entry of ``key``, now the most recently used; None if absent."""
        try:
            return self._lru[key]
        except KeyError:
            return None

    def get_many(self, keys: Sequence[str]) -> list[CacheEntry | None]:
        """The entries of ``keys`` (None where absent), each now the most recently used."""
        lru = self._lru
        if not len(lru):
            return [None] * len(keys)
        getitem = lru.__getitem__
        found: list[CacheEntry | None] = []
        append = found.append
        for key in keys:
            try:
                append(getitem(key))
            except KeyError:
                append(None)
        return found

    def peek(self, key: str) -> CacheEntry | None:
        """The entry of ``key`` without changing its recency; None if absent."""
        return _peek(self._lru, key)

    def put(self, entry: CacheEntry) -> None:
        """Store ``entry`` as the most recently used, pushing out the least recent if full."""
        if self.capacity == 0:
            self._on_evict(entry.key)
            return
        self._lru[entry.key] = entry

    def discard(self, key: str) -> CacheEntry | None:
        """Remove ``key``; its entry, or None."""
        return self._lru.pop(key, None)

    def discard_many(self, keys: Iterable[str]) -> None:
        pop = self._lru.pop
        for key in keys:
            pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    def drain(self) -> list[CacheEntry]:
        """Empty the LRU; its entries, least recently used first."""
        entries = []
        popitem = LRUCache.popitem  # the plain one: leaving this way is no eviction
        while len(self._lru):
            entries.append(popitem(self._lru)[1])
        return entries

    def oldest_first(self) -> list[CacheEntry]:
        """A snapshot of the entries, least recently used first.

        cachetools keeps its order private, so this drains and refills the LRU in the same
        order: O(n), for the rare paths that need the order (eviction of LRU entries from the
        store, closing), never for lookups.
        """
        entries = self.drain()
        for entry in entries:
            self._lru[entry.key] = entry
        return entries

    def clear(self) -> None:
        """Forget every entry (no ``on_evict`` calls)."""
        self._lru = _NotifyingLRU(max(self.capacity, 1), self._pushed_out)

    def approx_bytes(self) -> int:
        """Estimate of the memory the LRU holds (see :func:`approx_entries_bytes`): its key
        table and its recency order (a second table plus a 32-byte list node per entry)."""
        n = len(self._lru)
        sample = [_peek(self._lru, key) for key in itertools.islice(iter(self._lru), SIZE_SAMPLE)]
        return 2 * approx_table_bytes(n) + 32 * n + approx_entries_bytes(sample, n)


def _peek(lru: LRUCache, key: str) -> Any:
    try:
        return Cache.__getitem__(lru, key)  # the base class's lookup: no recency update
    except KeyError:
        return None


def approx_table_bytes(n: int) -> int:
    """Approximate size of a CPython dict of ``n`` entries (hash index plus entry table)."""
    capacity = 8
    while capacity * 2 // 3 < n:
        capacity *= 2
    width = 1 if capacity <= 128 else 2 if capacity <= 2**15 else 4 if capacity <= 2**31 else 8
    return 64 + capacity * width + (capacity * 2 // 3) * 24


def approx_entries_bytes(sample: list[CacheEntry], n: int) -> int:
    """Memory of ``n`` entries extrapolated from a sample of them.

    An entry is its key string, the CacheEntry, its votes dict and its events tuple; the
    distinct event and voter-name strings of the sample are added once, because the cache
    interns event strings, so they are shared by all entries rather than owned by one.
    """
    if not sample or n == 0:
        return 0
    size = 0
    shared: dict[int, int] = {}
    for e in sample:
        size += sys.getsizeof(e.key) + sys.getsizeof(e) + sys.getsizeof(e.votes)
        size += sys.getsizeof(e.events)
        for s in itertools.chain(e.events, e.votes):
            shared[id(s)] = sys.getsizeof(s)
    return size * n // len(sample) + sum(shared.values())
