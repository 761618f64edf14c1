"""Scenario 7, Redis outage: a cached function is called at a steady pace (spread
over several seconds, so the circuit breaker's cool-down passes) while its Redis server
refuses connections, accepts them and never answers (a blackhole), or is killed and started
again mid-run. Every call must return the right result; the added latency stays bounded
(p99 within twice the operation timeout, within 1 ms while the breaker is open); and once
the server is back, caching resumes by itself. While the server refuses, 64 threads and 64
tasks calling one cold key at once must still run the function once (stampede protection
holds during an outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stress.common import (
    ALL,
    PROFILES,
    YES,
    ZERO,
    Rows,
    at_most,
    duration,
    percent,
    progress,
    quantile,
)
from stress.servers import Blackhole, RedisServer, free_port, private_server, redis_binary

NAME = "outage"
KEYS = 50
# In the stampede, the first execution waits until every caller has called, then this long
# for the last ones to reach the wrapper: with the store down nothing holds the value, so a
# caller arriving after the computation ended runs the function again (a new computation,
# not a failed protection; with a working store it would read the stored value).
SETTLE = 0.2


@dataclass
class Call:
    seconds: float
    ok: bool
    hit: bool
    breaker_open: bool
    outage: bool


class Subject:
    """The cached function under test and what it saw."""

    def __init__(self, url: str, folder: str, cooldown: float | None) -> None:
        from twat_cache import ucache

        self.executions = 0
        options = {} if cooldown is None else {"cooldown": cooldown}

        def square(x: int) -> int:
            self.executions += 1
            return x * x

        self.f = ucache(url=url, folder_name=folder, **options)(square)
        # Private, read only: tells the calls made while the breaker skips the server.
        self.breaker = self.f.cache_engine._breaker
        self.timeout = self.f.cache_engine.config.timeout
        self.cooldown = self.f.cache_engine.config.cooldown

    def call(self, x: int, outage: bool) -> Call:
        breaker_open = self.breaker.open_until > time.monotonic()
        before = self.executions
        started = time.perf_counter()
        try:
            ok = self.f(x) == x * x
        except Exception:
            ok = False
        seconds = time.perf_counter() - started
        return Call(seconds, ok, self.executions == before, breaker_open, outage)

    def until_hit(self, limit: float) -> float | None:
        """Call until one call is a hit; the seconds it took (None: not within `limit`)."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            for x in range(KEYS):
                if self.call(x, outage=False).hit:
                    return time.monotonic() - started
            time.sleep(0.01)
        return None


def paced(subject: Subject, calls: int, seconds: float, events: dict[int, Any]) -> list[Call]:
    """`calls` calls spread evenly over `seconds`; `events[n]()` runs before call n and
    returns whether the server is down from then on."""
    interval = seconds / calls
    start = time.monotonic()
    down = False
    made = []
    for n in range(calls):
        if n in events:
            down = events[n]()
        wait = start + n * interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        made.append(subject.call(n % KEYS, outage=down))
    return made


def _judge(
    rows: Rows, kind: str, subject: Subject, calls: list[Call], resumed: float | None
) -> None:
    engine = f"redis ({kind})"
    good = sum(call.ok for call in calls)
    fraction, shown = percent(good, len(calls))
    rows.judge(engine, "calls that succeed", fraction, ALL, shown=shown)
    during = [call.seconds for call in calls if call.outage]
    p99 = quantile(during, 0.99)
    limit = 2 * subject.timeout
    rows.judge(
        engine,
        "p99 added latency during the outage",
        p99,
        at_most(limit, f"<= {duration(limit)} (2x timeout)"),
        shown=duration(p99),
        calls=len(during),
        worst=quantile(during, 1.0),
        median=quantile(during, 0.5),
    )
    skipped = [call.seconds for call in calls if call.breaker_open]
    p99_open = quantile(skipped, 0.99)
    rows.judge(
        engine,
        "p99 added latency, breaker open",
        p99_open,
        at_most(1e-3, "<= 1 ms"),
        shown=f"{duration(p99_open)} ({len(skipped):,} calls)",
        worst=quantile(skipped, 1.0),
    )
    rows.judge(
        engine,
        "caching resumes after recovery",
        resumed is not None,
        YES,
        shown=f"yes, {duration(resumed)} after" if resumed is not None else "no",
        cooldown=subject.cooldown,
    )


def _stampede_while_refused(url: str, workers: int, rounds: int) -> Counter[str]:
    """Rounds in which `workers` threads, then `workers` tasks of one event loop, calling
    one cold key at once ran the function other than exactly once, while the server at
    `url` refuses every connection."""
    from twat_cache import acache, ucache

    lock = threading.Lock()
    executions: Counter[tuple[str, int]] = Counter()
    arrived = threading.Semaphore(0)
    called = [0]  # tasks of one loop: a plain counter

    def slow(key: int) -> int:
        with lock:
            executions[("threads", key)] += 1
            first = executions[("threads", key)] == 1
        if first:
            for _ in range(workers):
                arrived.acquire(timeout=30)
        time.sleep(SETTLE)
        return key

    async def aslow(key: int) -> int:
        executions[("tasks", key)] += 1
        if executions[("tasks", key)] == 1:
            while called[0] < workers:
                await asyncio.sleep(0.005)
        await asyncio.sleep(SETTLE)
        return key

    f = ucache(url=url, folder_name="outage-stampede")(slow)
    af = acache(url=url, folder_name="outage-stampede-async")(aslow)
    bad: Counter[str] = Counter()
    for key in range(rounds):
        barrier = threading.Barrier(workers)
        results: list[Any] = []

        def run(
            key: int = key, barrier: threading.Barrier = barrier, results: list[Any] = results
        ) -> None:
            barrier.wait()
            arrived.release()
            results.append(f(key))

        threads = [threading.Thread(target=run, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        if executions[("threads", key)] != 1 or results != [key] * workers:
            bad["threads"] += 1

        async def call(key: int) -> Any:
            called[0] += 1
            return await af(key)

        async def gather(key: int = key) -> list[Any]:
            called[0] = 0
            return await asyncio.gather(*(call(key) for _ in range(workers)))

        if asyncio.run(gather()) != [key] * workers or executions[("tasks", key)] != 1:
            bad["tasks"] += 1
    return bad


@contextlib.contextmanager
def _serving(port: int) -> Iterator[RedisServer]:
    """A real server on `port` (where the outage was), for the recovery."""
    server = RedisServer(port=port)
    try:
        server.start()
        yield server
    finally:
        server.close()


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    p = PROFILES[profile]
    rows = Rows(NAME)
    if "redis" not in engines:
        return []
    if redis_binary() is None:
        for kind in ("refused", "blackholed", "killed and restarted"):
            rows.skip(f"redis ({kind})", "calls that succeed", "skipped: no redis-server")
        return rows.as_dicts()
    calls, seconds, cooldown = p.outage_calls, p.outage_seconds, p.outage_cooldown
    limit = (cooldown or 5.0) + 5.0  # the wait for caching to resume

    progress(f"{NAME}: refused, {calls:,} calls over {seconds:.0f} s")
    port = free_port()
    subject = Subject(f"redis://127.0.0.1:{port}/0", "outage-refused", cooldown)
    made = paced(subject, calls, seconds, {0: lambda: True})
    workers, rounds = p.stampede_workers, p.stampede_rounds
    stampede = _stampede_while_refused(subject.f.cache_engine.config.url, workers, rounds)
    with _serving(port):
        _judge(rows, "refused", subject, made, subject.until_hit(limit))
    for kind in ("threads", "tasks"):
        rows.judge(
            "redis (refused)",
            f"cold keys not computed exactly once, server refused: {kind}",
            stampede[kind],
            ZERO,
            shown=f"{stampede[kind]} of {rounds} rounds ({workers} {kind} each)",
        )

    progress(f"{NAME}: blackholed, {calls:,} calls over {seconds:.0f} s")
    hole = Blackhole().__enter__()
    subject = Subject(hole.url, "outage-blackholed", cooldown)
    try:
        made = paced(subject, calls, seconds, {0: lambda: True})
    finally:
        hole.close()
    with _serving(hole.port):
        _judge(rows, "blackholed", subject, made, subject.until_hit(limit))

    progress(f"{NAME}: killed and restarted, {calls:,} calls over {seconds:.0f} s")
    with private_server() as server:
        subject = Subject(server.url, "outage-killed", cooldown)

        def kill() -> bool:
            server.kill()
            return True

        def restart() -> bool:
            server.start()
            return True  # still counted as the outage until caching resumes

        made = paced(subject, calls, seconds, {calls // 5: kill, 3 * calls // 5: restart})
        after_restart = made[3 * calls // 5 :]
        hits = [n for n, call in enumerate(after_restart) if call.hit]
        if hits:  # the outage ends with the first hit after the restart
            for call in after_restart[hits[0] :]:
                call.outage = False
            resumed: float | None = hits[0] * seconds / calls
        else:
            resumed = subject.until_hit(limit)
        _judge(rows, "killed and restarted", subject, made, resumed)
    return rows.as_dicts()
