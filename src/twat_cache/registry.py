"""The global registry of cached functions: `clear_cache`, `get_stats`, `list_caches`."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from twat_cache._fork import reset_in_child
from twat_cache.engines.base import engine_name
from twat_cache.exceptions import CacheError

__all__ = [
    "UnknownCacheError",
    "clear_cache",
    "get_stats",
    "list_caches",
    "register",
    "release",
    "reserve",
]

# Weak references only: the registry must not keep a function, or its cache, alive.
_CACHES: dict[str, weakref.ref[Any]] = {}
_LOCK = threading.Lock()


class _ForkReset:
    __slots__ = ("__weakref__",)

    def after_fork(self) -> None:
        global _LOCK
        _LOCK = threading.Lock()  # a fork may copy it held by another thread


_FORK_RESET = _ForkReset()
reset_in_child(_FORK_RESET)


class UnknownCacheError(CacheError, KeyError):
    """No live cache is registered under that name."""


class _Reserved:
    """Holds a name while its function is being built (a live placeholder)."""

    def __call__(self) -> object:
        return self


def reserve(name: str) -> str:
    """Claim `name` (suffixed ``#2``, ``#3``... when a live function already holds it) for
    a function about to be built, and return the name claimed."""
    with _LOCK:
        unique = name
        number = 1
        while (ref := _CACHES.get(unique)) is not None and ref() is not None:
            number += 1
            unique = f"{name}#{number}"
        _CACHES[unique] = _Reserved()  # type: ignore[assignment]  # callable like a weakref
    return unique


def release(name: str) -> None:
    """Give back a name reserved for a function that could not be built."""
    with _LOCK:
        if isinstance(_CACHES.get(name), _Reserved):
            del _CACHES[name]


def register(name: str, function: Any) -> None:
    """Register a cached function under the name `reserve` gave it."""

    def forget(dead: weakref.ref[Any]) -> None:
        with _LOCK:
            if _CACHES.get(name) is dead:
                del _CACHES[name]

    with _LOCK:
        _CACHES[name] = weakref.ref(function, forget)


def _live(name: str | None) -> dict[str, Any]:
    with _LOCK:
        pairs = [(key, ref()) for key, ref in _CACHES.items()]
    live = {key: fn for key, fn in pairs if fn is not None and not isinstance(fn, _Reserved)}
    if name is None:
        return live
    if name not in live:
        raise UnknownCacheError(f"no cache named {name!r}; known: {', '.join(sorted(live))}")
    return {name: live[name]}


def list_caches() -> list[str]:
    """Names of every live cached function, sorted.

    >>> from twat_cache import mcache
    >>> @mcache(name="doc.square")
    ... def square(x: int) -> int:
    ...     return x * x
    >>> "doc.square" in list_caches()
    True
    """
    return sorted(_live(None))


def clear_cache(name: str | None = None) -> None:
    """Clear one cache by name, or every registered cache when `name` is None.

    Every cache is cleared even when one of them fails (a server down); then the failure
    is raised, or a `CacheError` naming every cache that could not be cleared.

    >>> from twat_cache import mcache
    >>> @mcache(name="doc.triple")
    ... def triple(x: int) -> int:
    ...     return 3 * x
    >>> triple(2), triple.cache_info().currsize
    (6, 1)
    >>> clear_cache("doc.triple")
    >>> triple.cache_info().currsize
    0
    """
    failures: list[tuple[str, Exception]] = []
    for key, function in _live(name).items():
        try:
            function.cache_clear()
        except Exception as exc:
            failures.append((key, exc))
    if len(failures) == 1:
        raise failures[0][1]
    if failures:
        detail = "; ".join(f"{key}: {type(exc).__name__}: {exc}" for key, exc in failures)
        first = failures[0][1]
        raise CacheError(f"{len(failures)} caches could not be cleared ({detail})") from first


def _stats(function: Any) -> dict[str, Any]:
    info = function.cache_info()
    calls = info.hits + info.misses
    return {
        "hits": info.hits,
        "misses": info.misses,
        "hit_rate": info.hits / calls if calls else 0.0,
        "currsize": info.currsize,
        "maxsize": info.maxsize,
        "engine": engine_name(function.cache_engine),
    }


def get_stats(name: str | None = None) -> dict[str, Any]:
    """Plain-number statistics of one cache, or a mapping of every cache's statistics.

    >>> from twat_cache import mcache
    >>> @mcache(name="doc.double")
    ... def double(x: int) -> int:
    ...     return 2 * x
    >>> double(2), double(2)
    (4, 4)
    >>> get_stats("doc.double")["hits"]
    1
    """
    if name is not None:
        return _stats(_live(name)[name])
    return {key: _stats(function) for key, function in _live(None).items()}
