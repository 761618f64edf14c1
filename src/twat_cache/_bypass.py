"""`disabled()`: skip every cache for a block, at no cost to the hit path outside one.

A context variable says whether the current thread or task is inside a `disabled()` block.
Checking it on every call would cost every hit, so wrappers only check it while some block
is open somewhere: entering the first block swaps each wrapper's reader and writer (globals
of its generated code) for versions that consult the variable, and leaving the last block
swaps the direct ones back.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["bypassed", "disabled", "track"]

_BYPASS: ContextVar[bool] = ContextVar("twat_cache_bypass", default=False)

#: Reads the flag: the slow path (`CallState`) checks it directly.
bypassed = _BYPASS.get

_lock = threading.Lock()
_open = 0  # blocks open in any thread or task
_wrappers: weakref.WeakSet[Any] = weakref.WeakSet()


def _guard_get(get: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(get):

        async def aguarded(key: Any, default: Any) -> Any:
            return default if _BYPASS.get() else await get(key, default)

        return aguarded

    def guarded(key: Any, default: Any) -> Any:
        return default if _BYPASS.get() else get(key, default)

    return guarded


def _guard_put(put: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def guarded(key: Any, value: Any) -> None:
        if not _BYPASS.get():
            put(key, value)

    return guarded


def _swap(wrapper: Any, guarded: bool) -> None:
    scope = wrapper.__globals__
    get, put = scope["__twat_direct_get"], scope["__twat_direct_put"]
    scope["__twat_get"] = _guard_get(get) if guarded else get
    scope["__twat_put"] = _guard_put(put) if guarded else put


def track(wrapper: Any) -> None:
    """Make `wrapper` (a generated cached function) obey `disabled()` blocks."""
    scope = wrapper.__globals__
    scope["__twat_direct_get"] = scope["__twat_get"]
    scope["__twat_direct_put"] = scope["__twat_put"]
    with _lock:
        _wrappers.add(wrapper)
        if _open:
            _swap(wrapper, True)


@contextmanager
def disabled() -> Iterator[None]:
    """Skip every cache inside the block: cached functions run their body, read nothing from
    their cache and store nothing in it (`cache_refresh` included). The block covers the
    current thread, and the asyncio tasks started inside it; other threads keep caching.
    Calls made inside count as misses.

    >>> from twat_cache import disabled, mcache
    >>> calls = []
    >>> @mcache
    ... def double(x: int) -> int:
    ...     calls.append(x)
    ...     return 2 * x
    >>> double(2), double(2), len(calls)
    (4, 4, 1)
    >>> with disabled():
    ...     double(2), double(2), len(calls)
    (4, 4, 3)
    >>> double(2), len(calls)
    (4, 3)
    """
    global _open
    with _lock:
        _open += 1
        if _open == 1:
            for wrapper in list(_wrappers):
                _swap(wrapper, True)
    token = _BYPASS.set(True)
    try:
        yield
    finally:
        _BYPASS.reset(token)
        with _lock:
            _open -= 1
            if _open == 0:
                for wrapper in list(_wrappers):
                    _swap(wrapper, False)
