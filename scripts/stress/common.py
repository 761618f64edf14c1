"""Shared pieces of the stress harness: profiles, result rows, engines, self-checking values,
child processes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The engines every scenario runs on unless it does not apply; "memory" names the
#: in-process chain (rows of the collision and growth scenarios).
PERSISTENT = ("diskcache", "joblib", "klepto", "redis")
ENGINES = (*PERSISTENT, "memory")

SCRIPTS = Path(__file__).resolve().parents[1]
RESULT_MARK = "@@stress-result@@"


# --- profiles ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """The sizes of every scenario. `FULL` is the issue's; `QUICK` runs in seconds."""

    name: str
    # 1 concurrent integrity
    processes: int
    threads: int
    operations: int
    # 2 crash consistency
    crash_rounds: int
    # 3 corruption
    corrupted: int
    # 4 tampering
    forged: int
    # 5 key collisions (per kind of key)
    pairs: int
    # 6 bounded growth: unique keys per decorator, and the wall-clock budget of one
    # decorator (a decorator too slow for the keys asked stops there and says so)
    growth_keys: int
    growth_budget: float
    # 7 Redis outage: calls per kind of outage, spread over this many seconds; the circuit
    # breaker's cool-down (None: the default, 5 s)
    outage_calls: int
    outage_seconds: float
    outage_cooldown: float | None
    # 8 stampede
    stampede_workers: int
    stampede_rounds: int


FULL = Profile(
    name="full",
    processes=8,
    threads=4,
    operations=2_000,
    crash_rounds=50,
    corrupted=100,
    forged=1_000,
    pairs=10_000,
    growth_keys=1_000_000,
    growth_budget=2400.0,
    outage_calls=10_000,
    outage_seconds=15.0,
    outage_cooldown=None,
    stampede_workers=64,
    stampede_rounds=100,
)

QUICK = Profile(
    name="quick",
    processes=2,
    threads=2,
    operations=200,
    crash_rounds=5,
    corrupted=20,
    forged=100,
    pairs=1_000,
    growth_keys=20_000,
    growth_budget=2.0,
    outage_calls=1_000,
    outage_seconds=2.0,
    outage_cooldown=1.0,
    stampede_workers=64,
    stampede_rounds=5,
)

PROFILES = {p.name: p for p in (FULL, QUICK)}


# --- rows ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One figure: what was measured on which engine, against which target.

    `status` is PASS or MISS for a judged figure, INFO for a figure shown without a target,
    SKIP for a row that could not run (`note` says why).
    """

    scenario: str
    engine: str
    figure: str
    measured: Any
    shown: str
    target: str
    status: str
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    text: str
    met: Callable[[Any], bool]


def exactly(expected: Any, text: str | None = None) -> Target:
    return Target(text or f"= {expected}", lambda value: value == expected)


def at_most(limit: float, text: str) -> Target:
    return Target(text, lambda value: value is not None and value <= limit)


ZERO = exactly(0)
ALL = Target("100%", lambda value: value == 1.0)
YES = Target("yes", lambda value: value is True)


class Rows:
    """The rows one scenario produces."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.rows: list[Row] = []

    def judge(
        self,
        engine: str,
        figure: str,
        value: Any,
        target: Target,
        *,
        shown: str | None = None,
        note: str = "",
        **details: Any,
    ) -> Row:
        status = "PASS" if target.met(value) else "MISS"
        row = Row(
            self.scenario,
            engine,
            figure,
            value,
            shown or _show(value),
            target.text,
            status,
            note,
            details,
        )
        self.rows.append(row)
        return row

    def info(
        self,
        engine: str,
        figure: str,
        value: Any,
        *,
        shown: str | None = None,
        note: str = "",
        **details: Any,
    ) -> Row:
        row = Row(
            self.scenario, engine, figure, value, shown or _show(value), "-", "INFO", note, details
        )
        self.rows.append(row)
        return row

    def skip(self, engine: str, figure: str, reason: str) -> Row:
        row = Row(self.scenario, engine, figure, None, "-", "-", "SKIP", reason)
        self.rows.append(row)
        return row

    def as_dicts(self) -> list[dict[str, Any]]:
        return [row.as_dict() for row in self.rows]


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def percent(good: int, total: int) -> tuple[float, str]:
    """A fraction and how it is shown: ``100% (400/400)``."""
    fraction = good / total if total else 0.0
    text = "100%" if good == total else f"{100 * fraction:.2f}%"
    return fraction, f"{text} ({good:,}/{total:,})"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def size(count: float) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of `values`, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- engines -------------------------------------------------------------------------------


def decorator(engine: str, folder: str, url: str | None = None, **options: Any) -> Any:
    """The decorator a user would write to cache on `engine`, with its defaults otherwise:
    bcache for diskcache and klepto, fcache for joblib, ucache(url=...) for redis."""
    from twat_cache import bcache, fcache, ucache

    if engine in ("diskcache", "klepto"):
        return bcache(folder_name=folder, cache_engine=engine, **options)
    if engine == "joblib":
        return fcache(folder_name=folder, cache_engine=engine, **options)
    if engine == "redis":
        if url is None:
            raise RuntimeError("the redis engine needs the URL of a running server")
        return ucache(url=url, folder_name=folder, **options)
    raise ValueError(f"not a persistent engine: {engine}")


def cached(engine: str, folder: str, func: Any, url: str | None = None, **options: Any) -> Any:
    """`func` cached on `engine`, checked to be served by it (never a silent fallback)."""
    wrapped = decorator(engine, folder, url, **options)(func)
    served = wrapped.cache_engine.name
    if served != engine:
        raise RuntimeError(f"asked for the {engine} engine, got {served}: it is unavailable")
    return wrapped


def open_engine(engine: str, folder: str, url: str | None = None, **options: Any) -> Any:
    """The engine instance the decorator for `engine` builds (its default configuration)."""

    def unused(*args: Any) -> None:
        return None

    return cached(engine, folder, unused, url, **options).cache_engine


def redis_key(folder: str, key: str, version: int = 0) -> str:
    """Where the redis engine keeps `key` of the cache named `folder` (its documented
    layout ``twat_cache:{<name>}:<version>:<key>``, the name encoded as the engine does)."""
    from twat_cache.engines.redis import key_space

    return f"twat_cache:{{{key_space(folder)}}}:{version}:{key}"


def root() -> Path:
    """The cache root of this process (the harness gives each scenario its own)."""
    return Path(os.environ["TWAT_CACHE_DIR"])


# --- self-checking values ----------------------------------------------------------------


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    """A size between `low` and `high`, uniform in log scale: as many values of 100 B-1 KB as
    of 30-300 KB, so both small (in-database) and large (one file each) entries are hit."""
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def make_value(key: str, size: int, rng: random.Random) -> dict[str, Any]:
    """A value for `key` that carries its own checksum (and its key)."""
    blob = rng.randbytes(size)
    nonce = rng.getrandbits(63)
    return {"key": key, "nonce": nonce, "blob": blob, "sha256": _digest(key, nonce, blob)}


def _digest(key: str, nonce: int, blob: bytes) -> str:
    return hashlib.sha256(key.encode() + nonce.to_bytes(8, "big") + blob).hexdigest()


def check_value(key: str, value: Any) -> str:
    """ "ok", "other-key" (a well-formed value of another key) or "corrupt"."""
    try:
        good = value["sha256"] == _digest(value["key"], value["nonce"], value["blob"])
    except Exception:
        return "corrupt"
    if not good:
        return "corrupt"
    return "ok" if value["key"] == key else "other-key"


# --- child processes -----------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(SCRIPTS), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def child_command(module: str, function: str, arguments: dict[str, Any]) -> list[str]:
    """The command running `stress.<module>.<function>(**arguments)` in a new interpreter."""
    return [sys.executable, "-m", "stress._child", module, function, json.dumps(arguments)]


def spawn(module: str, function: str, arguments: dict[str, Any], **popen: Any) -> Any:
    """Start `stress.<module>.<function>(**arguments)` in a child process (a Popen)."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    popen.setdefault("env", child_env())
    return subprocess.Popen(
        child_command(module, function, arguments), text=True, stdin=subprocess.DEVNULL, **popen
    )


def result_of(process: Any, timeout: float) -> Any:
    """Wait for a child started by `spawn` and return what its function returned."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise RuntimeError(f"a child process ran past {timeout:.0f} s:\n{err[-3000:]}") from None
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    raise RuntimeError(
        f"a child process exited {process.returncode} with no result:\n{err[-3000:]}"
    )


def run_child(module: str, function: str, arguments: dict[str, Any], timeout: float) -> Any:
    return result_of(spawn(module, function, arguments), timeout)


def cli_command(*args: str) -> list[str]:
    """The `twat-cache` command line of this interpreter's environment."""
    script = Path(sys.executable).with_name("twat-cache")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "twat_cache", *args]


# --- small tools -----------------------------------------------------------------------------


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def progress(message: str) -> None:
    """A progress line on stderr (the parent shows it when asked to be verbose)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def selected(engines: list[str], candidates: tuple[str, ...] = PERSISTENT) -> list[str]:
    return [engine for engine in candidates if engine in engines]


def per_engine(
    scenario: str, engines: list[str], work: Callable[[str, Rows], None], *, parallel: bool
) -> Rows:
    """Run `work(engine, rows)` for each engine, in engine order; with `parallel` (the quick
    profile: most of its time is starting processes) all engines at once, in threads. An
    exception in one engine's work is reported as that engine's failed row."""
    import threading

    parts = {engine: Rows(scenario) for engine in engines}

    def guarded(engine: str) -> None:
        try:
            work(engine, parts[engine])
        except Exception as exc:
            import traceback

            parts[engine].rows.append(
                Row(
                    scenario,
                    engine,
                    "scenario ran",
                    None,
                    f"failed: {exc!r}"[:200],
                    "runs",
                    "MISS",
                    details={"traceback": traceback.format_exc()[-4000:]},
                )
            )

    if parallel:
        threads = [threading.Thread(target=guarded, args=(e,)) for e in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for engine in engines:
            guarded(engine)
    merged = Rows(scenario)
    for engine in engines:
        merged.rows.extend(parts[engine].rows)
    return merged
