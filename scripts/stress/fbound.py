"""Scenario: fcache's byte bound with several processes writing large NumPy arrays at once.

2 and 4 processes each write arrays of one size into one joblib folder bounded in bytes,
each nine tenths of the bound (so none passes the bound by its own count: only rescans see
the others' writes), while this process samples what the folder takes on disk.
Each process counts its own writes and rescans the folder for the others' after writing
1/32 of the bound (docs/fcache.md), so the folder may pass the bound by at most
(processes - 1) x 1/32 of it, plus one entry per process (the entry each has written and
not yet evicted for); at rest, once every process has written its last entry and evicted,
by (processes - 1) x 1/32 of it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from stress.common import Rows, at_most, per_engine, progress, result_of, selected, size, spawn

NAME = "fbound"
#: (bound, entry sizes) per profile.
SIZES = {
    "full": (64_000_000, (1_000_000, 10_000_000)),
    "quick": (4_000_000, (250_000, 1_000_000)),
}
PROCESSES = (2, 4)
SHARE = 0.9  # of the bound, written by each process
SAMPLE = 0.005  # seconds between two samples of the folder
START = 1.0  # seconds given to the writers to start before they all write at once


def writer(folder: str, bound: int, entry: int, count: int, tag: str, start: float) -> int:
    """Write `count` arrays of `entry` bytes into the folder (a child process), from the
    time `start` on, so that the processes write at once."""
    import numpy as np

    from twat_cache.config import CacheConfig
    from twat_cache.engines.joblib import JoblibEngine

    engine = JoblibEngine(CacheConfig(folder_name=folder, maxsize=f"{bound}B"))
    array = np.random.default_rng(abs(hash(tag)) % 2**32).random(entry // 8)
    time.sleep(max(0.0, start - time.time()))
    for i in range(count):
        engine.set(f"{tag}-{i}", array)
    return count


def _usage(directory: Path) -> int:
    from twat_cache.paths import disk_usage

    total = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            total += disk_usage(entry.stat(follow_symlinks=False))
        except FileNotFoundError:
            continue
    return total


def _configuration(profile: str, processes: int, entry: int) -> dict[str, Any]:
    from twat_cache.paths import cache_dir

    bound = SIZES[profile][0]
    folder = f"fbound-{processes}-{entry}"
    directory = cache_dir(folder)
    count = max(2, int(SHARE * bound / entry))
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _usage(directory))
            time.sleep(SAMPLE)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        start = time.time() + START
        children = [
            spawn(
                "fbound",
                "writer",
                {
                    "folder": folder,
                    "bound": bound,
                    "entry": entry,
                    "count": count,
                    "tag": f"p{n}",
                    "start": start,
                },
            )
            for n in range(processes)
        ]
        for child in children:
            result_of(child, timeout=600)
    finally:
        done.set()
        sampler.join()
    final = _usage(directory)
    peak = max(peak, final)
    return {"bound": bound, "peak": peak, "final": final, "count": count}


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    def work(engine: str, rows: Rows) -> None:
        bound, entries = SIZES[profile]
        for processes in PROCESSES:
            for entry in entries:
                label = f"{processes} processes, {size(entry)} arrays, bound {size(bound)}"
                progress(f"{NAME}: {label}")
                got = _configuration(profile, processes, entry)
                unseen = (processes - 1) * bound / 32
                # What a file of `entry` bytes takes on disk, with its record.
                taken = entry + 16_384
                limit = bound + unseen + processes * taken
                rows.judge(
                    engine,
                    f"{label}: folder at its peak (sampled)",
                    got["peak"],
                    at_most(limit, f"<= {size(limit)}"),
                    shown=size(got["peak"]),
                    writes_per_process=got["count"],
                )
                rest = bound + unseen
                rows.judge(
                    engine,
                    f"{label}: folder at rest",
                    got["final"],
                    at_most(rest, f"<= {size(rest)}"),
                    shown=size(got["final"]),
                )

    return per_engine(NAME, selected(engines, ("joblib",)), work, parallel=False).as_dicts()
