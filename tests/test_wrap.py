"""The decorators and the generated wrapper on the default memory chain."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import itertools
import operator
import time
import types
import typing
import weakref
from typing import Any

import pytest

from _support import MEMORY_ENGINES, stampede_on_one_key
from twat_cache import CacheInfo, ConfigurationError, acache, mcache
from twat_cache.engines.base import ALL_POLICIES, MISS, BaseEngine, Capabilities
from twat_cache.engines.manager import get_manager
from twat_cache.exceptions import CacheFaultWarning
from twat_cache.logging import logger


@pytest.fixture(params=MEMORY_ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- decorator forms ----------------------------------------------------------------------


def test_mcache_bare_and_called() -> None:
    calls: list[int] = []

    @mcache
    def bare(x: int) -> int:
        calls.append(x)
        return x + 1

    @mcache()
    def empty_call(x: int) -> int:
        calls.append(x)
        return x + 2

    @mcache(maxsize=8)
    def with_options(x: int) -> int:
        calls.append(x)
        return x + 3

    assert [bare(1), bare(1), empty_call(1), empty_call(1), with_options(1), with_options(1)] == [
        2,
        2,
        3,
        3,
        4,
        4,
    ]
    assert calls == [1, 1, 1]
    assert with_options.cache_info().maxsize == 8


def test_acache_bare_and_called() -> None:
    calls: list[int] = []

    @acache
    async def bare(x: int) -> int:
        calls.append(x)
        return x + 1

    @acache(maxsize=8)
    async def with_options(x: int) -> int:
        calls.append(x)
        return x + 3

    async def main() -> list[int]:
        return [await bare(1), await bare(1), await with_options(1), await with_options(1)]

    assert asyncio.run(main()) == [2, 2, 4, 4]
    assert calls == [1, 1]
    assert inspect.iscoroutinefunction(bare)
    assert with_options.cache_info() == CacheInfo(hits=1, misses=1, maxsize=8, currsize=1)


@pytest.mark.parametrize("decorator", [mcache, acache])
def test_positional_option_is_a_type_error(decorator: Any) -> None:
    with pytest.raises(TypeError, match="keyword options only"):
        decorator(128)


def test_acache_refuses_a_sync_function() -> None:
    def sync(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="async def"):
        acache(sync)
    with pytest.raises(ConfigurationError):
        acache(maxsize=3)(sync)


@pytest.mark.parametrize("decorator", [mcache, acache, mcache(maxsize=4), acache(ttl=5)])
def test_generator_functions_are_refused(decorator: Any) -> None:
    def gen(n: int) -> Any:
        yield from range(n)

    async def agen(n: int) -> Any:
        for i in range(n):
            yield i

    with pytest.raises(ConfigurationError, match="generator"):
        decorator(gen)
    with pytest.raises(ConfigurationError, match="generator"):
        decorator(agen)


# --- attributes ---------------------------------------------------------------------------


def test_cache_info_over_a_scripted_sequence(engine: str) -> None:
    @mcache(cache_engine=engine, maxsize=10)
    def f(x: int) -> int:
        return x * 2

    assert f.cache_info() == CacheInfo(hits=0, misses=0, maxsize=10, currsize=0)
    f(1)
    assert f.cache_info() == CacheInfo(hits=0, misses=1, maxsize=10, currsize=1)
    f(1)
    f(2)
    f(1)
    f(3)
    f(2)
    assert f.cache_info() == CacheInfo(hits=3, misses=3, maxsize=10, currsize=3)
    assert isinstance(f.cache_info(), CacheInfo)


def test_cache_clear_resets_entries_and_counters(engine: str) -> None:
    calls: list[int] = []

    @mcache(cache_engine=engine)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1)
    f(1)
    f(2)
    f.cache_clear()
    assert f.cache_info() == CacheInfo(hits=0, misses=0, maxsize=1024, currsize=0)
    f(1)
    assert calls == [1, 2, 1]
    assert f.cache_info() == CacheInfo(hits=0, misses=1, maxsize=1024, currsize=1)


def test_cache_delete(engine: str) -> None:
    calls: list[tuple[int, int]] = []

    @mcache(cache_engine=engine)
    def f(a: int, b: int = 5) -> int:
        calls.append((a, b))
        return a + b

    f(1)
    f(2)
    assert f.cache_delete(1) is True
    assert f.cache_delete(1) is False
    assert f.cache_delete(1, b=5) is False
    assert f.cache_info().currsize == 1
    f(2)  # untouched entry still a hit
    f(1)  # deleted entry computed again
    assert calls == [(1, 5), (2, 5), (1, 5)]
    # deleting by an equivalent spelling of the call deletes the same entry
    assert f.cache_delete(a=1, b=5) is True


def test_cache_key_equal_for_equivalent_calls() -> None:
    @mcache
    def f(a: int, b: int = 2, *, c: str = "x") -> int:
        return a

    key = f.cache_key(1, 2)
    assert f.cache_key(1) == key
    assert f.cache_key(1, b=2) == key
    assert f.cache_key(b=2, a=1) == key
    assert f.cache_key(1, c="x") == key
    assert f.cache_key(1, 3) != key
    assert f.cache_key(1, c="y") != key
    assert hash(f.cache_key(1)) == hash(key)


def test_equivalent_calls_share_one_entry() -> None:
    calls: list[tuple[int, int]] = []

    @mcache
    def f(a: int, b: int = 2) -> int:
        calls.append((a, b))
        return a + b

    assert [f(1, 2), f(1), f(1, b=2), f(b=2, a=1)] == [3, 3, 3, 3]
    assert calls == [(1, 2)]
    assert f.cache_info().hits == 3


def test_cache_parameters(engine: str) -> None:
    @mcache(cache_engine=engine)
    def unset(x: int) -> int:
        return x

    @mcache(cache_engine=engine, maxsize=None, name=f"wrap.unbounded.{engine}")
    def unbounded(x: int) -> int:
        return x

    params = unset.cache_parameters()
    assert params["engine"] == engine
    assert params["maxsize"] == 1024
    assert params["name"] == unset.cache_name
    assert params["typed"] is True
    assert params["lock"] is True
    assert params["fallback"] is True
    assert params["policy"] == "lru"
    assert params["ttl"] is None

    params = unbounded.cache_parameters()
    assert params["maxsize"] is None
    assert params["name"] == f"wrap.unbounded.{engine}"
    assert unbounded.cache_info().maxsize is None
    for i in range(1500):  # beyond the default bound: nothing evicted
        unbounded(i)
    assert unbounded.cache_info().currsize == 1500


def test_cache_engine_and_cache_name(engine: str) -> None:
    @mcache(cache_engine=engine)
    def f(x: int) -> int:
        return x

    assert f.cache_engine.name == engine
    assert f.cache_name == f"{__name__}.{f.__qualname__}"


def test_default_engine_is_first_of_the_memory_chain() -> None:
    pytest.importorskip("cachebox")

    @mcache
    def f(x: int) -> int:
        return x

    assert f.cache_engine.name == "cachebox"


def test_wrapped_bypasses_the_cache() -> None:
    calls: list[int] = []

    def original(x: int) -> int:
        calls.append(x)
        return x

    f = mcache(original)
    assert f.__wrapped__ is original
    f(1)
    f(1)
    f.__wrapped__(1)
    f.__wrapped__(1)
    assert calls == [1, 1, 1]
    assert f.cache_info() == CacheInfo(hits=1, misses=1, maxsize=1024, currsize=1)


def test_metadata_is_kept() -> None:
    def documented(x: int) -> int:
        """Doubles x."""
        return 2 * x

    f = mcache(documented)
    assert f.__name__ == "documented"
    assert f.__qualname__ == documented.__qualname__
    assert f.__doc__ == "Doubles x."
    assert f.__module__ == __name__
    assert f.__annotations__ == documented.__annotations__


def _rich(
    a: int,
    b: str = "b",
    /,
    c: float = 1.5,
    *args: int,
    d: bool,
    e: list[int] | None = None,
    **kw: Any,
) -> tuple[Any, ...]:
    return (a, b, c, args, d, e, kw)


def test_signature_equals_the_original() -> None:
    f = mcache(_rich)
    # The same signature, with the string annotations evaluated (see the tests at the end).
    assert inspect.signature(f) == inspect.signature(_rich, eval_str=True)
    # The generated wrapper's own code has the same parameters, not just `__wrapped__`'s or
    # `__signature__`'s: a bare copy of its code, without either, is inspected.
    bare = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    bare.__kwdefaults__ = f.__kwdefaults__
    own = inspect.signature(bare)
    assert [(p.name, p.kind, p.default) for p in own.parameters.values()] == [
        (p.name, p.kind, p.default) for p in inspect.signature(_rich).parameters.values()
    ]
    assert f(1, d=True) == (1, "b", 1.5, (), True, None, {})
    assert f(1, "x", 2.0, 7, 8, d=False, z=3) == (1, "x", 2.0, (7, 8), False, None, {"z": 3})


# --- signature fidelity -------------------------------------------------------------------


def _positional_only(a: int, b: int, /, c: int = 3, *, d: int = 4) -> int:
    return a + b + c + d


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1,), {}),  # missing b
        ((1, 2, 3, 4), {}),  # too many positional
        ((), {"a": 1, "b": 2}),  # positional-only passed by keyword
        ((1, 2), {"e": 5}),  # unexpected keyword
        ((1, 2, 3), {"c": 3}),  # c given twice
        ((1, 2), {"d": 1, "x": 2}),  # unexpected keyword next to a valid one
    ],
)
def test_bad_calls_raise_the_original_type_error(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    f = mcache(_positional_only)
    with pytest.raises(TypeError) as original:
        _positional_only(*args, **kwargs)
    with pytest.raises(TypeError) as cached:
        f(*args, **kwargs)
    assert str(cached.value) == str(original.value)
    assert f.cache_info().misses == 0  # refused before any cache work


def test_bad_call_of_a_nested_function_and_method_keeps_the_message() -> None:
    def nested(a: int, b: int) -> int:
        return a + b

    class A:
        def m(self, x: int) -> int:
            return x

        cm = mcache(m)

    with pytest.raises(TypeError) as original:
        nested(1)  # type: ignore[call-arg]  # deliberately wrong
    with pytest.raises(TypeError) as cached:
        mcache(nested)(1)
    assert str(cached.value) == str(original.value)
    with pytest.raises(TypeError, match=r"A\.m\(\) missing 1 required positional argument"):
        A().cm()


def test_defaults_are_the_original_objects() -> None:
    sentinel_list: list[int] = []
    sentinel_obj = object()

    def f(a: int, b: list[int] = sentinel_list, *, c: object = sentinel_obj) -> tuple[Any, Any]:
        return b, c

    cached = mcache(f)
    b, c = cached(1)
    assert b is sentinel_list
    assert c is sentinel_obj
    assert cached.__defaults__ == (sentinel_list,)
    assert cached.__defaults__[0] is sentinel_list
    assert cached.__kwdefaults__ == {"c": sentinel_obj}


def test_parameter_names_that_shadow_wrapper_internals() -> None:
    calls: list[tuple[Any, ...]] = []

    @mcache
    def f(key: int, func: int, cached: int, self_: int = 0) -> int:
        calls.append((key, func, cached))
        return key + func + cached

    assert f(1, 2, 3) == 6
    assert f(key=1, func=2, cached=3) == 6
    assert calls == [(1, 2, 3)]


def test_parameter_named_self_in_a_plain_function() -> None:
    calls: list[Any] = []

    @mcache
    def f(self: Any, x: int) -> int:
        calls.append(self)
        return x

    obj = object()
    assert f(obj, 1) == 1
    assert f(obj, 1) == 1
    assert f("text", 2) == 2
    assert f(self="text", x=2) == 2
    assert len(calls) == 2
    assert f.cache_info().hits == 2


def test_function_named_like_its_parameter() -> None:
    calls: list[int] = []

    def x(x: int) -> int:
        calls.append(x)
        return x * 10

    f = mcache(x)
    assert f(1) == 10
    assert f(x=1) == 10
    assert calls == [1]
    assert f.__name__ == "x"


def test_lambda_with_a_parameter_named_cached() -> None:
    f = mcache(lambda cached: cached + 1)
    assert f(1) == 2
    assert f(cached=1) == 2
    assert f.cache_info() == CacheInfo(hits=1, misses=1, maxsize=1024, currsize=1)


def test_twat_prefixed_parameters_fall_back_to_the_generic_wrapper() -> None:
    calls: list[tuple[int, int]] = []

    def f(__twat_k: int, __twat_v: int = 0) -> int:
        calls.append((__twat_k, __twat_v))
        return __twat_k + __twat_v

    cached = mcache(f)
    assert inspect.signature(cached) == inspect.signature(f, eval_str=True)
    assert cached(1, 2) == 3
    assert cached(1, 2) == 3
    assert cached(5) == 5
    assert calls == [(1, 2), (5, 0)]
    assert cached.cache_info() == CacheInfo(hits=1, misses=2, maxsize=1024, currsize=2)
    with pytest.raises(TypeError):
        cached()  # the original's own TypeError, raised on the miss path


@pytest.mark.parametrize(
    ("func", "args", "expected"),
    [
        (operator.add, (2, 3), 5),
        (len, ([1, 2, 3],), 3),
        (functools.partial(operator.mul, 4), (5,), 20),
        (functools.partial(divmod, 17), (5,), (3, 2)),
    ],
)
def test_builtins_and_partials(func: Any, args: tuple[Any, ...], expected: Any) -> None:
    f = mcache(func)
    assert f(*args) == expected
    assert f(*args) == expected
    assert f.cache_info() == CacheInfo(hits=1, misses=1, maxsize=1024, currsize=1)


def test_builtin_positional_only_is_kept() -> None:
    f = mcache(operator.add)
    with pytest.raises(TypeError):
        f(a=1, b=2)


# --- async --------------------------------------------------------------------------------


def test_mcache_on_async_def_caches_the_awaited_result(engine: str) -> None:
    calls: list[int] = []

    @mcache(cache_engine=engine)
    async def f(x: int) -> list[int]:
        calls.append(x)
        await asyncio.sleep(0)
        return [x]

    assert inspect.iscoroutinefunction(f)

    async def main() -> None:
        first = f(1)
        assert inspect.iscoroutine(first)
        v1 = await first
        v2 = await f(1)
        v3 = await f(1)
        assert v1 == [1]
        assert v2 is v1
        assert v3 is v1

    asyncio.run(main())
    assert calls == [1]
    assert f.cache_info() == CacheInfo(hits=2, misses=1, maxsize=1024, currsize=1)
    # A second event loop reads the same entry: the value, not a spent coroutine, is stored.
    assert asyncio.run(f(1)) == [1]
    assert calls == [1]


def test_async_wrapper_is_an_async_def() -> None:
    async def f(x: int) -> int:
        return x

    assert inspect.iscoroutinefunction(mcache(f))
    assert inspect.iscoroutinefunction(acache(f))
    assert inspect.iscoroutinefunction(acache(maxsize=2)(f))


def test_acache_clear_and_acache_delete() -> None:
    calls: list[int] = []

    @acache
    async def f(x: int) -> int:
        calls.append(x)
        return -x

    async def main() -> None:
        await f(1)
        await f(2)
        await f(2)
        assert await f.acache_delete(1) is True
        assert await f.acache_delete(1) is False
        assert f.cache_info().currsize == 1
        await f(1)
        assert calls == [1, 2, 1]
        await f.acache_clear()
        assert f.cache_info() == CacheInfo(hits=0, misses=0, maxsize=1024, currsize=0)
        await f(2)
        assert calls == [1, 2, 1, 2]

    asyncio.run(main())


# --- methods ------------------------------------------------------------------------------


def test_instance_methods_keep_instances_apart() -> None:
    calls: list[tuple[int, int]] = []

    class A:
        def __init__(self, n: int) -> None:
            self.n = n

        @mcache
        def m(self, x: int) -> int:
            calls.append((self.n, x))
            return self.n * x

    a, b = A(2), A(3)
    assert [a.m(5), a.m(5), b.m(5), b.m(5), a.m(x=5)] == [10, 10, 15, 15, 10]
    assert calls == [(2, 5), (3, 5)]
    assert A.m.cache_info() == CacheInfo(hits=3, misses=2, maxsize=1024, currsize=2)
    assert a.m.cache_info() == A.m.cache_info()
    assert A.m(a, 5) == 10  # unbound call through the class: same entry
    assert A.m.cache_info().hits == 4


def test_methods_of_equal_and_unhashable_instances() -> None:
    calls: list[int] = []

    class Equal:
        """Every instance compares equal and none is hashable."""

        def __init__(self, n: int) -> None:
            self.n = n

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Equal)

        __hash__ = None  # type: ignore[assignment]  # unhashable on purpose

        @mcache
        def m(self, x: int) -> int:
            calls.append(self.n)
            return self.n + x

    a, b = Equal(1), Equal(2)
    assert a == b
    assert [a.m(10), b.m(10), a.m(10), b.m(10)] == [11, 12, 11, 12]
    assert calls == [1, 2]


def test_method_of_a_hashable_class_with_custom_eq() -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Point) and other.x == self.x

        def __hash__(self) -> int:
            return hash(self.x)

        @mcache
        def scaled(self, k: int) -> list[int]:
            return [self.x * k]

    p, q = Point(1), Point(1)
    assert p == q
    assert p.scaled(2) == q.scaled(2) == [2]
    assert p.scaled(2) is not q.scaled(2)  # identity-keyed: separate entries
    assert Point.scaled.cache_info().misses == 2


def test_method_of_an_unhashable_class_with_identity_eq() -> None:
    calls: list[int] = []

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]  # unhashable, default identity __eq__

        @mcache
        def m(self, x: int) -> int:
            calls.append(x)
            return x

    u = Unhashable()
    assert u.m(1) == 1
    assert u.m(1) == 1
    assert calls == [1]


class _Methods:
    calls: list[str] = []  # noqa: RUF012  # shared log, reset by each test

    @mcache
    @classmethod
    def cls_above(cls, x: int) -> str:
        cls.calls.append("cls_above")
        return f"{cls.__name__}:{x}"

    @classmethod
    @mcache
    def cls_below(cls, x: int) -> str:
        cls.calls.append("cls_below")
        return f"{cls.__name__}:{x}"

    @mcache
    @staticmethod
    def static_above(x: int) -> int:
        _Methods.calls.append("static_above")
        return x + 100

    @staticmethod
    @mcache
    def static_below(x: int) -> int:
        _Methods.calls.append("static_below")
        return x + 200


class _SubMethods(_Methods):
    pass


@pytest.mark.parametrize("name", ["cls_above", "cls_below"])
def test_classmethods(name: str) -> None:
    _Methods.calls.clear()
    getattr(_Methods, name).cache_clear()
    through_class = getattr(_Methods, name)
    through_instance = getattr(_Methods(), name)
    assert through_class(1) == "_Methods:1"
    assert through_instance(1) == "_Methods:1"
    assert through_class(x=1) == "_Methods:1"
    assert getattr(_SubMethods, name)(1) == "_SubMethods:1"  # another class, another entry
    assert _Methods.calls == [name, name]
    assert getattr(_Methods, name).cache_info() == CacheInfo(
        hits=2, misses=2, maxsize=1024, currsize=2
    )
    assert getattr(_Methods, name).cache_name.endswith(f"_Methods.{name}")


@pytest.mark.parametrize(("name", "offset"), [("static_above", 100), ("static_below", 200)])
def test_staticmethods(name: str, offset: int) -> None:
    _Methods.calls.clear()
    getattr(_Methods, name).cache_clear()
    assert getattr(_Methods, name)(1) == 1 + offset
    assert getattr(_Methods(), name)(1) == 1 + offset
    assert getattr(_SubMethods(), name)(x=1) == 1 + offset
    assert _Methods.calls == [name]
    assert getattr(_Methods, name).cache_info() == CacheInfo(
        hits=2, misses=1, maxsize=1024, currsize=1
    )
    assert isinstance(inspect.getattr_static(_Methods, name), staticmethod)


def test_cached_method_does_not_leak_the_instance_after_clear(engine: str) -> None:
    class A:
        @mcache(cache_engine=engine)
        def m(self, x: int) -> int:
            return x + 1

    class B:
        def __eq__(self, other: object) -> bool:  # identity key goes through an Ident
            return self is other

        __hash__ = None  # type: ignore[assignment]  # unhashable on purpose

        @mcache(cache_engine=engine)
        def m(self, x: int) -> int:
            return x + 2

    a, b = A(), B()
    assert a.m(1) == 2
    assert b.m(1) == 3
    refs = [weakref.ref(a), weakref.ref(b)]
    del a, b
    A.m.cache_clear()
    B.m.cache_clear()
    gc.collect()
    assert [r() for r in refs] == [None, None]


# --- results and exceptions ---------------------------------------------------------------


def test_exceptions_are_neither_cached_nor_swallowed(engine: str) -> None:
    calls: list[int] = []

    class Boom(Exception):
        pass

    @mcache(cache_engine=engine)
    def f(x: int) -> int:
        calls.append(x)
        if len(calls) <= 2:
            raise Boom(f"boom {x}")
        return x

    with pytest.raises(Boom, match=r"^boom 1$"):
        f(1)
    with pytest.raises(Boom, match=r"^boom 1$"):
        f(1)
    assert f(1) == 1
    assert f(1) == 1
    assert calls == [1, 1, 1]
    assert f.cache_info() == CacheInfo(hits=1, misses=3, maxsize=1024, currsize=1)


def test_async_exceptions_are_neither_cached_nor_swallowed() -> None:
    calls: list[int] = []

    @acache
    async def f(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise LookupError("first time")
        return x

    async def main() -> None:
        with pytest.raises(LookupError, match="first time"):
            await f(7)
        assert await f(7) == 7
        assert await f(7) == 7

    asyncio.run(main())
    assert calls == [7, 7]


@pytest.mark.parametrize("falsy", [None, 0, "", False, [], 0.0, ()])
def test_falsy_results_are_cached(engine: str, falsy: Any) -> None:
    calls: list[int] = []

    @mcache(cache_engine=engine)
    def f(x: int) -> Any:
        calls.append(x)
        return falsy

    first = f(1)
    assert first == falsy
    assert f(1) is first
    assert f(1) is first
    assert calls == [1]
    assert f.cache_info() == CacheInfo(hits=2, misses=1, maxsize=1024, currsize=1)
    assert MISS is not falsy


# --- bounds, ttl, typed -------------------------------------------------------------------


def test_maxsize_zero_caches_nothing(engine: str) -> None:
    calls: list[int] = []

    @mcache(cache_engine=engine, maxsize=0)
    def f(x: int) -> int:
        calls.append(x)
        return x

    for _ in range(3):
        assert f(1) == 1
    assert calls == [1, 1, 1]
    assert f.cache_engine.name == "null"
    assert f.cache_info() == CacheInfo(hits=0, misses=3, maxsize=0, currsize=0)
    assert f.cache_delete(1) is False


def test_maxsize_bounds_entries_with_lru_eviction(engine: str) -> None:
    calls: list[int] = []

    @mcache(cache_engine=engine, maxsize=2)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1)
    f(2)
    f(1)  # hit: 1 is now the most recently used
    f(3)  # evicts 2
    assert f.cache_info().currsize == 2
    f(1)  # still cached
    assert calls == [1, 2, 3]
    f(2)  # evicted: computed again
    assert calls == [1, 2, 3, 2]
    for i in range(10, 20):
        f(i)
        assert f.cache_info().currsize <= 2


def test_ttl_expires_entries(engine: str) -> None:
    calls: list[int] = []

    @mcache(cache_engine=engine, ttl=0.1)
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert f.cache_engine.name == engine
    assert f.cache_parameters()["policy"] == "ttl"
    f(1)
    f(1)
    assert calls == [1]
    time.sleep(0.15)
    assert f.cache_info().currsize == 0
    f(1)
    assert calls == [1, 1]
    assert f.cache_info().hits == 1


def test_typed_false_shares_equal_values(engine: str) -> None:
    calls: list[Any] = []

    @mcache(cache_engine=engine, typed=False)
    def untyped(x: Any) -> Any:
        calls.append(x)
        return x

    untyped(1)
    untyped(1.0)
    untyped(True)
    assert calls == [1]
    assert untyped.cache_info().hits == 2


def test_typed_default_keeps_types_apart(engine: str) -> None:
    calls: list[Any] = []

    @mcache(cache_engine=engine)
    def typed(x: Any) -> Any:
        calls.append(x)
        return x

    assert typed(1) == 1
    assert type(typed(1.0)) is float
    assert type(typed(True)) is bool
    assert calls == [1, 1.0, True]
    assert [type(c) for c in calls] == [int, float, bool]


# --- faults and fallback ------------------------------------------------------------------


class _FaultyEngine(BaseEngine):
    """Every read and write fails, as a broken disk or server would."""

    name = "faulty"
    capabilities = Capabilities(policies=ALL_POLICIES, ttl=True)

    def get(self, key: Any, default: Any = None) -> Any:
        raise OSError("read failed")

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        raise OSError("write failed")

    def delete(self, key: Any) -> bool:
        return False

    def clear(self) -> None:
        return None

    def __len__(self) -> int:
        return 0


class _WriteFaultEngine(_FaultyEngine):
    """Reads work (and always miss); every write fails."""

    name = "write-faulty"

    def get(self, key: Any, default: Any = None) -> Any:
        return default


class _StoreThenFailEngine(_FaultyEngine):
    """Reads work; a write stores the entry and then reports a failure (a partial write)."""

    name = "store-then-fail"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.data: dict[Any, Any] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        self.data[key] = value
        raise OSError("write acknowledged late")

    def __len__(self) -> int:
        return len(self.data)


_unique = itertools.count()


def _register(cls: type[Any]) -> Any:
    name = f"test-wrap-{cls.name}-{next(_unique)}"
    get_manager().register(name, cls)
    return name


@pytest.fixture
def faulty() -> Any:
    name = _register(_FaultyEngine)
    yield name
    get_manager().unregister(name)


@pytest.fixture
def write_faulty() -> Any:
    name = _register(_WriteFaultEngine)
    yield name
    get_manager().unregister(name)


@pytest.fixture
def store_then_fail() -> Any:
    name = _register(_StoreThenFailEngine)
    yield name
    get_manager().unregister(name)


def _fault_warnings(record: pytest.WarningsRecorder) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CacheFaultWarning)]


def test_faulty_engine_never_fails_the_call(faulty: str) -> None:
    calls: list[int] = []

    @mcache(cache_engine=faulty)
    def f(x: int) -> int:
        calls.append(x)
        return x * 3

    assert f.cache_engine.name == "faulty"
    with pytest.warns(CacheFaultWarning) as record:
        results = [f(i % 4) for i in range(40)]
    assert results == [(i % 4) * 3 for i in range(40)]
    assert len(calls) == 40
    messages = _fault_warnings(record)
    assert len(messages) == 1, messages
    assert "read" in messages[0]
    assert "OSError" in messages[0]
    assert f.cache_info().misses == 40
    assert f.cache_info().hits == 0


@pytest.mark.parametrize("which", ["read", "write"])
def test_fault_warning_points_at_the_callers_line(
    faulty: str, write_faulty: str, which: str
) -> None:
    @mcache(cache_engine=faulty if which == "read" else write_faulty)
    def f(x: int) -> int:
        return x

    with pytest.warns(CacheFaultWarning) as record:
        f(1)
    assert [(w.filename, w.category) for w in record] == [(__file__, CacheFaultWarning)]


def test_faulty_engine_async(faulty: str) -> None:
    calls: list[int] = []

    @acache(cache_engine=faulty)
    async def f(x: int) -> int:
        calls.append(x)
        return x + 1

    async def main() -> list[int]:
        return [await f(i % 3) for i in range(12)]

    with pytest.warns(CacheFaultWarning) as record:
        assert asyncio.run(main()) == [i % 3 + 1 for i in range(12)]
    assert len(_fault_warnings(record)) == 1
    assert len(calls) == 12


def test_write_fault_returns_the_computed_value(write_faulty: str) -> None:
    calls: list[int] = []

    @mcache(cache_engine=write_faulty)
    def f(x: int) -> list[int]:
        calls.append(x)
        return [x]

    with pytest.warns(CacheFaultWarning) as record:
        results = [f(1) for _ in range(10)]
    assert results == [[1]] * 10
    assert len(calls) == 10
    messages = _fault_warnings(record)
    assert len(messages) == 1
    assert "write" in messages[0]
    assert f.cache_info().misses == 10


def test_partial_write_fault_keeps_the_value(store_then_fail: str) -> None:
    calls: list[int] = []

    @mcache(cache_engine=store_then_fail)
    def f(x: int) -> object:
        calls.append(x)
        return object()

    with pytest.warns(CacheFaultWarning) as record:
        computed = f(1)
    assert computed is not None
    assert len(_fault_warnings(record)) == 1
    assert f(1) is computed  # the stored entry is a hit now: same object, no recompute
    assert calls == [1]


def test_fallback_false_propagates_engine_errors(faulty: str, write_faulty: str) -> None:
    calls: list[int] = []

    @mcache(cache_engine=faulty, fallback=False)
    def f(x: int) -> int:
        calls.append(x)
        return x

    @mcache(cache_engine=write_faulty, fallback=False)
    def g(x: int) -> int:
        calls.append(x)
        return x

    with pytest.raises(OSError, match="read failed"):
        f(1)
    assert calls == []
    with pytest.raises(OSError, match="write failed"):
        g(1)
    assert calls == [1]


# --- logging ------------------------------------------------------------------------------


@pytest.fixture
def twat_records() -> Any:
    records: list[Any] = []
    handler = logger.add(lambda message: records.append(message.record), level=0)
    logger.enable("twat_cache")
    try:
        yield records
    finally:
        logger.disable("twat_cache")
        logger.remove(handler)


def test_a_hit_never_logs(twat_records: list[Any], faulty: str) -> None:
    @mcache
    def f(x: int) -> int:
        return x

    f(1)
    twat_records.clear()
    for _ in range(100):
        f(1)
    assert f.cache_info().hits == 100
    assert [r["name"] for r in twat_records if r["name"].startswith("twat_cache")] == []

    # The sink does see twat_cache records: a fault is logged.
    @mcache(cache_engine=faulty)
    def g(x: int) -> int:
        return x

    with pytest.warns(CacheFaultWarning):
        g(1)
    assert any(r["name"].startswith("twat_cache") for r in twat_records)


# --- annotations seen through the wrapper ---------------------------------------------------


class Order:
    """A user type named in annotations (this module uses `from __future__ import annotations`)."""


def test_string_annotations_are_resolved_in_the_users_module() -> None:
    # Tools that read annotations through the wrapper (FastAPI evaluates them in the
    # wrapper's __globals__) must see the user's types, not strings naming them.
    @mcache
    def total(order: Order, *, rate: float = 1.0) -> list[Order]:
        return [order]

    signature = inspect.signature(total)
    assert signature.parameters["order"].annotation is Order
    assert signature.parameters["rate"].annotation is float
    assert signature.return_annotation == list[Order]
    assert typing.get_type_hints(total) == {"order": Order, "rate": float, "return": list[Order]}
    assert total.__wrapped__.__annotations__["order"] == "Order"  # the original is untouched


def test_unresolvable_annotations_are_left_as_written() -> None:
    # A forward reference to a name defined later cannot be evaluated at decoration time:
    # the wrapper keeps the strings rather than failing or guessing.
    @mcache
    def later(item: DefinedLater) -> int:  # noqa: F821  # the point: not defined yet
        return 1

    assert inspect.signature(later).parameters["item"].annotation == "DefinedLater"
    assert later(object()) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize("callers", [{"threads": 16}, {"tasks": 32}], ids=["threads", "tasks"])
def test_callers_share_one_computation_while_reads_fail(
    faulty: str, callers: dict[str, int]
) -> None:
    # An engine that cannot read (a broken disk, a server down): concurrent callers of a
    # cold key still compute it once, and the failing store is not written.
    decorate = (mcache if "threads" in callers else acache)(cache_engine=faulty)
    with pytest.warns(CacheFaultWarning) as record:
        executions, results = stampede_on_one_key(decorate, **callers)
    assert executions == [7]
    assert all(result is results[0] for result in results)
    assert results[0] == [7]
    messages = _fault_warnings(record)
    assert len(messages) == 1, messages  # the read's; nothing was written
    assert "failed to read" in messages[0]


def test_without_lock_a_read_fault_computes_per_call(faulty: str) -> None:
    # lock=False opts out of sharing: each concurrent caller computes (and nothing is stored).
    with pytest.warns(CacheFaultWarning):
        executions, results = stampede_on_one_key(
            mcache(cache_engine=faulty, lock=False), threads=4
        )
    assert executions == [7] * 4
    assert results == [[7]] * 4
