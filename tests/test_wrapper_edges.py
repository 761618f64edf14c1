"""The generated wrapper at its edges: methods, generators and coroutines behind a
`functools.wraps` decorator, `ignore=` through a `*args, **kwargs` wrapper, refusals that
say what they saw, and results with a permissive `__getattr__` (issue 12, from a hostile
review)."""

from __future__ import annotations

import asyncio
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

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
