"""Per-function call state: counters, stampede protection and fault handling (the slow path)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from twat_cache._report import FaultReporter
from twat_cache.engines.base import MISS, capabilities_of
from twat_cache.exceptions import KeyBuildError

__all__ = ["CallState"]


class _Flight:
    """One computation of a cold key in a thread; others wait on its lock and share its outcome."""

    __slots__ = ("done", "error", "lock", "owner", "value")

    def __init__(self, owner: int) -> None:
        self.owner = owner
        self.lock = threading.Lock()
        self.lock.acquire()  # held until the outcome is known; waiters block on it
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None


class _LeaderGone(Exception):
    """The task computing a key was cancelled or interrupted: a waiter must try again."""


class _AFlight:
    """One computation of a cold key in an event loop; other tasks await its future."""

    __slots__ = ("future", "loop", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> None:
        self.loop = loop
        self.task = task
        self.future: asyncio.Future[Any] = loop.create_future()


class CallState:
    """Everything a cached function needs beyond the hit path, shared by its sync and async
    wrappers: miss handling with stampede protection, fault handling, and counters.

    Counters are plain integers updated without a lock, as in functools' pure-Python
    `lru_cache`: exact for one thread, approximate under heavy thread contention.
    """

    __slots__ = (
        "_aget",
        "_aset",
        "aflights",
        "engine",
        "fallback",
        "flights",
        "func",
        "lock",
        "misses",
        "reporter",
        "shared_hits",
    )

    def __init__(
        self, func: Callable[..., Any], engine: Any, *, name: str, lock: bool, fallback: bool
    ) -> None:
        self.func = func
        self.engine = engine
        self.lock = lock
        self.fallback = fallback
        self.misses = 0
        self.shared_hits = 0  # waiters served by another caller's computation
        self.flights: dict[Any, _Flight] = {}
        self.aflights: dict[Any, _AFlight] = {}
        self.reporter = FaultReporter(name)
        if capabilities_of(engine).async_native:
            self._aget = engine.aget
            self._aset = engine.aset
        else:
            self._aget = _as_coroutine(engine.get)
            self._aset = _as_coroutine(engine.set)

    # --- faults -----------------------------------------------------------------------

    def _fault(self, operation: str, exc: Exception) -> None:
        if not self.fallback:
            raise exc
        self.reporter.report(operation, exc)

    def fault(self, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The key could not be built or the engine failed to read: call uncached."""
        self._fault("build a key" if isinstance(exc, KeyBuildError) else "read", exc)
        self.misses += 1
        return self.func(*args, **kwargs)

    async def afault(self, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._fault("build a key" if isinstance(exc, KeyBuildError) else "read", exc)
        self.misses += 1
        return await self.func(*args, **kwargs)

    def _read(self, key: Any) -> Any:
        try:
            return self.engine.get(key, MISS)
        except Exception as exc:
            self._fault("read", exc)
            return MISS

    def _store(self, key: Any, value: Any) -> None:
        try:
            self.engine.set(key, value)
        except Exception as exc:  # the value is still returned: nothing computed is lost
            self._fault("write", exc)

    async def _aread(self, key: Any) -> Any:
        try:
            return await self._aget(key, MISS)
        except Exception as exc:
            self._fault("read", exc)
            return MISS

    async def _astore(self, key: Any, value: Any) -> None:
        try:
            await self._aset(key, value)
        except Exception as exc:
            self._fault("write", exc)

    # --- sync miss path ---------------------------------------------------------------

    def miss(self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Compute a cold key once, however many threads ask for it at the same time."""
        if not self.lock:
            return self._compute(key, args, kwargs)
        me = threading.get_ident()
        while True:
            flight = self.flights.get(key)
            if flight is None:
                mine = _Flight(me)
                flight = self.flights.setdefault(key, mine)  # atomic: one leader per key
                if flight is mine:
                    return self._lead(key, args, kwargs, mine)
            if flight.owner == me:
                # Re-entry on the key this thread is computing: waiting would deadlock.
                return self._compute(key, args, kwargs)
            with flight.lock:
                pass
            if flight.done:
                if flight.error is not None:
                    self.misses += 1
                    raise flight.error
                self.shared_hits += 1
                return flight.value
            # The leader was interrupted (KeyboardInterrupt...): try to lead again.

    def _compute(self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.misses += 1
        value = self.func(*args, **kwargs)
        self._store(key, value)
        return value

    def _lead(
        self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any], flight: _Flight
    ) -> Any:
        try:
            # A leader that finished between our miss and our registration has stored
            # the value: read again rather than compute twice.
            value = self._read(key)
            if value is MISS:
                value = self._compute(key, args, kwargs)
            else:
                self.shared_hits += 1
            flight.value = value
            flight.done = True
            return value
        except Exception as exc:
            flight.error = exc  # shared with the waiters, never cached
            flight.done = True
            raise
        finally:
            # Unpublish before waking the waiters, so a new caller never waits on a
            # finished flight.
            del self.flights[key]
            flight.lock.release()

    # --- async miss path --------------------------------------------------------------

    async def amiss(self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Compute a cold key once, however many tasks of one event loop await it."""
        if not self.lock:
            return await self._acompute(key, args, kwargs)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        while True:
            flight = self.aflights.get(key)
            if flight is None:
                mine = _AFlight(loop, task)
                flight = self.aflights.setdefault(key, mine)
                if flight is mine:
                    return await self._alead(key, args, kwargs, mine)
            if flight.loop is not loop or flight.task is task:
                # Another thread's event loop (its future cannot be awaited here), or
                # re-entry on the key this task is computing: compute directly.
                return await self._acompute(key, args, kwargs)
            try:
                # shield: a waiter being cancelled must not cancel the shared computation.
                value = await asyncio.shield(flight.future)
            except _LeaderGone:
                continue
            except Exception:
                self.misses += 1
                raise
            self.shared_hits += 1
            return value

    async def _acompute(self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.misses += 1
        value = await self.func(*args, **kwargs)
        await self._astore(key, value)
        return value

    async def _alead(
        self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any], flight: _AFlight
    ) -> Any:
        future = flight.future
        try:
            value = await self._aread(key)
            if value is MISS:
                value = await self._acompute(key, args, kwargs)
            else:
                self.shared_hits += 1
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved: no "never retrieved" log without waiters
            raise
        except BaseException:
            future.set_exception(_LeaderGone())
            future.exception()
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self.aflights[key]

    # --- bookkeeping ------------------------------------------------------------------

    def reset(self) -> None:
        self.misses = 0
        self.shared_hits = 0


def _as_coroutine(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(*args: Any) -> Any:
        return function(*args)

    return call
