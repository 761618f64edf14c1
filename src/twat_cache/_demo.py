"""A short tour of twat-cache: each decorator, the engine serving it, and what a hit saves.

Run by `make demo`, `twat-cache demo` and `python -m twat_cache._demo`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

DECORATORS = ("mcache", "acache", "bcache", "fcache", "ucache")
ASYNC_NATIVE = {"acache"}
PERSISTENT = {"bcache", "fcache", "ucache"}
WORK_SECONDS = 0.03  # what the "expensive" function costs on a miss
CACHED_CALLS = 200  # hits timed per row; the median is reported


@dataclass
class Row:
    label: str
    engine: str = "-"
    first: float | None = None
    cached: float | None = None
    hits_misses: str = "-"
    note: str = ""
    warm: bool = False  # the first call was already a hit (a previous run's entry)


def slow_square(x: int) -> int:
    time.sleep(WORK_SECONDS)
    return x * x


async def slow_square_async(x: int) -> int:
    await asyncio.sleep(WORK_SECONDS)
    return x * x


def accepts(decorator: Callable[..., Any], option: str) -> bool:
    """Whether `decorator(option=...)` is allowed by its signature."""
    try:
        params = inspect.signature(decorator).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == option or p.kind is p.VAR_KEYWORD for p in params)


def decorate(name: str, decorator: Callable[..., Any], func: Callable[..., Any], label: str) -> Any:
    options: dict[str, Any] = {}
    # A registry name per row: the rows wrap the same two functions, whose default
    # names (module.qualname) would otherwise collide.
    if accepts(decorator, "name"):
        options["name"] = f"demo.{label.replace(' ', '_')}"
    if name in PERSISTENT and accepts(decorator, "folder_name"):
        options["folder_name"] = f"demo_{name}"
    return decorator(**options)(func) if options else decorator(func)


def time_sync(cached: Any) -> tuple[float, float, int, list[int]]:
    start = time.perf_counter()
    first = cached(7)
    first_time = time.perf_counter() - start
    times, results = [], []
    for _ in range(CACHED_CALLS):
        start = time.perf_counter()
        results.append(cached(7))
        times.append(time.perf_counter() - start)
    return first_time, statistics.median(times), first, results


async def time_async(
    cached: Callable[[int], Awaitable[int]],
) -> tuple[float, float, int, list[int]]:
    start = time.perf_counter()
    first = await cached(7)
    first_time = time.perf_counter() - start
    times, results = [], []
    for _ in range(CACHED_CALLS):
        start = time.perf_counter()
        results.append(await cached(7))
        times.append(time.perf_counter() - start)
    return first_time, statistics.median(times), first, results


def measure(name: str, decorator: Callable[..., Any], is_async: bool, label: str) -> Row:
    row = Row(label)
    try:
        func = slow_square_async if is_async else slow_square
        cached = decorate(name, decorator, func, label)
        row.engine = str(getattr(cached.cache_engine, "name", cached.cache_engine))
        if is_async:
            first_time, cached_time, first, results = asyncio.run(time_async(cached))
        else:
            first_time, cached_time, first, results = time_sync(cached)
        if first != 49 or any(r != first for r in results):
            row.note = f"wrong result: first {first!r}, later {set(results)!r}"
            return row
        row.first, row.cached = first_time, cached_time
        info = cached.cache_info()
        row.hits_misses = f"{info.hits}/{info.misses}"
        if name in PERSISTENT and info.misses == 0:
            row.hits_misses += " (1st call: a previous run's entry)"
            row.warm = True
    except Exception as exc:  # one broken decorator must not hide the others
        row.note = f"error: {type(exc).__name__}: {exc}"
    return row


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.2f} us"


def fmt_speedup(row: Row) -> str:
    if row.first is None or not row.cached:
        return "-"
    return f"{row.first / row.cached:,.0f}x"


def render(rows: list[Row]) -> str:
    header = ("decorator", "engine", "first call", "cached call", "speed-up", "hits/misses")
    cells = {
        id(r): (
            r.label,
            r.engine,
            fmt_time(r.first),
            fmt_time(r.cached),
            fmt_speedup(r),
            r.hits_misses,
        )
        for r in rows
        if not r.note
    }
    widths = [len(h) for h in header]
    for values in cells.values():
        widths = [max(w, len(v)) for w, v in zip(widths, values, strict=True)]
    widths[0] = max(widths[0], *(len(r.label) for r in rows))

    def line(values: tuple[str, ...]) -> str:
        # Text columns left-aligned, numbers right-aligned.
        return "  ".join(
            v.ljust(w) if i < 2 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out = [line(header), line(tuple("-" * w for w in widths))]
    for r in rows:
        if r.note:
            # A row that could not be measured keeps its place, with the reason in it.
            out.append(f"{r.label.ljust(widths[0])}  {r.engine.ljust(widths[1])}  {r.note}")
        else:
            out.append(line(cells[id(r)]))
    return "\n".join(out)


# --- beyond the table: ucache's choices, CacheContext, disabled() and cache_refresh ---------


def ucache_choices() -> list[tuple[str, str, str]]:
    """(options, function, engine) for functions decorated with different ucache options."""
    from twat_cache import ucache
    from twat_cache.engines.manager import get_manager
    from twat_cache.exceptions import CacheError

    def plain(x: int) -> int:
        return x + 1

    async def fetch(x: int) -> int:
        return x + 1

    def report(x: int) -> dict[str, int]:
        return {"x": x}

    def embedding(n: int) -> np.ndarray:  # the annotation is a string: numpy is optional
        import numpy

        return numpy.arange(n, dtype="float64")

    def parse(text: str) -> list[str]:
        return text.split()

    async def remote(x: int) -> int:
        return x

    cases: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
        ("@ucache", plain, {}),
        ("@ucache (async def)", fetch, {}),
        ('@ucache(folder_name="demo_ucache_disk")', report, {"folder_name": "demo_ucache_disk"}),
        ("@ucache(compress=True) -> np.ndarray", embedding, {"compress": True}),
        ('@ucache(cache_engine="cachetools")', parse, {"cache_engine": "cachetools"}),
    ]
    try:
        get_manager().load("aiocache")
        cases.append(
            ('@ucache(cache_engine="aiocache") (async def)', remote, {"cache_engine": "aiocache"})
        )
    except CacheError as exc:
        print(f"(the aiocache engine does not import here: {exc})")
    rows = []
    for label, func, options in cases:
        try:
            cached = ucache(**options)(func)
            rows.append((label, func.__name__, str(cached.cache_engine.name)))
        except Exception as exc:  # one failing case must not hide the others
            rows.append((label, func.__name__, f"FAILED: {type(exc).__name__}: {exc}"))
    return rows


def context_and_bypass() -> list[str]:
    """Lines showing CacheContext across two blocks, disabled() and cache_refresh."""
    from twat_cache import CacheContext, disabled, mcache

    lines = []
    stamp = time.strftime("%H:%M:%S")
    with CacheContext(engine_name="diskcache", folder_name="demo_context", ttl=600) as cache:
        cache.set("last_write", stamp)
        lines.append(f"block 1 ({cache.name}): set('last_write', {stamp!r})")
    with CacheContext(engine_name="diskcache", folder_name="demo_context") as cache:
        lines.append(f"block 2 ({cache.name}): get('last_write') -> {cache.get('last_write')!r}")

    calls: list[int] = []

    @mcache(name="demo.bypass")
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    double(2)
    double(2)
    lines.append(f"double(2) twice: the body ran {len(calls)} time (the second call was a hit)")
    with disabled():
        double(2)
    lines.append(f"double(2) inside `with disabled():` ran the body again ({len(calls)} runs)")
    double.cache_refresh(2)
    double(2)
    info = double.cache_info()
    lines.append(
        f"double.cache_refresh(2) ran it and stored the result; double(2) then hit "
        f"({len(calls)} runs; hits={info.hits}, misses={info.misses})"
    )
    return lines


# --- Redis: one cache shared by processes ---------------------------------------------------

REDIS_URL_ENV = "TWAT_CACHE_REDIS_URL"
# The second process imports this module by name, so that the cached function's module
# (part of its keys on the server) is the same in both processes.
_CHILD = "import sys; from twat_cache._demo import redis_child; sys.exit(redis_child(sys.argv[1]))"


@contextlib.contextmanager
def private_redis(binary: str) -> Iterator[str]:
    """A redis-server of our own on a free local port, in a temporary directory, without
    persistence; stopped and removed on exit. Yields its URL."""
    from twat_cache._redis_server import private_server

    with private_server(binary) as server:
        yield server.url


def redis_child(url: str) -> int:
    """The second process: the same function on the same server finds the first's entry."""
    from twat_cache import ucache

    cached = ucache(url=url, name="demo.redis")(slow_square)
    start = time.perf_counter()
    value = cached(7)
    seconds = time.perf_counter() - start
    info = cached.cache_info()
    print(
        json.dumps({"value": value, "seconds": seconds, "hits": info.hits, "misses": info.misses})
    )
    return 0


def median_hit(cached: Callable[[int], int]) -> float:
    times = []
    for _ in range(CACHED_CALLS):
        start = time.perf_counter()
        cached(7)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def redis_lines(url: str) -> list[str]:
    """A Redis-backed function: a miss here, a hit in another process, and the memory tier."""
    from twat_cache import ucache

    shared = ucache(url=url, name="demo.redis")(slow_square)
    tiered = ucache(url=url, name="demo.redis_l1", l1_maxsize=256, l1_ttl="5s")(slow_square)
    try:
        shared.cache_clear()  # a server given by the variable may hold an earlier run's entry
        tiered.cache_clear()
        if shared.cache_engine.name != "redis":
            raise RuntimeError(f"served by {shared.cache_engine.name}, not redis")
        start = time.perf_counter()
        value = shared(7)
        first = time.perf_counter() - start
        lines = [
            f"this process     slow_square(7) -> {value} in {fmt_time(first)}: computed, stored"
        ]
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if child.returncode != 0:
            raise RuntimeError(f"the second process failed:\n{child.stderr[-2000:]}")
        seen = json.loads(child.stdout.strip().splitlines()[-1])
        if (seen["value"], seen["hits"], seen["misses"]) != (value, 1, 0):
            raise RuntimeError(f"the second process did not hit the first's entry: {seen}")
        lines.append(
            f"another process  slow_square(7) -> {seen['value']} in {fmt_time(seen['seconds'])}: "
            f"read from the server (hits={seen['hits']}, misses={seen['misses']})"
        )
        server_hit = median_hit(shared)
        tiered(7)
        tier_hit = median_hit(tiered)
        lines.append(
            f"a hit read from the server: {fmt_time(server_hit)} (median of {CACHED_CALLS})"
        )
        lines.append(
            f'a hit with l1_maxsize=256, l1_ttl="5s": {fmt_time(tier_hit)} (an in-process tier '
            "in front of the server; at most 5 s stale)"
        )
        return lines
    finally:
        for cached in (shared, tiered):
            with contextlib.suppress(Exception):  # a server that went away has nothing to clear
                cached.cache_clear()


def redis_section() -> bool:
    """Print the Redis part of the tour; False if it failed."""
    binary = shutil.which("redis-server")
    url = os.environ.get(REDIS_URL_ENV)
    if importlib.util.find_spec("redis") is None:
        print("\nRedis: redis-py is not installed; pip install 'twat-cache[redis]' to use it.")
        return True
    if binary is None and not url:
        print(
            "\nRedis: redis-server is not installed; `apt-get install redis-server` (or point "
            f"{REDIS_URL_ENV} at a server) to see a cache shared by processes."
        )
        return True
    try:
        if binary is not None:
            with private_redis(binary) as private_url:
                port = private_url.rsplit(":", 1)[1].split("/")[0]
                print(
                    f"\nA cache shared by processes, on a private redis-server (127.0.0.1:{port}, "
                    "no persistence):\n"
                )
                lines = redis_lines(private_url)
                lines.append("the server is stopped")
        else:
            assert url is not None
            print(f"\nA cache shared by processes, on the server of ${REDIS_URL_ENV}:\n")
            lines = redis_lines(url)
    except Exception as exc:  # report, and fail the demo
        print(f"  FAILED: {type(exc).__name__}: {exc}")
        return False
    for text in lines:
        print(f"  {text}")
    return True


def main() -> int:
    # Persistent caches of the tour live where every twat-cache cache lives (the cache root:
    # TWAT_CACHE_DIR, else the platform's user cache dir), so a second run of the demo
    # answers bcache and fcache from the first run's entries.
    import twat_cache
    from twat_cache.paths import cache_root

    version = getattr(twat_cache, "__version__", "?")
    print(f"twat-cache {version} on Python {sys.version.split()[0]}")
    print(
        f"Each function sleeps {WORK_SECONDS * 1e3:.0f} ms on a miss; 'cached call' is the "
        f"median of {CACHED_CALLS} hits.\n"
    )

    rows: list[Row] = []
    missing: list[str] = []
    plan = [(name, name in ASYNC_NATIVE, name) for name in DECORATORS]
    plan.insert(1, ("mcache", True, "mcache (async)"))
    for name, is_async, label in plan:
        decorator = getattr(twat_cache, name, None)
        if decorator is None:
            if name not in missing:
                missing.append(name)
            rows.append(Row(label, note="not available in this version"))
            continue
        rows.append(measure(name, decorator, is_async, label))

    print(render(rows))
    print(
        f"\nPersistent caches are in {cache_root()} (folders demo_bcache, demo_fcache): run "
        "`make demo` again and their first call is answered from this run's entries."
    )
    measured = [r for r in rows if not r.note]
    failed = [r for r in rows if r.note and r.label.split()[0] not in missing]
    print()
    if measured:
        speedups = [r.first / r.cached for r in measured if r.first and r.cached and not r.warm]
        summary = (
            f"{len(measured)} cached functions measured; a hit is "
            f"{statistics.median(speedups):,.0f}x faster than a miss (median)"
        )
    else:
        summary = "nothing could be measured"
    if missing:
        summary += f"; not in this version: {', '.join(missing)}"
    if failed:
        summary += f"; FAILED: {', '.join(r.label for r in failed)}"
    print(summary + ".")

    print("\nucache picks the engine from the options and the function:\n")
    choices = ucache_choices()
    width = max(len(label) for label, _, _ in choices)
    for label, func_name, engine in choices:
        print(f"  {label.ljust(width)}  {func_name}() -> {engine}")
    broken = [label for label, _, engine in choices if engine.startswith("FAILED")]

    print("\nCacheContext, disabled() and cache_refresh:\n")
    try:
        for text in context_and_bypass():
            print(f"  {text}")
    except Exception as exc:  # report, and fail the demo
        print(f"  FAILED: {type(exc).__name__}: {exc}")
        broken.append("CacheContext/disabled/cache_refresh")
    if not redis_section():
        broken.append("Redis")
    if broken:
        print(f"\nFAILED: {', '.join(broken)}")
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
