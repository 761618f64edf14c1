"""Scenario forking: a fork-based `multiprocessing.Pool` of 8 is started while 8 threads of
the parent compute cold keys of a cached function; the children then call the same keys.
A child inherits the parent's memory as it was, in-flight records included, but not the
threads computing them: a child that waits for one of them hangs. Every round must end
with every child answering, correctly, within the hang guard. On the memory chain (mcache)
and on every persistent engine.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import warnings
from typing import Any

from stress.common import ZERO, Rows, cached, per_engine, progress, selected

NAME = "forking"
ROUNDS = {"full": 20, "quick": 2}
THREADS = 8
CHILDREN = 8
HANG_GUARD = 10.0  # seconds after which a child's answer is taken as never coming
ENGINES = ("memory", "diskcache", "joblib", "klepto", "redis")

#: The cached function of each engine, found by the children (they are forked: no pickling).
_FUNCTIONS: dict[str, Any] = {}
_RELEASE: dict[str, threading.Event] = {}


def _value(key: int) -> dict[str, int]:
    return {"key": key, "square": key * key}


def _in_child(engine: str, key: int) -> Any:
    return _FUNCTIONS[engine](key)


def _build(engine: str, redis_url: str | None) -> Any:
    release = _RELEASE[engine] = threading.Event()

    def compute(key: int) -> dict[str, int]:
        if threading.current_thread().name.startswith("forking-leader"):
            release.wait(HANG_GUARD)  # in flight while the pool forks
        return _value(key)

    if engine == "memory":
        from twat_cache import mcache

        return mcache(name="forking-memory")(compute)
    return cached(engine, f"forking-{engine}", compute, redis_url, name=f"forking-{engine}")


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    rounds = ROUNDS[profile]
    context = multiprocessing.get_context("fork")

    def work(engine: str, rows: Rows) -> None:
        figures = ("rounds with a child hung", "wrong answers in children")
        if engine == "redis" and redis_url is None:
            for figure in figures:
                rows.skip(engine, figure, "skipped: no redis-server")
            return
        progress(f"{NAME}: {engine}, pool of {CHILDREN} x {rounds} rounds")
        _FUNCTIONS[engine] = function = _build(engine, redis_url)
        hung = wrong = ran = 0
        errors: dict[str, int] = {}
        for round_ in range(rounds):
            if hung:
                break  # one hang says it: the next rounds would only wait as long again
            ran += 1
            keys = [round_ * THREADS + i for i in range(THREADS)]
            _RELEASE[engine].clear()
            leaders = [
                threading.Thread(target=function, args=(k,), name=f"forking-leader-{k}")
                for k in keys
            ]
            for leader in leaders:
                leader.start()
            time.sleep(0.02)  # the leaders publish their flights, then wait
            pool = context.Pool(CHILDREN)  # forks now, with every key in flight
            try:
                _RELEASE[engine].set()  # the parent's flights end; the children's copies do not
                pending = pool.starmap_async(_in_child, [(engine, k) for k in keys])
                try:
                    answers = pending.get(timeout=HANG_GUARD)
                except multiprocessing.TimeoutError:
                    hung += 1
                    continue
                except Exception as exc:
                    text = f"{type(exc).__name__}: {exc}"[:160]
                    errors[text] = errors.get(text, 0) + 1
                    wrong += len(keys)
                    continue
                wrong += sum(answer != _value(k) for k, answer in zip(keys, answers, strict=True))
            finally:
                pool.terminate()
                pool.join()
                for leader in leaders:
                    leader.join(HANG_GUARD)
        rows.judge(
            engine,
            figures[0],
            hung,
            ZERO,
            shown=f"{hung} of {ran} rounds" + (" (stopped at the first)" if hung else ""),
            hang_guard_s=HANG_GUARD,
        )
        rows.judge(
            engine,
            figures[1],
            wrong,
            ZERO,
            shown=f"{wrong} of {ran * THREADS} answers",
            errors=errors,
        )

    with warnings.catch_warnings():
        # fork() with threads alive is what this scenario does on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        rows = per_engine(NAME, selected(engines, ENGINES), work, parallel=False)
    return rows.as_dicts()
