"""Scenario bursts: 1,000 async calls at once on one Redis server, far more than one event
loop's connection pool holds, then the same burst again. Every key must be computed exactly
once (the second burst all hits) and every caller get its value; waiting for a connection
is never a fault (no warning, no breaker failure)."""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections import Counter
from typing import Any

from stress.common import ZERO, Rows, per_engine, progress

NAME = "bursts"
CALLS = 1_000  # concurrent calls in one burst
CALLERS = 2  # concurrent callers of each key
WORK = 0.01  # seconds one computation takes
BURSTS = {"full": 20, "quick": 2}


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    bursts = BURSTS[profile]

    def work(engine: str, rows: Rows) -> None:
        figures = (
            "keys not computed exactly once",
            "wrong or failed answers",
            "faults reported (warnings, breaker failures)",
        )
        if redis_url is None:
            for figure in figures:
                rows.skip(engine, figure, "skipped: no redis-server")
            return
        from twat_cache import acache
        from twat_cache.exceptions import CacheFaultWarning

        progress(f"{NAME}: {bursts} bursts of {CALLS} concurrent calls on one server")
        lock = threading.Lock()
        runs: Counter[tuple[int, int]] = Counter()
        keys = CALLS // CALLERS

        def cached(burst: int) -> Any:
            async def compute(key: int) -> int:
                with lock:
                    runs[(burst, key)] += 1
                await asyncio.sleep(WORK)
                return key * 3

            return acache(url=redis_url, name=f"{NAME}-{burst}")(compute)

        async def one_burst(f: Any) -> list[Any]:
            calls = [f(k) for k in range(keys) for _ in range(CALLERS)]
            return await asyncio.gather(*calls, return_exceptions=True)

        wrong = 0
        failures = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CacheFaultWarning)
            for burst in range(bursts):
                f = cached(burst)
                expected = [k * 3 for k in range(keys) for _ in range(CALLERS)]
                for _ in range(2):  # cold, then every call a hit: nothing was lost
                    answers = asyncio.run(one_burst(f))
                    wrong += sum(a != e for a, e in zip(answers, expected, strict=True))
                failures += f.cache_engine._breaker.failures
                f.cache_clear()
        faults = [str(w.message)[:200] for w in caught]
        not_once = sum(runs[(b, k)] != 1 for b in range(bursts) for k in range(keys))
        rows.judge(
            engine,
            figures[0],
            not_once,
            ZERO,
            shown=f"{not_once} of {bursts * keys:,} keys ({sum(runs.values()):,} runs)",
        )
        rows.judge(engine, figures[1], wrong, ZERO, shown=f"{wrong} of {2 * bursts * CALLS:,}")
        rows.judge(
            engine,
            figures[2],
            len(faults) + failures,
            ZERO,
            shown=f"{len(faults)} warnings, {failures} breaker failures",
            faults=sorted(set(faults))[:5],
        )

    present = ["redis"] if "redis" in engines else []
    return per_engine(NAME, present, work, parallel=False).as_dicts()
