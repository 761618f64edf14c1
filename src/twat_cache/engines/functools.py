"""FunctoolsEngine: the stdlib-only memory engine, last link of every chain."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from twat_cache.config import CacheConfig
from twat_cache.engines.base import MISS, BaseEngine, Capabilities

__all__ = ["FunctoolsEngine"]


class FunctoolsEngine(BaseEngine):
    """Memory engine built on the standard library alone, so a chain always ends somewhere.

    Unbounded (`maxsize=None`, no ttl) it is a plain dict, as `functools.cache` is. Bounded,
    it keeps entries in an `OrderedDict` (the stdlib's LRU building block, as
    `functools.lru_cache`'s pure-Python version does) under a lock: 'lru' moves an entry to
    the end on a hit, 'fifo' does not, 'ttl' stores each entry's deadline beside it and
    evicts like 'lru'. It has no 'lfu' or 'rr'.
    """

    name = "functools"
    capabilities = Capabilities(
        policies=frozenset({"lru", "fifo", "ttl"}), ttl=True, ttl_policies=frozenset({"ttl", "lru"})
    )

    def __init__(self, config: CacheConfig | None = None) -> None:
        super().__init__(config)
        self._lock = threading.Lock()
        self._bound = self.maxsize
        self._expiring = self.config.ttl is not None or self.config.policy == "ttl"
        self._recency = self.config.policy != "fifo"
        self._store: OrderedDict[Any, Any] = OrderedDict()
        self._plain: dict[Any, Any] | None = None
        if self._bound is None and not self._expiring:
            self._plain = {}
            self.get = self._plain.get  # type: ignore[method-assign,assignment]  # dict.get: fastest

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            entry = self._store.get(key, MISS)
            if entry is MISS:
                return default
            if self._expiring:
                deadline, value = entry
                if deadline is not None and deadline <= time.monotonic():
                    del self._store[key]
                    return default
            else:
                value = entry
            if self._recency:
                self._store.move_to_end(key)
            return value

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        seconds = self._check_ttl(ttl)
        if self._plain is not None:
            self._plain[key] = value
            return
        entry = (
            (time.monotonic() + seconds if seconds else None, value) if self._expiring else value
        )
        with self._lock:
            self._store[key] = entry
            self._store.move_to_end(key)
            if self._bound is not None:
                while len(self._store) > self._bound:
                    self._store.popitem(last=False)

    def delete(self, key: Any) -> bool:
        if self._plain is not None:
            return self._plain.pop(key, MISS) is not MISS
        with self._lock:
            entry = self._store.pop(key, MISS)
        if entry is MISS:
            return False
        if self._expiring:  # an expired entry was already gone as far as a reader knows
            deadline = entry[0]
            return deadline is None or deadline > time.monotonic()
        return True

    def clear(self) -> None:
        if self._plain is not None:
            self._plain.clear()
        with self._lock:
            self._store.clear()

    def __len__(self) -> int:
        if self._plain is not None:
            return len(self._plain)
        with self._lock:
            if self._expiring:
                now = time.monotonic()
                stale = [k for k, (d, _) in self._store.items() if d is not None and d <= now]
                for k in stale:
                    del self._store[k]
            return len(self._store)
