"""Helpers shared by test modules (importable: pytest puts tests/ on sys.path for conftest)."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest


def _memory_engines() -> list[Any]:
    # cachebox (and in principle cachetools) is an optional dependency: skip, don't fall back.
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                name != "functools" and importlib.util.find_spec(name) is None,
                reason=f"{name} is not installed",
            ),
        )
        for name in ("cachebox", "cachetools", "functools")
    ]


#: The memory engines as pytest params, each skipped when its library is missing.
MEMORY_ENGINES = _memory_engines()


def run_threads(n: int, target: Callable[[int], Any]) -> tuple[list[Any], list[Any]]:
    """Run `target(i)` in n threads released together; return results and errors by index."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "threads hung"
    return results, errors


def stampede_on_one_key(
    decorate: Any, *, threads: int = 0, tasks: int = 0, key: int = 7
) -> tuple[list[int], list[Any]]:
    """Call one cold key of a function cached by `decorate` from `threads` real threads, or
    `tasks` tasks of one event loop, all at once; returns (executions, results).

    The first execution waits until every caller has called (then a little longer, for the
    last ones to reach the wrapper's flight), so a second execution means a caller that did
    not share the first one's computation, not a late arrival.
    """
    import asyncio
    import time

    callers = threads or tasks
    executions: list[int] = []
    arrived = threading.Semaphore(0)

    def first_waits() -> None:
        if len(executions) == 1:
            for _ in range(callers):
                assert arrived.acquire(timeout=10), "a caller never arrived"

    if threads:

        @decorate
        def compute(x: int) -> list[int]:
            executions.append(x)
            first_waits()
            time.sleep(0.2)
            return [x]

        def call(_: int) -> list[int]:
            arrived.release()
            return compute(key)

        results, errors = run_threads(threads, call)
        assert errors == [None] * threads, errors
        return executions, results

    called = [0]  # tasks of one loop: a plain counter

    @decorate
    async def acompute(x: int) -> list[int]:
        executions.append(x)
        while len(executions) == 1 and called[0] < tasks:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        return [x]

    async def call() -> list[int]:
        called[0] += 1
        return await acompute(key)

    async def main() -> list[Any]:
        return list(await asyncio.wait_for(asyncio.gather(*(call() for _ in range(tasks))), 30))

    return executions, asyncio.run(main())


def wait_child(pid: int, timeout: float = 30.0) -> int | None:
    """A forked child's exit code, or None when it hung past `timeout` (it is then killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


@contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """`lock` held by another thread for the length of the block (a fork inside the block
    copies it held)."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join()
