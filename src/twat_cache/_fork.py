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

import os
import threading
import weakref
from typing import Any, Protocol

__all__ = ["ResetInChild", "generation", "renewed", "reset_in_child"]


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


def _in_child() -> None:
    global _GUARD, _generation
    _GUARD = threading.Lock()
    _generation += 1
    for obj in list(_OBJECTS.values()):
        try:
            obj.after_fork()
        except Exception:  # the child must start whatever one cache holds
            continue


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_in_child)
