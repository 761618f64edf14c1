"""Scenario names: caches whose names hold `{`, `}`, `:`, `*`, `?`, `%`, a newline, next to a
plain `shop`, on every engine. Each name is refused at decoration or gets a key space of its
own: a cache's size counts only its own entries, its `cache_clear()` never removes another
cache's entries, and no cache ever answers with another's value.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from stress.common import ENGINES, ZERO, Rows, per_engine, progress

NAME = "names"
HOSTILE = (
    "shop",
    "shop}:x",
    "{shop}",
    "shop:x",
    "shop:0",
    "shop}:0",
    "shop*",
    "shop?",
    "shop[a]",
    "shop%7D%3Ax",
    "shop\nx",
)
KEYS = {"full": 100, "quick": 20}


def _decorator(engine: str, name: str, redis_url: str | None) -> Any:
    from twat_cache import bcache, fcache, mcache, ucache

    if engine == "memory":
        return mcache(name=name)
    if engine in ("diskcache", "klepto"):
        return bcache(folder_name=name, cache_engine=engine)
    if engine == "joblib":
        return fcache(folder_name=name, cache_engine=engine)
    return ucache(url=redis_url, name=name)


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    keys = KEYS[profile]

    def work(engine: str, rows: Rows) -> None:
        figures = (
            "entries of another cache removed by a clear",
            "sizes counting another cache's entries",
            "answers from another cache",
        )
        if engine == "redis" and redis_url is None:
            for figure in figures:
                rows.skip(engine, figure, "skipped: no redis-server")
            return
        from pydantic import ValidationError

        from twat_cache.exceptions import ConfigurationError

        progress(f"{NAME}: {len(HOSTILE)} names x {keys} keys on {engine}")
        lock = threading.Lock()
        runs: Counter[str] = Counter()
        caches: dict[str, Any] = {}
        refused: dict[str, str] = {}

        def make(tag: str) -> Any:
            def compute(k: int) -> tuple[str, int]:
                with lock:
                    runs[tag] += 1
                return (tag, k)

            return compute

        for name in HOSTILE:
            try:
                f = _decorator(engine, name, redis_url)(make(name))
            except (ConfigurationError, ValidationError, ValueError) as exc:
                refused[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
                continue
            if engine != "memory" and f.cache_engine.name != engine:
                raise RuntimeError(f"asked for {engine}, got {f.cache_engine.name}")
            caches[name] = f

        wrong = 0

        def fill(name: str) -> None:
            nonlocal wrong
            f = caches[name]
            wrong += sum(f(k) != (name, k) for k in range(keys))

        for name in caches:
            fill(name)
        oversized = sum(f.cache_info().currsize not in (keys, -1) for f in caches.values())
        removed = 0
        for cleared in caches:
            caches[cleared].cache_clear()
            for other in caches:
                if other == cleared:
                    continue
                before = runs[other]
                fill(other)  # every call a hit unless the clear removed the entry
                removed += runs[other] - before
            fill(cleared)
        shown_refused = f"; {len(refused)} names refused" if refused else ""
        rows.judge(
            engine,
            figures[0],
            removed,
            ZERO,
            shown=f"{removed} ({len(caches)} caches x {keys} keys{shown_refused})",
            refused=refused,
        )
        rows.judge(engine, figures[1], oversized, ZERO, shown=f"{oversized} of {len(caches)}")
        rows.judge(engine, figures[2], wrong, ZERO)

    present = [e for e in ENGINES if e in engines]
    return per_engine(NAME, present, work, parallel=False).as_dicts()
