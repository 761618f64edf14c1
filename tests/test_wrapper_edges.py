"""The generated wrapper at its edges: methods, generators and coroutines behind a
`functools.wraps` decorator, `ignore=` through a `*args, **kwargs` wrapper, refusals that
say what they saw, and results with a permissive `__getattr__` (issue 12, from a hostile
review)."""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import shutil
import tempfile
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import twat_cache
from twat_cache import acache, bcache, mcache
from twat_cache.exceptions import CacheFaultWarning, ConfigurationError

DECORATORS = {"mcache": mcache, "bcache": bcache("wrapper-edges")}


def logged(func: Callable[..., Any]) -> Callable[..., Any]:
    """The most common `functools.wraps` decorator: a `*args, **kwargs` wrapper."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def quietly(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `func` and require that it warns nothing (a cache fault is a warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func(*args, **kwargs)
    assert [str(w.message) for w in caught] == []
    return result


# --- 05: a method behind a *args/**kwargs wraps decorator -----------------------------------


class Account:
    """Equal when the ids are: two instances of one account with different balances."""

    def __init__(self, id: int, balance: int) -> None:
        self.id = id
        self.balance = balance
        self.calls = 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Account) and self.id == other.id

    def __hash__(self) -> int:
        return hash(self.id)

    @mcache
    @logged
    def report(self, currency: str) -> str:
        self.calls += 1
        return f"{self.balance} {currency}"


def test_a_method_behind_a_wraps_decorator_keys_self_by_identity() -> None:
    before = Account(7, 100)
    after = Account(7, 250)  # the same account, a new balance
    assert before == after
    assert (before.report("EUR"), after.report("EUR")) == ("100 EUR", "250 EUR")
    assert (before.report("EUR"), after.report("EUR")) == ("100 EUR", "250 EUR")
    assert (before.calls, after.calls) == (1, 1)


# --- 10: generators and coroutines behind a sync wraps wrapper ------------------------------


def test_a_generator_behind_a_wraps_wrapper_is_never_stored() -> None:
    @mcache
    @logged
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    with pytest.warns(CacheFaultWarning, match="generator") as record:
        results = [list(numbers(3)) for _ in range(3)]
    assert results == [[0, 1, 2]] * 3
    assert len(record) == 1, [str(w.message) for w in record]
    assert numbers.cache_info().currsize == 0


def test_a_coroutine_returned_by_a_sync_wraps_wrapper_is_never_stored() -> None:
    calls: list[int] = []

    async def fetch(x: int) -> int:
        calls.append(x)
        return 2 * x

    cached = mcache(logged(fetch))

    async def main() -> list[int]:
        return [await cached(1), await cached(1), await cached(1)]

    with pytest.warns(CacheFaultWarning, match="coroutine") as record:
        results = asyncio.run(main())
    assert results == [2, 2, 2]
    assert calls == [1, 1, 1]
    assert len(record) == 1, [str(w.message) for w in record]
    assert cached.cache_info().currsize == 0


# --- 12: ignore= behind a *args/**kwargs wraps decorator ------------------------------------


class Session:
    """A client passed along: picklable, so the persistent key can hold it when it must."""

    def __init__(self, name: str) -> None:
        self.name = name


def _decorate(decorator: str, **options: Any) -> Callable[[Any], Any]:
    if decorator == "mcache":
        return mcache(**options)
    return bcache("wrapper-edges", **options)


def _loader(decorator: str, calls: list[str], ignore: tuple[str, ...]) -> Any:
    @_decorate(decorator, ignore=ignore)
    @logged
    def load(path: str, session: Session) -> str:
        calls.append(path)
        return f"{session.name}: {path}"

    return load


@pytest.mark.parametrize("decorator", ["mcache", "bcache"])
@pytest.mark.parametrize("name", ["sesion", "verbose"])
def test_ignore_names_a_parameter_of_the_wrapper_or_of_what_it_wraps(
    decorator: str, name: str
) -> None:
    with pytest.raises(ConfigurationError, match=name):
        _loader(decorator, [], (name,))


@pytest.mark.parametrize("decorator", ["mcache", "bcache"])
def test_ignore_through_a_wraps_wrapper_leaves_out_a_keyword_argument(decorator: str) -> None:
    calls: list[str] = []
    load = _loader(decorator, calls, ("session",))
    assert quietly(load, "a.txt", session=Session("one")) == "one: a.txt"
    assert quietly(load, "a.txt", session=Session("two")) == "one: a.txt"  # ignored: a hit
    assert quietly(load, "b.txt", session=Session("two")) == "two: b.txt"
    assert calls == ["a.txt", "b.txt"]
    assert load.cache_info().hits == 1


@pytest.mark.parametrize("decorator", ["mcache", "bcache"])
def test_ignore_through_a_wraps_wrapper_keeps_a_positional_argument(decorator: str) -> None:
    """Documented (docs/keys.md, ignore=): the wrapper receives positional arguments without
    their names, so one passed positionally stays in the key: a miss, never a shared entry."""
    calls: list[str] = []
    load = _loader(decorator, calls, ("session",))
    one, two = Session("one"), Session("two")
    assert quietly(load, "a.txt", one) == "one: a.txt"
    assert quietly(load, "a.txt", two) == "two: a.txt"
    assert quietly(load, "a.txt", one) == "one: a.txt"
    assert calls == ["a.txt", "a.txt"]
    assert load.cache_info().misses == 2


# --- 14a: acache over a plain def wrapping an async def -------------------------------------


def test_acache_over_a_sync_wrapper_of_an_async_def_says_what_it_is() -> None:
    async def fetch(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="plain def wrapping the async def") as info:
        acache(logged(fetch))
    assert "is not one" not in str(info.value)


# --- 16: results answering attributes from their items --------------------------------------


class AttrDict(dict[str, Any]):
    """The ubiquitous attribute dictionary: a missing attribute is a KeyError."""

    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__


@pytest.mark.parametrize("decorator", ["mcache", "bcache"])
def test_a_result_with_a_dict_style_getattr_is_cached(decorator: str) -> None:
    calls: list[str] = []

    @_decorate(decorator)
    def settings(name: str) -> AttrDict:
        calls.append(name)
        return AttrDict(name=name, debug=False)

    results = [quietly(settings, "app") for _ in range(3)]
    assert results == [{"name": "app", "debug": False}] * 3
    assert all(type(r) is AttrDict for r in results)
    assert calls == ["app"]
    assert settings.cache_info().hits == 2


# --- second review 03: an async stampede never shares what can be consumed once -------------


async def _doubled(n: int) -> int:
    return n * 2


def _consumable(kind: str, n: int) -> Any:
    """A result consumed once: a generator, or a coroutine for the caller to await."""
    return (i for i in range(n)) if kind == "generator" else _doubled(n)


async def _consume(kind: str, result: Any) -> Any:
    return list(result) if kind == "generator" else await result


@pytest.fixture(params=["acache", pytest.param("redis", marks=pytest.mark.redis)])
def stampede(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`stampede(kind)`: two tasks await one cold key of an acache'd function returning a
    consumable `kind`, the second while the first computes it; returns what each got
    (consumed) and how many times the function ran. In memory the wrapper reads without
    awaiting, so the second task joins the flight at once; on Redis its read is awaited, so
    the computation is held until both tasks have read the key (the later one then joins
    the flight before the event loop runs anything else)."""
    options: dict[str, Any] = {}
    readers: set[Any] = set()
    gates: list[asyncio.Event] = []
    if request.param == "redis":
        from twat_cache.engines.redis import RedisEngine

        options = {"url": request.getfixturevalue("redis_url"), "folder_name": "stampede"}
        real_aget = RedisEngine.aget

        async def aget(self: Any, key: Any, default: Any = None) -> Any:
            value = await real_aget(self, key, default)
            readers.add(asyncio.current_task())
            if len(readers) >= 2:
                gates[0].set()
            return value

        monkeypatch.setattr(RedisEngine, "aget", aget)

    def run(kind: str) -> tuple[list[Any], int]:
        calls: list[int] = []

        @acache(**options)
        async def produce(n: int) -> Any:
            calls.append(n)
            await gates[0].wait()
            return _consumable(kind, n)

        async def release() -> None:
            if not options:  # in memory: both tasks are in by now
                gates[0].set()

        async def main() -> list[Any]:
            gates[:] = [asyncio.Event()]
            readers.clear()
            first, second, _ = await asyncio.gather(produce(3), produce(3), release())
            try:
                assert first is not second, "both tasks got the one object the leader computed"
                return [await _consume(kind, first), await _consume(kind, second)]
            finally:
                first.close()  # a coroutine never awaited would warn when collected
                second.close()

        try:
            with pytest.warns(CacheFaultWarning, match="consumed once|awaitable"):
                return asyncio.run(main()), len(calls)
        finally:
            produce.cache_engine.close()

    return run


@pytest.mark.parametrize("kind", ["generator", "coroutine"])
def test_an_async_stampede_never_shares_a_consumable_result(stampede: Any, kind: str) -> None:
    results, calls = stampede(kind)
    expected = [0, 1, 2] if kind == "generator" else 6
    assert results == [expected, expected]
    assert calls == 2, "each task computes its own consumable result"


# --- second review 04: results holding something consumed once -----------------------------


def test_a_tuple_result_holding_a_csv_reader_is_never_stored() -> None:
    @mcache
    def read(text: str) -> tuple[list[str], Any]:
        reader = csv.reader(io.StringIO(text))
        return next(reader), reader

    with pytest.warns(CacheFaultWarning, match="reader, consumed once") as record:
        rows = [(header, list(reader)) for header, reader in map(read, ["a,b\n1,2\n"] * 3)]
    assert rows == [(["a", "b"], [["1", "2"]])] * 3, "a later caller got the exhausted reader"
    assert len(record) == 1, [str(w.message) for w in record]
    assert read.cache_info().currsize == 0


def test_an_open_file_result_is_never_stored(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("a\nb\n")

    @mcache
    def opened(name: str) -> Any:
        return open(name)  # the caller reads and closes it

    with pytest.warns(CacheFaultWarning, match="consumed once"):
        files = [opened(str(path)) for _ in range(2)]
    try:
        assert files[0] is not files[1]
        assert [f.read() for f in files] == ["a\nb\n"] * 2
    finally:
        for f in files:
            f.close()
    assert opened.cache_info().currsize == 0


# --- second review 14: async generators returned as results ---------------------------------


async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def _drain(stream: AsyncIterator[int]) -> list[int]:
    return [i async for i in stream]


@pytest.mark.parametrize("decorator", ["mcache", "acache"])
def test_an_async_generator_result_is_never_stored(decorator: str) -> None:
    calls: list[int] = []

    if decorator == "mcache":

        @mcache
        def stream(n: int) -> AsyncIterator[int]:
            calls.append(n)
            return _numbers(n)

        async def get(n: int) -> AsyncIterator[int]:
            return stream(n)
    else:

        @acache
        async def stream(n: int) -> AsyncIterator[int]:
            calls.append(n)
            return _numbers(n)

        async def get(n: int) -> AsyncIterator[int]:
            return await stream(n)

    async def main() -> list[list[int]]:
        return [await _drain(await get(3)) for _ in range(3)]

    with pytest.warns(CacheFaultWarning, match="async_generator, consumed once") as record:
        results = asyncio.run(main())
    assert results == [[0, 1, 2]] * 3, "a later caller got the exhausted generator"
    assert calls == [3, 3, 3]
    assert len(record) == 1, [str(w.message) for w in record]
    assert stream.cache_info().currsize == 0


# --- third round: temporary files and iterators inside lists and dicts ---------------------


def test_a_temporary_file_result_is_never_stored() -> None:
    # NamedTemporaryFile returns a wrapper that is neither an IOBase nor an iterator type.
    @mcache
    def scratch(text: str) -> Any:
        handle = tempfile.NamedTemporaryFile("w+")  # noqa: SIM115  # the caller closes it
        handle.write(text)
        handle.seek(0)
        return handle

    with pytest.warns(CacheFaultWarning, match="consumed once"):
        handles = [scratch("xy") for _ in range(2)]
    try:
        assert handles[0] is not handles[1]
        assert [h.read() for h in handles] == ["xy", "xy"]
    finally:
        for handle in handles:
            handle.close()


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda text: {"rows": map(str.upper, text)}, id="dict"),
        pytest.param(lambda text: [iter(text.upper())], id="list"),
    ],
)
def test_an_iterator_inside_a_small_list_or_dict_result_is_never_stored(
    shape: Callable[[str], Any],
) -> None:
    @mcache
    def build(text: str) -> Any:
        return shape(text)

    def rows(result: Any) -> list[str]:
        return list(result["rows"] if isinstance(result, dict) else result[0])

    with pytest.warns(CacheFaultWarning, match="consumed once"):
        got = [rows(build("ab")) for _ in range(3)]
    assert got == [["A", "B"]] * 3, "a later caller got the exhausted iterator"
    assert build.cache_info().currsize == 0


# --- statistics of a cache whose folder was deleted ----------------------------------------


def test_statistics_survive_a_deleted_folder() -> None:
    # diskcache opens one connection per thread: a new thread cannot open a deleted
    # database. get_stats() reads every live cache of the process: one broken folder must
    # not fail it (it did in CI, through a cache a finished test left alive).
    @bcache("doomed")
    def doomed(x: int) -> int:
        return x

    try:
        assert doomed(1) == 1
        shutil.rmtree(doomed.cache_engine.directory)
        seen: list[Any] = []
        worker = threading.Thread(target=lambda: seen.append(doomed.cache_info()))
        worker.start()
        worker.join()
        assert seen[0].currsize == 0  # a deleted folder is an empty cache, not an exception
        assert seen[0].misses == 1
        assert doomed.cache_name in twat_cache.get_stats()
        assert doomed(2) == 2  # and it caches again, the folder recreated
        assert doomed(2) == 2
        assert doomed.cache_info().hits == 1
    finally:
        doomed.cache_engine.close()


def test_acache_refuses_a_plain_def_whose_wrapped_chain_loops() -> None:
    def loops(x: int) -> int:
        return x

    loops.__wrapped__ = loops  # type: ignore[attr-defined]  # a chain inspect.unwrap refuses
    with pytest.raises(ConfigurationError, match="is not one"):
        acache(loops)
