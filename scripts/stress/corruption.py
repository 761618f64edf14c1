"""Scenario 3, corruption: stored entries are truncated, zero-filled, byte-flipped or deleted
where they lie (files, database rows, server keys); every call must still return the
correct result, recomputed when its entry is damaged.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from stress.common import (
    ALL,
    PROFILES,
    Rows,
    cached,
    log_uniform,
    per_engine,
    percent,
    progress,
    redis_key,
    root,
    selected,
)

NAME = "corruption"
KINDS = ("truncate", "zero-fill", "byte-flip", "delete")
POPULATION = 4  # entries stored per damaged one


def expected(i: int) -> dict[str, Any]:
    """The result of the cached function for `i`: 100 B to 300 KB, the same every time."""
    rng = random.Random(i)
    return {"i": i, "blob": rng.randbytes(log_uniform(rng, 100, 300_000))}


def damage(data: bytes, kind: str, rng: random.Random) -> bytes | None:
    """`data` damaged as `kind` says (None: deleted)."""
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    if kind == "zero-fill":
        return bytes(len(data))
    if kind == "byte-flip":
        at = rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ rng.randrange(1, 256)]) + data[at + 1 :]
    return None


def _damage_file(path: Path, kind: str, rng: random.Random) -> None:
    damaged = damage(path.read_bytes(), kind, rng)
    if damaged is None:
        path.unlink()
    else:
        path.write_bytes(damaged)


def _listing(folder: Path) -> set[str]:
    found = set()
    for top, _, names in os.walk(folder):
        for name in names:
            found.add(os.path.relpath(os.path.join(top, name), folder))
    return found


class Damager:
    """Knows where each stored entry lies, and damages it there."""

    def __init__(self, engine: str, folder: str, url: str | None) -> None:
        self.engine = engine
        self.folder = folder
        self.directory = root() / folder
        self.url = url
        self.files: dict[str, list[str]] = {}  # entry key -> its files (joblib, klepto)

    def store(self, key: str, call: Any) -> None:
        """Run `call` (which stores the entry `key`), noting the files it created."""
        if self.engine in ("joblib", "klepto"):
            before = _listing(self.directory)
            call()
            self.files[key] = sorted(_listing(self.directory) - before)
        else:
            call()

    def damage(self, key: str, kind: str, rng: random.Random) -> str:
        """Damage the entry `key`; returns where (a file, a row, a server key)."""
        if self.engine == "diskcache":
            return self._damage_row(key, kind, rng)
        if self.engine == "redis":
            return self._damage_server_key(key, kind, rng)
        files = [f for f in self.files[key] if not os.path.basename(f).startswith(".")]
        target = rng.choice(files)
        _damage_file(self.directory / target, kind, rng)
        return target

    def _damage_row(self, key: str, kind: str, rng: random.Random) -> str:
        with sqlite3.connect(self.directory / "cache.db", timeout=30) as connection:
            rowid, filename, value = connection.execute(
                "SELECT rowid, filename, value FROM Cache WHERE key = ? AND raw = 1", (key,)
            ).fetchone()
            if filename is not None:  # a large value: its own file
                _damage_file(self.directory / filename, kind, rng)
                return filename
            damaged = damage(bytes(value), kind, rng)
            if damaged is None:
                connection.execute("DELETE FROM Cache WHERE rowid = ?", (rowid,))
            else:
                connection.execute("UPDATE Cache SET value = ? WHERE rowid = ?", (damaged, rowid))
        return f"row {rowid}"

    def _damage_server_key(self, key: str, kind: str, rng: random.Random) -> str:
        import redis

        full = redis_key(self.folder, key)
        with redis.Redis.from_url(self.url) as client:
            damaged = damage(client.get(full), kind, rng)
            if damaged is None:
                client.delete(full)
            else:
                client.set(full, damaged, keepttl=True)
        return full


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    p = PROFILES[profile]
    population = p.corrupted * POPULATION

    def work(engine: str, rows: Rows) -> None:
        figure = "calls returning the correct result"
        if engine == "redis" and redis_url is None:
            rows.skip(engine, figure, "skipped: no redis-server")
            return
        progress(f"{NAME}: {engine}, {p.corrupted} of {population} entries damaged")
        rng = random.Random(f"{seed}-{engine}")
        executions: Counter[int] = Counter()

        def compute(i: int) -> dict[str, Any]:
            executions[i] += 1
            return expected(i)

        folder = f"corruption-{engine}"
        f = cached(engine, folder, compute, redis_url)
        damager = Damager(engine, folder, redis_url)
        for i in range(population):
            damager.store(f.cache_key(i), lambda i=i: f(i))
        assert all(count == 1 for count in executions.values()), "entries were not stored"
        victims = rng.sample(range(population), p.corrupted)
        kinds: dict[int, str] = {}
        where = []
        for n, i in enumerate(victims):
            kinds[i] = KINDS[n % len(KINDS)]
            where.append(f"{kinds[i]} {damager.damage(f.cache_key(i), kinds[i], rng)}")
        executions.clear()
        correct, raised, wrong_kinds = 0, Counter[str](), Counter[str]()
        calls = 0
        for _ in range(2):  # the second pass: damaged entries were stored again
            for i in range(population):
                calls += 1
                try:
                    result = f(i)
                except Exception as exc:
                    raised[type(exc).__name__] += 1
                    continue
                if result == expected(i):
                    correct += 1
                else:
                    wrong_kinds[kinds.get(i, "undamaged")] += 1
        fraction, shown = percent(correct, calls)
        rows.judge(
            engine,
            figure,
            fraction,
            ALL,
            shown=shown,
            raised=dict(raised),
            wrong_by_damage=dict(wrong_kinds),
            damaged=where[:12],
        )
        recomputed = sum(1 for i in victims if executions[i] == 1)
        rows.info(
            engine,
            "damaged entries recomputed once, then hits again",
            f"{recomputed}/{len(victims)}",
            by_kind=dict(Counter(kinds[i] for i in victims if executions[i] == 1)),
            undamaged_recomputed=sum(1 for i in executions if i not in kinds),
        )

    return per_engine(NAME, selected(engines), work, parallel=profile == "quick").as_dicts()
