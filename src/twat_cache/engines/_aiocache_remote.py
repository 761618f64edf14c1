"""AioCacheRemote: aiocache's Redis cache, one per event loop, with signed namespaced entries."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

import aiocache  # aiocache ships no type information: its objects are Any here
from aiocache.serializers import BaseSerializer

from twat_cache._fork import reset_in_child
from twat_cache.config import CacheConfig
from twat_cache.engines.aiocache import AioCacheEngine
from twat_cache.engines.base import Capabilities, SerializingEngine
from twat_cache.serializers import ExpiredPayloadError

__all__ = ["AioCacheRemote", "unsupported_url"]

#: Seconds a remote operation may wait to connect, and for an answer: a dead or hung server
#: then costs the caller a bounded delay (the wrapper calls the function instead), never a
#: hang. A URL's own ``socket_timeout``/``socket_connect_timeout`` query options win.
SOCKET_TIMEOUT: Final = 0.5
#: Keys asked per SCAN step, and removed per UNLINK, by `clear` and counted by `len`.
SCAN_BATCH: Final = 500

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
_MEMCACHED_SCHEMES = frozenset({"memcached"})

# On a server, eviction is the server's (its maxmemory-policy): only expiry is ours. The
# policies accepted are those the server's own eviction approximates for a cache written
# once and read many times (lru, or by age: fifo, ttl); lfu and rr are refused.
_REMOTE = Capabilities(
    policies=frozenset({"lru", "fifo", "ttl"}),
    ttl=True,
    persistent=True,
    shared=True,
    async_native=True,
    sync_api=False,
    needs_serialization=True,
)


def unsupported_url(url: str, config: CacheConfig) -> str | None:
    """Why aiocache cannot serve `config`, whose ``url`` is `url`, exactly; or None."""
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


class _Bytes(BaseSerializer):  # type: ignore[misc]  # aiocache is untyped: a subclass of Any
    """Hands aiocache our finished payloads and gives them back untouched: values are
    serialized and signed by `twat_cache.serializers.Serializer`, never by aiocache."""

    DEFAULT_ENCODING = None  # aiocache then returns the stored bytes undecoded

    def dumps(self, value: bytes) -> bytes:
        return value

    def loads(self, value: bytes | None) -> bytes | None:
        return value


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:" if parts.username else ":"
    return parts._replace(netloc=f"{user}***@{host}").geturl()


class AioCacheRemote(AioCacheEngine, SerializingEngine):
    """aiocache's Redis cache (redis://, rediss://, unix:// URLs): one per event loop,
    signed payloads, keys under ``twat_cache:<folder_name>:``."""

    capabilities: ClassVar[Capabilities] = _REMOTE

    def __init__(self, config: CacheConfig | None = None) -> None:
        super().__init__(config)
        url = self.config.url
        assert url is not None  # AioCacheEngine(config) picks this flavour only with a url
        self.url = url
        from twat_cache.engines.redis import key_space  # redis-py is there: a redis URL

        # Encoded as the redis engine's names are: a folder_name with `:`, `{` or a glob
        # character can then never share, match or clear another cache's keys.
        self.namespace = f"twat_cache:{key_space(self.config.folder_name or '')}:"
        self._pattern = self.namespace + "*"
        from twat_cache.engines._redis_clients import PerLoop

        # One aiocache cache per event loop (see PerLoop: freed with its loop).
        self._per_loop: PerLoop[Any] = PerLoop(self._new_cache, _client_of, _close_cache)
        self._sync_client: Any = None
        self._sync_lock = threading.Lock()
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: the blocking client is opened afresh on its next use."""
        self._sync_lock = threading.Lock()
        self._sync_client = None

    @property
    def _loops(self) -> dict[Any, Any]:
        """The event loops holding a cache of this engine now."""
        return self._per_loop.entries

    @property
    def maxsize(self) -> int | None:
        """None: the server's maxmemory bounds a server cache, not this engine."""
        return None

    @property
    def location(self) -> str:
        return f"{self.namespace!r} on {_redact(self.url)}"

    def key_of(self, key: Any) -> str:
        """The server key of `key`: the namespace, then the key itself when it is a str
        (what the wrapper passes), else a stable digest of it."""
        return self.namespace + self.key_text(key)

    @staticmethod
    def _built_key(key: str, namespace: str | None = None) -> str:
        return key  # `key_of` built it: aiocache must not add its own namespace

    def _new_cache(self) -> Any:
        url = self.url
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        from twat_cache.engines._redis_clients import async_pool

        def pool(**_aiocache_options: Any) -> Any:
            # The whole URL (scheme, credentials, db, query options) says where to
            # connect; aiocache's host/port options cannot express unix:// or rediss://.
            # A burst of tasks waits for a free connection instead of failing.
            return async_pool(
                url,
                decode_responses=False,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 1),  # one reconnect, e.g. after a server restart
            )

        return aiocache.AIOCACHE_CACHES["redis"](
            connection_pool_class=pool,
            serializer=_Bytes(),
            key_builder=self._built_key,
            timeout=None,  # no asyncio.wait_for per call: the sockets have timeouts
        )

    async def _cache(self) -> Any:
        """This event loop's aiocache cache, opened on its first use in the loop."""
        return await self._per_loop.get()

    async def aget(self, key: Any, default: Any = None) -> Any:
        cache = await self._cache()
        full = self.key_of(key)
        payload = await cache.get(full)
        if payload is None:
            return default
        try:
            # Bound to its key (signed with it): an entry copied under another key fails.
            return self.serializer.loads(payload, full.encode())
        except ExpiredPayloadError:  # replayed after its signed expiry: a plain miss
            return default
        except Exception as exc:  # forged, foreign or corrupt: a miss, and dropped
            await self.arejected(key, exc)
            return default

    async def aset(self, key: Any, value: Any, ttl: float | None = None) -> None:
        seconds = self._check_ttl(ttl)
        full = self.key_of(key)
        expires = None if seconds is None else time.time() + seconds
        payload = self.serializer.dumps(value, full.encode(), expires)
        cache = await self._cache()
        # A float ttl is sent in milliseconds (PX); at least 1 ms, as 0 would be refused.
        expire = None if seconds is None else max(float(seconds), 0.001)
        await cache.set(full, payload, ttl=expire)

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

    async def aclose(self) -> None:
        """Close this event loop's connections now, other loops' in their own loop."""
        await self._per_loop.aclose_current()
        self.close()

    # --- sync bookkeeping: a blocking redis client ---------------------------------------

    def _sync(self) -> Any:
        with self._sync_lock:
            if self._sync_client is None:
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                from twat_cache.engines._redis_clients import sync_pool

                pool = sync_pool(
                    self.url,
                    socket_timeout=SOCKET_TIMEOUT,
                    socket_connect_timeout=SOCKET_TIMEOUT,
                    retry=Retry(NoBackoff(), 1),
                )
                self._sync_client = redis.Redis.from_pool(pool)
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
        self._per_loop.close()
        with self._sync_lock:
            client, self._sync_client = self._sync_client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} url={_redact(self.url)!r}>"


def _client_of(cache: Any) -> Any:
    return getattr(cache, "client", None)


async def _close_cache(cache: Any) -> None:
    client: Any = getattr(cache, "client", None)
    aclose: Callable[[], Coroutine[Any, Any, Any]] | None = getattr(client, "aclose", None)
    try:
        if aclose is not None:  # redis-py >= 5: aiocache's close() calls its deprecated close()
            await aclose()
            # aiocache hands the client our pool, which the client's close leaves open.
            await client.connection_pool.disconnect()
        else:
            await cache.close()
    except Exception as exc:  # a dead server: nothing is left to release
        from twat_cache.logging import logger

        logger.debug("closing an aiocache connection failed: {!r}", exc)
