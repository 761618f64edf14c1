"""Scenario 8, stampede: 64 threads, then 64 asyncio tasks, call a cached function on one
cold key at once, again and again; the function must run exactly once each time and every
caller get its result. Then a function that calls itself on the key it is computing (sync
and async) must not deadlock: a hang guard stops the wait.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections import Counter
from typing import Any

from stress.common import PROFILES, ZERO, Rows, cached, per_engine, progress, selected
from twat_cache.exceptions import CacheFaultWarning

NAME = "stampede"
WORK = 0.05  # seconds the function takes: the window in which the callers pile up
HANG_GUARD = 30.0  # seconds after which a call is taken as deadlocked
RECURSIONS = {"full": 20, "quick": 3}


def _threads(f: Any, key: int, workers: int) -> tuple[list[Any], list[BaseException], bool]:
    barrier = threading.Barrier(workers)
    results: list[Any] = [None] * workers
    errors: list[BaseException] = []

    def call(index: int) -> None:
        try:
            barrier.wait()
            results[index] = f(key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + HANG_GUARD
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = any(thread.is_alive() for thread in threads)
    return results, errors, hung


def _guarded(run: Any) -> tuple[Any, bool]:
    """`run()` in a thread, with the hang guard; (its result or exception, hung)."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(run())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_GUARD)
    return (outcome[0] if outcome else None), thread.is_alive()


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    p = PROFILES[profile]
    workers, rounds = p.stampede_workers, p.stampede_rounds

    def work(engine: str, rows: Rows) -> None:
        figures = (
            "cold keys not computed exactly once: threads",
            "cold keys not computed exactly once: tasks",
            "same-key recursion deadlocks",
        )
        if engine == "redis" and redis_url is None:
            for figure in figures:
                rows.skip(engine, figure, "skipped: no redis-server")
            return
        progress(f"{NAME}: {engine}, {workers} threads and {workers} tasks x {rounds} rounds")
        lock = threading.Lock()
        executions: Counter[Any] = Counter()

        def slow(key: int) -> dict[str, int]:
            with lock:
                executions[("sync", key)] += 1
            time.sleep(WORK)
            return {"key": key}

        async def aslow(key: int) -> dict[str, int]:
            with lock:
                executions[("async", key)] += 1
            await asyncio.sleep(WORK)
            return {"key": key}

        f = cached(engine, f"stampede-{engine}", slow, redis_url, name=f"stampede-{engine}")
        af = cached(
            engine, f"stampede-async-{engine}", aslow, redis_url, name=f"stampede-async-{engine}"
        )

        bad: Counter[str] = Counter()
        details: dict[str, Any] = {"executions": Counter(), "errors": Counter()}
        for key in range(rounds):
            results, errors, hung = _threads(f, key, workers)
            count = executions[("sync", key)]
            details["executions"][f"threads:{count}"] += 1
            for error in errors:
                details["errors"][f"threads: {type(error).__name__}: {error}"[:160]] += 1
            if hung or errors or count != 1 or any(r != {"key": key} for r in results):
                bad["threads"] += 1

        async def gather(key: int) -> list[Any]:
            calls = [af(key) for _ in range(workers)]
            return await asyncio.gather(*calls, return_exceptions=True)

        for key in range(rounds):
            results, hung = _guarded(lambda key=key: asyncio.run(gather(key)))
            count = executions[("async", key)]
            details["executions"][f"tasks:{count}"] += 1
            failed = hung or not isinstance(results, list)
            if not failed:
                for r in results:
                    if isinstance(r, BaseException):
                        details["errors"][f"tasks: {type(r).__name__}: {r}"[:160]] += 1
                failed = any(r != {"key": key} for r in results)
            if failed or count != 1:
                bad["tasks"] += 1

        calls: Counter[Any] = Counter()

        def recurse(key: int) -> int:
            calls[("sync", key)] += 1
            if calls[("sync", key)] == 1:
                return int(g(key)) + 1  # the key this call is computing
            return 0

        async def arecurse(key: int) -> int:
            calls[("async", key)] += 1
            if calls[("async", key)] == 1:
                return int(await ag(key)) + 1
            return 0

        g = cached(engine, f"recursion-{engine}", recurse, redis_url, name=f"recursion-{engine}")
        ag = cached(
            engine,
            f"recursion-async-{engine}",
            arecurse,
            redis_url,
            name=f"recursion-async-{engine}",
        )
        deadlocks = 0
        tried = 0
        for key in range(RECURSIONS[profile]):
            for run in (lambda key=key: g(key), lambda key=key: asyncio.run(ag(key))):
                tried += 1
                result, hung = _guarded(run)
                if hung:
                    deadlocks += 1
                elif result != 1:
                    details["errors"][f"recursion returned {result!r}"[:160]] += 1
        for kind, figure in zip(("threads", "tasks"), figures, strict=False):
            seen = {
                int(k.split(":")[1]): v
                for k, v in details["executions"].items()
                if k.startswith(kind)
            }
            per_key = (
                "always 1"
                if set(seen) == {1}
                else ", ".join(f"{n} ({c} rounds)" for n, c in sorted(seen.items()))
            )
            rows.judge(
                engine,
                figure,
                bad[kind],
                ZERO,
                shown=f"{bad[kind]} of {rounds} rounds (executions per key: {per_key})",
                errors=dict(details["errors"]),
            )
        rows.judge(
            engine,
            figures[2],
            deadlocks,
            ZERO,
            shown=f"{deadlocks} of {tried} calls",
            hang_guard_s=HANG_GUARD,
        )

    # A cache fault makes the call go on without the cache: the messages explain a miss.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheFaultWarning)

        def faults(engine: str) -> list[str]:
            return sorted({str(w.message)[:300] for w in caught if f"-{engine}'" in str(w.message)})

        # One engine at a time: on a loaded machine a slow server answer is a fault.
        rows = per_engine(NAME, selected(engines), work, parallel=False)
    return rows.as_dicts()
