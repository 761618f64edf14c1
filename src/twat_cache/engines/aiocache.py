"""AioCacheEngine: aiocache's caches as an async-native engine: memory (bounded) or Redis by URL."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Coroutine, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar

import aiocache  # aiocache ships no type information: its objects are Any here
import cachetools

from twat_cache._fork import renewed, reset_in_child
from twat_cache.config import CacheConfig
from twat_cache.engines.base import ALL_POLICIES, MISS, BaseEngine, Capabilities
from twat_cache.exceptions import ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import Self

    from twat_cache.engines._aiocache_remote import AioCacheRemote

__all__ = ["AioCacheEngine", "AioCacheMemory", "AioCacheRemote"]

_CLASSES: dict[str, Any] = {
    "lru": cachetools.LRUCache,
    "lfu": cachetools.LFUCache,
    "fifo": cachetools.FIFOCache,
    "rr": cachetools.RRCache,
}

_MEMORY = Capabilities(
    policies=ALL_POLICIES,
    ttl=True,
    ttl_policies=frozenset({"ttl", "lru"}),
    async_native=True,
    sync_api=False,
)


def __getattr__(name: str) -> Any:
    # The remote flavour lives in `_aiocache_remote`, which subclasses AioCacheEngine and
    # so imports this module: importing it here on first use, not at the top, keeps the
    # two importable in either order.
    if name == "AioCacheRemote":
        from twat_cache.engines._aiocache_remote import AioCacheRemote

        return AioCacheRemote
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Store(MutableMapping[Any, Any]):
    """The bounded store installed as aiocache's memory backend dict: a cachetools cache
    behind one lock, so that event loops in several threads can share one engine (an LRU
    read reorders entries, so even reads must not overlap)."""

    __slots__ = ("__weakref__", "_cache", "_lock")

    def __init__(self, cache: Any) -> None:
        self._cache = cache
        self._lock = threading.Lock()
        reset_in_child(self)

    def after_fork(self) -> None:
        # A thread of the parent may have held the lock at the fork (inside a key's __eq__,
        # say): a new one, and the entries it may have left half-updated are dropped.
        self._lock, held = renewed(self._lock)
        if held:
            self._cache.clear()

    def get(self, key: Any, default: Any = None) -> Any:
        # One lookup (cachetools' own get tests `in` first, then looks up again): the hit
        # path of the engine; an absent or expired key raises KeyError inside cachetools.
        with self._lock:
            try:
                return self._cache[key]
            except KeyError:
                return default

    def __getitem__(self, key: Any) -> Any:
        with self._lock:
            return self._cache[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._lock:
            self._cache[key] = value

    def __delitem__(self, key: Any) -> None:
        with self._lock:
            del self._cache[key]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._cache

    def pop(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            return self._cache.pop(key, default)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __iter__(self) -> Iterator[Any]:
        with self._lock:
            return iter(list(self._cache))

    def __len__(self) -> int:
        with self._lock:
            expire = getattr(self._cache, "expire", None)
            if expire is not None:
                expire()  # count live entries only
            return len(self._cache)

    @property
    def maxsize(self) -> float:
        return float(self._cache.maxsize)


def _drive(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (aiocache's memory operations) to its result."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the coroutine suspended")


def _memory_store(config: CacheConfig, bound: int | None) -> _Store:
    limit = math.inf if bound is None else bound
    if config.ttl is not None or config.policy == "ttl":
        # An entry's box carries its ttl (see `aset`), so expiry needs no shared state
        # between the caller and cachetools' callback.
        return _Store(cachetools.TLRUCache(maxsize=limit, ttu=_expiry, timer=time.monotonic))
    return _Store(_CLASSES[config.policy](maxsize=limit))


def _expiry(_key: Any, box: tuple[Any, float], now: float) -> float:
    return now + box[1]


def _install(cache: Any, store: _Store) -> str | None:
    """Make `store` the dict of aiocache's memory cache `cache`; why it cannot, or None.

    aiocache 0.12 keeps memory entries in its backend's `_cache` dict. If an installed
    aiocache keeps them elsewhere, a bound set on our store would silently not apply: the
    probe below runs one entry through the backend operations the engine uses and checks
    that each of them went through `store`.
    """
    version = getattr(aiocache, "__version__", "?")
    if not isinstance(getattr(cache, "_cache", None), dict):
        return (
            f"aiocache {version} keeps its memory entries in no `_cache` dict: its memory "
            "cache cannot be bounded"
        )
    cache._cache = store
    probe, box = ("twat_cache.probe", id(store)), (True, math.inf)  # a box of either shape
    try:
        _drive(cache._set(probe, box))
        stored = store.get(probe) == box
        read = _drive(cache._get(probe)) == box and _drive(cache._exists(probe)) is True
        deleted = _drive(cache._delete(probe)) == 1 and probe not in store
    except Exception as exc:  # any other layout: refuse rather than run unbounded
        return (
            f"aiocache {version}'s memory cache could not be probed ({exc!r}): it cannot be bounded"
        )
    finally:
        store.pop(probe, None)
    if not (stored and read and deleted):
        return (
            f"aiocache {version}'s memory cache does not keep its entries in the store "
            "installed for it: it cannot be bounded"
        )
    return None


class AioCacheEngine(BaseEngine):
    """An async-native engine on aiocache: its memory cache, or its Redis cache when the
    config has a ``url`` (building the class gives the flavour's subclass).
    It serves `async def` functions only; the sync `len`/`clear`/`delete`/`close` serve
    bookkeeping such as ``cache_info`` and ``cache_clear``.

    In memory, aiocache's store is replaced by a bounded cachetools cache (aiocache's own
    is an unbounded dict), so `maxsize` and the policy are honoured exactly, and expiry is
    kept by the store, not by aiocache's per-entry timers (which belong to one event loop
    and die with it). On a server, keys live under ``twat_cache:<folder_name>:``, payloads
    are signed by default, and the server's ``maxmemory`` bounds the cache.

    >>> import asyncio
    >>> engine = AioCacheEngine(CacheConfig(maxsize=2))
    >>> async def demo() -> list[object]:
    ...     for key in "abc":
    ...         await engine.aset(key, None if key == "c" else key.upper())
    ...     return [await engine.aget(key, MISS) for key in "abc"]
    >>> asyncio.run(demo())
    [MISS, 'B', None]
    >>> len(engine)
    2
    """

    name = "aiocache"
    capabilities: ClassVar[Capabilities] = _MEMORY

    def __new__(cls, config: CacheConfig | None = None) -> Self:
        if cls is AioCacheEngine:
            flavour: type[AioCacheEngine]
            if config is None or config.url is None:
                flavour = AioCacheMemory
            else:
                from twat_cache.engines._aiocache_remote import AioCacheRemote as flavour
            return super().__new__(flavour)  # type: ignore[return-value]  # a subclass of cls
        return super().__new__(cls)

    @classmethod
    def unsupported(cls, config: CacheConfig) -> str | None:
        url = config.url
        if url is not None:
            from twat_cache.engines._aiocache_remote import unsupported_url

            return unsupported_url(url, config)
        reason = super().unsupported(config)
        if reason:
            return reason
        return _install(aiocache.SimpleMemoryCache(timeout=None), _memory_store(config, 1))

    def __init__(self, config: CacheConfig | None = None) -> None:
        config = config if config is not None else CacheConfig()
        # Refused before the base classes see it: the remote flavour's would read (or
        # create) the signing secret for a config it then refuses.
        reason = type(self).unsupported(config)
        if reason:
            raise ConfigurationError(reason)
        super().__init__(config)

    # --- the async API: each flavour implements it ------------------------------------

    async def aget(self, key: Any, default: Any = None) -> Any:
        """The value stored under `key`, or `default` (the wrapper passes `MISS`)."""
        raise NotImplementedError

    async def aset(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """Store `value`; a per-entry `ttl` (seconds) only on an engine built with expiry."""
        raise NotImplementedError

    async def adelete(self, key: Any) -> bool:
        """Remove `key`; whether there was an entry."""
        raise NotImplementedError

    async def aexists(self, key: Any) -> bool:
        """Whether `key` holds a live entry."""
        raise NotImplementedError

    async def aclear(self) -> None:
        """Remove every entry of this cache (on a server: of its namespace only)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release connections; safe to call twice."""

    # --- sync: bookkeeping only ---------------------------------------------------------

    def _async_only(self, operation: str) -> TypeError:
        return TypeError(
            f"the aiocache engine is async-only: use `await engine.a{operation}(...)` "
            f"instead of engine.{operation}(...)"
        )

    def get(self, key: Any, default: Any = None) -> Any:
        raise self._async_only("get")

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        raise self._async_only("set")

    def exists(self, key: Any) -> bool:
        raise self._async_only("exists")


class AioCacheMemory(AioCacheEngine):
    """aiocache's `SimpleMemoryCache`, bounded by a cachetools store installed in it."""

    def __init__(self, config: CacheConfig | None = None) -> None:
        super().__init__(config)
        self._store = _memory_store(self.config, self.maxsize)
        # timeout=None: aiocache's default 5 s timeout runs every call through
        # asyncio.wait_for, a new task per operation; memory operations never block.
        self._aio = aiocache.SimpleMemoryCache(timeout=None)
        reason = _install(self._aio, self._store)
        if reason:
            raise ConfigurationError(reason)
        self._expiring = self.config.ttl is not None or self.config.policy == "ttl"
        # The backend's operations, not its public get/set: those add, on every call, a
        # read of the environment (AIOCACHE_DISABLE), plugin hooks, two clock reads and a
        # debug log, measured at ~20x the cost of the operation itself (3.9 us vs 0.18 us).
        # Nothing they add applies here: no plugins, no timeout, our own keys and boxes.
        self._get = self._aio._get
        self._set = self._aio._set
        self._delete = self._aio._delete
        self._exists = self._aio._exists

    async def aget(self, key: Any, default: Any = None) -> Any:
        # Entries are boxed in a tuple: aiocache answers None for an absent key, so a
        # stored None must not be None in its store.
        box = await self._get(key)
        return default if box is None else box[0]

    async def aset(self, key: Any, value: Any, ttl: float | None = None) -> None:
        seconds = self._check_ttl(ttl)
        if self._expiring:
            box: tuple[Any, ...] = (value, math.inf if seconds is None else seconds)
        else:
            box = (value,)
        # No ttl to aiocache: expiry is the store's (aiocache's timers die with their loop).
        await self._set(key, box)

    async def adelete(self, key: Any) -> bool:
        return bool(await self._delete(key))

    async def aexists(self, key: Any) -> bool:
        return bool(await self._exists(key))

    async def aclear(self) -> None:
        # Not aiocache's clear(): without a namespace it swaps our store for a plain dict.
        self._store.clear()

    def delete(self, key: Any) -> bool:
        return self._store.pop(key, MISS) is not MISS

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)
