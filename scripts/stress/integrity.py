"""Scenario 1, concurrent integrity: processes x threads doing get/set/delete on one cache,
half of the operations on keys every thread shares, every value carrying its own sha256.

A value read must be a value written for that key, intact; a key only one thread writes must
read back as the last value that thread wrote (or a miss), never an older one or one it
deleted. Exceptions raised to the caller of get/set/delete are counted too.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

from stress.common import (
    PROFILES,
    ZERO,
    Rows,
    check_value,
    log_uniform,
    make_value,
    open_engine,
    per_engine,
    percent,
    progress,
    result_of,
    selected,
    spawn,
)

NAME = "integrity"
SHARED_KEYS = 32  # every thread of every process reads and writes these
PRIVATE_KEYS = 8  # per thread: only that thread writes them, so it knows what must be there
SMALLEST, LARGEST = 100, 300_000  # value sizes, bytes
_UNKNOWN = object()  # a private key whose last write failed: its state is not known


def worker(
    engine: str,
    folder: str,
    url: str | None,
    threads: int,
    operations: int,
    seed: int,
    process: int,
) -> dict[str, Any]:
    """One process: `threads` threads sharing one engine, `operations` operations each."""
    from twat_cache import MISS

    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    samples: list[str] = []
    lock = threading.Lock()
    try:
        store = open_engine(engine, folder, url)
    except Exception as exc:
        return {
            "counts": {"exception": 1},
            "errors": {type(exc).__name__: 1},
            "samples": [f"exception: opening raised {exc!r}"[:300]],
        }
    barrier = threading.Barrier(threads)

    def note(kind: str, text: str) -> None:
        with lock:
            if len(samples) < 20:
                samples.append(f"{kind}: {text[:300]}")

    def run(thread: int) -> None:
        rng = random.Random(f"{seed}-{process}-{thread}")
        shared = [f"shared-{i}" for i in range(SHARED_KEYS)]
        private = [f"p{process}-t{thread}-{i}" for i in range(PRIVATE_KEYS)]
        last: dict[str, Any] = {}  # private key -> nonce of the last write, None if deleted
        mine: Counter[str] = Counter()
        barrier.wait()
        for _ in range(operations):
            is_private = rng.random() < 0.5
            key = rng.choice(private if is_private else shared)
            roll = rng.random()
            operation = "get" if roll < 0.5 else "set" if roll < 0.9 else "delete"
            began = time.monotonic()
            try:
                if roll < 0.5:
                    mine["get"] += 1
                    value = store.get(key, MISS)
                    expected = last.get(key) if is_private else _UNKNOWN
                    if value is MISS:
                        mine["miss"] += 1
                        if is_private and expected not in (None, _UNKNOWN):
                            mine["lost"] += 1  # evicted (a miss is never a wrong value)
                        continue
                    verdict = check_value(key, value)
                    if verdict != "ok":
                        mine[verdict] += 1
                        owner = value.get("key") if isinstance(value, dict) else type(value)
                        note(verdict, f"{verdict}: {key} read a value of {owner!r}")
                    elif is_private and expected is None:
                        mine["resurrected"] += 1
                        note("resurrected", f"{key}: a deleted entry read back")
                    elif is_private and expected is not _UNKNOWN and value["nonce"] != expected:
                        mine["stale"] += 1
                        note("stale", f"{key}: an overwritten value read back")
                    else:
                        mine["hit"] += 1
                elif roll < 0.9:
                    value = make_value(key, log_uniform(rng, SMALLEST, LARGEST), rng)
                    if is_private:
                        last[key] = _UNKNOWN
                    store.set(key, value)
                    mine["set"] += 1
                    mine["bytes"] += len(value["blob"])
                    if is_private:
                        last[key] = value["nonce"]
                else:
                    if is_private:
                        last[key] = _UNKNOWN
                    store.delete(key)
                    mine["delete"] += 1
                    if is_private:
                        last[key] = None
            except Exception as exc:
                mine["exception"] += 1
                name = f"{type(exc).__module__}.{type(exc).__name__}"
                with lock:
                    errors[f"{name} in {operation}"] += 1
                note(
                    "exception",
                    f"{operation} raised {name}({str(exc)[:200]!r}) after "
                    f"{time.monotonic() - began:.2f} s",
                )
        with lock:
            counts.update(mine)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    # Every key once more, now that this process's writers are done.
    for key in [f"shared-{i}" for i in range(SHARED_KEYS)]:
        try:
            value = store.get(key, MISS)
        except Exception as exc:
            counts["exception"] += 1
            errors[type(exc).__name__] += 1
            continue
        counts["get"] += 1
        if value is not MISS and (verdict := check_value(key, value)) != "ok":
            counts[verdict] += 1
    store.close()
    return {"counts": dict(counts), "errors": dict(errors), "samples": samples}


WRONG = ("corrupt", "other-key", "stale", "resurrected")


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    p = PROFILES[profile]

    def work(engine: str, rows: Rows) -> None:
        if engine == "redis" and redis_url is None:
            rows.skip(engine, "wrong or corrupt values returned", "skipped: no redis-server")
            return
        progress(
            f"{NAME}: {engine}, {p.processes} processes x {p.threads} threads x "
            f"{p.operations} operations"
        )
        started = time.monotonic()
        arguments = {
            "engine": engine,
            "folder": f"integrity-{engine}",
            "url": redis_url,
            "threads": p.threads,
            "operations": p.operations,
            "seed": seed,
        }
        children = [spawn(NAME, "worker", {**arguments, "process": n}) for n in range(p.processes)]
        counts: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        samples: list[str] = []
        for child in children:
            outcome = result_of(child, timeout=3600)
            counts.update(outcome["counts"])
            errors.update(outcome["errors"])
            samples.extend(outcome["samples"])
        elapsed = time.monotonic() - started
        wrong = sum(counts[k] for k in WRONG)
        reads = counts["get"]
        done = counts["get"] + counts["set"] + counts["delete"]
        rows.judge(
            engine,
            "wrong or corrupt values returned",
            wrong,
            ZERO,
            shown=f"{wrong} of {reads:,} reads",
            **{k: counts[k] for k in WRONG},
            samples=[x for x in samples if not x.startswith("exception")][:5],
        )
        rows.judge(
            engine,
            "caller exceptions",
            counts["exception"],
            ZERO,
            shown=f"{counts['exception']} of {done + counts['exception']:,} operations",
            by_type=dict(errors),
            samples=[x for x in samples if x.startswith("exception")][:5],
        )
        hits, _ = percent(counts["hit"], reads)
        rows.info(
            engine,
            "operations done",
            done,
            shown=f"{done:,} in {elapsed:.1f} s ({hits:.0%} of reads hit, "
            f"{counts['bytes'] / 2**20:,.0f} MiB written, {counts['lost']} evicted)",
            seconds=elapsed,
            counts=dict(counts),
        )

    return per_engine(NAME, selected(engines), work, parallel=profile == "quick").as_dicts()
