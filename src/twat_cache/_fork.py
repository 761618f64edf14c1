"""Per-process state across `os.fork`: one hook resets what a forked child must not share.

A child made by `fork` (a fork-based `multiprocessing.Pool`, gunicorn's workers) inherits
a copy of its parent's memory at one instant: the flights another thread of the parent was
computing (that thread does not exist in the child), locks it held, SQLite connections and
Redis sockets that the parent keeps using. Every object that holds such state registers
itself here with `reset_in_child(obj)`; after a fork, the child calls each live object's
`after_fork()` method, which drops that state so the next use starts afresh in the child.

Registration is weak: an object that is collected is forgotten. A hook that fails is
skipped (the child must come up whatever one cache's state is); it is reported once a
cache is used again, by that cache's own fault handling.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["ResetInChild", "gated", "generation", "renewed", "reset_in_child"]


class ResetInChild(Protocol):
    def after_fork(self) -> None: ...


#: By id: registered objects need not be hashable (a mapping with `__eq__` is not).
_OBJECTS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_GUARD = threading.Lock()  # replaced in the child: a fork may copy it held
_generation = 0


def reset_in_child(obj: ResetInChild) -> None:
    """Call `obj.after_fork()` in every child forked after this call, while `obj` lives."""
    with _GUARD:
        _OBJECTS[id(obj)] = obj


_RLOCK = type(threading.RLock())


def renewed(lock: Any) -> tuple[Any, bool]:
    """For a child's copy of a `threading.Lock` or `RLock`: a new lock of the same kind, and
    whether the copy was held at the fork (by a thread that does not exist here, so what it
    guarded may be half-updated)."""
    held = not lock.acquire(blocking=False)
    if not held:
        lock.release()
    return (threading.RLock() if isinstance(lock, _RLOCK) else threading.Lock()), held


def generation() -> int:
    """How many forks lie between the first process and this one: state tagged with an
    older generation belongs to an ancestor."""
    return _generation


# --- the gate: no fork while a thread is inside SQLite ------------------------------------
#
# SQLite releases the GIL and takes its own mutexes (its allocator's among them). A fork
# while another thread holds one copies it held into the child, whose first SQLite call then
# blocks for ever; no reset after the fork can undo that. So engine methods that call into
# SQLite are `gated`: a fork waits (at most `GATE_PATIENCE`) until no other thread is inside
# one, and threads arriving meanwhile wait for the fork to be done. Entering costs two list
# operations (atomic under the GIL) and a flag test.

F = TypeVar("F", bound=Callable[..., Any])
#: Seconds a fork waits for threads inside gated code; then it goes ahead (as it would
#: without the gate) rather than wait for ever for a thread stuck on a lock.
GATE_PATIENCE = 5.0
_inside: list[int] = []  # the idents of threads inside gated code, once per level
_forking = False


def gated(method: F) -> F:
    """`method`, which a fork never cuts in half (see above)."""

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        me = threading.get_ident()
        _inside.append(me)
        while _forking and me not in _inside[:-1]:  # a fork is waiting: let it go first
            _inside.remove(me)
            time.sleep(0.0005)
            _inside.append(me)
        try:
            return method(*args, **kwargs)
        finally:
            _inside.remove(me)

    return run  # type: ignore[return-value]


def _before_fork() -> None:
    global _forking
    _forking = True
    me = threading.get_ident()
    deadline = time.monotonic() + GATE_PATIENCE
    while any(ident != me for ident in list(_inside)) and time.monotonic() < deadline:
        time.sleep(0.0005)


def _after_in_parent() -> None:
    global _forking
    _forking = False


def _in_child() -> None:
    global _GUARD, _generation, _forking
    _GUARD = threading.Lock()
    _generation += 1
    _forking = False
    me = threading.get_ident()
    _inside[:] = [ident for ident in _inside if ident == me]
    for obj in list(_OBJECTS.values()):
        try:
            obj.after_fork()
        except Exception:  # the child must start whatever one cache holds
            continue


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_in_parent, after_in_child=_in_child
    )
