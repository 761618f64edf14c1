"""RedisEngine: caches shared by processes and machines on a Redis (or Valkey) server."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from typing import Any, ClassVar

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from twat_cache._fork import reset_in_child
from twat_cache.config import REDIS_URL_ENV, CacheConfig
from twat_cache.engines._redis_breaker import FAILURES_TO_OPEN, breaker_for, server_name
from twat_cache.engines._redis_clients import (
    PerLoop,
    async_pool,
    not_the_servers,
    reply_lost,
    shielded,
    sync_pool,
)
from twat_cache.engines._redis_scripts import scripts_of
from twat_cache.engines.base import Capabilities, SerializingEngine
from twat_cache.exceptions import ConfigurationError
from twat_cache.serializers import ExpiredPayloadError, PayloadError, UnserializableError

__all__ = ["DEFAULT_REMOTE_MAXSIZE", "FAILURES_TO_OPEN", "URL_ENV", "RedisEngine", "key_space"]

#: The environment variable giving the server when a cache has no `url`.
URL_ENV = REDIS_URL_ENV
#: Entries one cache keeps on the server when `maxsize` is not given. A server is shared
#: and usually sized for many caches, so the default is larger than in-process memory's.
DEFAULT_REMOTE_MAXSIZE = 100_000
_SCAN_BATCH = 500
_SCHEMES = ("redis://", "rediss://", "unix://")
# What a cache name may not bring into its key space: the braces of the hash tag, the `:`
# that separates a key's parts, the glob characters of SCAN's pattern, `%` (the escape
# itself), and whitespace or control characters (an unreadable key in redis-cli).
_UNSAFE = re.compile(r"[{}:%*?\[\]\\\x00-\x20\x7f]")
# The server setting that bounds one value (a bulk string of the protocol): 512 MB unless
# configured, and never below 1 MB, so payloads up to that size are sent without asking.
_MAX_VALUE_SETTING = "proto-max-bulk-len"
_DEFAULT_MAX_VALUE = 512 * 1024 * 1024
_ALWAYS_TAKEN = 1024 * 1024
_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)
#: What `_call` turns into a twat-cache error: the server down (its breaker counts it), or
#: refusing this cache's ACL user a command or key (a `CredentialsError`, not counted).
_MAPPED = (*_DOWN, NoPermissionError)


def key_space(name: str) -> str:
    """`name` as it appears in server keys: the characters in `_UNSAFE` percent-encoded
    (their UTF-8 bytes), so that no name reaches into another cache's keys (``shop`` and
    ``shop}:x`` stay apart) and a clear pattern needs no escaping. Common names
    (``module.qualname``, ``<locals>``) are unchanged.

    >>> key_space("shop}:x")
    'shop%7D%3Ax'
    """
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name)


def _largest_value(settings: dict[Any, Any]) -> int:
    for name in (_MAX_VALUE_SETTING, _MAX_VALUE_SETTING.encode()):
        if name in settings:
            return int(settings[name])
    return _DEFAULT_MAX_VALUE


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _url_of(config: CacheConfig) -> str | None:
    return config.url or os.environ.get(URL_ENV) or None


class RedisEngine(SerializingEngine):
    """Entries on a Redis server, shared by every process and machine using it.

    Keys are ``twat_cache:{<name>}:<version>:<key>`` (the braces keep one cache on one
    Redis Cluster slot); values are signed payloads; `clear()` and `len()` touch only this
    cache's keys (SCAN, never FLUSHDB or KEYS). Every operation is bounded by
    `config.timeout`; a failure raises `ServerUnavailableError` (the wrapper then calls
    the function), and repeated failures open a circuit breaker for `config.cooldown`.
    """

    name: ClassVar[str] = "redis"
    capabilities: ClassVar[Capabilities] = Capabilities(
        policies=frozenset({"lru", "lfu", "fifo", "ttl"}),
        ttl=True,
        # Not lfu: an expired entry would keep its hit count in the index, outrank every
        # live one and never be evicted, shrinking the cache below its bound.
        ttl_policies=frozenset({"lru", "fifo", "ttl"}),
        persistent=True,
        shared=True,
        thread_safe=True,
        async_native=True,
        needs_serialization=True,
        leases=True,
    )

    @classmethod
    def unsupported(cls, config: CacheConfig) -> str | None:
        url = _url_of(config)
        if url is None:
            return f"redis needs url='redis://host:port/db' (or ${URL_ENV})"
        if not url.startswith(_SCHEMES):
            return f"redis serves {', '.join(_SCHEMES)} URLs, not {server_name(url)}"
        if config.folder_name is None and config.name is None:
            return "redis needs a folder_name or name to keep this cache's keys apart"
        return super().unsupported(config)

    def __init__(self, config: CacheConfig | None = None) -> None:
        super().__init__(config)
        config = self.config
        url = _url_of(config)
        if url is None:
            raise ConfigurationError(f"the redis engine needs a url or ${URL_ENV}")
        self.url = url
        self.server = server_name(url)
        cache = key_space(config.name or config.folder_name or "")
        version = key_space(str(config.version if config.version is not None else 0))
        self._prefix = f"twat_cache:{{{cache}}}:{version}:"
        # Every version's entries (clear), this version's (len); the index and the leases
        # are named apart from both, so that neither pattern counts them.
        # Neither `cache` nor `version` has a glob character left (see `key_space`).
        self._all = f"twat_cache:{{{cache}}}:*"
        self._live = self._prefix + "*"
        self._index = f"twat_cache:{{{cache}}}#index"
        self._leases = f"twat_cache:{{{cache}}}#lease:{version}:"
        self._limit = self.maxsize or 0
        self._policy = config.policy
        self._touch = config.policy in ("lru", "lfu")
        self._breaker = breaker_for(url, config.cooldown)
        self._options: dict[str, Any] = {
            "socket_timeout": config.timeout,
            "socket_connect_timeout": config.timeout,
        }
        self._max_value: int | None = None  # the server's largest value, learned when needed
        self._open()
        self._loops: PerLoop[tuple[Any, dict[str, Any]]] = PerLoop(
            self._new_aclient, lambda entry: entry[0], lambda entry: entry[0].aclose()
        )
        reset_in_child(self)

    def _open(self) -> None:
        pool = sync_pool(self.url, retry=Retry(NoBackoff(), 0), **self._options)
        self._client: Any = redis.Redis.from_pool(pool)
        self._scripts = scripts_of(self._client)

    def _new_aclient(self) -> tuple[Any, dict[str, Any]]:
        pool = async_pool(self.url, retry=AsyncRetry(NoBackoff(), 0), **self._options)
        client = aredis.Redis.from_pool(pool)
        return client, scripts_of(client)

    def after_fork(self) -> None:
        """In a forked child: a client of its own (the parent's sockets stay the parent's)."""
        self._open()

    @property
    def location(self) -> str:
        return f"{self.server} ({self._prefix}*)"

    @property
    def maxsize(self) -> int | None:
        """Entries kept: the configured maxsize, else `DEFAULT_REMOTE_MAXSIZE`."""
        config = self.config
        return config.maxsize if config.maxsize_given else DEFAULT_REMOTE_MAXSIZE

    @property
    def expires(self) -> bool:
        return True  # every Redis key can carry its own expiry (PX)

    # --- plumbing ---------------------------------------------------------------------

    def _call(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        breaker = self._breaker
        breaker.check()
        try:
            result = operation(*args, **kwargs)
        except _MAPPED as exc:
            raise self._failure(exc) from exc
        if breaker.failures:
            breaker.succeeded()
        return result

    async def _acall(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        breaker = self._breaker
        breaker.check()
        try:
            result = await operation(*args, **kwargs)
        except _MAPPED as exc:
            raise self._failure(exc) from exc
        if breaker.failures:
            breaker.succeeded()
        return result

    def _failure(self, exc: Exception) -> Exception:
        # Only what says the server is down or hung counts toward its breaker: a wrong
        # password belongs to this cache, a busy pool to this process.
        return not_the_servers(exc, self.server) or self._breaker.failed(exc)

    async def _aclient(self) -> tuple[Any, dict[str, Any]]:
        """This event loop's client and scripts."""
        return await self._loops.get()

    def _full(self, key: Any) -> str:
        return self._prefix + self.key_text(key)

    def _decode(self, key: Any, payload: bytes | None, default: Any) -> Any:
        if payload is None:
            return default
        try:
            return self.serializer.loads(payload, self._full(key).encode())
        except ExpiredPayloadError:  # replayed after its expiry: a plain miss
            return default
        except PayloadError as exc:
            self.rejected(key, exc)
            return default

    async def _adecode(self, key: Any, payload: bytes | None, default: Any) -> Any:
        if payload is None:
            return default
        try:
            return self.serializer.loads(payload, self._full(key).encode())
        except ExpiredPayloadError:  # replayed after its expiry: a plain miss
            return default
        except PayloadError as exc:
            await self.arejected(key, exc)
            return default

    def _payload(self, key: Any, value: Any, ttl: float | None) -> tuple[bytes, int]:
        """The signed payload of `value` under `key` and its time to live in ms (0: none).
        An expiring payload carries its expiry under the signature (see serializers)."""
        seconds = self._check_ttl(ttl)
        expires = time.time() + seconds if seconds else None
        payload = self.serializer.dumps(value, self._full(key).encode(), expires)
        return payload, _ms(seconds) if seconds else 0

    # --- sync -------------------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        full = self._full(key)
        if self._touch:
            payload = self._call(
                self._scripts["touch"], keys=(full, self._index), args=(self._policy,)
            )
        else:
            payload = self._call(self._client.get, full)
        return self._decode(key, payload, default)

    def _fits(self, size: int) -> bool | None:
        """Whether a payload of `size` bytes is known to fit the server; None: ask it."""
        # The server drops the connection of a client sending a longer value, which would
        # look like a server failure: a property of the value is checked before it is sent.
        if size <= _ALWAYS_TAKEN or size <= (self._max_value or 0):
            return True
        return None if self._max_value is None else False

    def _refuse(self, size: int, settings: dict[Any, Any] | None = None) -> None:
        if settings is not None:
            self._max_value = _largest_value(settings)
        if size > (self._max_value or 0):
            raise UnserializableError(
                f"a payload of {size:,} bytes is larger than {self.server} takes "
                f"(proto-max-bulk-len {self._max_value:,}): it is not stored"
            )

    def _check_size(self, payload: bytes) -> None:
        fits = self._fits(len(payload))
        if fits:
            return
        settings = None
        if fits is None:
            try:
                settings = self._call(self._client.config_get, _MAX_VALUE_SETTING)
            except ResponseError:  # CONFIG is renamed or forbidden: the documented default
                settings = {}
        self._refuse(len(payload), settings)

    async def _acheck_size(self, client: Any, payload: bytes) -> None:
        fits = self._fits(len(payload))
        if fits:
            return
        settings = None
        if fits is None:
            try:
                settings = await self._acall(client.config_get, _MAX_VALUE_SETTING)
            except ResponseError:
                settings = {}
        self._refuse(len(payload), settings)

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        payload, ms = self._payload(key, value, ttl)
        self._check_size(payload)
        args = (payload, ms, self._limit, self._policy)
        self._call(self._scripts["store"], keys=(self._full(key), self._index), args=args)

    def delete(self, key: Any) -> bool:
        full = self._full(key)
        pipe = self._client.pipeline(transaction=False)
        pipe.unlink(full)
        pipe.zrem(self._index, full)
        removed, _ = self._call(pipe.execute)
        return bool(removed)

    def exists(self, key: Any) -> bool:
        return bool(self._call(self._client.exists, self._full(key)))

    def clear(self) -> None:
        """Remove this cache's keys (every version), in batches; other keys are untouched."""

        def remove() -> None:
            client = self._client
            batch: list[Any] = []
            for key in client.scan_iter(match=self._all, count=_SCAN_BATCH):
                batch.append(key)
                if len(batch) >= _SCAN_BATCH:
                    client.unlink(*batch)
                    batch.clear()
            client.unlink(self._index, *batch)

        self._call(remove)

    def __len__(self) -> int:
        scan = self._client.scan_iter
        return int(self._call(lambda: sum(1 for _ in scan(match=self._live, count=_SCAN_BATCH))))

    def lease(self, key: Any, seconds: float) -> str | None:
        """Take the computation lease of `key` for `seconds`: a token, or None when another
        process holds it."""
        # The token is chosen here, before SET NX is sent: if the reply is lost (an
        # interrupt while waiting for it, a timeout), the lease the server may have granted
        # is released by its token, so that no process waits `seconds` for a lease nobody
        # holds.
        token = secrets.token_hex(16)
        lease_key = self._lease_key(key)
        try:
            taken = self._call(self._client.set, lease_key, token, nx=True, px=_ms(seconds))
        except BaseException as exc:
            if reply_lost(exc):
                with contextlib.suppress(Exception):
                    self._release(lease_key, token)
            raise
        return token if taken else None

    def release(self, key: Any, token: str) -> None:
        """Give back a lease taken with `lease` (only if it is still this token's)."""
        self._call(self._release, self._lease_key(key), token)

    def _release(self, lease_key: str, token: str) -> None:
        try:
            self._scripts["release"](keys=(lease_key,), args=(token,))
        except NoPermissionError:
            # An ACL user allowed SET but not scripts: compare and delete in two commands.
            # Between them the lease may expire and another process take it; deleting that
            # one costs a second computation, never a wrong value. Without it every caller
            # of the key would wait out the lease.
            if self._client.get(lease_key) == token.encode():
                self._client.delete(lease_key)

    def _lease_key(self, key: Any) -> str:
        return self._leases + self.key_text(key)

    def close(self) -> None:
        self._client.close()
        self._loops.close()

    # --- async ------------------------------------------------------------------------

    async def aget(self, key: Any, default: Any = None) -> Any:
        client, scripts = await self._aclient()
        full = self._full(key)
        if self._touch:
            payload = await self._acall(
                scripts["touch"], keys=(full, self._index), args=(self._policy,)
            )
        else:
            payload = await self._acall(client.get, full)
        return await self._adecode(key, payload, default)

    async def aset(self, key: Any, value: Any, ttl: float | None = None) -> None:
        client, scripts = await self._aclient()
        payload, ms = self._payload(key, value, ttl)
        await self._acheck_size(client, payload)
        args = (payload, ms, self._limit, self._policy)
        await self._acall(scripts["store"], keys=(self._full(key), self._index), args=args)

    async def adelete(self, key: Any) -> bool:
        client, _ = await self._aclient()
        full = self._full(key)
        pipe = client.pipeline(transaction=False)
        pipe.unlink(full)
        pipe.zrem(self._index, full)
        removed, _ = await self._acall(pipe.execute)
        return bool(removed)

    async def aexists(self, key: Any) -> bool:
        client, _ = await self._aclient()
        return bool(await self._acall(client.exists, self._full(key)))

    async def aclear(self) -> None:
        client, _ = await self._aclient()

        async def remove() -> None:
            batch: list[Any] = []
            async for key in client.scan_iter(match=self._all, count=_SCAN_BATCH):
                batch.append(key)
                if len(batch) >= _SCAN_BATCH:
                    await client.unlink(*batch)
                    batch.clear()
            await client.unlink(self._index, *batch)

        await self._acall(remove)

    async def alen(self) -> int:
        client, _ = await self._aclient()

        async def count() -> int:
            return sum([1 async for _ in client.scan_iter(match=self._live, count=_SCAN_BATCH)])

        return int(await self._acall(count))

    async def alease(self, key: Any, seconds: float) -> str | None:
        client, scripts = await self._aclient()
        token = secrets.token_hex(16)
        lease_key = self._lease_key(key)
        try:
            taken = await self._acall(client.set, lease_key, token, nx=True, px=_ms(seconds))
        except BaseException as exc:
            if reply_lost(exc):  # cancelled or timed out: release what may have been taken
                with contextlib.suppress(Exception):  # else the lease expires by itself
                    await shielded(self._arelease(client, scripts, lease_key, token))
            raise
        return token if taken else None

    async def arelease(self, key: Any, token: str) -> None:
        client, scripts = await self._aclient()
        # A holder cancelled while it releases (a second wait_for timeout) still releases.
        lease_key = self._lease_key(key)
        await shielded(self._acall(self._arelease, client, scripts, lease_key, token))

    async def _arelease(self, client: Any, scripts: Any, lease_key: str, token: str) -> None:
        try:
            await scripts["release"](keys=(lease_key,), args=(token,))
        except NoPermissionError:  # no scripts for this ACL user: see `_release`
            if await client.get(lease_key) == token.encode():
                await client.delete(lease_key)

    async def aclose(self) -> None:
        await self._loops.aclose_current()
        self.close()

    def __repr__(self) -> str:
        return f"<RedisEngine {self.server} prefix={self._prefix!r} maxsize={self.maxsize}>"
