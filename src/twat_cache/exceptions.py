"""Exceptions and warnings raised by twat-cache; `CacheError` is the root."""

from __future__ import annotations

__all__ = [
    "CacheError",
    "CacheFaultWarning",
    "CacheWarning",
    "ConfigurationError",
    "CredentialsError",
    "EngineError",
    "EngineUnavailableError",
    "KeyBuildError",
    "PoolExhaustedError",
    "SecurityWarning",
    "ServerUnavailableError",
    "UnsupportedEventLoopError",
]


class CacheError(Exception):
    """Root of every error twat-cache raises itself: catch it to handle any of them.

    >>> from twat_cache import CacheError, mcache
    >>> try:
    ...     mcache(cache_engine="no-such-engine")
    ... except CacheError as error:
    ...     print(type(error).__name__)
    ConfigurationError
    """


class ConfigurationError(CacheError):
    """A bad combination of settings or an unknown engine name, raised at decoration time.

    >>> from twat_cache import ConfigurationError, mcache
    >>> try:
    ...
    ...     @mcache(policy="ttl")  # expiry-driven eviction needs a ttl
    ...     def f(x: int) -> int:
    ...         return x
    ... except ConfigurationError as error:
    ...     print(error)
    policy='ttl' needs a ttl (for example ttl='10m')
    """


class UnsupportedEventLoopError(ConfigurationError, RuntimeError):
    """A cached async function was awaited outside a running asyncio event loop (under trio,
    or anyio's trio backend); raised at its first call, before the function runs. A
    `RuntimeError` too, as the bare error it replaces was."""


class EngineError(CacheError):
    """An engine failed to read or write; the wrapper turns it into a miss when `fallback=True`."""


class EngineUnavailableError(EngineError):
    """An engine's library is missing or the engine could not be built."""


class ServerUnavailableError(EngineError):
    """A cache server refused the connection, did not answer within the operation timeout,
    or is being skipped by the circuit breaker after repeated failures."""


class PoolExhaustedError(EngineError):
    """Every connection of this process's pool to a cache server stayed busy for the pool's
    wait: a local overload, not a fault of the server (its circuit breaker does not count
    it). The call runs uncached."""


class CredentialsError(EngineError):
    """A cache server refused this cache's credentials (or its ACL user the command): a
    configuration error of that cache, not a failure of the server other caches use (the
    server's circuit breaker does not count it)."""


class KeyBuildError(CacheError, TypeError):
    """An argument cannot be turned into a cache key."""


class CacheWarning(UserWarning):
    """Base class of the warnings twat-cache emits."""


class SecurityWarning(CacheWarning):
    """A stored entry failed signature verification: it was dropped, never deserialized."""


class CacheFaultWarning(CacheWarning):
    """A cache operation failed and the call went on without the cache (once per kind)."""
