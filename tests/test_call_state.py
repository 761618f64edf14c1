"""The per-function call state in a hostile process: fork while threads compute, interrupted
leaders, caching switched off (maxsize=0, disabled()), refresh through a bound method, long
fault messages, and an event loop that is not asyncio."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import threading
import time
import warnings
from typing import Any

import pytest

from _support import run_threads
from twat_cache import acache, bcache, disabled, mcache
from twat_cache.exceptions import (
    CacheFaultWarning,
    ConfigurationError,
    KeyBuildError,
    UnsupportedEventLoopError,
)

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # seconds: a hang guard, never a speed expectation


def _waiters(func: Any, key: Any) -> int:
    """How many threads wait for `key`'s flight (read from the wrapper's call state)."""
    outcome = func.__globals__["__twat_waiting"].get(key)
    return 0 if outcome is None else outcome.waiters


def _until(condition: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.001)


def _reap(pid: int) -> int:
    """The exit status of a forked child, killing it if it hangs past the guard."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -999  # hung


# --- 1. fork while a thread computes a cold key -------------------------------------------


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


@needs_fork
def test_a_forked_child_computes_a_key_its_parent_was_computing() -> None:
    release = threading.Event()
    started = threading.Event()

    @mcache
    def slow(x: int) -> int:
        if threading.current_thread() is not threading.main_thread():
            started.set()
            release.wait(WAIT)
        return x * 2

    worker = threading.Thread(target=slow, args=(3,))
    worker.start()
    assert started.wait(WAIT)
    with warnings.catch_warnings():  # fork with threads alive: intended here
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: the computing thread does not exist here
        try:
            os._exit(0 if slow(3) == 6 and slow.cache_info().misses >= 1 else 1)
        finally:
            os._exit(2)
    try:
        assert _reap(pid) == 0
    finally:
        release.set()
        worker.join(WAIT)
    assert slow(3) == 6


_POOL_RELEASE = threading.Event()
_POOL_ARRIVED = threading.Semaphore(0)


@mcache
def _pool_square(x: int) -> int:
    if threading.current_thread().name.startswith("computing"):
        _POOL_ARRIVED.release()
        _POOL_RELEASE.wait(WAIT)
    return x * x


@needs_fork
def test_a_fork_pool_started_while_threads_compute_cold_keys_answers() -> None:
    _pool_square.cache_clear()
    _POOL_RELEASE.clear()
    threads = [
        threading.Thread(target=_pool_square, args=(i,), name=f"computing-{i}") for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert _POOL_ARRIVED.acquire(timeout=WAIT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with multiprocessing.get_context("fork").Pool(4) as pool:
                answer = pool.map_async(_pool_square, range(8)).get(timeout=WAIT)
        assert answer == [i * i for i in range(8)]
    finally:
        _POOL_RELEASE.set()
        for thread in threads:
            thread.join(WAIT)
    assert [_pool_square(i) for i in range(8)] == [i * i for i in range(8)]


@needs_fork
def test_a_forked_child_starts_with_no_async_flights() -> None:
    release = threading.Event()
    started = threading.Event()

    @acache
    async def slow(x: int) -> int:
        if threading.current_thread() is not threading.main_thread():
            started.set()
            await asyncio.to_thread(release.wait, WAIT)
        return x + 1

    worker = threading.Thread(target=lambda: asyncio.run(slow(1)))
    worker.start()
    assert started.wait(WAIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            state = slow.__globals__["__twat_state"]
            clean = not state.aflights and not state.flights
            os._exit(0 if clean and asyncio.run(slow(1)) == 2 else 1)
        finally:
            os._exit(2)
    try:
        assert _reap(pid) == 0
    finally:
        release.set()
        worker.join(WAIT)


@needs_fork
def test_locks_held_by_another_thread_at_fork_are_renewed_in_the_child() -> None:
    from twat_cache import _bypass, registry

    @mcache
    def slow(x: int) -> int:
        time.sleep(0.02)
        return x

    state = slow.__globals__["__twat_state"]
    held = [state.wakeup, state.reporter._lock, registry._LOCK, _bypass._lock]
    taken = threading.Event()
    release = threading.Event()

    def hold() -> None:
        for lock in held:
            lock.acquire()
        taken.set()
        release.wait(WAIT)
        for lock in reversed(held):
            lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(WAIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # every lock above is copied held, by a thread that does not exist here
        try:
            results, errors = run_threads(4, lambda i: slow(1))  # contention: the condition
            with disabled():  # disabled()'s lock
                bypassed = slow(1)

            @mcache  # the registry's lock
            def other(x: int) -> int:
                return x

            fine = results == [1] * 4 and errors == [None] * 4 and bypassed == 1
            os._exit(0 if fine and other(2) == 2 else 1)
        finally:
            os._exit(2)
    try:
        assert _reap(pid) == 0
    finally:
        release.set()
        holder.join(WAIT)


# --- 2. an interrupted leader ---------------------------------------------------------------


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_leader_hands_its_waiters_one_new_leader(
    interruption: type[BaseException],
) -> None:
    executions: list[str] = []
    lock = threading.Lock()
    followers = 7

    @mcache
    def slow(x: int) -> str:
        with lock:
            executions.append(threading.current_thread().name)
            first = len(executions) == 1
        if first:
            _until(lambda: _waiters(slow, x) == followers)
            raise interruption()
        time.sleep(0.05)  # long enough for a stampede to show
        return f"value {x}"

    results, errors = run_threads(followers + 1, lambda i: slow(5))
    interrupted = [e for e in errors if e is not None]
    assert len(interrupted) == 1
    assert type(interrupted[0]) is interruption
    # neither the interruption nor a stampede reached the waiters: one of them computed
    assert len(executions) == 2
    assert sorted(r for r in results if r is not None) == ["value 5"] * followers
    assert slow(5) == "value 5"
    assert len(executions) == 2


def test_an_interrupted_leader_is_replaced_by_one_task() -> None:
    executions: list[int] = []

    @acache
    async def slow(x: int) -> int:
        executions.append(x)
        if len(executions) == 1:
            await asyncio.sleep(0.05)
            raise asyncio.CancelledError
        await asyncio.sleep(0.05)
        return x

    async def main() -> list[Any]:
        return await asyncio.gather(*(slow(4) for _ in range(8)), return_exceptions=True)

    results = asyncio.run(main())
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 1
    assert [r for r in results if not isinstance(r, BaseException)] == [4] * 7
    assert len(executions) == 2


# --- 9. maxsize=0 and disabled(): every call runs the function ---------------------------


def _concurrent_threads(func: Any, n: int = 5) -> list[Any]:
    results, errors = run_threads(n, lambda i: func(1))
    assert errors == [None] * n
    return results


def test_maxsize_zero_runs_every_concurrent_call() -> None:
    executions: list[int] = []

    @mcache(maxsize=0)
    def slow(x: int) -> int:
        executions.append(x)
        time.sleep(0.05)
        return x

    assert _concurrent_threads(slow) == [1] * 5
    assert len(executions) == 5
    assert slow.cache_info()[:2] == (0, 5)


def test_disabled_runs_every_concurrent_call_of_threads() -> None:
    executions: list[int] = []

    @mcache
    def slow(x: int) -> int:
        executions.append(x)
        time.sleep(0.05)
        return x

    def bypassing(x: int) -> int:
        with disabled():
            return slow(x)

    assert _concurrent_threads(bypassing) == [1] * 5
    assert len(executions) == 5
    assert slow.cache_info()[:2] == (0, 5)


@pytest.mark.parametrize("switch", ["maxsize=0", "disabled"])
def test_concurrent_tasks_each_run_when_caching_is_off(switch: str) -> None:
    executions: list[int] = []
    options = {"maxsize": 0} if switch == "maxsize=0" else {}

    @acache(**options)
    async def slow(x: int) -> int:
        executions.append(x)
        await asyncio.sleep(0.05)
        return x

    async def main() -> list[int]:
        if switch == "disabled":
            with disabled():
                return list(await asyncio.gather(*(slow(1) for _ in range(5))))
        return list(await asyncio.gather(*(slow(1) for _ in range(5))))

    assert asyncio.run(main()) == [1] * 5
    assert len(executions) == 5
    assert slow.cache_info()[:2] == (0, 5)


# --- 10a. cache_refresh through a bound method ---------------------------------------------


class Account:
    def __init__(self, owner: str) -> None:
        self.owner = owner

    @mcache
    def balance(self, currency: str = "EUR") -> tuple[str, str]:
        owner = self.owner if isinstance(self, Account) else f"not an account: {self!r}"
        return owner, currency


class Savings(Account):
    pass


def test_refresh_through_a_bound_method_never_runs_with_a_wrong_self() -> None:
    account = Account("ada")
    assert account.balance("USD") == ("ada", "USD")
    for attribute in ("cache_refresh", "cache_delete", "cache_key"):
        with pytest.raises(TypeError, match=r"type\(obj\)\.balance\.") as caught:
            getattr(account.balance, attribute)("USD")
        assert "str as self" in str(caught.value)
    # through the class, with the instance first, as the message says
    assert Account.balance.cache_refresh(account, "USD") == ("ada", "USD")
    assert Account.balance.cache_delete(account, "USD") is True
    savings = Savings("bob")  # a subclass instance is a valid self
    assert type(savings).balance.cache_refresh(savings) == ("bob", "EUR")


def test_a_function_named_with_self_outside_a_class_is_not_checked() -> None:
    @mcache
    def describe(self: Any, x: int = 0) -> str:
        return f"{self}:{x}"

    assert describe.cache_refresh("plain") == "plain:0"


# --- 10b. fault messages of deeply nested arguments stay short -----------------------------


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("refused")


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a key of some length": [value]}
    return value


@pytest.mark.parametrize("argument", ["too deep", "unpicklable deep down"])
def test_a_key_fault_of_a_deeply_nested_argument_warns_briefly(argument: str) -> None:
    value = _nested(400, 1) if argument == "too deep" else _nested(40, _Unpicklable())

    @bcache
    def measure(x: Any) -> int:
        return 1

    with pytest.warns(CacheFaultWarning) as caught:
        assert measure(value) == 1
    message = str(caught[0].message).replace(measure.cache_name, "")  # type: ignore[attr-defined]
    assert len(message) < 560, message  # 777 and 1,310 characters before
    assert "failed to build a key" in message
    assert "\u2026" in message  # the path was shortened, and says so
    if argument != "too deep":  # what to diagnose survives: the type and the advice
        assert "_Unpicklable" in message
        assert "key= or ignore=" in message

    @bcache(fallback=False)
    def strict(x: Any) -> int:
        return 1

    with pytest.raises(KeyBuildError) as raised:
        strict(value)
    assert len(str(raised.value)) < 400, str(raised.value)


# --- 10c. a task started inside disabled() that outlives the block ---------------------------


def test_a_task_started_in_disabled_stays_uncached_after_the_block() -> None:
    runs: list[int] = []

    @acache
    async def numbered(x: int) -> int:
        runs.append(x)
        return len(runs)

    async def main() -> tuple[int, int, int]:
        first = await numbered(1)  # computed and stored: 1
        with disabled():
            task = asyncio.create_task(numbered(1))  # starts once the block has ended
            cold = asyncio.create_task(numbered(2))
        late = await task
        await cold
        return first, late, await numbered(1)

    first, late, after = asyncio.run(main())
    assert first == 1
    assert late == 2  # it ran the function: it read nothing from the cache
    assert after == 1  # and it stored nothing over the entry
    assert numbered.cache_info().currsize == 1  # key 2 was never written
    gc.collect()  # the tasks are gone: the wrapper reads its engine directly again
    scope = numbered.__globals__
    assert scope["__twat_get"] is scope["__twat_direct_get"]


def test_wrappers_read_directly_again_once_every_block_is_gone() -> None:
    @mcache
    def square(x: int) -> int:
        return x * x

    scope = square.__globals__
    with disabled():
        assert scope["__twat_get"] is not scope["__twat_direct_get"]
        with disabled():
            pass
        assert scope["__twat_get"] is not scope["__twat_direct_get"]
    assert scope["__twat_get"] is scope["__twat_direct_get"]
    assert square(3) == 9
    assert square(3) == 9
    assert square.cache_info()[:2] == (1, 1)


# --- 16. an event loop that is not asyncio ------------------------------------------------


@pytest.mark.parametrize("runner", ["trio", "anyio-trio"])
@pytest.mark.parametrize("decorator", ["acache", "bcache"])
def test_acache_refuses_trio_clearly_at_the_first_call(runner: str, decorator: str) -> None:
    trio_module = pytest.importorskip("trio")
    anyio = pytest.importorskip("anyio")
    executions: list[int] = []
    cache = acache if decorator == "acache" else bcache

    @cache
    async def fetch(x: int) -> int:
        executions.append(x)
        return x

    async def main() -> int:
        return await fetch(1)

    def run() -> int:
        if runner == "trio":
            return int(trio_module.run(main))
        return int(anyio.run(main, backend="trio"))

    with pytest.raises(UnsupportedEventLoopError, match="asyncio event loop") as caught:
        run()
    assert "trio" in str(caught.value)
    assert isinstance(caught.value, ConfigurationError | RuntimeError)
    assert executions == []
    # the same function under asyncio, and anyio's asyncio backend, caches as usual
    assert asyncio.run(main()) == 1
    assert anyio.run(main, backend="asyncio") == 1
    assert executions == [1]


def test_trio_is_refused_without_stampede_protection_too() -> None:
    trio_module = pytest.importorskip("trio")

    @acache(lock=False)
    async def fetch(x: int) -> int:
        return x

    with pytest.raises(UnsupportedEventLoopError, match="asyncio event loop"):
        trio_module.run(fetch, 1)


def test_trio_is_refused_by_refresh_and_by_a_call_whose_key_fails() -> None:
    trio_module = pytest.importorskip("trio")
    executions: list[Any] = []

    @bcache
    async def fetch(x: Any) -> Any:
        executions.append(x)
        return 1

    async def refresh() -> Any:
        return await fetch.cache_refresh(1)  # type: ignore[attr-defined]

    with pytest.raises(UnsupportedEventLoopError, match="asyncio event loop"):
        trio_module.run(refresh)
    with pytest.raises(UnsupportedEventLoopError, match="asyncio event loop"):
        trio_module.run(fetch, _Unpicklable())  # no key: would run uncached
    assert executions == []
