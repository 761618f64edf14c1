"""Scenario 2, crash consistency: a writer process is killed (SIGKILL) at a random moment
while it writes without pause; then every key is read back in this process, and at the end
`twat-cache prune` (the real command line, in a subprocess) must leave no orphan file.

A value read back must be one the writer wrote for that key (its journal lists every value
before it is written), intact; otherwise the read must be a clean miss, never an exception.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from stress.common import (
    ALL,
    PROFILES,
    ZERO,
    Rows,
    check_value,
    cli_command,
    log_uniform,
    make_value,
    open_engine,
    per_engine,
    percent,
    progress,
    root,
    selected,
    spawn,
)

NAME = "crash"
KEYS = 24
WRITER_THREADS = 2
#: Files are aged this much before the final prune: `prune` keeps files younger than its
#: grace periods (60 s for a value file no row names yet, 300 s for klepto's temporary
#: directories, 1 h for joblib's temporary files), which may belong to a live writer.
AGE = 2 * 3600


def writer(
    engine: str, folder: str, url: str | None, journal: str, go: str, ready: str, seed: int
) -> None:
    """Write random keys without pause until killed; every value goes to the journal first.

    Started ahead of its round (imports take most of a start), it waits for the `go` file."""
    from twat_cache.engines.manager import get_manager

    get_manager().load(engine)
    while not os.path.exists(go):
        time.sleep(0.002)
    store = open_engine(engine, folder, url)
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    lock = threading.Lock()

    def run(thread: int) -> None:
        rng = random.Random(f"{seed}-{thread}")
        while True:
            key = f"key-{rng.randrange(KEYS)}"
            if rng.random() < 0.1:
                store.delete(key)
                continue
            value = make_value(key, log_uniform(rng, 100, 300_000), rng)
            with lock:
                os.write(fd, f"{key} {value['nonce']}\n".encode())
            store.set(key, value)
            if not os.path.exists(ready):
                Path(ready).touch()

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(WRITER_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _journal(path: Path) -> set[tuple[str, int]]:
    written = set()
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:  # the last line may be cut by the kill
                written.add((parts[0], int(parts[1])))
    return written


def _read_back(
    engine: str, folder: str, url: str | None, written: set[tuple[str, int]]
) -> Counter[str]:
    from twat_cache import MISS

    counts: Counter[str] = Counter()
    try:
        store = open_engine(engine, folder, url)
    except Exception as exc:
        counts["open-exception"] += 1
        counts[f"error:{type(exc).__name__}: {exc}"[:200]] += 1
        return counts
    try:
        for index in range(KEYS):
            key = f"key-{index}"
            counts["reads"] += 1
            try:
                value = store.get(key, MISS)
            except Exception as exc:
                counts["exception"] += 1
                counts[f"error:{type(exc).__name__}: {exc}"[:200]] += 1
                continue
            if value is MISS:
                counts["miss"] += 1
            elif check_value(key, value) != "ok" or (key, value["nonce"]) not in written:
                counts["wrong"] += 1
            else:
                counts["exact"] += 1
    finally:
        store.close()
    return counts


# --- orphan files: what is in the folder that no entry owns -----------------------------------


def _orphans(engine: str, folder: Path) -> list[str]:
    """Files in the cache folder that belong to no stored entry (checked from the files and
    the documented layouts, not with the engine's own code)."""
    if engine == "diskcache":
        return _diskcache_orphans(folder)
    if engine == "joblib":
        return _joblib_orphans(folder)
    if engine == "klepto":
        return _klepto_orphans(folder)
    return []


def _files(folder: Path) -> list[str]:
    found = []
    for top, _, names in os.walk(folder):
        for name in names:
            found.append(os.path.relpath(os.path.join(top, name), folder))
    return found


def _diskcache_orphans(folder: Path) -> list[str]:
    database = folder / "cache.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")
        referenced = {os.path.normpath(name) for (name,) in rows}
    own = {"cache.db", "cache.db-wal", "cache.db-shm"}
    return [name for name in _files(folder) if name not in own and name not in referenced]


def _joblib_orphans(folder: Path) -> list[str]:
    names = set(_files(folder))
    owned = set()
    for name in names:
        if not name.endswith(".sig") or "/" in name:
            continue
        raw = (folder / name).read_bytes()
        try:
            data = json.loads(raw[36:])["d"]  # MAGIC (4) | MAC (32) | JSON naming the data file
        except (ValueError, KeyError, TypeError):
            continue  # an unreadable record is itself an orphan
        if data in names:
            owned.update((name, data))
    return sorted(names - owned)


def _klepto_orphans(folder: Path) -> list[str]:
    archive = folder / "klepto"
    orphans = [name for name in _files(folder) if not name.startswith("klepto/")]
    if not archive.exists():
        return orphans
    for entry in os.scandir(archive):
        inside = _files(Path(entry.path)) if entry.is_dir() else [""]
        good = (
            entry.name.startswith("K_")
            and not entry.name.startswith("K_.")
            and inside == ["output.json"]
            and _json_file(Path(entry.path) / "output.json")
        )
        if not good:
            orphans.extend(f"klepto/{entry.name}/{name}".rstrip("/") for name in inside or [""])
    return orphans


def _json_file(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


def _age(folder: Path, seconds: float) -> None:
    then = time.time() - seconds
    for top, dirs, names in os.walk(folder):
        for name in [*names, *dirs]:
            os.utime(os.path.join(top, name), (then, then), follow_symlinks=False)


def _prune(folder: str) -> dict[str, Any]:
    out = subprocess.run(
        cli_command("prune", folder, "--json"), capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"twat-cache prune exited {out.returncode}: {out.stderr.strip()}")
    result: dict[str, Any] = json.loads(out.stdout)["pruned"][0]
    return result


# --- the scenario --------------------------------------------------------------------------


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    p = PROFILES[profile]
    latest = 1.0 if profile == "full" else 0.3  # the kill comes 0..latest s after writing began

    def work(engine: str, rows: Rows) -> None:
        if engine == "redis" and redis_url is None:
            rows.skip(
                engine, "entries read back exactly or as a clean miss", "skipped: no redis-server"
            )
            return
        progress(f"{NAME}: {engine}, {p.crash_rounds} rounds of SIGKILL")
        rng = random.Random(f"{seed}-{engine}")
        folder = f"crash-{engine}"
        work_dir = root().parent / f"crash-work-{engine}"
        work_dir.mkdir(exist_ok=True)
        journal = work_dir / "journal"
        totals: Counter[str] = Counter()
        leftovers = 0

        def start(round_: int) -> Any:
            return spawn(
                NAME,
                "writer",
                {
                    "engine": engine,
                    "folder": folder,
                    "url": redis_url,
                    "journal": str(journal),
                    "go": str(work_dir / f"go-{round_}"),
                    "ready": str(work_dir / f"ready-{round_}"),
                    "seed": seed * 1000 + round_,
                },
                stdout=subprocess.DEVNULL,
            )

        following = start(0)
        for round_ in range(p.crash_rounds):
            child = following
            (work_dir / f"go-{round_}").touch()
            if round_ + 1 < p.crash_rounds:
                following = start(round_ + 1)
            ready = work_dir / f"ready-{round_}"
            deadline = time.monotonic() + 120
            while not ready.exists():
                if child.poll() is not None:
                    raise RuntimeError(f"the writer exited: {child.stderr.read()[-2000:]}")
                if time.monotonic() > deadline:
                    child.kill()
                    raise RuntimeError("the writer never wrote")
                time.sleep(0.005)
            time.sleep(rng.uniform(0, latest))
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stderr.close()
            totals.update(_read_back(engine, folder, redis_url, _journal(journal)))
            if engine != "redis":
                leftovers = max(leftovers, len(_orphans(engine, root() / folder)))
        reads = totals["reads"]
        fraction, shown = percent(totals["exact"] + totals["miss"], reads)
        errors = {k[6:]: v for k, v in totals.items() if k.startswith("error:")}
        rows.judge(
            engine,
            "entries read back exactly or as a clean miss",
            fraction,
            ALL,
            shown=shown,
            exact=totals["exact"],
            miss=totals["miss"],
            wrong=totals["wrong"],
        )
        rows.judge(
            engine,
            "read exceptions",
            totals["exception"] + totals["open-exception"],
            ZERO,
            errors=errors,
        )
        if engine == "redis":
            return  # entries live on the server: no files to orphan
        folder_path = root() / folder
        before = _orphans(engine, folder_path)
        kept: list[str] | None = None
        if profile == "full":  # what a prune right away keeps: shown, not judged
            immediate = _prune(folder)
            kept = _orphans(engine, folder_path)
        _age(folder_path, AGE)
        pruned = _prune(folder)
        after = _orphans(engine, folder_path)
        rows.judge(
            engine,
            "orphan files left after twat-cache prune",
            len(after),
            ZERO,
            shown=f"{len(after)} (of {len(before)} before)",
            files=after[:20],
            prune=pruned,
            most_after_a_round=leftovers,
        )
        if kept is not None:
            rows.info(
                engine,
                "orphans a prune right after the crash keeps (grace period)",
                len(kept),
                prune=immediate,
                files=kept[:20],
            )

    return per_engine(NAME, selected(engines), work, parallel=True).as_dicts()
