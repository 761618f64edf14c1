"""The in-process memory tier (l1_maxsize/l1_ttl) in front of Redis and of the disk engine:
repeated calls stay in process, staleness is bounded by l1_ttl, delete/clear/refresh act on
both tiers, statistics add up, async functions too, and the tier's configuration."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from twat_cache import acache, mcache, ucache
from twat_cache.config import DEFAULT_L1_TTL, DEFAULT_MAXSIZE
from twat_cache.engines import _redis_breaker as breakers
from twat_cache.exceptions import CacheFaultWarning, ConfigurationError

L1_TTL = 0.5  # seconds: the tier's entries outlive a few calls, and a test waits them out
MEMORY_ENGINES = {"cachebox", "cachetools", "functools"}


@pytest.fixture(autouse=True)
def _fresh_breakers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(breakers, "_BREAKERS", {})


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("diskcache"),
    ]
)
def shared(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Options of the shared store behind the tier: a Redis server or a disk folder. The
    engines of every function decorated with `decorate` are closed at teardown."""
    if request.param == "redis":
        pytest.importorskip("redis")
        options: dict[str, Any] = {"url": request.getfixturevalue("redis_url")}
    else:
        pytest.importorskip("diskcache")
        options = {}
    options["folder_name"] = "tier"
    opened: list[Any] = []
    options["_opened"] = opened
    yield options
    for engine in opened:
        engine.close()


def decorate(shared: dict[str, Any], func: Any, decorator: Any = ucache, **options: Any) -> Any:
    """`func` cached on the shared store (with a tier when `options` ask for one)."""
    settings = {k: v for k, v in shared.items() if not k.startswith("_")}
    cached = decorator(**settings, **options)(func)
    shared["_opened"].append(cached.cache_engine)
    return cached


def source() -> tuple[Callable[[int], tuple[int, int]], dict[str, Any]]:
    """A function whose result carries a version the test can change, and its calls. Two
    wrappers of the same function share their entries (same qualified name, same folder),
    as two processes running the same code do."""
    state: dict[str, Any] = {"version": 1, "calls": []}

    def value(x: int) -> tuple[int, int]:
        state["calls"].append(x)
        return (x, state["version"])

    return value, state


def test_engine_names(shared: dict[str, Any]) -> None:
    func, _ = source()
    tiered = decorate(shared, func, l1_maxsize=16)
    expected = "redis" if "url" in shared else "diskcache"
    assert tiered.cache_engine.name == expected
    parameters = tiered.cache_parameters()
    assert parameters["engine"] == expected
    assert parameters["l1_engine"] in MEMORY_ENGINES
    assert parameters["l1_engine"] == tiered.cache_l1_engine.name
    assert (parameters["l1_maxsize"], parameters["l1_ttl"]) == (16, DEFAULT_L1_TTL)
    assert tiered.cache_l1_engine.maxsize == 16


def test_a_repeated_call_is_served_by_the_tier(shared: dict[str, Any]) -> None:
    func, state = source()
    tiered = decorate(shared, func, l1_maxsize=16, l1_ttl=L1_TTL)
    other = decorate(shared, func)  # the same entries, without a tier: "another process"
    assert tiered(1) == (1, 1)
    assert other.cache_delete(1)  # behind the tier's back
    for _ in range(5):
        assert tiered(1) == (1, 1)  # from the tier: the shared store was not read
    assert state["calls"] == [1]
    time.sleep(L1_TTL + 0.1)
    assert tiered(1) == (1, 1)  # the tier expired: read the store (empty), computed again
    assert state["calls"] == [1, 1]


@pytest.mark.redis
def test_tier_hits_send_nothing_to_redis(redis_url: str) -> None:
    redis = pytest.importorskip("redis")
    func, _ = source()
    tiered = ucache(url=redis_url, folder_name="tier", l1_maxsize=16)(func)
    try:
        assert tiered(1) == (1, 1)
        with redis.Redis.from_url(redis_url) as client:
            client.config_resetstat()
            for _ in range(10):
                assert tiered(1) == (1, 1)
            stats = client.info("commandstats")
        # what the test itself sent: CONFIG RESETSTAT and INFO
        assert {
            name for name in stats if not name.startswith(("cmdstat_config", "cmdstat_info"))
        } == set()
    finally:
        tiered.cache_engine.close()


@pytest.mark.redis
def test_during_an_outage_the_tier_keeps_serving() -> None:
    pytest.importorskip("redis")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"  # nobody listens there
    func, state = source()
    tiered = ucache(url=url, l1_maxsize=16, l1_ttl=L1_TTL)(func)
    with pytest.warns(CacheFaultWarning, match="failed to read"):
        assert tiered(1) == (1, 1)  # the store is unreachable: computed
    for _ in range(3):
        assert tiered(1) == (1, 1)  # and kept by the tier
    assert state["calls"] == [1]
    assert tiered.cache_info().currsize == -1


def test_staleness_is_bounded_by_l1_ttl(shared: dict[str, Any]) -> None:
    func, state = source()
    tiered = decorate(shared, func, l1_maxsize=16, l1_ttl=L1_TTL)
    other = decorate(shared, func)
    assert tiered(1) == (1, 1)
    state["version"] = 2
    assert other.cache_refresh(1) == (1, 2)  # another process updates the shared entry
    assert other(1) == (1, 2)
    assert tiered(1) == (1, 1)  # stale here, for at most l1_ttl
    time.sleep(L1_TTL + 0.1)
    assert tiered(1) == (1, 2)
    assert state["calls"] == [1, 1]


def test_delete_and_clear_act_on_both_tiers(shared: dict[str, Any]) -> None:
    func, state = source()
    tiered = decorate(shared, func, l1_maxsize=16)
    other = decorate(shared, func)
    assert [tiered(1), tiered(2), tiered(3)] == [(1, 1), (2, 1), (3, 1)]
    assert tiered.cache_delete(1) is True
    assert tiered.cache_delete(1) is False
    assert other.cache_engine.get(other.cache_key(1), None) is None  # gone from the store
    assert tiered(1) == (1, 1)
    assert state["calls"] == [1, 2, 3, 1]
    tiered.cache_clear()
    assert len(tiered.cache_l1_engine) == 0
    assert len(tiered.cache_engine) == 0
    assert tiered.cache_info()[:2] == (0, 0)
    assert tiered(2) == (2, 1)
    assert state["calls"] == [1, 2, 3, 1, 2]


def test_cache_info_adds_tier_hits_and_shared_hits(shared: dict[str, Any]) -> None:
    func, _ = source()
    tiered = decorate(shared, func, l1_maxsize=16)
    other = decorate(shared, func)
    assert tiered(1) == (1, 1)  # a miss in both
    assert tiered(1) == (1, 1)  # a tier hit
    assert other(3) == (3, 1)  # stored by "another process"
    assert tiered(3) == (3, 1)  # a tier miss, a shared hit
    assert tiered(3) == (3, 1)  # a tier hit
    info = tiered.cache_info()
    assert (info.hits, info.misses) == (3, 1)
    assert info.currsize == 2
    assert info.maxsize == tiered.cache_engine.maxsize


def test_cache_refresh_recomputes_into_the_shared_store(shared: dict[str, Any]) -> None:
    func, state = source()
    tiered = decorate(shared, func, l1_maxsize=16)
    other = decorate(shared, func)
    assert tiered(1) == (1, 1)
    state["version"] = 2
    assert tiered.cache_refresh(1) == (1, 2)
    assert other(1) == (1, 2)  # the store holds the new value
    assert tiered(1) == (1, 2)  # and this process's tier does not serve the old one
    assert state["calls"] == [1, 1]


@pytest.mark.parametrize("decorator", [acache, ucache], ids=["acache", "ucache"])
def test_async_functions_get_the_tier(shared: dict[str, Any], decorator: Any) -> None:
    state: dict[str, Any] = {"version": 1, "calls": []}

    async def value(x: int) -> tuple[int, int]:
        state["calls"].append(x)
        await asyncio.sleep(0)
        return (x, state["version"])

    if decorator is acache and "url" not in shared:
        # acache keeps an async def in memory whatever its folder: no store to put a tier on
        with pytest.raises(ConfigurationError, match="already in memory"):
            decorate(shared, value, decorator, l1_maxsize=16)
        return

    tiered = decorate(shared, value, decorator, l1_maxsize=16)
    other = decorate(shared, value, decorator)

    async def scenario() -> None:
        assert await tiered(1) == (1, 1)
        assert await other.acache_delete(1)
        assert await tiered(1) == (1, 1)  # the tier
        assert state["calls"] == [1]
        state["version"] = 2
        assert await tiered.cache_refresh(1) == (1, 2)
        assert await other(1) == (1, 2)
        assert await tiered(1) == (1, 2)
        assert await tiered.acache_delete(1) is True
        assert await tiered(1) == (1, 2)
        assert state["calls"] == [1, 1, 1]
        await tiered.acache_clear()
        assert await other(1) == (1, 2)
        assert state["calls"] == [1, 1, 1, 1]

    for _ in range(2):  # event loop after event loop
        state["calls"].clear()
        state["version"] = 1
        asyncio.run(scenario())
        asyncio.run(tiered.acache_clear())
    assert tiered.cache_engine.name == ("redis" if "url" in shared else "diskcache")


def test_l1_ttl_alone_turns_the_tier_on(shared: dict[str, Any]) -> None:
    func, _ = source()
    tiered = decorate(shared, func, l1_ttl="2s")
    assert tiered.cache_parameters()["l1_maxsize"] == DEFAULT_MAXSIZE == 1024
    assert tiered.cache_l1_engine.maxsize == DEFAULT_MAXSIZE
    assert tiered.cache_parameters()["l1_ttl"] == 2.0


def test_no_tier_unless_asked(shared: dict[str, Any]) -> None:
    func, _ = source()
    plain = decorate(shared, func)
    assert "l1_engine" not in plain.cache_parameters()
    assert not hasattr(plain, "cache_l1_engine")


@pytest.mark.parametrize("decorator", [ucache, mcache], ids=["ucache", "mcache"])
@pytest.mark.parametrize("option", [{"l1_maxsize": 8}, {"l1_ttl": 1}])
def test_a_tier_in_front_of_a_memory_cache_is_refused(
    decorator: Any, option: dict[str, Any]
) -> None:
    def square(x: int) -> int:
        return x * x

    with pytest.raises(ConfigurationError, match="already in memory"):
        decorator(**option)(square)
