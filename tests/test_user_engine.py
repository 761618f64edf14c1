"""A user engine (tests/_user_engine.py, a plain class) registered on the manager serves the
decorators, and the manager's public registry methods describe it."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from _user_engine import Mine, register_user_engine
from twat_cache import CacheConfig, CacheContext, mcache, ucache
from twat_cache.config import DEFAULT_MAXSIZE
from twat_cache.engines.manager import get_manager
from twat_cache.exceptions import ConfigurationError

THREADS = 16


@pytest.fixture(autouse=True)
def mine() -> Iterator[None]:
    """The user engine registered globally as "mine" for the test, and left as found (the
    lead's conftest may register it for the whole session)."""
    was_registered = "mine" in get_manager().registered()
    register_user_engine()
    yield
    if not was_registered:
        get_manager().unregister("mine")


@pytest.fixture
def temporary_name() -> Iterator[str]:
    """A unique engine name, unregistered from the global manager after the test."""
    name = f"test-engine-{uuid.uuid4().hex[:8]}"
    yield name
    get_manager().unregister(name)


# --- the engine itself ------------------------------------------------------------------


def test_registration_is_idempotent() -> None:
    register_user_engine()
    register_user_engine()
    assert get_manager().load("mine") is Mine
    assert get_manager().registered().count("mine") == 1


def test_default_bound_and_fifo_eviction() -> None:
    engine = Mine(CacheConfig(policy="fifo"))
    assert engine.maxsize == DEFAULT_MAXSIZE
    for i in range(DEFAULT_MAXSIZE + 10):
        engine.set(i, i)
    assert len(engine) == DEFAULT_MAXSIZE
    assert engine.get(0, "gone") == "gone"
    assert engine.get(DEFAULT_MAXSIZE + 9) == DEFAULT_MAXSIZE + 9


def test_configured_bound_and_lru_eviction() -> None:
    engine = Mine(CacheConfig(maxsize=2))
    engine.set("a", 1)
    engine.set("b", 2)
    assert engine.get("a") == 1  # b is now the least recently used
    engine.set("c", 3)
    assert (engine.exists("a"), engine.exists("b"), engine.exists("c")) == (True, False, True)
    assert Mine(CacheConfig(maxsize=None)).maxsize is None


def test_unservable_configs_are_refused_not_ignored() -> None:
    assert Mine.unsupported(CacheConfig()) is None
    assert "ttl" in (Mine.unsupported(CacheConfig(ttl=5)) or "")
    assert "lfu" in (Mine.unsupported(CacheConfig(policy="lfu")) or "")
    with pytest.raises(ConfigurationError, match="expiry"):
        Mine().set("k", 1, ttl=5)


# --- serving the decorators ------------------------------------------------------------


@pytest.mark.parametrize("decorator", [ucache, mcache], ids=["ucache", "mcache"])
def test_decorators_serve_from_the_user_engine(decorator: Any) -> None:
    calls: list[int] = []

    @decorator(cache_engine="mine", maxsize=3)
    def triple(x: int) -> int:
        calls.append(x)
        return 3 * x

    engine = triple.cache_engine
    assert type(engine) is Mine
    assert triple.cache_engine.name == "mine"
    assert engine.maxsize == 3
    assert [triple(1), triple(1), triple(2), triple(1)] == [3, 3, 6, 3]
    assert calls == [1, 2]
    info = triple.cache_info()
    assert (info.hits, info.misses, info.maxsize, info.currsize) == (2, 2, 3, 2)
    # Hits come from the user's store: a value planted under the function's key is served.
    engine.set(triple.cache_key(5), "planted")
    assert triple(5) == "planted"
    assert triple.cache_delete(5) is True
    assert triple.cache_delete(5) is False
    assert triple(5) == 15
    # The engine's bound holds through the decorator.
    for x in range(10, 20):
        triple(x)
    assert len(engine) == 3
    triple.cache_clear()
    assert len(engine) == 0
    assert triple.cache_info()[:2] == (0, 0)
    assert triple.cache_parameters()["engine"] == "mine"


def test_stampede_on_the_user_engine_computes_once() -> None:
    barrier = threading.Barrier(THREADS)
    release = threading.Event()
    computing = threading.Event()
    runs: list[int] = []

    @ucache(cache_engine="mine")
    def slow(x: int) -> dict[str, int]:
        runs.append(x)
        computing.set()
        release.wait(10)
        return {"x": x}

    results: list[Any] = [None] * THREADS
    errors: list[BaseException] = []

    def call(i: int) -> None:
        barrier.wait()
        try:
            results[i] = slow(7)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    assert computing.wait(10)
    release.set()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "a caller is stuck"
    assert errors == []
    assert runs == [7]
    assert all(result is results[0] for result in results)
    assert slow.cache_info().misses == 1
    assert slow.cache_info().hits == THREADS - 1


def test_async_function_on_the_user_engine() -> None:
    import asyncio

    calls: list[int] = []

    @ucache(cache_engine="mine")
    async def double(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return 2 * x

    async def main() -> list[int]:
        return [await double(4), *await asyncio.gather(double(4), double(5), double(5))]

    assert asyncio.run(main()) == [8, 8, 10, 10]
    assert calls == [4, 5]
    assert type(double.cache_engine) is Mine


def test_a_policy_the_user_engine_cannot_serve_falls_back_with_one_warning() -> None:
    from twat_cache.exceptions import CacheWarning

    with pytest.warns(CacheWarning, match="mine has no 'lfu' policy") as record:

        @ucache(cache_engine="mine", policy="lfu")
        def f(x: int) -> int:
            return x

    assert len(record) == 1
    assert f.cache_engine.name != "mine"
    assert f.cache_parameters()["policy"] == "lfu"


# --- constructors and registration ---------------------------------------------------------


def test_no_argument_constructor_is_built_with_cls(temporary_name: str) -> None:
    built: list[tuple[Any, ...]] = []

    class Plain(Mine):
        def __init__(self) -> None:
            built.append(())
            super().__init__()

    get_manager().register(temporary_name, Plain)

    @ucache(cache_engine=temporary_name)
    def f(x: int) -> int:
        return x + 1

    assert type(f.cache_engine) is Plain
    assert built == [()]
    assert f(1) == f(1) == 2
    assert f.cache_info().hits == 1


class NoExists:
    """Has every store operation but `exists`."""

    def get(self, key: Any, default: Any = None) -> Any:
        return default

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        return None

    def delete(self, key: Any) -> bool:
        return False

    def clear(self) -> None:
        return None

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize("engine", [NoExists, Mine(), 3.5], ids=repr)
def test_registering_a_non_engine_fails_clearly(temporary_name: str, engine: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"not an engine class.*exists"):
        get_manager().register(temporary_name, engine)
    assert temporary_name not in get_manager().registered()


@pytest.mark.parametrize("alias", ["memory", "disk", "file", "async", "redis"])
def test_registering_under_an_alias_fails(alias: str) -> None:
    before = get_manager().registered()
    with pytest.raises(ConfigurationError, match="alias"):
        get_manager().register(alias, Mine)
    with pytest.raises(ConfigurationError, match="alias"):
        get_manager().register(alias, Mine, replace=True)
    assert get_manager().registered() == before  # ("redis" is also a built-in engine's name)
    if alias in before:
        assert get_manager().load(alias) is not Mine


def test_registering_over_a_taken_name_fails_without_replace() -> None:
    with pytest.raises(ConfigurationError, match="already registered"):
        get_manager().register("mine", Mine)
    assert get_manager().load("mine") is Mine


# --- listing and selection ----------------------------------------------------------------


def test_registered_and_available_list_it(temporary_name: str) -> None:
    manager = get_manager()
    manager.register(temporary_name, "twat_cache_tests_nosuch_module:Engine")
    assert {"mine", temporary_name} <= set(manager.registered())
    available = manager.available()
    assert available["mine"] is None
    reason = available[temporary_name]
    assert reason is not None
    assert "twat_cache_tests_nosuch_module" in reason
    assert "not importable" in reason
    # A config the user engine refuses is listed with its own reason.
    assert "ttl" in (manager.available(CacheConfig(ttl=5))["mine"] or "")


def test_select_honours_the_named_user_engine() -> None:
    engine = get_manager().select("memory", CacheConfig(cache_engine="mine", maxsize=7))
    assert type(engine) is Mine
    assert engine.maxsize == 7
    assert get_manager().select("memory", CacheConfig()).name != "mine"


def test_cache_context_serves_the_user_engine() -> None:
    with CacheContext(engine_name="mine", maxsize=2, policy="fifo") as cache:
        assert type(cache) is Mine
        for key in "abc":
            cache.set(key, key.upper())
        assert (len(cache), cache.get("a"), cache.get("c"), "b" in cache) == (2, None, "C", True)
