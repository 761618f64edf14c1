"""Scenario: a cache folder deleted while the process uses it (the docs give deleting it as
a way to clear a cache). Threads call a cached function while another thread deletes the
function's folder again and again; every call must return the right value, no call or
`cache_info`/`cache_clear` may raise, and after each deletion caching must resume at the
next call: the folder made again 0700, a new key computed once and then a hit, on disk for
any other process.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import threading
import time
from typing import Any

from stress.common import ALL, ZERO, Rows, per_engine, percent, progress, selected

NAME = "deleted"
DISK_ENGINES = ("diskcache", "joblib", "klepto")
DELETIONS = {"full": 100, "quick": 4}
THREADS = {"full": 4, "quick": 2}
#: Seconds the threads call the function between two deletions.
SPELL = {"full": 0.2, "quick": 0.05}


def _run(engine: str, options: dict[str, Any], profile: str, seed: int) -> dict[str, Any]:
    from twat_cache import bcache, fcache

    decorator = fcache if engine == "joblib" else bcache
    lock = threading.Lock()
    runs: dict[int, int] = {}

    def compute(x: int) -> list[int]:
        with lock:
            runs[x] = runs.get(x, 0) + 1
        return [x, x * x]

    folder = f"deleted-{engine}{'-sql' if options.get('use_sql') else ''}"
    f = decorator(folder_name=folder, cache_engine=engine, **options)(compute)
    if f.cache_engine.name != engine:
        raise RuntimeError(f"asked for {engine}, got {f.cache_engine.name}")
    directory = f.cache_engine.directory
    # diskcache's reads notice a deleted database within FOLDER_CHECK; its writes at once.
    stop = threading.Event()
    errors: list[str] = []
    wrong = calls = 0

    def caller(index: int) -> None:
        nonlocal wrong, calls
        rng = random.Random(seed + index)
        while not stop.is_set():
            x = rng.randrange(200)
            try:
                value = f(x)
            except Exception as exc:
                errors.append(f"call: {exc!r}")
                continue
            with lock:
                calls += 1
                wrong += value != [x, x * x]

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(THREADS[profile])]
    for thread in threads:
        thread.start()
    resumed = 0
    bad_modes: list[str] = []
    deletions = DELETIONS[profile]
    try:
        for n in range(deletions):
            time.sleep(SPELL[profile])
            shutil.rmtree(directory, ignore_errors=True)
            for method in ("cache_info", "cache_clear"):
                try:
                    getattr(f, method)()
                except Exception as exc:
                    errors.append(f"{method}: {exc!r}")
            # Caching resumes at the next call: a new key computed once, then a hit, stored
            # where another process finds it.
            key = 1_000 + n
            f(key)
            f(key)
            stored = _stored(f.cache_engine, folder, options, f.cache_key(key))
            if runs.get(key) == 1 and stored == [key, key * key]:
                resumed += 1
            try:
                mode = stat.S_IMODE(os.stat(directory).st_mode)
            except FileNotFoundError:
                mode = -1  # deleted again by nobody: a failure to recreate it
            if mode != 0o700:
                bad_modes.append(f"{oct(mode) if mode >= 0 else 'missing'} after deletion {n}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    f.cache_engine.close()
    return {
        "errors": errors,
        "wrong": wrong,
        "calls": calls,
        "resumed": resumed,
        "deletions": deletions,
        "bad_modes": bad_modes,
    }


def _stored(engine: Any, folder: str, options: dict[str, Any], key: Any) -> Any:
    """What a second instance of the engine on the same folder reads under `key`: what
    another process sees."""
    from twat_cache.config import CacheConfig
    from twat_cache.engines.base import RECORD_MANIFESTS

    token = RECORD_MANIFESTS.set(False)  # the folder keeps its cache's manifest
    try:
        other = type(engine)(CacheConfig(folder_name=folder, **options), sweep=False)
    finally:
        RECORD_MANIFESTS.reset(token)
    try:
        return other.get(key)
    finally:
        other.close()


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    def work(engine: str, rows: Rows) -> None:
        variants = [(engine, {})]
        if engine == "klepto":
            variants.append(("klepto-sql", {"use_sql": True}))
        for label, options in variants:
            progress(f"{NAME}: {label}, {DELETIONS[profile]} deletions")
            result = _run(engine, options, profile, seed)
            rows.judge(
                label,
                "exceptions from calls, cache_info, cache_clear",
                len(result["errors"]),
                ZERO,
                errors=result["errors"][:10],
            )
            rows.judge(label, "wrong values", result["wrong"], ZERO, calls=result["calls"])
            fraction, shown = percent(result["resumed"], result["deletions"])
            rows.judge(
                label,
                "caching resumed at the next call after a deletion",
                fraction,
                ALL,
                shown=shown,
            )
            rows.judge(
                label,
                "folder not recreated 0700",
                len(result["bad_modes"]),
                ZERO,
                cases=result["bad_modes"][:10],
            )

    return per_engine(NAME, selected(engines, DISK_ENGINES), work, parallel=False).as_dicts()
