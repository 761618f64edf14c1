"""`disabled()`: skip every cache for a block, at no cost to the hit path outside one.

A context variable says whether the current thread or task is inside a `disabled()` block.
Checking it on every call would cost every hit, so wrappers only check it while some block
is alive: entering the first block swaps each wrapper's reader and writer (globals of its
generated code) for versions that consult the variable, and when the last block is gone
the direct ones are swapped back.

A block is alive while it is open, and afterwards while a context copied inside it still
exists: an asyncio task started in the block keeps the block's value in its context, so it
runs uncached for its whole life, reads and writes alike, even after the block has ended.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from twat_cache._fork import reset_in_child

__all__ = ["bypassed", "disabled", "rebind", "track"]


class _Block:
    """One `disabled()` block: the context variable's value inside it. Contexts copied in
    the block (tasks) hold it too; when the last reference goes, the block is over."""

    __slots__ = ("__weakref__", "counted", "owner")

    def __init__(self) -> None:
        self.owner = threading.get_ident()  # the thread that opened the block
        self.counted = True  # in `_alive`: a forked child stops counting other threads'
        _blocks.add(self)

    def __del__(self) -> None:
        try:
            if self.counted:
                _ended.append(None)  # deque.append takes no lock: safe in a finalizer
                _settle()
        except Exception:  # at interpreter exit the module may be half torn down
            return


_BYPASS: ContextVar[_Block | None] = ContextVar("twat_cache_bypass", default=None)

#: Reads the flag (a block, or None outside every block): the slow path checks it directly.
bypassed = _BYPASS.get

_lock = threading.Lock()
_alive = 0  # blocks alive in any thread or task
_ended: deque[None] = deque()  # blocks gone, not yet subtracted from _alive
_wrappers: weakref.WeakSet[Any] = weakref.WeakSet()
_blocks: weakref.WeakSet[_Block] = weakref.WeakSet()  # blocks alive


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


def _settle() -> None:
    """Count the blocks that ended, and swap the direct readers back when none is left.
    A block may end in a finalizer, in any thread, even one holding `_lock`: then the
    holder settles it when it lets go of the lock (never a blocking acquire here)."""
    global _alive
    while _ended and _lock.acquire(blocking=False):
        try:
            while _ended:
                _ended.popleft()
                _alive -= 1
                if _alive == 0:
                    for wrapper in list(_wrappers):
                        _swap(wrapper, False)
        finally:
            _lock.release()


class _ForkReset:
    __slots__ = ("__weakref__",)

    def after_fork(self) -> None:
        global _lock, _alive
        _lock = threading.Lock()  # the fork may have copied it held
        _ended.clear()
        # Only the thread that forked exists here: the blocks other threads had open are
        # held by contexts that will never end, so they stop counting; when none of this
        # thread's is alive, the wrappers read directly again.
        me = threading.get_ident()
        _alive = 0
        for block in list(_blocks):
            if block.owner == me and block.counted:
                _alive += 1
            else:
                block.counted = False
        if _alive == 0:
            for wrapper in list(_wrappers):
                _swap(wrapper, False)


_FORK_RESET = _ForkReset()
reset_in_child(_FORK_RESET)


def track(wrapper: Any) -> None:
    """Make `wrapper` (a generated cached function) obey `disabled()` blocks."""
    scope = wrapper.__globals__
    scope["__twat_direct_get"] = scope["__twat_get"]
    scope["__twat_direct_put"] = scope["__twat_put"]
    with _lock:
        _wrappers.add(wrapper)
        if _alive:
            _swap(wrapper, True)
    _settle()


def rebind(engine: Any) -> None:
    """`engine` replaced its store (a forked child whose store was left locked): every
    wrapper on it, and its call state, take the new store's methods."""
    with _lock:
        for wrapper in list(_wrappers):
            scope = wrapper.__globals__
            if scope["__twat_state"].engine is not engine:
                continue
            scope["__twat_direct_get"], scope["__twat_direct_put"] = scope["__twat_readers"]()
            _swap(wrapper, _alive > 0)
            scope["__twat_state"].rebind()


@contextmanager
def disabled() -> Iterator[None]:
    """Skip every cache inside the block: cached functions run their body, read nothing from
    their cache and store nothing in it (`cache_refresh` included). The block covers the
    current thread, and the asyncio tasks started inside it for their whole life (even when
    they outlive the block); other threads keep caching. Calls made inside count as misses.

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
    global _alive
    with _lock:
        _alive += 1  # counted before the block exists: its end is never counted first
        if _alive == 1:
            for wrapper in list(_wrappers):
                _swap(wrapper, True)
    _settle()
    token = _BYPASS.set(_Block())  # the contexts holding it (this one, tasks) keep it alive
    try:
        yield
    finally:
        _BYPASS.reset(token)
