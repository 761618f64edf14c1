"""AioCacheEngine: aiocache's caches as an async-native engine: memory (bounded) or Redis by URL."""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import urlsplit

import aiocache  # aiocache ships no type information: its objects are Any here
import cachetools
from aiocache.serializers import BaseSerializer

from twat_cache._report import warn
from twat_cache.config import CacheConfig
from twat_cache.engines.base import (
    ALL_POLICIES,
    MISS,
    BaseEngine,
    Capabilities,
    PersistentEngine,
)
from twat_cache.exceptions import ConfigurationError, SecurityWarning

if TYPE_CHECKING:
    from typing_extensions import Self

    from twat_cache.serializers import Serializer

__all__ = ["AioCacheEngine", "AioCacheMemory", "AioCacheRemote"]

#: Seconds a remote operation may wait to connect, and for an answer: a dead or hung server
#: then costs the caller a bounded delay (the wrapper calls the function instead), never a
#: hang. A URL's own ``socket_timeout``/``socket_connect_timeout`` query options win.
SOCKET_TIMEOUT: Final = 0.5
#: Keys asked per SCAN step, and removed per UNLINK, by `clear` and counted by `len`.
SCAN_BATCH: Final = 500

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
_MEMCACHED_SCHEMES = frozenset({"memcached"})
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")

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
# On a server, eviction is the server's (its maxmemory-policy): only expiry is ours.
_REMOTE = Capabilities(
    policies=frozenset({"lru", "ttl"}),
    ttl=True,
    persistent=True,
    shared=True,
    async_native=True,
    sync_api=False,
    needs_serialization=True,
)


class _Store(MutableMapping[Any, Any]):
    """The bounded store installed as aiocache's memory backend dict: a cachetools cache
    behind one lock, so that event loops in several threads can share one engine (an LRU
    read reorders entries, so even reads must not overlap)."""

    __slots__ = ("_cache", "_lock")

    def __init__(self, cache: Any) -> None:
        self._cache = cache
        self._lock = threading.Lock()

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


class _Bytes(BaseSerializer):  # type: ignore[misc]  # aiocache is untyped: a subclass of Any
    """Hands aiocache our finished payloads and gives them back untouched: values are
    serialized and signed by `twat_cache.serializers.Serializer`, never by aiocache."""

    DEFAULT_ENCODING = None  # aiocache then returns the stored bytes undecoded

    def dumps(self, value: bytes) -> bytes:
        return value

    def loads(self, value: bytes | None) -> bytes | None:
        return value


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


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:" if parts.username else ":"
    return parts._replace(netloc=f"{user}***@{host}").geturl()


class _LoopCache:
    """One aiocache remote cache, owned by one event loop (redis.asyncio connections
    belong to the loop that opened them), and the async generator that closes it when
    that loop shuts down."""

    __slots__ = ("cache", "keeper", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, cache: Any) -> None:
        self.loop = loop
        self.cache = cache
        self.keeper: Any = None


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
            flavour = AioCacheMemory if config is None or config.url is None else AioCacheRemote
            return super().__new__(flavour)  # type: ignore[return-value]  # a subclass of cls
        return super().__new__(cls)

    @classmethod
    def unsupported(cls, config: CacheConfig) -> str | None:
        url = config.url
        if url is None:
            reason = super().unsupported(config)
            if reason:
                return reason
            return _install(aiocache.SimpleMemoryCache(timeout=None), _memory_store(config, 1))
        scheme = urlsplit(url).scheme.lower()
        if scheme in _MEMCACHED_SCHEMES:
            if "memcached" not in aiocache.AIOCACHE_CACHES:
                return "aiocache serves memcached:// URLs only with aiomcache installed"
            # aiocache's memcached cache can neither list nor clear one namespace (its
            # clear() is flush_all), so len() and cache_clear() could not be exact.
            return (
                "memcached:// is not served: memcached cannot list or clear one cache's "
                "keys without flushing the whole server"
            )
        if scheme in _REDIS_SCHEMES:
            if "redis" not in aiocache.AIOCACHE_CACHES:
                return f"aiocache serves {scheme}:// URLs only with redis-py installed"
        else:
            return (
                "aiocache serves redis://, rediss:// and unix:// URLs, "
                f"not {scheme + '://' if scheme else repr(url)}"
            )
        if config.maxsize_given and config.maxsize is not None:
            return (
                f"aiocache cannot bound one cache on a shared server (maxsize="
                f"{config.maxsize}): the server's maxmemory bounds it; leave maxsize unset"
            )
        if config.folder_name is None:
            return "a remote aiocache cache needs a folder_name (its key namespace)"
        if "policy" in config.model_fields_set and config.policy not in _REMOTE.policies:
            return (
                "on a server, eviction follows the server's maxmemory-policy, not "
                f"policy={config.policy!r}"
            )
        return None

    def __init__(self, config: CacheConfig | None = None) -> None:
        super().__init__(config)
        self.url = self.config.url
        reason = type(self).unsupported(self.config)
        if reason:
            raise ConfigurationError(reason)

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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

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


class AioCacheRemote(AioCacheEngine):
    """aiocache's Redis cache (redis://, rediss://, unix:// URLs): one per event loop,
    signed payloads, keys under ``twat_cache:<folder_name>:``."""

    def __init__(self, config: CacheConfig | None = None) -> None:
        super().__init__(config)
        from twat_cache.paths import cache_root
        from twat_cache.serializers import Serializer, get_secret

        url = self.url
        assert url is not None  # unsupported() refused a config without one
        self.capabilities = _REMOTE  # type: ignore[misc]  # this instance is shared, persistent
        self.namespace = f"twat_cache:{self.config.folder_name}:"
        self._pattern = _GLOB_SPECIAL.sub(r"\\\1", self.namespace) + "*"
        secret = get_secret(cache_root()) if self.config.secure else None
        self.serializer: Serializer = Serializer(self.config, secret)
        self._loops: dict[asyncio.AbstractEventLoop, _LoopCache] = {}
        self._loops_lock = threading.Lock()
        self._sync_client: Any = None
        self._sync_lock = threading.Lock()
        self._rejections = itertools.count(1)  # next() is atomic: one warning, however raced

    @property
    def maxsize(self) -> int | None:
        """None: the server's maxmemory bounds a server cache, not this engine."""
        return None

    def key_of(self, key: Any) -> str:
        """The server key of `key`: the namespace, then the key itself when it is a str
        (what the wrapper passes), else a stable digest of it."""
        return self.namespace + PersistentEngine.key_text(key)

    @staticmethod
    def _built_key(key: str, namespace: str | None = None) -> str:
        return key  # `key_of` built it: aiocache must not add its own namespace

    def _new_cache(self) -> Any:
        url = self.url
        assert url is not None
        options: dict[str, Any] = {
            "serializer": _Bytes(),
            "key_builder": self._built_key,
            "timeout": None,  # no asyncio.wait_for per call: the sockets have timeouts
        }
        from redis.asyncio import ConnectionPool
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        def pool(**_aiocache_options: Any) -> Any:
            # The whole URL (scheme, credentials, db, query options) says where to
            # connect; aiocache's host/port options cannot express unix:// or rediss://.
            return ConnectionPool.from_url(
                url,
                decode_responses=False,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 1),  # one reconnect, e.g. after a server restart
            )

        return aiocache.AIOCACHE_CACHES["redis"](connection_pool_class=pool, **options)

    async def _cache(self) -> Any:
        """This event loop's aiocache cache, opened on its first use in the loop."""
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is None:
            entry = _LoopCache(loop, self._new_cache())
            entry.keeper = self._keep(entry)
            # Started in the loop, the generator is one the loop tracks: when asyncio.run()
            # ends, shutdown_asyncgens() closes it, and its `finally` closes the
            # connections inside the loop that owns them.
            await entry.keeper.__anext__()
            with self._loops_lock:
                self._loops[loop] = entry
        return entry.cache

    async def _keep(self, entry: _LoopCache) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._loops_lock:
                if self._loops.get(entry.loop) is entry:
                    del self._loops[entry.loop]
            await _close_cache(entry.cache)

    async def aget(self, key: Any, default: Any = None) -> Any:
        cache = await self._cache()
        full = self.key_of(key)
        payload = await cache.get(full)
        if payload is None:
            return default
        try:
            return self.serializer.loads(payload)
        except Exception as exc:  # forged, foreign or corrupt: a miss, and dropped
            await self._rejected(cache, full, exc)
            return default

    async def aset(self, key: Any, value: Any, ttl: float | None = None) -> None:
        seconds = self._check_ttl(ttl)
        payload = self.serializer.dumps(value)
        cache = await self._cache()
        # A float ttl is sent in milliseconds (PX); at least 1 ms, as 0 would be refused.
        expire = None if seconds is None else max(float(seconds), 0.001)
        await cache.set(self.key_of(key), payload, ttl=expire)

    async def adelete(self, key: Any) -> bool:
        cache = await self._cache()
        return bool(await cache.delete(self.key_of(key)))

    async def aexists(self, key: Any) -> bool:
        cache = await self._cache()
        return bool(await cache.exists(self.key_of(key)))

    async def aclear(self) -> None:
        client = (await self._cache()).client
        batch: list[bytes] = []
        async for key in client.scan_iter(match=self._pattern, count=SCAN_BATCH):
            batch.append(key)
            if len(batch) >= SCAN_BATCH:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)

    async def _rejected(self, cache: Any, full_key: str, exc: Exception) -> None:
        from twat_cache.logging import logger

        logger.warning("security: aiocache dropped an entry that failed verification: {}", exc)
        if next(self._rejections) == 1:
            warn(
                f"twat_cache security: the aiocache cache {self.namespace!r} on "
                f"{_redact(self.url or '')} held an entry that failed verification ({exc}); "
                "it was dropped and will be recomputed",
                SecurityWarning,
            )
        try:
            await cache.delete(full_key)
        except Exception as delete_error:  # the entry is a miss either way
            logger.warning("could not drop the rejected entry: {!r}", delete_error)

    async def aclose(self) -> None:
        """Close this event loop's connections now, other loops' in their own loop."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        entry = self._loops.get(loop) if loop is not None else None
        if entry is not None and entry.keeper is not None:
            await entry.keeper.aclose()
        self.close()

    # --- sync bookkeeping: a blocking redis client ---------------------------------------

    def _sync(self) -> Any:
        with self._sync_lock:
            if self._sync_client is None:
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                self._sync_client = redis.Redis.from_url(
                    self.url or "",
                    socket_timeout=SOCKET_TIMEOUT,
                    socket_connect_timeout=SOCKET_TIMEOUT,
                    retry=Retry(NoBackoff(), 1),
                )
            return self._sync_client

    def delete(self, key: Any) -> bool:
        return bool(self._sync().unlink(self.key_of(key)))

    def clear(self) -> None:
        client = self._sync()
        batch: list[bytes] = []
        for key in client.scan_iter(match=self._pattern, count=SCAN_BATCH):
            batch.append(key)
            if len(batch) >= SCAN_BATCH:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)

    def __len__(self) -> int:
        return sum(1 for _ in self._sync().scan_iter(match=self._pattern, count=SCAN_BATCH))

    def close(self) -> None:
        """Release connections: an idle loop's at once, a running loop's in that loop, a
        closed loop's were closed by its shutdown. A closed engine reopens them if used."""
        with self._loops_lock:
            entries = list(self._loops.values())
            self._loops.clear()
        for entry in entries:
            _stop(entry)
        with self._sync_lock:
            client, self._sync_client = self._sync_client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} url={_redact(self.url or '')!r}>"


def _stop(entry: _LoopCache) -> None:
    """Close a loop's cache from outside that loop: in the loop when it runs, at once when
    it is idle, not at all when it is closed (its shutdown closed it, or nothing can)."""
    loop = entry.loop
    if loop.is_closed() or entry.keeper is None:
        return
    if loop.is_running():
        asyncio.run_coroutine_threadsafe(entry.keeper.aclose(), loop)
    else:
        loop.run_until_complete(entry.keeper.aclose())


async def _close_cache(cache: Any) -> None:
    client = getattr(cache, "client", None)
    aclose: Callable[[], Coroutine[Any, Any, Any]] | None = getattr(client, "aclose", None)
    try:
        if aclose is not None:  # redis-py >= 5: aiocache's close() calls its deprecated close()
            await aclose()
        else:
            await cache.close()
    except Exception as exc:  # a dead server: nothing is left to release
        from twat_cache.logging import logger

        logger.debug("closing an aiocache connection failed: {!r}", exc)
