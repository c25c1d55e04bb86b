"""The sequence cache: answers for log sequences seen before, and human corrections.

See :mod:`flexlog.cache.sequence_cache` for how it works. The package, one concept a module:

* :mod:`~flexlog.cache.entries`: :class:`CacheEntry`, :class:`Correction`, :class:`CacheError`
* :mod:`~flexlog.cache.keys`: :func:`key_of`, validation and encoding of events, labels, votes
* :mod:`~flexlog.cache.eviction`: the eviction policy, as pure functions
* :mod:`~flexlog.cache.audit`: what set, delete and undo do, as pure functions; the audit trail
* :mod:`~flexlog.cache.memory`: the in-memory LRU (on cachetools) in front of a store
* :mod:`~flexlog.cache.store`: the :class:`Store` protocol
* :mod:`~flexlog.cache.memory_store`: :class:`MemoryStore`, for ``SequenceCache(None)``
* :mod:`~flexlog.cache.pending`: answers held for the next write (write-behind)
* :mod:`~flexlog.cache.sqlite`: :class:`SQLiteStore`, for ``SequenceCache(path)``
* :mod:`~flexlog.cache.postgres`: :class:`PostgresStore`, for ``SequenceCache("postgresql://...")``
* :mod:`~flexlog.cache.sequence_cache`: :class:`SequenceCache`, the facade
"""

from .entries import CacheEntry, CacheError, Correction
from .keys import key_of
from .memory_store import MemoryStore
from .postgres import PostgresStore
from .sequence_cache import SequenceCache
from .sqlite import APPLICATION_ID, SCHEMA_VERSION, SQLiteStore
from .store import Store

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "CacheEntry",
    "CacheError",
    "Correction",
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "SequenceCache",
    "Store",
    "key_of",
]
