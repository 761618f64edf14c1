"""Helpers shared by test modules (importable: pytest puts tests/ on sys.path for conftest)."""

from __future__ import annotations

import importlib.util
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
    import threading
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

        results: list[Any] = [None] * threads

        def run(i: int) -> None:
            arrived.release()
            results[i] = compute(key)

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert not any(worker.is_alive() for worker in workers), "threads hung"
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
