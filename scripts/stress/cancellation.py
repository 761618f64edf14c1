"""Scenario cancellation: async calls of cold keys cut short by `asyncio.wait_for` at random
moments (in the read, the lease, the computation, the write), on redis, diskcache and the
memory chain. Afterwards every key must answer within one call's time: a cancelled leader
must leave no lease, flight or lock behind that makes the next caller wait for it.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from typing import Any

from stress.common import ZERO, Rows, per_engine, progress

NAME = "cancellation"
WORK = 0.02  # seconds one computation takes
#: A call slower than this after the cancellations is a key left stuck: one computation
#: plus a generous margin for a loaded machine, far below a lease's 10 s.
STUCK_AFTER = 2.0
EARLY = 0.003  # seconds: the first round trips of a call
CALLERS = 2  # concurrent callers of each cold key: a leader and a follower
KEYS_PER_BATCH = 10
CALLS = {"full": 1_000, "quick": 200}
ENGINES = ("redis", "diskcache", "memory")


def _decorate(engine: str, name: str, redis_url: str | None) -> Any:
    from twat_cache import acache, bcache, mcache

    if engine == "redis":
        return acache(url=redis_url, name=name)
    if engine == "diskcache":
        return bcache(folder_name=name, cache_engine="diskcache")
    return mcache(name=name)


async def _run(f: Any, calls: int, rng: random.Random) -> dict[str, Any]:
    keys: list[int] = []
    wrong = 0
    outcomes: Counter[str] = Counter()
    batch_size = KEYS_PER_BATCH * CALLERS
    # Half the calls are cut in their first milliseconds (the read, the lease: a few round
    # trips), the others anywhere up to twice the computation.
    limits = (EARLY, 2 * WORK)
    for batch in range(max(1, calls // batch_size)):
        batch_keys = [batch * KEYS_PER_BATCH + i for i in range(KEYS_PER_BATCH)]
        keys += batch_keys

        async def one(key: int) -> None:
            nonlocal wrong
            try:
                value = await asyncio.wait_for(f(key), rng.choice(limits) * rng.random())
            except asyncio.TimeoutError:
                outcomes["cancelled"] += 1
            else:
                outcomes["answered"] += 1
                wrong += value != key * 2

        await asyncio.gather(*(one(k) for k in batch_keys for _ in range(CALLERS)))
    stuck = 0

    async def check(key: int) -> None:
        nonlocal stuck, wrong
        try:
            value = await asyncio.wait_for(f(key), STUCK_AFTER)
        except asyncio.TimeoutError:
            stuck += 1
        else:
            wrong += value != key * 2

    await asyncio.gather(*(check(k) for k in keys))
    return {"keys": len(keys), "stuck": stuck, "wrong": wrong, "outcomes": dict(outcomes)}


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    calls = CALLS[profile]

    def work(engine: str, rows: Rows) -> None:
        figures = ("keys stuck after random cancellations", "wrong values")
        if engine == "redis" and redis_url is None:
            for figure in figures:
                rows.skip(engine, figure, "skipped: no redis-server")
            return
        progress(f"{NAME}: {engine}, {calls} calls cut at random moments")
        lock = threading.Lock()
        runs: Counter[int] = Counter()

        async def compute(key: int) -> int:
            with lock:
                runs[key] += 1
            await asyncio.sleep(WORK)
            return key * 2

        f = _decorate(engine, f"{NAME}-{engine}", redis_url)(compute)
        if engine != "memory" and f.cache_engine.name != engine:
            raise RuntimeError(f"asked for {engine}, got {f.cache_engine.name}")
        result = asyncio.run(_run(f, calls, random.Random(seed)))
        shown = (
            f"{result['stuck']} of {result['keys']} keys "
            f"({result['outcomes'].get('cancelled', 0)} of {calls} calls cancelled)"
        )
        rows.judge(engine, figures[0], result["stuck"], ZERO, shown=shown, **result)
        rows.judge(engine, figures[1], result["wrong"], ZERO)

    present = [e for e in ENGINES if e in engines]
    return per_engine(NAME, present, work, parallel=False).as_dicts()
