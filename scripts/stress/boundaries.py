"""Scenario boundaries: boundary values (0, tiny, huge, inf, nan, negative, `sys.maxsize`,
2**64, booleans, wrong types) of every duration and size option, on every engine.

Each case decorates a function with one option set to one value (or, for `set_ttl`, gives
the value as the per-entry ttl of a `CacheContext`'s `set`). The option is either refused
when the cache is created, with a `ValidationError` or `ConfigurationError` naming it, or the
cache works: calls return the right values, and `cache_info`, `cache_clear`,
`cache_refresh`, `cache_delete`, `cache_key` and `cache_parameters` raise nothing; a case
whose durations and sizes leave room for an entry must also cache it (a second call is a
hit), on the engine asked for.

A bad value may abort the interpreter inside a Rust extension, so the cases run in worker
processes that record each case before running it: a worker that dies mid-case has that
case counted as a crash, and a new worker takes over at the next case.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stress.common import ZERO, Rows, child_command, child_env, progress

NAME = "boundaries"

#: Every engine the cases run on, and the harness engine name that selects it.
ENGINES = {
    "cachebox": "memory",
    "cachetools": "memory",
    "functools": "memory",
    "aiocache": "memory",
    "diskcache": "diskcache",
    "joblib": "joblib",
    "klepto": "klepto",
    "redis": "redis",
    "redis-async": "redis",
    "aiocache-redis": "redis",
}
_ASYNC = {"aiocache", "redis-async", "aiocache-redis"}
_SERVER = {"redis", "redis-async", "aiocache-redis"}

DURATIONS = ("ttl", "l1_ttl", "timeout", "cooldown", "lease", "set_ttl")
SIZES = ("maxsize", "l1_maxsize")
OPTIONS = (*DURATIONS, *SIZES, "version")

#: Named values, so that a case is plain JSON; `value(name)` gives the Python value.
_VALUES: dict[str, Any] = {
    "0": 0,
    "-1": -1,
    "-inf": -math.inf,
    "tiny": 1e-9,
    "1ms": 0.001,
    "1": 1,
    "1.5": 1.5,
    "huge": 10**12,
    "1e300": 1e300,
    "inf": math.inf,
    "nan": math.nan,
    "sys.maxsize": sys.maxsize,
    "2**64": 2**64,
    "10**400": 10**400,
    "True": True,
    "False": False,
    "'1e400'": "1e400",
    "'1000000000d'": "1000000000d",
    "'nan'": "nan",
    "'2MB'": "2MB",
    "'0MB'": "0MB",
    "'1e30TB'": "1" + "0" * 30 + "TB",
    "''": "",
    "'v:1'": "v:1",
    "'abc'": "abc",
    "[1]": [1],
    "None": None,
}
_DURATION_VALUES = (
    "0", "-1", "-inf", "tiny", "1ms", "1", "huge", "1e300", "inf", "nan", "sys.maxsize",
    "2**64", "10**400", "True", "'1e400'", "'1000000000d'", "'nan'", "'abc'", "[1]",
)  # fmt: skip
_SIZE_VALUES = (
    "0", "-1", "1", "1.5", "huge", "inf", "nan", "sys.maxsize", "2**64", "10**400", "True",
    "'2MB'", "'0MB'", "'1e30TB'", "'abc'", "[1]",
)  # fmt: skip
_VERSION_VALUES = ("0", "-1", "1.5", "2**64", "True", "False", "''", "'v:1'", "'abc'", "[1]")
#: The quick profile: the values of the issue's list (and a byte size).
_QUICK = {"0", "-1", "tiny", "huge", "inf", "nan", "sys.maxsize", "2**64", "True", "[1]", "'2MB'"}


#: Seeded random values per engine and option, on top of the named ones (full profile only).
RANDOM_VALUES = {"full": 16, "quick": 0}
_UNITS = ("ms", "s", "m", "h", "d", "w")
_BYTE_UNITS = ("b", "kb", "MB", "GiB", "TB", "TiB")


def value(name: str) -> Any:
    """The Python value a case's value name stands for: a named value, or a random one
    written ``~int:<digits>``, ``~float:<repr>`` or ``~str:<text>``."""
    if not name.startswith("~"):
        return _VALUES[name]
    kind, _, text = name[1:].partition(":")
    return {"int": int, "float": float, "str": str}[kind](text)


def _random_name(option: str, rng: random.Random) -> str:
    """A random value for `option`, across every magnitude: from far below the shortest
    duration (or 0) to far past every bound, either sign, as an int, a float or a string."""
    exponent = rng.randint(-12, 420) if option not in SIZES else rng.randint(0, 420)
    sign = "-" if rng.random() < 0.1 else ""
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6)))
    kind = rng.choice(("int", "float", "str"))
    if kind == "int" or (option == "version" and kind == "float"):
        return f"~int:{sign}{int(digits) * 10 ** max(exponent, 0)}"
    if kind == "float":
        return f"~float:{sign}{float(f'{digits}e{min(exponent, 300)}')!r}"
    if option in SIZES:
        return f"~str:{digits}{rng.choice(_BYTE_UNITS)}"
    if option == "version":
        return f"~str:v{digits}"
    return f"~str:{sign}{digits}{'.' + digits if exponent < 0 else ''}{rng.choice(_UNITS)}"


def cases(
    profile: str, engines: list[str] | None = None, seed: int = 0
) -> list[tuple[str, str, str]]:
    """(engine, option, value name) of every case of `profile` on the harness `engines`."""
    chosen = [e for e, group in ENGINES.items() if engines is None or group in engines]
    rng = random.Random(seed)
    found = []
    for engine in chosen:
        for option in OPTIONS:
            names = (
                _DURATION_VALUES
                if option in DURATIONS
                else _SIZE_VALUES
                if option in SIZES
                else _VERSION_VALUES
            )
            if engine == "aiocache-redis" and option == "maxsize":
                continue  # refused at any value: the server's maxmemory bounds it
            for name in names:
                if profile == "quick" and name not in _QUICK:
                    continue
                found.append((engine, option, name))
            for _ in range(RANDOM_VALUES[profile]):
                found.append((engine, option, _random_name(option, rng)))
    return found


def _expects_entry(option: str, name: str) -> bool:
    """Whether a working cache with this value must keep an entry between two calls: a
    duration of 1 s or more, a size of 1 entry or 10 kB or more. Worked out here, not by
    the library, so that the scenario judges it."""
    given = value(name)
    if option == "version":
        return True
    amount = _amount(given, _BYTES if option in SIZES else _SECONDS)
    least = 1 if option not in SIZES or isinstance(given, int) else 10_000
    return amount is not None and amount >= least


_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_BYTES = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "gib": 2**30, "tib": 2**40}
_AMOUNT = re.compile(r"(-?[0-9.]+)([a-z]+)")


def _amount(given: Any, units: dict[str, float]) -> float | None:
    """The number `given` stands for (seconds or bytes), None when it stands for none."""
    if isinstance(given, bool):
        return None
    if isinstance(given, int | float):
        return float(given) if abs(given) < 1e308 else math.copysign(math.inf, given)
    if isinstance(given, str):
        text = given.strip().lower()
        match = _AMOUNT.fullmatch(text)
        if match and match.group(2) in units:
            return float(match.group(1)) * units[match.group(2)]
        try:
            return float(text)
        except ValueError:
            return None
    return None


# --- one case --------------------------------------------------------------------------------


def _decorator(engine: str, folder: str, url: str | None, options: dict[str, Any]) -> Any:
    from twat_cache import acache, bcache, fcache, mcache, ucache

    if engine in ("cachebox", "cachetools", "functools"):
        return mcache(cache_engine=engine, **options)
    if engine == "aiocache":
        return acache(cache_engine="aiocache", **options)
    if engine in ("diskcache", "klepto"):
        return bcache(folder_name=folder, cache_engine=engine, **options)
    if engine == "joblib":
        return fcache(folder_name=folder, cache_engine=engine, **options)
    if engine in ("redis", "redis-async"):
        return ucache(url=url, folder_name=folder, **options)
    return acache(url=url, folder_name=folder, cache_engine="aiocache", **options)


def _served(engine: str) -> str:
    return {"redis-async": "redis", "aiocache-redis": "aiocache"}.get(engine, engine)


def _close(cached: Any) -> None:
    for attribute in ("cache_engine", "cache_l1_engine"):
        engine = getattr(cached, attribute, None)
        if engine is None:
            continue
        if getattr(engine, "aclose", None) is not None and _is_async_native(engine):
            asyncio.run(engine.aclose())
        else:
            engine.close()


def _is_async_native(engine: Any) -> bool:
    from twat_cache.engines.base import capabilities_of

    return capabilities_of(engine).async_native


def _refusal(option: str, exc: BaseException) -> dict[str, Any]:
    from pydantic import ValidationError

    from twat_cache.exceptions import ConfigurationError

    text = str(exc)
    clear = isinstance(exc, ValidationError | ConfigurationError) and option.replace(
        "set_ttl", "ttl"
    ) in text.replace("l1_maxsize/l1_ttl", "l1_maxsize l1_ttl")
    return {"outcome": "refused", "clear": clear, "error": f"{type(exc).__name__}: {text}"[:300]}


def run_case(engine: str, option: str, name: str, url: str | None, index: int) -> dict[str, Any]:
    """Run one case in this process; what happened (see the module docstring)."""
    folder = f"bound{index}"
    if option == "set_ttl":
        return _per_entry(engine, folder, url, name)
    runs = [0]

    def double(x: int) -> int:
        runs[0] += 1
        return 2 * x

    async def adouble(x: int) -> int:
        runs[0] += 1
        return 2 * x

    try:
        decorate = _decorator(engine, folder, url, {option: value(name)})
        cached = decorate(adouble if engine in _ASYNC else double)
    except Exception as exc:  # judged: a refusal must be clear
        return _refusal(option, exc)
    faults: list[str] = []
    wrong: list[str] = []
    try:
        if engine in _ASYNC:
            first = asyncio.run(_exercise_async(cached, runs, faults, wrong))
        else:
            first = _exercise(cached, runs, faults, wrong)
        hits_ok = first <= 2 or not _expects_entry(option, name)  # f(1) twice, then f(2)
        if _load_dependent(engine, option, name):
            # A server timeout of a few ms expires whenever the machine is busy: such a
            # fault (the call still answers) and a miss are the value working as asked.
            faults[:] = [f for f in faults if not _TIMED_OUT.search(f)]
            hits_ok = True
        served = cached.cache_engine.name
        switched = served != _served(engine) and not (
            served == "null" and _stores_nothing(option, name)
        )
    finally:
        try:
            _close(cached)
        except Exception as exc:
            faults.append(f"close: {exc!r}"[:200])
    return {
        "outcome": "works",
        "faults": faults,
        "wrong": wrong,
        "cached": hits_ok,
        "switched": switched,
        "served": served,
    }


def _guard(faults: list[str], method: str, call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except Exception as exc:
        faults.append(f"{method}: {exc!r}"[:200])
        return None


_TIMED_OUT = re.compile(r"Timeout|timed out|ServerUnavailable", re.IGNORECASE)


def _load_dependent(engine: str, option: str, name: str) -> bool:
    """A server operation timeout under 0.1 s: whether it expires depends on the load."""
    if engine not in _SERVER or option != "timeout":
        return False
    given = value(name)
    return isinstance(given, int | float) and not isinstance(given, bool) and 0 < given < 0.1


def _stores_nothing(option: str, name: str) -> bool:
    """Whether this value switches caching off (the null engine serves `maxsize=0`)."""
    return option == "maxsize" and _amount(value(name), _BYTES) == 0


def _exercise(cached: Any, runs: list[int], faults: list[str], wrong: list[str]) -> int:
    """Call `cached` and every cache method; the function's runs for f(1), f(1), f(2)."""
    for x in (1, 1, 2):
        got = _guard(faults, "call", cached, x)
        if got != 2 * x:
            wrong.append(f"f({x}) = {got!r}")
    first = runs[0]
    for method, args in (
        ("cache_info", ()),
        ("cache_key", (1,)),
        ("cache_parameters", ()),
        ("cache_refresh", (1,)),
        ("cache_delete", (1,)),
        ("cache_clear", ()),
    ):
        _guard(faults, method, getattr(cached, method), *args)
    _guard(faults, "call after clear", cached, 3)
    return first


async def _exercise_async(cached: Any, runs: list[int], faults: list[str], wrong: list[str]) -> int:
    async def awaited(method: str, awaitable: Any) -> Any:
        try:
            return await awaitable
        except Exception as exc:
            faults.append(f"{method}: {exc!r}"[:200])
            return None

    for x in (1, 1, 2):
        got = await awaited("call", cached(x))
        if got != 2 * x:
            wrong.append(f"f({x}) = {got!r}")
    first = runs[0]
    for method in ("cache_info", "cache_parameters"):
        _guard(faults, method, getattr(cached, method))
    _guard(faults, "cache_key", cached.cache_key, 1)
    refreshed = _guard(faults, "cache_refresh", cached.cache_refresh, 1)
    if refreshed is not None and asyncio.iscoroutine(refreshed):
        await awaited("cache_refresh", refreshed)
    await awaited("acache_delete", cached.acache_delete(1))
    await awaited("acache_clear", cached.acache_clear())
    _guard(faults, "cache_clear", cached.cache_clear)
    await awaited("call after clear", cached(3))
    return first


def _per_entry(engine: str, folder: str, url: str | None, name: str) -> dict[str, Any]:
    """The value as the ttl of one `set` on a `CacheContext` built with a ttl (so that the
    engine expires entries): refused by that `set` naming ttl, or stored and read back."""
    from twat_cache import CacheContext

    given = value(name)
    options: dict[str, Any] = {"ttl": 60, "folder_name": folder}
    if engine in _SERVER:
        options["url"] = url
    engine_name = _served(engine)
    faults: list[str] = []
    wrong: list[str] = []
    refused: BaseException | None = None

    async def use_async() -> None:
        nonlocal refused
        async with CacheContext(engine_name=engine_name, **options) as cache:
            try:
                await cache.aset("k", "v", ttl=given)
            except Exception as exc:
                refused = exc
            got = await cache.aget("k", None)
            if refused is None and got != "v" and _expects_entry("ttl", name):
                wrong.append(f"get = {got!r}")
            await cache.aclear()

    try:
        if engine in _ASYNC:
            asyncio.run(use_async())
        else:
            with CacheContext(engine_name=engine_name, **options) as cache:
                try:
                    cache.set("k", "v", ttl=given)
                except Exception as exc:
                    refused = exc
                got = cache.get("k", None)
                if refused is None and got != "v" and _expects_entry("ttl", name):
                    wrong.append(f"get = {got!r}")
                len(cache)
                cache.clear()
    except Exception as exc:
        faults.append(f"context: {exc!r}"[:200])
    if refused is not None and not faults:
        outcome = _refusal("ttl", refused)
        from twat_cache.exceptions import ConfigurationError

        outcome["clear"] = isinstance(refused, ConfigurationError) and "ttl" in str(refused)
        return outcome
    return {
        "outcome": "works",
        "faults": faults,
        "wrong": wrong,
        "cached": not wrong,
        "switched": False,
    }


# --- workers ---------------------------------------------------------------------------------


def worker(cases: list[list[Any]], url: str | None, journal: str) -> int:
    """Run `cases` ([index, engine, option, value name]) in order, appending to `journal` a
    line before each case and its result after it (unbuffered: an abort loses nothing)."""
    import warnings

    warnings.simplefilter("ignore")  # fallbacks and faults warn; the results say what happened
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for index, engine, option, name in cases:
            os.write(fd, (json.dumps(["begin", index]) + "\n").encode())
            try:
                result = run_case(engine, option, name, url, index)
            except Exception as exc:  # outside a method: the case itself failed
                result = {"outcome": "works", "faults": [f"case: {exc!r}"[:200]], "wrong": []}
                result.update(cached=True, switched=False)
            os.write(fd, (json.dumps(["end", index, result]) + "\n").encode())
    finally:
        os.close(fd)
    return len(cases)


def run_all(
    chosen: list[tuple[str, str, str]],
    url: str | None,
    *,
    root: str | None = None,
    workers: int = 2,
    timeout: float = 60,
) -> dict[int, dict[str, Any]]:
    """Every case's result, by index; cases run in `workers` processes at once (their cache
    root `root`, else this process's), and a case whose process died or hung is recorded as
    a crash (with the exit status) or a hang."""
    env = child_env(**({"TWAT_CACHE_DIR": root} if root is not None else {}))
    indexed = [[i, *case] for i, case in enumerate(chosen)]
    shares = [indexed[w::workers] for w in range(workers)]
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="twat-boundaries-") as scratch:
        pending = [
            (share, Path(scratch) / f"journal{w}") for w, share in enumerate(shares) if share
        ]
        while pending:
            running = [
                (
                    subprocess.Popen(
                        child_command(
                            NAME, "worker", {"cases": share, "url": url, "journal": str(journal)}
                        ),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        env=env,
                    ),
                    share,
                    journal,
                )
                for share, journal in pending
            ]
            pending = []
            for process, share, journal in running:
                try:
                    _, err = process.communicate(timeout=timeout)
                    hung = False
                except subprocess.TimeoutExpired:
                    process.kill()
                    _, err = process.communicate()
                    hung = True
                begun = _read_journal(journal, results)
                if begun is not None:  # died (or hung) in the middle of this case
                    results[begun] = {
                        "outcome": "hang" if hung else "crash",
                        "status": process.returncode,
                        "stderr": (err or b"").decode(errors="replace")[-600:],
                    }
                left = [case for case in share if case[0] not in results]
                if left:
                    journal.unlink(missing_ok=True)
                    pending.append((left, journal))
    return results


def _read_journal(journal: Path, results: dict[int, dict[str, Any]]) -> int | None:
    """Record the finished cases of a journal; the case begun and not finished, if any."""
    begun = None
    try:
        lines = journal.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        entry = json.loads(line)
        if entry[0] == "begin":
            begun = entry[1]
        else:
            results[entry[1]] = entry[2]
            begun = None
    return begun


# --- the scenario ----------------------------------------------------------------------------


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    rows = Rows(NAME)
    chosen = [
        c for c in cases(profile, engines, seed) if redis_url is not None or c[0] not in _SERVER
    ]
    if redis_url is None and "redis" in engines:
        for engine in sorted(_SERVER):
            rows.skip(engine, "crashes (interpreter died)", "skipped: no redis-server")
    progress(f"{NAME}: {len(chosen)} cases")
    started = time.monotonic()
    results = run_all(chosen, redis_url)
    by_engine: dict[str, list[tuple[tuple[str, str, str], dict[str, Any]]]] = {}
    for index, case in enumerate(chosen):
        by_engine.setdefault(case[0], []).append((case, results[index]))
    for engine, found in by_engine.items():
        judge(rows, engine, found)
    rows.info("all", "seconds", round(time.monotonic() - started, 2), cases=len(chosen))
    return rows.as_dicts()


def _label(case: tuple[str, str, str]) -> str:
    return f"{case[1]}={case[2]}"


def judge(
    rows: Rows, engine: str, found: list[tuple[tuple[str, str, str], dict[str, Any]]]
) -> None:
    """The figures of one engine's cases."""
    crashed = [(_label(c), r) for c, r in found if r["outcome"] in ("crash", "hang")]
    works = [(c, r) for c, r in found if r["outcome"] == "works"]
    refused = [(c, r) for c, r in found if r["outcome"] == "refused"]
    raising = [(_label(c), r["faults"]) for c, r in works if r["faults"]]
    wrong = [(_label(c), r["wrong"]) for c, r in works if r["wrong"]]
    unclear = [(_label(c), r["error"]) for c, r in refused if not r["clear"]]
    uncached = [_label(c) for c, r in works if not r["cached"]]
    switched = [(_label(c), r.get("served")) for c, r in works if r["switched"]]
    total = f"of {len(found)} cases"
    rows.judge(engine, "crashes or hangs (interpreter died)", len(crashed), ZERO,
               shown=f"{len(crashed)} {total}", cases=crashed[:20])  # fmt: skip
    rows.judge(engine, "cache methods raising", len(raising), ZERO,
               shown=f"{len(raising)} of {len(works)} working", cases=raising[:20])  # fmt: skip
    rows.judge(engine, "wrong values returned", len(wrong), ZERO,
               shown=f"{len(wrong)} of {len(works)} working", cases=wrong[:20])  # fmt: skip
    rows.judge(engine, "refusals not naming the option", len(unclear), ZERO,
               shown=f"{len(unclear)} of {len(refused)} refused", cases=unclear[:20])  # fmt: skip
    rows.judge(engine, "accepted values that never cache", len(uncached), ZERO,
               shown=f"{len(uncached)} of {len(works)} working", cases=uncached[:20])  # fmt: skip
    rows.judge(engine, "accepted values served by another engine", len(switched), ZERO,
               shown=f"{len(switched)} of {len(works)} working", cases=switched[:20])  # fmt: skip
