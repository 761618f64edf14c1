"""Scenario 6, bounded growth: unique keys (1,000,000 in the full profile) through each
decorator in its DEFAULT configuration: mcache, acache, ucache (memory), bcache (diskcache),
fcache (joblib), ucache(url=...) (redis). What the cache holds is sampled as the keys go
by, and its largest size must stay within the default bound x 1.1: entries for the memory
caches and the server, bytes on disk for the disk caches (the larger of the files' sizes
and the blocks they take). Each decorator runs in a process of its own, so its resident
memory can be shown too.

A decorator too slow to take every key within its time budget stops there: its row says
how many keys it took, at what rate, and how long all of them would take.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import time
from typing import Any

from stress.common import (
    PROFILES,
    Rows,
    at_most,
    duration,
    progress,
    result_of,
    size,
    spawn,
)

NAME = "growth"
MEMORY = ("mcache", "acache", "ucache")
DECORATORS = (*MEMORY, "bcache", "fcache", "fcache(small)", "ucache(url)")
#: fcache with small values: many files, each taking a whole block (full profile only).
FULL_ONLY = {"fcache(small)"}
ENGINE_OF = {
    "mcache": "memory",
    "acache": "memory",
    "ucache": "memory",
    "bcache": "diskcache",
    "fcache": "joblib",
    "fcache(small)": "joblib",
    "ucache(url)": "redis",
}
#: Bytes per value. Full profile: large enough that the disk caches pass their 1 GiB bound
#: well before the last key (bcache: 4 KiB x 1M = 4 GiB; fcache: 1 MiB arrays, the large
#: objects it is for); the quick profile only checks the memory bounds are kept.
VALUE_SIZE = {
    "full": {
        "mcache": 1024,
        "acache": 1024,
        "ucache": 1024,
        "bcache": 4096,
        "fcache": 1 << 20,
        "fcache(small)": 128,
        "ucache(url)": 256,
    },
    "quick": {
        "mcache": 1024,
        "acache": 1024,
        "ucache": 1024,
        "bcache": 1024,
        "fcache": 4096,
        "ucache(url)": 256,
    },
}
#: Seconds each decorator may take. fcache writes (and signs) one file per value, so
#: 1,000,000 keys would take hours: it gets a budget in which its bound is passed several
#: times, and its row reports the rate it kept and how long every key would take.
BUDGET = {"full": {"fcache": 600.0, "fcache(small)": 600.0}, "quick": {}}
SAMPLES = 50


def _rss() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _disk(directory: str) -> tuple[int, int]:
    """(bytes of the files, bytes of the blocks they take) under `directory`."""
    apparent = allocated = 0
    for top, _, names in os.walk(directory):
        for name in names:
            try:
                info = os.lstat(os.path.join(top, name))
            except FileNotFoundError:
                continue
            apparent += info.st_size
            allocated += info.st_blocks * 512
    return apparent, allocated


def _rate(sample: dict[str, Any], before: dict[str, Any] | None) -> float | None:
    keys = sample["keys"] - (before["keys"] if before else 0)
    seconds = sample["seconds"] - (before["seconds"] if before else 0.0)
    return keys / seconds if seconds > 0 else None


def grow(
    decorator: str, keys: int, budget: float, value_size: int, url: str | None
) -> dict[str, Any]:
    """Run in a child process: `keys` unique keys (or as many as `budget` allows)."""
    from twat_cache import acache, bcache, fcache, mcache, ucache

    def value(k: int) -> Any:
        if decorator.startswith("fcache"):  # arrays: what fcache is for
            import numpy as np

            return np.full(value_size // 8, k, dtype=np.float64)
        return k.to_bytes(8, "big") + bytes(value_size - 8)

    def compute(k: int) -> Any:
        return value(k)

    async def acompute(k: int) -> Any:
        return value(k)

    wrap = {
        "mcache": mcache,
        "acache": acache,
        "ucache": ucache,
        "bcache": bcache,
        "fcache": fcache,
        "fcache(small)": fcache,
        "ucache(url)": ucache(url=url),
    }[decorator]
    body = acompute if decorator == "acache" else compute
    # Each decorator's function its own name: the default folder (bcache, fcache) and the
    # Redis cache name derive from it, and the runs go on side by side.
    body.__qualname__ = body.__name__ = "grow_" + re.sub(r"\W+", "_", decorator).strip("_")
    f = wrap(body)
    engine = f.cache_engine
    bound = f.cache_info().maxsize
    samples: list[dict[str, Any]] = []
    step = max(1, keys // SAMPLES)
    started = time.monotonic()
    rss_base: int | None = None

    def sample(done: int) -> None:
        nonlocal rss_base
        record: dict[str, Any] = {
            "keys": done,
            "seconds": time.monotonic() - started,
            "entries": len(engine),
            "rss": _rss(),
        }
        if hasattr(engine, "directory"):
            record["bytes"], record["blocks"] = _disk(str(engine.directory))
        if decorator == "ucache(url)":
            import redis

            with redis.Redis.from_url(url) as client:
                record["server_memory"] = client.info("memory")["used_memory"]
        # Resident memory from when a memory cache is full (or after the first keys of the
        # others): the growth from there is what the bound is meant to stop.
        if rss_base is None and (decorator not in MEMORY or done >= 2 * bound):
            rss_base = record["rss"]
        samples.append(record)

    every = budget / SAMPLES  # a sample at least this often (in seconds), and every `step` keys
    last = [0, started]

    def check(done: int) -> bool:
        """Sample when due; False once the budget is spent."""
        now = time.monotonic()
        if done - last[0] >= step or now - last[1] >= every:
            sample(done)
            last[:] = [done, time.monotonic()]
        return now - started < budget

    async def run_async() -> int:
        done = 0
        while done < keys:
            await f(done)
            done += 1
            if done % 64 == 0 and not check(done):
                break
        return done

    if decorator == "acache":
        done = asyncio.run(run_async())
    else:
        done = 0
        while done < keys:
            f(done)
            done += 1
            if done % 64 == 0 and not check(done):
                break
    if not samples or samples[-1]["keys"] != done:
        sample(done)
    seconds = time.monotonic() - started
    info = f.cache_info()
    return {
        "decorator": decorator,
        "engine": engine.name,
        "bound": bound,
        "keys": done,
        "seconds": seconds,
        "misses": info.misses,
        "max_entries": max(s["entries"] for s in samples),
        "max_bytes": max(
            (max(s["bytes"], s["blocks"]) for s in samples if "bytes" in s), default=None
        ),
        "max_files": max((s["bytes"] for s in samples if "bytes" in s), default=None),
        "max_blocks": max((s["blocks"] for s in samples if "blocks" in s), default=None),
        "last": samples[-1],
        "rss_base": rss_base,
        # Keys per second over the first and the last stretch between samples.
        "rate_first": _rate(samples[0], None),
        "rate_last": _rate(samples[-1], samples[-2] if len(samples) > 1 else None),
        "samples": samples[:: max(1, len(samples) // 10)] + samples[-1:],
    }


def _rows(rows: Rows, outcome: dict[str, Any], asked: int, value_size: int) -> None:
    label = outcome["decorator"]
    bound = outcome["bound"]
    done, seconds = outcome["keys"], outcome["seconds"]
    rate = done / seconds if seconds else 0.0
    note = ""
    if done < asked:
        note = f"time budget reached at {done:,} of {asked:,} keys ({rate:,.0f} keys/s"
        first, end = outcome["rate_first"], outcome["rate_last"]
        if first and end and end < 0.8 * first:
            note += (
                f"; {first:,.0f} keys/s at first, {end:,.0f} at the end: the remaining keys "
                f"would take over {duration((asked - done) / end)} at the end rate)"
            )
        else:
            note += f"; all {asked:,} would take ~{duration(asked / rate) if rate else '-'})"
    engine = f"{label} [{outcome['engine']}]"
    if label in ("bcache", "fcache", "fcache(small)"):
        limit = 1.1 * int(bound)
        worst = outcome["max_bytes"]
        rows.judge(
            engine,
            "bytes on disk (most seen)",
            worst,
            at_most(limit, f"<= {size(limit)} (1.1 x {size(int(bound))})"),
            shown=f"{size(worst)} (files {size(outcome['max_files'])}, blocks "
            f"{size(outcome['max_blocks'])})",
            note=note,
            entries=outcome["max_entries"],
        )
    else:
        limit = 1.1 * bound
        rows.judge(
            engine,
            "entries (most seen)",
            outcome["max_entries"],
            at_most(limit, f"<= {limit:,.0f} (1.1 x {bound:,})"),
            shown=f"{outcome['max_entries']:,}",
            note=note,
        )
    last = outcome["last"]
    growth = last["rss"] - outcome["rss_base"] if outcome["rss_base"] is not None else None
    extra = f", server memory {size(last['server_memory'])}" if "server_memory" in last else ""
    since = "once full" if label in MEMORY else "after the first keys"
    rss = f"{'+' if growth >= 0 else '-'}{size(abs(growth))}" if growth is not None else "-"
    rows.info(
        engine,
        "keys, time, resident memory growth",
        done,
        shown=f"{done:,} keys of {size(value_size)} in {duration(seconds)}; RSS {rss} "
        f"{since}{extra}",
        samples=outcome["samples"],
    )


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    p = PROFILES[profile]
    rows = Rows(NAME)
    chosen = [
        d
        for d in DECORATORS
        if ENGINE_OF[d] in engines and (profile == "full" or d not in FULL_ONLY)
    ]
    if "ucache(url)" in chosen and redis_url is None:
        chosen.remove("ucache(url)")
        rows.skip("ucache(url) [redis]", "entries (most seen)", "skipped: no redis-server")
    sizes = VALUE_SIZE[profile]
    budgets = {d: BUDGET[profile].get(d, p.growth_budget) for d in chosen}

    def start(decorator: str) -> Any:
        progress(f"{NAME}: {decorator}, {p.growth_keys:,} keys (budget {budgets[decorator]:.0f} s)")
        return spawn(
            NAME,
            "grow",
            {
                "decorator": decorator,
                "keys": p.growth_keys,
                "budget": budgets[decorator],
                "value_size": sizes[decorator],
                "url": redis_url,
            },
        )

    # The memory caches first, one by one (their resident memory is measured); then the
    # slow ones side by side.
    outcomes: dict[str, Any] = {}
    for decorator in [d for d in chosen if d in MEMORY]:
        outcomes[decorator] = result_of(start(decorator), timeout=budgets[decorator] + 600)
    slow = {d: start(d) for d in chosen if d not in MEMORY}
    for decorator, child in slow.items():
        outcomes[decorator] = result_of(child, timeout=budgets[decorator] + 1800)
    for decorator in chosen:
        _rows(rows, outcomes[decorator], p.growth_keys, sizes[decorator])
    return rows.as_dicts()
