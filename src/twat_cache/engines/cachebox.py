"""CacheboxEngine: the Rust-backed memory engine (first link of the memory chain)."""

from __future__ import annotations

import functools
import threading
from typing import Any

import cachebox

from twat_cache.config import CacheConfig
from twat_cache.engines.base import ALL_POLICIES, BaseEngine, Capabilities

__all__ = ["CacheboxEngine"]

_CLASSES: dict[str, Any] = {
    "lru": cachebox.LRUCache,
    "lfu": cachebox.LFUCache,
    "fifo": cachebox.FIFOCache,
    "rr": cachebox.RRCache,
    # VTTLCache, not TTLCache: TTLCache may grow past maxsize while its oldest entries are
    # fresh, and it has no per-entry ttl; VTTLCache evicts the nearest expiry when full.
    "ttl": cachebox.VTTLCache,
}


#: Seconds a forked child waits for its copy of a store to answer before replacing it.
PROBE_WAIT = 0.2


class CacheboxEngine(BaseEngine):
    """Memory engine on cachebox's thread-safe Rust caches: the fastest hit of the chain."""

    name = "cachebox"
    capabilities = Capabilities(policies=ALL_POLICIES, ttl=True, ttl_policies=frozenset({"ttl"}))

    def __init__(self, config: CacheConfig | None = None) -> None:
        super().__init__(config)
        self._ttl = self.config.ttl
        self._build()

    def _build(self) -> None:
        bound = self.maxsize
        policy = self.config.policy
        self._store: Any  # cachebox's classes share no usable base type
        if bound is None and policy != "ttl":
            # Unbounded on request (maxsize=None): a plain hash map, no eviction bookkeeping.
            self._store = cachebox.Cache(0)
        else:
            self._store = _CLASSES[policy](bound or 0)
        # The wrapper calls the store's own Rust methods: no Python frame in between.
        self.get = self._store.get  # type: ignore[method-assign]  # faster bound builtin
        if policy == "ttl":
            self.set = self._set_expiring  # type: ignore[method-assign]  # chosen once
            self.put = functools.partial(self._store.insert, ttl=self._ttl)  # type: ignore[method-assign]  # C partial
        else:
            self.set = self._set  # type: ignore[method-assign]  # chosen once
            self.put = self._store.insert  # type: ignore[method-assign]  # faster builtin

    def after_fork(self) -> None:
        """In a forked child: cachebox keeps its own lock while it calls a key's Python
        `__eq__`; a fork at that moment copies it held, and the store would block the child
        for ever. It is tried from a helper thread (waiting on it releases the GIL); a store
        that does not answer is replaced by an empty one, which the wrappers then use."""
        answered: list[int] = []
        probe = threading.Thread(
            target=lambda: answered.append(len(self._store)), daemon=True, name="twat-probe"
        )
        probe.start()
        probe.join(PROBE_WAIT)
        if answered:
            return
        self._build()
        from twat_cache._bypass import rebind

        rebind(self)

    def _set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        if ttl is not None:
            self._check_ttl(ttl)  # refuses a ttl this store cannot honour
        self._store.insert(key, value)

    def _set_expiring(self, key: Any, value: Any, ttl: float | None = None) -> None:
        self._store.insert(key, value, self._ttl if ttl is None else self._check_ttl(ttl))

    def get(self, key: Any, default: Any = None) -> Any:
        return self._store.get(key, default)

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        self._set(key, value, ttl)

    def delete(self, key: Any) -> bool:
        return self._store.pop(key, _ABSENT) is not _ABSENT

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        if self.config.policy == "ttl":
            self._store.expire()  # expiry is lazy: drop stale entries before counting
        return len(self._store)


_ABSENT = object()
