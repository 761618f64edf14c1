"""Differential testing of the caches against the uncached function: engines and runner."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, example, given, seed, settings

from _reveal import ASYNC, SYNC
from _scripts import Script, pairs_script, scripts, show
from twat_cache import acache, bcache, fcache, mcache, ucache
from twat_cache.exceptions import CacheFaultWarning

__all__ = [
    "ENGINES",
    "Engine",
    "Mismatch",
    "Subject",
    "Tally",
    "check",
    "difference",
]


# --- engines -------------------------------------------------------------------------------------

Decorate = Callable[[Callable[..., Any]], Any]


@dataclass(frozen=True)
class Engine:
    """One way of caching a function: `make(folder, url)` returns the decorator."""

    key: str  # the test id
    label: str  # the row label
    group: str  # the harness's engine: memory, diskcache, joblib, klepto, redis
    make: Callable[[str, str | None], Decorate]
    is_async: bool = False
    expect: str | None = None  # the engine that must serve it (no silent fallback)

    @property
    def server(self) -> bool:
        return self.group == "redis"


ENGINES: list[Engine] = [
    Engine("mcache", "mcache", "memory", lambda folder, url: mcache),
    Engine("mcache-unbounded", "mcache(maxsize=None)", "memory", lambda f, u: mcache(maxsize=None)),
    Engine("mcache-typed", "mcache(typed=True)", "memory", lambda f, u: mcache(typed=True)),
    Engine("ucache", "ucache", "memory", lambda folder, url: ucache),
    Engine("acache", "acache", "memory", lambda folder, url: acache, is_async=True),
    Engine(
        "bcache",
        "bcache [diskcache]",
        "diskcache",
        lambda folder, url: bcache(folder_name=folder),
        expect="diskcache",
    ),
    Engine(
        "ucache-folder",
        "ucache(folder_name) [diskcache]",
        "diskcache",
        lambda folder, url: ucache(folder_name=folder),
        expect="diskcache",
    ),
    Engine(
        "fcache",
        "fcache [joblib]",
        "joblib",
        lambda folder, url: fcache(folder_name=folder),
        expect="joblib",
    ),
    Engine(
        "klepto",
        "bcache [klepto]",
        "klepto",
        lambda folder, url: bcache(folder_name=folder, cache_engine="klepto"),
        expect="klepto",
    ),
    Engine(
        "redis",
        "ucache(url) [redis]",
        "redis",
        lambda folder, url: ucache(url=url, folder_name=folder),
        expect="redis",
    ),
    Engine(
        "redis-async",
        "acache(url) [redis, async]",
        "redis",
        lambda folder, url: acache(url=url, folder_name=folder),
        is_async=True,
        expect="redis",
    ),
]


# --- the runner ----------------------------------------------------------------------------------


class Mismatch(AssertionError):
    """A cached call returned something else than the uncached function."""


@dataclass
class Tally:
    """What one engine did over a run: calls made, hits, wrong results, refused keys."""

    examples: int = 0
    calls: int = 0
    hits: int = 0
    mismatches: int = 0
    faults: int = 0
    samples: list[str] = field(default_factory=list)  # the first wrong results
    refused: list[str] = field(default_factory=list)  # the first refused keys


@contextmanager
def _quiet(strict: bool) -> Iterator[None]:
    """Strict, a CacheFaultWarning stays an error (pytest's filterwarnings); else it is
    counted by `Subject._check_key` and silenced."""
    if strict:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheFaultWarning)
        yield


def _raised(exc: Exception, strict: bool) -> Any:
    """A call that raised: strict, the exception goes on; else it is a wrong result."""
    if strict:
        raise exc
    return ("raised", f"{type(exc).__name__}: {exc}")


class Subject:
    """The two revealing functions cached by one engine, each in a folder of its own."""

    def __init__(self, engine: Engine, url: str | None = None, folder: str = "differential"):
        self.engine = engine
        self.raw = ASYNC if engine.is_async else SYNC
        self.cached: dict[str, Any] = {}
        for form, func in self.raw.items():
            cached = engine.make(f"{folder}-{engine.key}-{form}", url)(func)
            served = cached.cache_engine.name
            if engine.expect is not None and served != engine.expect:
                raise RuntimeError(f"{engine.label} is served by {served}, not {engine.expect}")
            self.cached[form] = cached

    def hits(self) -> int:
        return sum(f.cache_info().hits for f in self.cached.values())

    def clear(self) -> None:
        for cached in self.cached.values():
            cached.cache_clear()

    def close(self) -> None:
        for cached in self.cached.values():
            cached.cache_engine.close()

    def run(self, script: Script, tally: Tally, strict: bool) -> None:
        """Make the script's calls; on a wrong result raise `Mismatch` (strict) or count it."""
        tally.examples += 1
        outcomes: list[Any] = [None] * len(script.calls)
        steps = list(enumerate(script.order))
        if self.engine.is_async:
            # Two event loops, one after the other, as two asyncio.run() of a program.
            half = (len(steps) + 1) // 2
            for part in (steps[:half], steps[half:]):
                asyncio.run(self._arun(script, part, outcomes, tally, strict))
            return
        for step, index in steps:
            function, args, kwargs = script.calls[index]
            expected = self.raw[function](*args, **kwargs)
            self._check_key(self.cached[function], args, kwargs, tally)
            try:
                with _quiet(strict):
                    got = self.cached[function](*args, **kwargs)
            except Exception as exc:
                got = _raised(exc, strict)
            self._judge(script, step, index, expected, got, outcomes, tally, strict)

    async def _arun(
        self,
        script: Script,
        steps: list[tuple[int, int]],
        outcomes: list[Any],
        tally: Tally,
        strict: bool,
    ) -> None:
        for step, index in steps:
            function, args, kwargs = script.calls[index]
            expected = await self.raw[function](*args, **kwargs)
            self._check_key(self.cached[function], args, kwargs, tally)
            try:
                with _quiet(strict):
                    got = await self.cached[function](*args, **kwargs)
            except Exception as exc:
                got = _raised(exc, strict)
            self._judge(script, step, index, expected, got, outcomes, tally, strict)

    def _check_key(
        self, cached: Any, args: tuple[Any, ...], kwargs: dict[str, Any], tally: Tally
    ) -> None:
        """Count the call, and a fault if the cache refuses its key (then the call runs
        uncached: right, but not cached)."""
        tally.calls += 1
        try:
            cached.cache_key(*args, **kwargs)
        except Exception as exc:
            tally.faults += 1
            if len(tally.refused) < 5:
                tally.refused.append(f"{type(exc).__name__}: {exc}"[:300])

    def _judge(
        self,
        script: Script,
        step: int,
        index: int,
        expected: Any,
        got: Any,
        outcomes: list[Any],
        tally: Tally,
        strict: bool,
    ) -> None:
        outcomes[index] = expected
        if got == expected and repr(got) == repr(expected):
            return
        tally.mismatches += 1
        source = next(
            (
                f"\n  which is what call #{i} returns: {show(script.calls[i])}"
                for i, o in enumerate(outcomes)
                if o is not None and o == got and i != index
            ),
            "",
        )
        wanted, served = difference(expected, got)
        message = (
            f"{self.engine.label} returned a wrong result at step {step} (call #{index}):\n"
            f"  call:     {show(script.calls[index])}\n"
            f"  expected: {_short(expected)}\n"
            f"  got:      {_short(got)}{source}\n"
            f"  it differs in {_short(wanted, 200)} against {_short(served, 200)}"
        )
        if strict:
            raise Mismatch(message)
        if len(tally.samples) < 10:
            tally.samples.append(message)


def _is_node(value: Any) -> bool:
    return type(value) is tuple and bool(value) and type(value[0]) is str and "." in value[0]


def difference(expected: Any, got: Any) -> tuple[Any, Any]:
    """The smallest nodes of two reveals that hold all their differences: the values a
    cache confused."""
    found = (expected, got)
    while type(expected) is tuple and type(got) is tuple and len(expected) == len(got):
        differ = [i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b]
        if len(differ) != 1:
            break
        expected, got = expected[differ[0]], got[differ[0]]
        if _is_node(expected) and _is_node(got):
            found = (expected, got)
    return found


def _short(value: Any, width: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def check(
    engine: Engine,
    url: str | None,
    examples: int,
    *,
    strict: bool,
    random_seed: int | None = None,
    entries: int = 5,
) -> Tally:
    """Run `pairs_script()` then `examples` generated scripts through `engine`. Strict:
    derandomized, and the first wrong result raises `Mismatch` (shrunk by hypothesis).
    Else: seeded by `random_seed`, every wrong result and refused key counted."""
    tally = Tally()
    subject = Subject(engine, url)
    phases = (
        (Phase.explicit, Phase.generate, Phase.shrink)
        if strict
        else (Phase.explicit, Phase.generate)
    )
    profile = settings(
        max_examples=examples,
        derandomize=strict,
        database=None,
        deadline=None,
        phases=phases,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )

    @profile
    @example(pairs_script())
    @given(scripts(entries))
    def run(script: Script) -> None:
        try:
            subject.run(script, tally, strict)
        finally:
            tally.hits += subject.hits()
            subject.clear()

    if random_seed is not None and not strict:
        run = seed(random_seed)(run)
    try:
        run()
    finally:
        subject.close()
    return tally
