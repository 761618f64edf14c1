"""Scenario leaks: a long-running process that makes event loops and classes at run time
keeps a flat memory.

Two patterns real programs have, each repeated many times in one process:
- event loops: `asyncio.run(f(x))` from synchronous code (a CLI, a task queue worker, a
  notebook cell), each run making and closing an event loop, through an async function
  cached on every engine;
- classes made at run time (`type()`, class statements in a factory, ORMs, mocks): each a
  subclass with a 10 KB payload whose instance calls a cached method, then the cache is
  cleared and the class dropped; on the memory engine also a class whose own method is
  decorated in its body.
Memory is traced (tracemalloc) from the start; after a tenth of the rounds (the warm-up:
imports, first connections, caches at their size) the traced size is the baseline, and at
the end, after a collection, it may exceed the baseline by at most 10%. A leak of one loop,
socket or class per round grows it without bound: 10,000 rounds of 10 KB are 100 MB.
"""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from typing import Any

from stress.common import (
    ENGINES,
    Rows,
    at_most,
    cached,
    child_env,
    per_engine,
    progress,
    result_of,
    selected,
    size,
    spawn,
)

NAME = "leaks"
ROUNDS = {"full": 10_000, "quick": 300}
TIMEOUT = {"full": 1800.0, "quick": 120.0}
GROWTH = at_most(0.10, "<= 10%")
FDS = at_most(2, "<= 2")  # a connection or two opened late, never one a round
PAYLOAD = 10_000  # bytes each class made at run time holds


def _measure(rounds: int, one_round: Any) -> tuple[float, int, int]:
    """Run `one_round(i)` `rounds` times; (growth past the warm-up, bytes at warm-up,
    bytes at the end, file descriptors opened in the second half and still open). The
    descriptors are counted from half-way: worker threads (each with its database
    connection) start as the load needs them, up to their pool's size."""
    warm, half = max(1, rounds // 10), rounds // 2
    for i in range(warm):
        one_round(i)
    gc.collect()
    baseline = tracemalloc.get_traced_memory()[0]
    for i in range(warm, half):
        one_round(i)
    descriptors = _descriptors()
    for i in range(half, rounds):
        one_round(i)
    gc.collect()
    end = tracemalloc.get_traced_memory()[0]
    return (end - baseline) / baseline, baseline, end, _descriptors() - descriptors


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def _judge(rows: Rows, engine: str, figure: str, rounds: int, result: Any) -> None:
    growth, baseline, end, descriptors = result
    rows.judge(
        engine,
        figure,
        growth,
        GROWTH,
        shown=f"{growth:+.1%} over {rounds:,} rounds ({size(baseline)} -> {size(end)}; "
        f"{(end - baseline) / max(1, rounds - rounds // 10):+,.0f} B a round)",
        baseline=baseline,
        end=end,
        rounds=rounds,
    )
    rows.judge(
        engine,
        f"open file descriptors gained in the second half: {figure.split(': ')[1]}",
        descriptors,
        FDS,
        shown=f"{descriptors:+,} over the last {rounds - rounds // 2:,} of {rounds:,} rounds",
    )


def _loops(engine: str, redis_url: str | None, rounds: int) -> Any:
    async def lookup(x: int) -> int:
        await asyncio.sleep(0)
        return x * 3

    if engine == "memory":
        from twat_cache import acache

        f = acache(maxsize=64)(lookup)
    else:
        f = cached(engine, f"leaks-loops-{engine}", lookup, redis_url, maxsize=64)
        if engine == "redis":  # the async client, made for each event loop
            from twat_cache import acache

            f = acache(url=redis_url, folder_name=f"leaks-aloops-{engine}")(lookup)

    def one_round(i: int) -> None:
        key = i % 100  # misses and hits alike
        if i % 2:
            value = asyncio.run(f(key))
        else:  # a loop made, run and closed by hand
            loop = asyncio.new_event_loop()
            try:
                value = loop.run_until_complete(f(key))
            finally:
                loop.close()
        if value != key * 3:
            raise AssertionError(f"wrong value for {key}")

    return _measure(rounds, one_round)


class _Base:
    pass


def _classes(engine: str, redis_url: str | None, rounds: int) -> Any:
    def describe(self: Any, x: int) -> str:
        return f"{type(self).__name__}:{x}"

    if engine == "memory":
        from twat_cache import mcache

        method = mcache(maxsize=64)(describe)
    else:
        method = cached(engine, f"leaks-classes-{engine}", describe, redis_url, maxsize=64)
    base = type("Base", (_Base,), {"describe": method})

    def one_round(i: int) -> None:
        cls = type(f"Made{i}", (base,), {"payload": bytearray(PAYLOAD)})
        if cls().describe(i) != f"Made{i}:{i}":
            raise AssertionError("wrong value")
        method.cache_clear()

    return _measure(rounds, one_round)


def _own_methods(rounds: int) -> Any:
    from twat_cache import mcache

    def one_round(i: int) -> None:
        def scale(self: Any, x: int) -> int:
            return x * self.factor

        cls = type(
            f"Own{i}", (), {"scale": mcache(scale), "factor": 2, "payload": bytearray(PAYLOAD)}
        )
        if cls().scale(i) != 2 * i:
            raise AssertionError("wrong value")

    return _measure(rounds, one_round)


def measure(engine: str, cases: list[str], redis_url: str | None, rounds: int) -> Any:
    """One engine's cases, in a child started with PYTHONTRACEMALLOC=1: memory is traced
    from the interpreter's start, so each baseline is the whole process's."""
    run = {
        "loops": lambda: _loops(engine, redis_url, rounds),
        "classes": lambda: _classes(engine, redis_url, rounds),
        "own": lambda: _own_methods(rounds),
    }
    return [run[case]() for case in cases]


FIGURES = {
    "loops": "traced memory growth: event loops made and closed",
    "classes": "traced memory growth: classes made at run time",
    "own": "traced memory growth: classes with their own cached method",
}


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    rounds = ROUNDS[profile]

    def work(engine: str, rows: Rows) -> None:
        cases = ["loops", "classes"] + (["own"] if engine == "memory" else [])
        if engine == "redis" and redis_url is None:
            for case in cases:
                rows.skip(engine, FIGURES[case], "skipped: no redis-server")
            return
        progress(f"{NAME}: {engine}, {rounds:,} event loops and {rounds:,} classes")
        arguments = {"engine": engine, "cases": cases, "redis_url": redis_url, "rounds": rounds}
        child = spawn(NAME, "measure", arguments, env=child_env(PYTHONTRACEMALLOC="1"))
        for case, result in zip(cases, result_of(child, TIMEOUT[profile]), strict=True):
            _judge(rows, engine, FIGURES[case], rounds, result)

    return per_engine(
        NAME, selected(engines, ENGINES), work, parallel=profile == "quick"
    ).as_dicts()
