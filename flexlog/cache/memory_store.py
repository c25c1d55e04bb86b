"""The store of an in-memory cache (``SequenceCache(None)``): entries and corrections in this
process's memory, lost when it ends."""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .audit import Logged
from .entries import CacheEntry, Correction
from .eviction import choose_victims
from .memory import SIZE_SAMPLE, approx_entries_bytes, approx_table_bytes
from .store import HUMAN, SAVED, Answer, Changes, Decide, EditResult, Recent, WriteResult

__all__ = ["MemoryStore"]


class MemoryStore:
    """Entries in recency order (least recently used first), bounded by ``max_entries``, and
    their corrections. Implements :class:`~flexlog.cache.store.Store`; never fails."""

    location = None
    read_only = False
    in_memory = True
    shared = False

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._humans = 0
        self._log: dict[str, list[Logged]] = {}
        self._next_id = 1
        self._evictions = 0

    def fetch_many(self, wanted: Mapping[str, Sequence[str] | None]) -> dict[str, CacheEntry]:
        entries = self._entries
        return {key: entries[key] for key in wanted if key in entries}

    def put_answers(self, answers: Mapping[str, Answer], recent: Recent) -> WriteResult:
        outcomes: dict[str, str] = {}
        for key, (events, label, votes, _) in answers.items():
            old = self._entries.get(key)
            if old is not None and old.is_human:
                outcomes[key] = HUMAN
            else:
                self._set(key, CacheEntry(key, events, label, "model", votes))
                outcomes[key] = SAVED
        return WriteResult(
            outcomes, self._evict(recent, [k for k, o in outcomes.items() if o == SAVED])
        )

    def edit(
        self,
        key: str,
        decide: Decide,
        *,
        actor: str,
        comment: str | None,
        memory: CacheEntry | None,
        recent: Recent,
    ) -> EditResult:
        current = self._entries.get(key, memory)
        change = decide(current, lambda: list(self._log.get(key, ())))
        if change is None:
            return EditResult(None, None)
        self._set(key, change.after)
        correction = change.correction(self._next_id, time.time(), actor, comment)
        self._next_id += 1
        before_votes = None if change.before is None else change.before.votes
        self._log.setdefault(key, []).append(Logged(correction, change.events, before_votes))
        evicted = self._evict(recent, [key] if change.after is not None else [])
        return EditResult(change, correction, evicted)

    def history(self, key: str) -> list[Correction]:
        return [item.correction for item in self._log.get(key, ())]

    def corrected(self) -> list[CacheEntry]:
        return sorted((e for e in self._entries.values() if e.is_human), key=lambda e: e.key)

    def changes(self, since: Any) -> Changes:
        return Changes(None, [])  # only this process changes it, through the cache

    def touch(self, key: str) -> None:
        if key in self._entries:
            self._entries.move_to_end(key)

    def counts(self) -> tuple[int, int]:
        return len(self._entries), self._humans

    def clear(self) -> None:
        self._entries.clear()
        self._humans = 0
        self._log.clear()  # ids keep increasing: an id is never reused

    def drop_model_answers(self) -> int:
        models = [key for key, entry in self._entries.items() if not entry.is_human]
        for key in models:
            del self._entries[key]  # the human count is unchanged
        return len(models)

    def stats(self) -> dict[str, Any]:
        n = len(self._entries)
        sample = list(itertools.islice(self._entries.values(), SIZE_SAMPLE))
        memory = approx_table_bytes(n) + 32 * n + approx_entries_bytes(sample, n)
        return {
            "evictions": self._evictions,
            "unsaved": 0,
            "db_bytes": 0,
            "approx_memory_bytes": memory,
        }

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ internals

    def _set(self, key: str, entry: CacheEntry | None) -> None:
        """Store ``entry`` as the most recent (None: remove the key), keeping the human count."""
        old = self._entries.pop(key, None)
        if old is not None and old.is_human:
            self._humans -= 1
        if entry is not None:
            self._entries[key] = entry
            self._humans += entry.is_human

    def _evict(self, recent: Recent, fresh: list[str]) -> list[str]:
        """Evict over the bound: entries not in ``recent`` by recency, then those in it, then
        the ``fresh`` keys just written (already the most recent here)."""
        if len(self._entries) <= self.max_entries:
            return []
        spared = set(fresh)
        entries = self._entries

        def by_recency(source: str) -> Iterator[str]:
            for key, entry in entries.items():
                if entry.source == source and key not in recent and key not in spared:
                    yield key
            for seen in recent.oldest_first():
                entry = entries.get(seen.key)
                if entry is not None and entry.source == source and seen.key not in spared:
                    yield seen.key
            for key in fresh:
                if key in entries and entries[key].source == source:
                    yield key

        model, human = by_recency("model"), by_recency("human")
        try:
            victims = choose_victims(len(entries), self.max_entries, model, human)
        finally:
            model.close()
            human.close()
        for key in victims:
            self._set(key, None)
        self._evictions += len(victims)
        return victims
