"""CachetoolsEngine: the pure-Python memory engine (second link of the memory chain)."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any

import cachetools

from twat_cache.config import CacheConfig
from twat_cache.engines.base import ALL_POLICIES, MISS, BaseEngine, Capabilities

__all__ = ["CachetoolsEngine"]

_CLASSES: dict[str, Any] = {
    "lru": cachetools.LRUCache,
    "lfu": cachetools.LFUCache,
    "fifo": cachetools.FIFOCache,
    "rr": cachetools.RRCache,
}


class CachetoolsEngine(BaseEngine):
    """Memory engine on cachetools' caches, made thread-safe with one lock.

    cachetools' caches are not thread-safe (an LRU read reorders entries), so every
    operation holds the engine's lock. A ttl is served by `TLRUCache` (LRU eviction,
    expired entries first), whether the policy is 'ttl' or an explicit 'lru'.
    """

    name = "cachetools"
    capabilities = Capabilities(
        policies=ALL_POLICIES, ttl=True, ttl_policies=frozenset({"ttl", "lru"})
    )

    def __init__(self, config: CacheConfig | None = None) -> None:
        super().__init__(config)
        bound = self.maxsize
        limit = math.inf if bound is None else bound
        self._lock = threading.RLock()
        self._expiring = self.config.ttl is not None or self.config.policy == "ttl"
        self._next_ttl = self.config.ttl or math.inf
        if self._expiring:
            # Any: cachetools >= 6 ships types in which the base Cache has no expire().
            self._store: Any = cachetools.TLRUCache(
                maxsize=limit, ttu=self._time_to_use, timer=time.monotonic
            )
        else:
            self._store = _CLASSES[self.config.policy](maxsize=limit)

    def _time_to_use(self, _key: Any, _value: Any, now: float) -> float:
        # TLRUCache asks for the expiry while `set` holds the lock, so the ttl of the entry
        # being inserted is the one `set` just recorded.
        return now + self._next_ttl

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            return self._store.get(key, default)

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        seconds = self._check_ttl(ttl)
        with self._lock:
            if self._expiring:
                self._next_ttl = seconds if seconds is not None else math.inf
            # cachetools refuses a value larger than the whole cache: it is simply not stored.
            with contextlib.suppress(ValueError):
                self._store[key] = value

    def delete(self, key: Any) -> bool:
        with self._lock:
            return self._store.pop(key, MISS) is not MISS

    def clear(self) -> None:
        with self._lock:
            self._store.clear()

    def __len__(self) -> int:
        with self._lock:
            if self._expiring:
                self._store.expire()
            return len(self._store)
