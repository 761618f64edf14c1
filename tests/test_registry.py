"""The global registry: names, weak registration, clear_cache, get_stats, list_caches."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from typing import Any

import pytest

from _support import MEMORY_ENGINES
from twat_cache import CacheError, acache, clear_cache, get_stats, list_caches, mcache
from twat_cache.engines.base import ALL_POLICIES, MISS, BaseEngine, Capabilities
from twat_cache.engines.manager import get_manager
from twat_cache.registry import UnknownCacheError


def test_default_name_is_module_and_qualname() -> None:
    @mcache
    def square(x: int) -> int:
        return x * x

    expected = f"{__name__}.test_default_name_is_module_and_qualname.<locals>.square"
    assert square.cache_name == expected
    assert square.cache_parameters()["name"] == expected
    assert expected in list_caches()


class _Holder:
    @mcache
    def method(self, x: int) -> int:
        return x

    @acache
    async def amethod(self, x: int) -> int:
        return x


def test_default_name_of_methods() -> None:
    assert _Holder.method.cache_name == f"{__name__}._Holder.method"
    assert _Holder.amethod.cache_name == f"{__name__}._Holder.amethod"
    assert {_Holder.method.cache_name, _Holder.amethod.cache_name} <= set(list_caches())


def test_name_option() -> None:
    @mcache(name="test_registry.named")
    def f(x: int) -> int:
        return x

    assert f.cache_name == "test_registry.named"
    assert "test_registry.named" in list_caches()
    assert get_stats("test_registry.named")["misses"] == 0


def test_live_duplicates_are_numbered_and_names_are_reused() -> None:
    def make() -> Any:
        @mcache(name="test_registry.dup")
        def f(x: int) -> int:
            return x

        return f

    first, second, third = make(), make(), make()
    assert [first.cache_name, second.cache_name, third.cache_name] == [
        "test_registry.dup",
        "test_registry.dup#2",
        "test_registry.dup#3",
    ]
    assert second.cache_parameters()["name"] == "test_registry.dup#2"
    # Each name reaches its own function.
    second(1)
    assert get_stats("test_registry.dup#2")["misses"] == 1
    assert get_stats("test_registry.dup")["misses"] == 0
    del first
    gc.collect()
    assert "test_registry.dup" not in list_caches()
    assert make().cache_name == "test_registry.dup"  # a dead holder's name is free again


def test_default_names_of_same_qualname_are_numbered() -> None:
    made = []
    for _ in range(2):

        @mcache
        def f(x: int) -> int:
            return x

        made.append(f)
    assert made[1].cache_name == made[0].cache_name + "#2"


def test_registration_is_weak(request: pytest.FixtureRequest) -> None:
    @mcache(name="test_registry.weak")
    def f(x: int) -> list[int]:
        return [x]

    f(1)
    function_ref = weakref.ref(f)
    engine_ref = weakref.ref(f.cache_engine)
    assert "test_registry.weak" in list_caches()
    del f
    gc.collect()
    assert function_ref() is None
    assert engine_ref() is None  # the registry keeps neither the function nor its cache
    assert "test_registry.weak" not in list_caches()
    assert "test_registry.weak" not in get_stats()
    with pytest.raises(UnknownCacheError):
        get_stats("test_registry.weak")


@pytest.mark.parametrize("engine", MEMORY_ENGINES)
def test_engine_is_collected_with_its_function(engine: str) -> None:
    class Big:
        pass

    @mcache(cache_engine=engine)
    def f(x: int) -> Big:
        return Big()

    value_ref = weakref.ref(f(1))
    engine_ref = weakref.ref(f.cache_engine)
    assert value_ref() is not None  # held by the cache
    del f
    gc.collect()
    assert engine_ref() is None
    assert value_ref() is None


def test_clear_cache_by_name_clears_only_that_one() -> None:
    @mcache(name="test_registry.clear_a")
    def a(x: int) -> int:
        return x

    @mcache(name="test_registry.clear_b")
    def b(x: int) -> int:
        return x

    for fn in (a, b):
        fn(1)
        fn(1)
    clear_cache("test_registry.clear_a")
    assert a.cache_info() == (0, 0, 1024, 0)
    assert b.cache_info() == (1, 1, 1024, 1)


def test_clear_cache_without_a_name_clears_all() -> None:
    @mcache(name="test_registry.all_a")
    def a(x: int) -> int:
        return x

    @acache(name="test_registry.all_b")
    async def b(x: int) -> int:
        return x

    a(1)
    a(1)
    asyncio.run(b(2))
    assert a.cache_info().currsize == 1
    assert b.cache_info().currsize == 1
    clear_cache()
    assert a.cache_info() == (0, 0, 1024, 0)
    assert b.cache_info() == (0, 0, 1024, 0)


@pytest.mark.parametrize("engine", MEMORY_ENGINES)
def test_get_stats_of_one_cache(engine: str) -> None:
    name = f"test_registry.stats.{engine}"

    @mcache(name=name, maxsize=16, cache_engine=engine)
    def f(x: int) -> int:
        return x

    assert get_stats(name) == {
        "hits": 0,
        "misses": 0,
        "hit_rate": 0.0,
        "currsize": 0,
        "maxsize": 16,
        "engine": engine,
    }
    for x in (1, 2, 1, 1):
        f(x)
    stats = get_stats(name)
    assert stats == {
        "hits": 2,
        "misses": 2,
        "hit_rate": 0.5,
        "currsize": 2,
        "maxsize": 16,
        "engine": engine,
    }
    assert [type(stats[k]) for k in ("hits", "misses", "hit_rate", "currsize", "maxsize")] == [
        int,
        int,
        float,
        int,
        int,
    ]


def test_get_stats_of_all_caches() -> None:
    @mcache(name="test_registry.map_a")
    def a(x: int) -> int:
        return x

    @mcache(name="test_registry.map_b", maxsize=0)
    def b(x: int) -> int:
        return x

    a(1)
    a(1)
    a(1)
    b(1)
    every = get_stats()
    assert isinstance(every, dict)
    assert set(every) == set(list_caches())
    assert every["test_registry.map_a"] == get_stats("test_registry.map_a")
    assert every["test_registry.map_a"]["hit_rate"] == pytest.approx(2 / 3)
    assert every["test_registry.map_b"] == {
        "hits": 0,
        "misses": 1,
        "hit_rate": 0.0,
        "currsize": 0,
        "maxsize": 0,
        "engine": "null",
    }


def test_list_caches_is_sorted_names() -> None:
    @mcache(name="test_registry.zz")
    def z(x: int) -> int:
        return x

    @mcache(name="test_registry.aa")
    def a(x: int) -> int:
        return x

    names = list_caches()
    assert names == sorted(names)
    assert {"test_registry.zz", "test_registry.aa"} <= set(names)


def test_unknown_name() -> None:
    with pytest.raises(UnknownCacheError, match="no-such-cache") as info:
        get_stats("test_registry.no-such-cache")
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, CacheError)
    with pytest.raises(KeyError):
        clear_cache("test_registry.no-such-cache")
    with pytest.raises(CacheError):
        get_stats("test_registry.no-such-cache")


def test_concurrent_registration_gives_distinct_names() -> None:
    n = 16
    barrier = threading.Barrier(n)
    made: list[Any] = [None] * n

    def decorate(i: int) -> None:
        def f(x: int) -> int:
            return x

        barrier.wait()
        made[i] = mcache(name="test_registry.race")(f)

    threads = [threading.Thread(target=decorate, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    names = [f.cache_name for f in made]
    assert len(set(names)) == n
    assert all(name.startswith("test_registry.race") for name in names)
    assert set(names) == set(list_caches()) & set(names)


class _GatedEngine(BaseEngine):
    """A working dict engine whose construction waits for a gate: it holds one decoration
    between choosing its registry name and registering, as a slow engine build would."""

    name = "gated"
    capabilities = Capabilities(policies=ALL_POLICIES, ttl=True)
    entered = threading.Event()
    gate = threading.Event()

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.data: dict[Any, Any] = {}
        type(self).entered.set()
        assert type(self).gate.wait(timeout=5)

    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        self.data[key] = value

    def delete(self, key: Any) -> bool:
        return self.data.pop(key, MISS) is not MISS

    def clear(self) -> None:
        self.data.clear()

    def __len__(self) -> int:
        return len(self.data)


def test_registration_racing_a_slow_engine_build_keeps_names_consistent() -> None:
    manager = get_manager()
    manager.register("test-registry-gated", _GatedEngine)
    _GatedEngine.entered.clear()
    _GatedEngine.gate.clear()
    made: dict[str, Any] = {}

    def decorate_slowly() -> None:
        made["slow"] = mcache(name="test_registry.gated", cache_engine="test-registry-gated")(
            lambda x: x
        )

    try:

        @mcache(name="test_registry.gated")
        def holder(x: int) -> int:
            return x

        thread = threading.Thread(target=decorate_slowly)
        thread.start()
        assert _GatedEngine.entered.wait(timeout=5)  # the slow decoration has chosen its name
        made["fast"] = mcache(name="test_registry.gated")(lambda x: x)
        _GatedEngine.gate.set()
        thread.join(timeout=5)
    finally:
        _GatedEngine.gate.set()
        manager.unregister("test-registry-gated")
    slow, fast = made["slow"], made["fast"]
    assert holder.cache_name == "test_registry.gated"
    assert {slow.cache_name, fast.cache_name} == {"test_registry.gated#2", "test_registry.gated#3"}
    assert slow.cache_parameters()["name"] == slow.cache_name
    assert fast.cache_parameters()["name"] == fast.cache_name
