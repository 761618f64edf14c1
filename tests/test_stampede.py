"""Stampede protection with real threads and real event loops: one computation per cold key."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from _support import MEMORY_ENGINES, run_threads
from twat_cache import acache, mcache

THREADS = 32
TASKS = 100


# --- threads ------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", MEMORY_ENGINES)
def test_threads_on_one_cold_key_compute_once(engine: str) -> None:
    executions: list[int] = []

    @mcache(cache_engine=engine)
    def slow(x: int) -> dict[str, int]:
        executions.append(x)
        time.sleep(0.05)
        return {"x": x}

    results, errors = run_threads(THREADS, lambda i: slow(7))
    assert errors == [None] * THREADS
    assert executions == [7]
    assert all(r is results[0] for r in results)
    assert results[0] == {"x": 7}
    assert slow.cache_info().misses == 1
    assert slow(7) is results[0]


def test_threads_on_five_cold_keys_compute_each_once() -> None:
    executions: list[int] = []
    lock = threading.Lock()

    @mcache
    def slow(x: int) -> list[int]:
        with lock:
            executions.append(x)
        time.sleep(0.05)
        return [x]

    n = 5 * 8
    results, errors = run_threads(n, lambda i: slow(i % 5))
    assert errors == [None] * n
    assert sorted(executions) == [0, 1, 2, 3, 4]
    for i in range(n):
        assert results[i] == [i % 5]
        assert results[i] is results[i % 5]
    assert slow.cache_info().misses == 5
    assert slow.cache_info().currsize == 5


def test_threads_share_an_exception_which_is_not_cached() -> None:
    executions: list[int] = []

    @mcache
    def failing(x: int) -> int:
        executions.append(x)
        time.sleep(0.05)
        raise ValueError(f"bad {x}")

    results, errors = run_threads(THREADS, lambda i: failing(3))
    assert results == [None] * THREADS
    assert all(isinstance(e, ValueError) and str(e) == "bad 3" for e in errors), errors
    assert executions == [3]
    assert failing.cache_info().currsize == 0
    with pytest.raises(ValueError, match="bad 3"):
        failing(3)
    assert executions == [3, 3]  # not cached: the next call executes again


def test_lock_false_still_returns_right_results() -> None:
    executions: list[int] = []

    @mcache(lock=False)
    def slow(x: int) -> int:
        executions.append(x)
        time.sleep(0.05)
        return x * 2

    results, errors = run_threads(THREADS, lambda i: slow(4))
    assert errors == [None] * THREADS
    assert results == [8] * THREADS
    assert 1 <= len(executions) <= THREADS
    assert slow.cache_info().currsize == 1
    count = len(executions)
    assert slow(4) == 8
    assert len(executions) == count


def test_same_key_reentry_in_one_thread_does_not_deadlock() -> None:
    calls: list[int] = []

    @mcache
    def reentrant(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            return reentrant(x) + 1  # same key, same thread, while computing it
        return x

    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(reentrant(10)), daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "re-entry on the same key deadlocked"
    assert outcome == [11]
    assert calls == [10, 10]
    assert reentrant(10) == 11  # the outer result is the one stored last


def test_recursive_fib_through_the_cache() -> None:
    @mcache
    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    start = time.perf_counter()
    assert fib(25) == 75025
    elapsed = time.perf_counter() - start
    info = fib.cache_info()
    assert info.misses == 26
    assert info.hits == 23
    assert info.currsize == 26
    assert elapsed < 1.0  # 49 calls; uncached it would be ~250,000


# --- asyncio ------------------------------------------------------------------------------


@pytest.mark.parametrize("decorator", ["mcache", "acache"])
def test_tasks_on_one_cold_key_compute_once(decorator: str) -> None:
    executions: list[int] = []
    deco = mcache if decorator == "mcache" else acache

    @deco
    async def slow(x: int) -> dict[str, int]:
        executions.append(x)
        await asyncio.sleep(0.05)
        return {"x": x}

    async def main() -> list[dict[str, int]]:
        return await asyncio.gather(*(slow(5) for _ in range(TASKS)))

    results = asyncio.run(main())
    assert executions == [5]
    assert len(results) == TASKS
    assert all(r is results[0] for r in results)
    assert results[0] == {"x": 5}
    assert slow.cache_info().misses == 1
    assert slow.cache_info().hits == TASKS - 1


@pytest.mark.parametrize("decorator", ["mcache", "acache"])
def test_tasks_share_an_exception_which_is_not_cached(decorator: str) -> None:
    executions: list[int] = []
    deco = mcache if decorator == "mcache" else acache

    @deco
    async def failing(x: int) -> int:
        executions.append(x)
        await asyncio.sleep(0.05)
        raise ValueError(f"bad {x}")

    async def main() -> list[Any]:
        return await asyncio.gather(*(failing(1) for _ in range(TASKS)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, ValueError) and str(o) == "bad 1" for o in outcomes), outcomes
    assert executions == [1]
    assert failing.cache_info().currsize == 0
    with pytest.raises(ValueError, match="bad 1"):
        asyncio.run(failing(1))
    assert executions == [1, 1]


def test_cancelled_waiter_does_not_cancel_the_leader() -> None:
    executions: list[int] = []

    @acache
    async def slow(x: int) -> str:
        executions.append(x)
        await asyncio.sleep(0.05)
        return f"value {x}"

    async def main() -> None:
        leader = asyncio.create_task(slow(1))
        await asyncio.sleep(0)  # the leader is now inside the function
        waiters = [asyncio.create_task(slow(1)) for _ in range(5)]
        await asyncio.sleep(0)  # the waiters are now waiting on the leader
        waiters[0].cancel()
        outcomes = await asyncio.gather(leader, *waiters, return_exceptions=True)
        assert isinstance(outcomes[1], asyncio.CancelledError)
        assert outcomes[0] == "value 1"
        assert outcomes[2:] == ["value 1"] * 4

    asyncio.run(asyncio.wait_for(main(), timeout=5))
    assert executions == [1]


@pytest.mark.parametrize("decorator", ["mcache", "acache"])
def test_cancelled_leader_makes_waiters_retry(decorator: str) -> None:
    executions: list[int] = []
    deco = mcache if decorator == "mcache" else acache

    @deco
    async def slow(x: int) -> str:
        executions.append(x)
        await asyncio.sleep(0.05)
        return f"value {x}"

    async def main() -> None:
        leader = asyncio.create_task(slow(2))
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(slow(2)) for _ in range(10)]
        await asyncio.sleep(0)
        assert executions == [2]  # only the leader has started
        leader.cancel()
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        assert outcomes == ["value 2"] * 10
        with pytest.raises(asyncio.CancelledError):
            await leader

    asyncio.run(asyncio.wait_for(main(), timeout=5))
    assert executions == [2, 2]
    assert slow.cache_info().currsize == 1


def test_async_same_key_reentry_in_one_task_does_not_deadlock() -> None:
    calls: list[int] = []

    @acache
    async def reentrant(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            return await reentrant(x) + 1  # same key, same task, while computing it
        return x

    result = asyncio.run(asyncio.wait_for(reentrant(3), timeout=5))
    assert result == 4
    assert calls == [3, 3]


def test_async_recursion_on_other_keys_in_one_task() -> None:
    @mcache
    async def fib(n: int) -> int:
        return n if n < 2 else await fib(n - 1) + await fib(n - 2)

    assert asyncio.run(asyncio.wait_for(fib(25), timeout=5)) == 75025
    assert fib.cache_info().misses == 26


@pytest.mark.parametrize("decorator", ["mcache", "acache"])
def test_two_threads_with_their_own_event_loops(decorator: str) -> None:
    executions: list[int] = []
    deco = mcache if decorator == "mcache" else acache

    @deco
    async def slow(x: int) -> int:
        executions.append(x)
        await asyncio.sleep(0.05)
        return x * 3

    async def many(x: int) -> list[int]:
        return await asyncio.gather(*(slow(x) for _ in range(10)))

    results, errors = run_threads(2, lambda i: asyncio.run(many(9)))
    assert errors == [None, None]
    assert results == [[27] * 10, [27] * 10]
    assert 1 <= len(executions) <= 20
    count = len(executions)
    assert asyncio.run(slow(9)) == 27
    assert len(executions) == count  # stored: a third loop hits


def test_second_event_loop_keeps_its_own_stampede_protection() -> None:
    executions: list[int] = []
    first_running = threading.Event()
    second_done = threading.Event()

    @acache
    async def slow(x: int) -> int:
        executions.append(x)
        if len(executions) == 1:
            # Loop A's computation stays in flight until loop B is done (bounded wait, so
            # an implementation sharing one flight across loops cannot deadlock here).
            first_running.set()
            deadline = time.monotonic() + 1.0
            while not second_done.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        else:
            await asyncio.sleep(0.02)
        return x * 3

    def loop_a() -> int:
        return asyncio.run(slow(9))

    async def many() -> list[int]:
        return await asyncio.gather(*(slow(9) for _ in range(10)))

    def loop_b() -> list[int]:
        assert first_running.wait(timeout=5)
        try:
            return asyncio.run(many())
        finally:
            second_done.set()

    results, errors = run_threads(2, lambda i: loop_a() if i == 0 else loop_b())
    assert errors == [None, None]
    assert results == [27, [27] * 10]
    assert len(executions) <= 2  # at most one computation per event loop
