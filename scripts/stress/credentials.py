"""Scenario credentials: two caches on one password-protected Redis server, one configured
with a wrong password. The well-configured cache must keep its hit rate exactly, call for
call, while the other fails on every call: a configuration error belongs to its cache, never
to the server the other caches share (no breaker opens for them, no fault reaches them)."""

from __future__ import annotations

import random
import warnings
from typing import Any

from stress.common import ZERO, Rows, exactly, per_engine, progress
from stress.servers import private_server, redis_binary

NAME = "credentials"
PASSWORD = "stress-right"
CALLS = {"full": 20_000, "quick": 1_000}
KEYS = 200  # distinct arguments of the good cache's calls: most calls are repeats


def _sequence(calls: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(KEYS) for _ in range(calls)]


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    calls = CALLS[profile]

    def work(engine: str, rows: Rows) -> None:
        figures = (
            "hit rate of the good cache beside a wrong password",
            "faults of the good cache",
        )
        if redis_binary() is None:
            for figure in figures:
                rows.skip(engine, figure, "skipped: no redis-server")
            return
        from twat_cache import ucache
        from twat_cache.engines.redis import FAILURES_TO_OPEN
        from twat_cache.exceptions import CacheFaultWarning

        progress(f"{NAME}: {calls} calls of a good cache, alone then beside a wrong password")
        sequence = _sequence(calls, seed)
        with private_server() as server:
            reply = server.command("CONFIG", "SET", "requirepass", PASSWORD)
            if reply != b"+OK":
                raise RuntimeError(f"CONFIG SET requirepass answered {reply!r}")
            good_url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
            bad_url = f"redis://:wrong@127.0.0.1:{server.port}/0"

            def run(name: str, beside_bad: bool) -> tuple[float, list[str], int]:
                good = ucache(url=good_url, name=f"{NAME}-good-{name}")(lambda x: x * 2)
                bad = ucache(url=bad_url, name=f"{NAME}-bad-{name}")(lambda x: x * 2)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", CacheFaultWarning)
                    for x in sequence:
                        if beside_bad:  # in runs as long as opens a shared breaker
                            for _ in range(FAILURES_TO_OPEN):
                                bad(x)
                        if good(x) != x * 2:
                            raise AssertionError(f"good({x}) answered wrong")
                info = good.cache_info()
                faults = [str(w.message)[:200] for w in caught if "-good-" in str(w.message)]
                return (
                    info.hits / (info.hits + info.misses),
                    faults,
                    good.cache_engine._breaker.failures,
                )

            alone, _, _ = run("alone", beside_bad=False)
            beside, faults, failures = run("beside", beside_bad=True)
        rows.judge(
            engine,
            figures[0],
            beside,
            exactly(alone, f"= {alone:.2%} (alone)"),
            shown=f"{beside:.2%}",
        )
        rows.judge(
            engine,
            figures[1],
            len(faults) + failures,
            ZERO,
            shown=f"{len(faults)} warnings, {failures} breaker failures",
            faults=sorted(set(faults))[:5],
        )

    present = ["redis"] if "redis" in engines else []
    return per_engine(NAME, present, work, parallel=False).as_dicts()
