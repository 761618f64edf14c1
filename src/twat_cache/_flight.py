"""Per-function call state: counters, stampede protection and fault handling (the slow path)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twat_cache._bypass import bypassed
from twat_cache._fork import reset_in_child
from twat_cache._io_threads import in_thread
from twat_cache._report import FaultReporter
from twat_cache._results import PLAIN_RESULTS, consumable
from twat_cache.engines.base import MISS, capabilities_of, put_of
from twat_cache.exceptions import UnsupportedEventLoopError

__all__ = ["CallState", "in_thread"]

_INTERRUPTED: Any = object()  # an outcome's value when its leader was interrupted
_FIRST_PAUSE = 0.005  # seconds between reads while another process holds a lease, doubling
_LAST_PAUSE = 0.1
_RECHECK = 0.05  # seconds between a waiting thread's checks that its leader's flight lives


class _Outcome:
    """What the leader of a contended key hands to the threads waiting for it."""

    __slots__ = ("done", "error", "value", "waiters")

    def __init__(self) -> None:
        self.waiters = 0
        self.done = False
        self.value: Any = _INTERRUPTED
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
        "__weakref__",
        "_aget",
        "_alease",
        "_arelease",
        "_aset",
        "aflights",
        "engine",
        "fallback",
        "flights",
        "func",
        "lease",
        "lock",
        "misses",
        "put",
        "reporter",
        "shared_hits",
        "waiting",
        "wakeup",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        engine: Any,
        *,
        name: str,
        lock: bool,
        fallback: bool,
        lease: float | None = None,
    ) -> None:
        self.func = func
        self.lease = lease  # seconds of the engine's cross-process lease; None: no leases
        self.engine = engine
        self.lock = lock
        self.fallback = fallback
        self.misses = 0
        self.shared_hits = 0  # waiters served by another caller's computation
        self.flights: dict[Any, tuple[int]] = {}
        self.waiting: dict[Any, _Outcome] = {}
        self.wakeup = threading.Condition(threading.Lock())  # waiters of any key of this cache
        self.aflights: dict[Any, _AFlight] = {}
        self.reporter = FaultReporter(name)
        self.rebind()
        reset_in_child(self)

    def rebind(self) -> None:
        """Take the engine's store methods (again: an engine may replace its store, see
        `_bypass.rebind`)."""
        engine = self.engine
        self.put = put_of(engine)
        capabilities = capabilities_of(engine)
        if capabilities.async_native:
            self._aget = engine.aget
            self._aset = engine.aset
        elif capabilities.blocking:
            self._aget = in_thread(engine.get)
            self._aset = in_thread(put_of(engine))
        else:
            self._aget = _as_coroutine(engine.get)
            self._aset = _as_coroutine(put_of(engine))
        if self.lease is not None:
            native = capabilities.async_native
            self._alease = engine.alease if native else in_thread(engine.lease)
            self._arelease = engine.arelease if native else in_thread(engine.release)

    def after_fork(self) -> None:
        """In a forked child: forget the parent's flights and waiters (their threads and
        event loops do not exist here, so waiting for them would never end) and renew the
        condition, which the fork may have copied while another thread held it. The dicts
        are emptied in place: the generated wrapper holds them."""
        # Only the thread that forked exists here: a flight it leads (a cached function that
        # forks) stays its own, to be ended as usual; every other thread's is an orphan.
        # Async flights all go: asyncio does not run a parent's loop in a child (an async
        # leader that forked removes its own flight if it is still there).
        me = threading.get_ident()
        for key, token in list(self.flights.items()):
            if token[0] != me:
                del self.flights[key]
        self.waiting.clear()
        self.aflights.clear()
        self.wakeup = threading.Condition(threading.Lock())
        self.reporter.after_fork()

    # --- faults -----------------------------------------------------------------------

    def _fault(self, operation: str, exc: Exception) -> None:
        if not self.fallback:
            raise exc
        self.reporter.report(operation, exc)

    def fault(self, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The key could not be built: call uncached (with no key there is no flight)."""
        self._fault("build a key", exc)
        self.misses += 1
        return self.func(*args, **kwargs)

    async def afault(self, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._running_loop()
        self._fault("build a key", exc)
        self.misses += 1
        return await self.func(*args, **kwargs)

    def read_fault(self, exc: Exception) -> Any:
        """The engine failed to read: report it and treat it as a miss."""
        self._fault("read", exc)
        return MISS

    def degraded(
        self, exc: Exception, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The engine failed to read `key`: report it and compute the value once for every
        concurrent caller of the key in this process (stampede protection holds during an
        outage too), without a lease or a write: the store just failed, and each would add
        its own timeout to the call while the breaker is still closed."""
        self._fault("read", exc)
        if not self.lock or bypassed():
            return self._compute(key, args, kwargs, store=False)
        token = (threading.get_ident(),)
        if self.flights.setdefault(key, token) is not token:
            return self.follow(key, token, args, kwargs)
        return self.lead(key, args, kwargs, degraded=True)

    async def adegraded(
        self, exc: Exception, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """`degraded` for async wrappers: once per key and event loop, nothing stored."""
        self._running_loop()  # a blocking engine's read fails outside asyncio: not a fault
        self._fault("read", exc)
        return await self.amiss(key, args, kwargs, degraded=True)

    def write_fault(self, exc: Exception) -> None:
        """The engine failed to write: report it; the computed value is still returned."""
        self._fault("write", exc)

    def _refused(self, value: Any) -> bool:
        # What can be consumed once (a coroutine returned by a sync callable, a generator)
        # is reported once and never stored: it is returned to its caller alone.
        reason = consumable(value)
        if reason is None:
            return False
        self.reporter.report(
            "store a result",
            TypeError(f"the function returned {reason}; it was returned to the caller uncached"),
        )
        return True

    def store(self, key: Any, value: Any) -> None:
        """Store a computed value; a fault is reported, an awaitable refused."""
        if bypassed() or self._refused(value):
            return
        try:
            self.put(key, value)
        except Exception as exc:  # the value is still returned: nothing computed is lost
            self._fault("write", exc)

    async def _aread(self, key: Any) -> Any:
        if bypassed():
            return MISS
        try:
            return await self._aget(key, MISS)
        except Exception as exc:
            self._fault("read", exc)
            return MISS

    async def _astore(self, key: Any, value: Any) -> None:
        if bypassed() or self._refused(value):
            return
        try:
            await self._aset(key, value)
        except Exception as exc:
            self._fault("write", exc)

    # --- sync miss path ---------------------------------------------------------------
    #
    # The leader's side is inlined in the generated wrapper (`_wrap.py`): an uncontended
    # miss only publishes a token in `flights` (a 1-tuple holding the thread id: unique
    # per call, so a thread re-entering its own key is told apart from the leader).
    # Contention is the slow path, here: a waiter registers an `_Outcome` in `waiting`
    # and then checks that the key is still in flight, both under the `wakeup`
    # condition; the leader removes its token and then looks at `waiting`. So either
    # the leader sees the waiter and hands it the outcome, or the waiter sees the
    # flight gone and reads the cache again: no wake-up is ever lost.

    def hand_over(self, key: Any, value: Any, error: BaseException | None) -> None:
        """Give a finished flight's outcome to the threads waiting for it."""
        if type(value) not in PLAIN_RESULTS and consumable(value) is not None:
            value, error = _INTERRUPTED, None  # consumed once: each waiter computes its own
        with self.wakeup:
            outcome = self.waiting.pop(key, None)
            if outcome is not None:
                outcome.value = value
                outcome.error = error
                outcome.done = True
                self.wakeup.notify_all()

    def abandon(self, key: Any, exc: BaseException) -> None:
        """The leader raised: unpublish its flight and pass the exception to its waiters
        (an interruption such as KeyboardInterrupt makes them try again instead)."""
        del self.flights[key]
        if self.waiting:
            self.hand_over(key, _INTERRUPTED, exc if isinstance(exc, Exception) else None)

    def lead(
        self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, degraded: bool = False
    ) -> Any:
        """The leader's side of the protocol, for a caller that published its token in
        `flights` on the slow path (the generated wrapper inlines the same steps): read the
        key again (a flight that ended meanwhile stored it), else compute it; then hand the
        outcome to the waiters. When `degraded`, neither read nor write the engine."""
        try:
            value = MISS if degraded else self._reread(key)
            if value is not MISS:
                self.shared_hits += 1
            elif degraded:
                value = self._compute(key, args, kwargs, store=False)
            elif self.lease is not None:
                value = self.leased(key, args, kwargs)
            else:
                value = self._compute(key, args, kwargs)
        except BaseException as error:
            self.abandon(key, error)
            raise
        del self.flights[key]
        if self.waiting:
            self.hand_over(key, value, None)
        return value

    def follow(
        self, key: Any, token: tuple[int], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Another call is computing `key`: wait for its outcome and share it. When the
        flight ends without an outcome to share (its leader was interrupted, or its value
        could not be stored), the waiters elect one new leader among themselves, as tasks
        do: the first to publish its token computes, the others wait for it."""
        if bypassed():
            # Inside disabled() every call runs the function: none waits for another's.
            return self._compute(key, args, kwargs)
        while True:
            leader = self.flights.get(key)
            if leader is None:
                if self.flights.setdefault(key, token) is token:
                    return self.lead(key, args, kwargs)
                continue  # another waiter took the lead first: follow it
            if leader[0] == token[0]:
                # Re-entry on the key this thread is computing: waiting would deadlock.
                return self._compute(key, args, kwargs)
            with self.wakeup:
                outcome = self.waiting.get(key)
                if outcome is None:
                    outcome = self.waiting[key] = _Outcome()
                outcome.waiters += 1
                if self.flights.get(key) is leader:
                    while not outcome.done:
                        # Woken by the hand-over; the timeout covers a leader interrupted
                        # between unpublishing its flight and handing over (a signal can
                        # land between any two bytecodes): then its flight is gone.
                        self.wakeup.wait(_RECHECK)
                        if not outcome.done and self.flights.get(key) is not leader:
                            outcome.waiters -= 1
                            if not outcome.waiters:
                                self.waiting.pop(key, None)
                            break
                else:
                    # The flight ended meanwhile. Other threads may still wait on this
                    # outcome (their leader hands it over); the last to leave removes it.
                    outcome.waiters -= 1
                    if not outcome.waiters and not outcome.done:
                        del self.waiting[key]
            if not outcome.done or (outcome.value is _INTERRUPTED and outcome.error is None):
                continue  # the flight ended unseen, or with nothing to share: elect anew
            if outcome.error is not None:
                self.misses += 1
                raise outcome.error
            self.shared_hits += 1
            return outcome.value

    def _compute(
        self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, store: bool = True
    ) -> Any:
        self.misses += 1
        value = self.func(*args, **kwargs)
        if store:
            self.store(key, value)
        return value

    # --- cross-process leases (engines with `capabilities.leases`) ----------------------
    #
    # The leader of this process takes the engine's lease on the key. Holding it, it
    # computes and stores, then releases it. Without it, another process computes: wait for
    # its value, polling with a growing pause, and take the lease when it is released or
    # expires (a holder that crashed). If leasing itself fails, compute without it: a
    # failing lock never fails the call.

    def leased(self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Compute `key` once across processes, or share the lease holder's result."""
        if bypassed():  # inside disabled(): no cache, so no one to share with either
            return self._compute(key, args, kwargs)
        engine = self.engine
        pause = _FIRST_PAUSE
        while True:
            try:
                token = engine.lease(key, self.lease)
            except Exception as exc:
                self._fault("take a lease", exc)
                return self._compute(key, args, kwargs)
            if token is not None:
                try:
                    return self._compute(key, args, kwargs)
                finally:
                    try:
                        engine.release(key, token)
                    except Exception as exc:  # the lease expires by itself
                        self._fault("release a lease", exc)
            time.sleep(pause)
            pause = min(pause * 2, _LAST_PAUSE)
            value = self._reread(key)
            if value is not MISS:
                self.shared_hits += 1
                return value

    async def _aleased(self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if bypassed():
            return await self._acompute(key, args, kwargs)
        pause = _FIRST_PAUSE
        while True:
            try:
                token = await self._alease(key, self.lease)
            except Exception as exc:
                self._fault("take a lease", exc)
                return await self._acompute(key, args, kwargs)
            if token is not None:
                try:
                    return await self._acompute(key, args, kwargs)
                finally:
                    try:
                        await self._arelease(key, token)
                    except Exception as exc:
                        self._fault("release a lease", exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _LAST_PAUSE)
            value = await self._aread(key)
            if value is not MISS:
                self.shared_hits += 1
                return value

    def _reread(self, key: Any) -> Any:
        if bypassed():
            return MISS
        try:
            return self.engine.get(key, MISS)
        except Exception as exc:
            self._fault("read", exc)
            return MISS

    # --- async miss path --------------------------------------------------------------

    async def amiss(
        self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, degraded: bool = False
    ) -> Any:
        """Compute a cold key once, however many tasks of one event loop await it; when
        `degraded` (the engine failed to read it), without a lease or a write.

        Flights are per event loop (a future belongs to one loop): tasks of two loops in
        two threads are each protected within their own loop.
        """
        loop = self._running_loop()
        if not self.lock or bypassed():
            # Inside disabled() every call runs the function: none waits for another's.
            return await self._acompute(key, args, kwargs, store=not degraded)
        task = asyncio.current_task()
        slot = (key, id(loop))  # the loop is alive while it runs this code
        while True:
            flight = self.aflights.get(slot)
            if flight is None:
                mine = _AFlight(loop, task)
                flight = self.aflights.setdefault(slot, mine)
                if flight is mine:
                    return await self._alead(slot, key, args, kwargs, mine, degraded)
            if flight.task is task:
                # Re-entry on the key this task is computing: waiting would deadlock.
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

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            # trio, or anyio's trio backend: flights, leases and blocking engines all run on
            # asyncio, so refuse at the first miss rather than fail deep inside.
            raise UnsupportedEventLoopError(
                f"cache {self.reporter.name!r}: cached async functions need a running asyncio "
                "event loop, and none is running (trio, and anyio's trio backend, are not "
                "supported: run under asyncio, or anyio with backend='asyncio')"
            ) from None

    async def _acompute(
        self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, store: bool = True
    ) -> Any:
        self.misses += 1
        value = await self.func(*args, **kwargs)
        if store:
            await self._astore(key, value)
        return value

    async def _alead(
        self,
        slot: Any,
        key: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        flight: _AFlight,
        degraded: bool,
    ) -> Any:
        future = flight.future
        try:
            value = MISS if degraded else await self._aread(key)
            if value is not MISS:  # stored by a flight that ended before ours began
                self.shared_hits += 1
            elif degraded or self.lease is None:
                value = await self._acompute(key, args, kwargs, store=not degraded)
            else:
                value = await self._aleased(key, args, kwargs)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved: no "never retrieved" log without waiters
            raise
        except BaseException:
            future.set_exception(_LeaderGone())
            future.exception()
            raise
        else:
            if type(value) not in PLAIN_RESULTS and consumable(value) is not None:
                future.set_exception(_LeaderGone())  # consumed once: each waiter computes
                future.exception()
            else:
                future.set_result(value)
            return value
        finally:
            self.aflights.pop(slot, None)  # gone already in a child the leader forked

    # --- refresh ----------------------------------------------------------------------

    def refresh(
        self, key_of: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Compute the entry for these arguments again and store it (`f.cache_refresh`).
        If the function raises, the stored entry is kept and the exception propagates."""
        try:
            key = key_of(*args, **kwargs)
        except Exception as exc:
            self._fault("build a key", exc)
            self.misses += 1
            return self.func(*args, **kwargs)
        return self._compute(key, args, kwargs)

    async def arefresh(
        self, key_of: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self._running_loop()
        try:
            key = key_of(*args, **kwargs)
        except Exception as exc:
            self._fault("build a key", exc)
            self.misses += 1
            return await self.func(*args, **kwargs)
        return await self._acompute(key, args, kwargs)

    # --- bookkeeping ------------------------------------------------------------------

    def reset(self) -> None:
        self.misses = 0
        self.shared_hits = 0


def _as_coroutine(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(*args: Any) -> Any:
        return function(*args)

    return call
