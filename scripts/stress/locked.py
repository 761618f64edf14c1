"""Scenario: a diskcache database locked by another process when a function is decorated.

Each round stores an entry, then another process takes the database's write lock and holds
it past the time opening waits (`OPEN_TIMEOUT`) while this process decorates the function
again and calls it. The folder must stay diskcache's (the engine served, its manifest, no
other engine's files in it); once the lock goes, the cache must work; and after
`twat-cache clear` the function's next call must compute the new value, never serve the
entry stored before the clear.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from stress.common import ZERO, Rows, cli_command, per_engine, progress, root, selected

NAME = "locked"
ROUNDS = {"full": 20, "quick": 3}
#: Seconds opening waits for a lock: the default (5 s) in the full profile.
OPEN_TIMEOUT = {"full": None, "quick": 0.3}

_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
connection.execute("ROLLBACK")
"""


def _round(n: int, answers: dict[str, str]) -> dict[str, Any]:
    from twat_cache import bcache

    folder = f"locked-{n}"
    key = "k"

    def make() -> Any:
        def answer(x: str) -> str:
            return answers["now"]

        return bcache(folder_name=folder)(answer)

    answers["now"] = "old"
    first = make()
    first(key)
    database = first.cache_engine.directory / "cache.db"
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        try:
            if holder.stdout.readline().strip() != "held":
                raise RuntimeError("the lock holder did not start")
            started = time.monotonic()
            second = make()  # decorated while the lock is held past OPEN_TIMEOUT
            waited = time.monotonic() - started
            served_while_locked = second(key)
        finally:
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.wait(timeout=60)
    switches = []
    if second.cache_engine.name != "diskcache":
        switches.append(f"round {n}: served by {second.cache_engine.name}")
    manifest = json.loads((root() / ".manifests" / f"{folder}.json").read_text())
    if manifest["engine"] != "diskcache":
        switches.append(f"round {n}: manifest says {manifest['engine']}")
    others = [
        p.name for p in second.cache_engine.directory.iterdir() if p.name.startswith("klepto")
    ]
    if others:
        switches.append(f"round {n}: {others} in the folder")
    stale = []
    if served_while_locked != "old":
        stale.append(f"round {n}: {served_while_locked!r} while locked")
    if second(key) != "old":  # the lock is gone: the entry stored before is served
        stale.append(f"round {n}: the stored entry was not served once the lock went")
    subprocess.run(
        [*cli_command("clear", folder, "--yes")], check=True, capture_output=True, timeout=120
    )
    answers["now"] = "new"
    for cached in (second, first):
        if cached(key) != "new":
            stale.append(f"round {n}: a stale answer after `twat-cache clear`")
    return {"switches": switches, "stale": stale, "waited": waited}


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    def work(engine: str, rows: Rows) -> None:
        from twat_cache.engines.diskcache import DiskCacheEngine

        wait = OPEN_TIMEOUT[profile]
        if wait is not None:  # the quick profile waits less, to run in seconds
            DiskCacheEngine.OPEN_TIMEOUT = wait
        rounds = ROUNDS[profile]
        progress(f"{NAME}: {engine}, {rounds} rounds")
        switches: list[str] = []
        stale: list[str] = []
        waits: list[float] = []
        for n in range(rounds):
            result = _round(n, {})
            switches += result["switches"]
            stale += result["stale"]
            waits.append(result["waited"])
        rows.judge(
            engine,
            "engine switches (served, manifest, files)",
            len(switches),
            ZERO,
            cases=switches[:10],
        )
        rows.judge(
            engine,
            "stale answers (while locked, after a clear)",
            len(stale),
            ZERO,
            cases=stale[:10],
        )
        rows.info(
            engine,
            "decoration time while locked (max)",
            max(waits),
            shown=f"{max(waits):.2f} s",
            open_timeout=DiskCacheEngine.OPEN_TIMEOUT,
        )

    return per_engine(NAME, selected(engines, ("diskcache",)), work, parallel=False).as_dicts()
