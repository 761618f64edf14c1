"""Scenario interrupts: 8 callers ask for one cold key; the one computing it is interrupted
(KeyboardInterrupt or SystemExit in a thread, a cancelled task in an event loop) once the
others wait for it. Exactly one of the waiters must then compute the key, and every waiter
get its value: neither the interruption nor a stampede reaches them. On the memory chain
and on every persistent engine, threads and asyncio tasks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from stress.common import ZERO, Rows, cached, per_engine, progress, selected

NAME = "interrupts"
ROUNDS = {"full": 100, "quick": 10}
CALLERS = 8
WORK = 0.02  # seconds the new leader computes: the window in which a stampede would show
HANG_GUARD = 20.0
ENGINES = ("memory", "diskcache", "joblib", "klepto", "redis")


def _decorate(engine: str, folder: str, func: Any, redis_url: str | None) -> Any:
    if engine == "memory":
        from twat_cache import mcache

        return mcache(name=folder)(func)
    return cached(engine, folder, func, redis_url, name=folder)


def _waiting(func: Any) -> int:
    """Threads waiting for a flight of `func`, read from the wrapper's call state (a
    persistent engine's key is a digest: the round's one key is the only one in flight)."""
    return sum(outcome.waiters for outcome in list(func.__globals__["__twat_waiting"].values()))


def _thread_round(f: Any, key: Any, executions: list[str]) -> tuple[int, int, bool]:
    """One round: (executions after the interrupt, waiters without the value, hung)."""
    barrier = threading.Barrier(CALLERS)
    results: list[Any] = [None] * CALLERS
    errors: list[BaseException | None] = [None] * CALLERS

    def call(index: int) -> None:
        barrier.wait()
        try:
            results[index] = f(key)
        except BaseException as exc:
            errors[index] = exc

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + HANG_GUARD
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = any(thread.is_alive() for thread in threads)
    interrupted = _indices(errors)  # the leader alone, when all goes well
    unserved = max(0, len(interrupted) - 1) + sum(
        1 for i in range(CALLERS) if i not in interrupted and results[i] != ("value", key)
    )
    return len(executions) - 1, unserved, hung


def _indices(errors: list[BaseException | None]) -> set[int]:
    """The callers that were interrupted (only the first leader should be)."""
    return {i for i, e in enumerate(errors) if isinstance(e, KeyboardInterrupt | SystemExit)}


async def _task_round(
    af: Any, key: Any, executions: list[str], leaders: list[Any]
) -> tuple[int, int]:
    tasks = [asyncio.create_task(af(key)) for _ in range(CALLERS)]
    while not leaders:  # a task is computing (which one: whichever read its miss first)
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)  # the others await its flight
    leaders[0].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = [r for r in results if isinstance(r, asyncio.CancelledError)]
    unserved = max(0, len(cancelled) - 1) + sum(
        not isinstance(r, asyncio.CancelledError) and r != ("value", key) for r in results
    )
    return len(executions) - 1, unserved


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    rounds = ROUNDS[profile]

    def work(engine: str, rows: Rows) -> None:
        figures = (
            "rounds without exactly 1 execution after the interrupt: threads",
            "rounds without exactly 1 execution after the interrupt: tasks",
            "waiters handed an interruption or no value",
        )
        if engine == "redis" and redis_url is None:
            for figure in figures:
                rows.skip(engine, figure, "skipped: no redis-server")
            return
        progress(f"{NAME}: {engine}, {CALLERS} threads and {CALLERS} tasks x {rounds} rounds")
        executions: list[str] = []
        interruption: list[type[BaseException]] = [KeyboardInterrupt]

        def compute(key: str) -> tuple[str, str]:
            executions.append(threading.current_thread().name)
            if len(executions) == 1:
                deadline = time.monotonic() + 1.0  # then interrupt anyway: a round never hangs
                while _waiting(f) < CALLERS - 1 and time.monotonic() < deadline:
                    time.sleep(0.001)
                raise interruption[0]()
            time.sleep(WORK)
            return ("value", key)

        leaders: list[Any] = []

        async def acompute(key: str) -> tuple[str, str]:
            executions.append("task")
            if len(executions) == 1:
                leaders.append(asyncio.current_task())
                await asyncio.sleep(HANG_GUARD)  # until cancelled
            await asyncio.sleep(WORK)
            return ("value", key)

        f = _decorate(engine, f"interrupts-{engine}", compute, redis_url)
        af = _decorate(engine, f"interrupts-async-{engine}", acompute, redis_url)
        bad = {"threads": 0, "tasks": 0}
        unserved = 0
        counts: dict[str, int] = {}
        for round_ in range(rounds):
            executions.clear()
            interruption[0] = KeyboardInterrupt if round_ % 2 == 0 else SystemExit
            after, missing, hung = _thread_round(f, f"t{round_}", executions)
            counts[f"threads:{after}"] = counts.get(f"threads:{after}", 0) + 1
            unserved += missing
            if hung or after != 1:
                bad["threads"] += 1
            executions.clear()
            leaders.clear()
            after, missing = asyncio.run(
                asyncio.wait_for(_task_round(af, f"a{round_}", executions, leaders), HANG_GUARD)
            )
            counts[f"tasks:{after}"] = counts.get(f"tasks:{after}", 0) + 1
            unserved += missing
            if after != 1:
                bad["tasks"] += 1
        for kind, figure in zip(("threads", "tasks"), figures, strict=False):
            seen = sorted(
                (int(k.split(":")[1]), v) for k, v in counts.items() if k.startswith(kind)
            )
            per_round = ", ".join(f"{n} ({c} rounds)" for n, c in seen)
            rows.judge(
                engine,
                figure,
                bad[kind],
                ZERO,
                shown=f"{bad[kind]} of {rounds} rounds (executions after it: {per_round})",
            )
        rows.judge(
            engine,
            figures[2],
            unserved,
            ZERO,
            shown=f"{unserved} of {2 * rounds * (CALLERS - 1)} waiters",
        )

    return per_engine(NAME, selected(engines, ENGINES), work, parallel=False).as_dicts()
