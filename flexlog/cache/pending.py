"""Write-behind: model answers a store could not write yet, kept for the next write.

A store on a file or a server must not break the hot path when it is locked or unreachable:
:meth:`~flexlog.cache.store.Store.put_answers` then keeps the answers here and writes them
with its next successful write. Human corrections never wait here: they fail loudly instead.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Collection, Mapping

from .entries import CacheEntry
from .store import HUMAN, UNSAVED, Answer

__all__ = ["PendingAnswers"]


class PendingAnswers:
    """Answers waiting to be written, oldest first, at most ``limit`` (the oldest are dropped
    beyond it: they are only model answers, which the voters can give again)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._answers: OrderedDict[str, Answer] = OrderedDict()

    def with_new(self, answers: Mapping[str, Answer]) -> OrderedDict[str, Answer]:
        """What to write now: the held answers first, then ``answers`` (which win for a key)."""
        todo = OrderedDict(self._answers)
        todo.update(answers)
        return todo

    def hold(self, todo: Mapping[str, Answer], humans: Collection[str]) -> dict[str, str]:
        """After a failed write of ``todo``: keep its answers, except for the keys known to
        hold a human correction (``humans``). The outcome of each key."""
        outcomes = {}
        held = self._answers
        for key, answer in todo.items():
            if key in humans:
                held.pop(key, None)
                outcomes[key] = HUMAN
            else:
                held[key] = answer
                held.move_to_end(key)
                outcomes[key] = UNSAVED
        while len(held) > self.limit:
            held.popitem(last=False)
        return outcomes

    def entry(self, key: str) -> CacheEntry | None:
        """The held answer of ``key`` as the entry it will be, or None."""
        held = self._answers.get(key)
        if held is None:
            return None
        return CacheEntry(key, held.events, held.label, "model", held.votes)

    def pop(self, key: str) -> None:
        self._answers.pop(key, None)

    def clear(self) -> None:
        self._answers.clear()

    def snapshot(self) -> OrderedDict[str, Answer]:
        return OrderedDict(self._answers)

    def __contains__(self, key: object) -> bool:
        return key in self._answers

    def __len__(self) -> int:
        return len(self._answers)

    def approx_bytes(self) -> int:
        return sys.getsizeof(self._answers)
