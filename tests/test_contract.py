"""The contract every engine must pass: directly, and behind `mcache` on sync and async functions.

Parametrized over every engine registered on the process-wide manager (see conftest.py):
registering a new engine is enough for it to run this suite.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from twat_cache import MISS, CacheConfig, mcache, ucache
from twat_cache.config import DEFAULT_MAXSIZE
from twat_cache.engines.base import capabilities_of, put_of
from twat_cache.engines.manager import get_manager
from twat_cache.exceptions import CacheFaultWarning, ConfigurationError
from twat_cache.keys import stable_digest

if TYPE_CHECKING:
    from conftest import EngineFactory

TTL = 0.1  # seconds an expiring entry lives in these tests
EXPIRED = 0.2  # sleep after which such an entry must be gone
JOIN = 10.0  # seconds before a thread still running is declared stuck


def sample_keys(factory: EngineFactory) -> list[Any]:
    """Keys of several types, none unhashable; only digests for engines needing stable keys."""
    digests = [stable_digest("tests.contract", (i,)) for i in range(3)]
    if factory.capabilities.stable_keys:
        return digests
    return [
        0,
        -1,
        2**70,
        "a",
        "",
        "1",
        b"1",
        1.5,
        None,
        (1, "a"),
        ((1, 2), ("x",)),
        (),
        frozenset({1, 2}),
        *digests,
    ]


def run_in_thread(target: Callable[[], Any]) -> list[Any]:
    """Run `target` in a daemon thread; fail (without hanging the suite) if it never returns."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:  # reported to the test below
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=JOIN)
    assert not thread.is_alive(), "the call never returned (deadlock)"
    return outcome


# --- engine level -----------------------------------------------------------------------


def test_set_get_roundtrip_over_key_types(engine_factory: EngineFactory) -> None:
    engine = engine_factory(maxsize=100)
    keys = sample_keys(engine_factory)
    for index, key in enumerate(keys):
        engine.set(key, ("value", index))
    for index, key in enumerate(keys):
        assert engine.get(key, MISS) == ("value", index), key
        assert engine.exists(key)
        assert key in engine
    assert len(engine) == len(keys)


def test_none_is_a_value_and_absent_is_miss(engine_factory: EngineFactory) -> None:
    engine = engine_factory()
    absent, stored = stable_digest("t", ("absent",)), stable_digest("t", ("none",))
    engine.set(stored, None)
    assert engine.get(stored, MISS) is None
    assert engine.exists(stored)
    assert stored in engine
    assert engine.get(absent, MISS) is MISS
    assert engine.get(absent) is None
    assert engine.get(absent, "fallback") == "fallback"
    assert not engine.exists(absent)
    assert absent not in engine


def test_overwrite_replaces_and_keeps_one_entry(engine_factory: EngineFactory) -> None:
    engine = engine_factory()
    engine.set("k", 1)
    engine.set("k", 2)
    assert engine.get("k", MISS) == 2
    assert len(engine) == 1


def test_put_is_set_with_the_configured_ttl(engine_factory: EngineFactory) -> None:
    # The wrapper stores through `put(key, value)` (the engine's fast writer, else `set`).
    engine = engine_factory(maxsize=3)
    put = put_of(engine)
    put("k", [1])
    put("none", None)
    assert engine.get("k", MISS) == [1]
    assert engine.get("none", MISS) is None
    for i in range(10):
        put(f"k{i}", i)
    assert len(engine) <= 3
    assert engine.get("k9", MISS) == 9
    if engine_factory.capabilities.ttl:
        expiring = engine_factory(ttl=TTL)
        put_of(expiring)("k", 1)
        assert expiring.get("k", MISS) == 1
        time.sleep(EXPIRED)
        assert expiring.get("k", MISS) is MISS


def test_delete_returns_whether_there_was_an_entry(engine_factory: EngineFactory) -> None:
    engine = engine_factory()
    engine.set("k", "v")
    engine.set("other", None)
    assert engine.delete("k") is True
    assert engine.delete("k") is False
    assert engine.get("k", MISS) is MISS
    assert engine.delete("never-set") is False
    assert engine.delete("other") is True  # an entry holding None is still an entry
    assert len(engine) == 0


def test_clear_empties(engine_factory: EngineFactory) -> None:
    engine = engine_factory(maxsize=50)
    for i in range(20):
        engine.set(f"k{i}", i)
    assert len(engine) == 20
    engine.clear()
    assert len(engine) == 0
    assert all(engine.get(f"k{i}", MISS) is MISS for i in range(20))
    engine.set("after", 1)  # still usable
    assert engine.get("after", MISS) == 1


def test_config_ttl_expires_entries(engine_factory: EngineFactory) -> None:
    if not engine_factory.capabilities.ttl:
        pytest.skip(f"{engine_factory.name} does not expire entries")
    engine = engine_factory(ttl=TTL)
    engine.set("k", "v")
    assert engine.get("k", MISS) == "v"
    time.sleep(EXPIRED)
    assert engine.get("k", MISS) is MISS
    assert not engine.exists("k")
    assert len(engine) == 0


def test_per_entry_ttl(engine_factory: EngineFactory) -> None:
    if not engine_factory.capabilities.ttl:
        pytest.skip(f"{engine_factory.name} does not expire entries")
    engine = engine_factory(ttl=60)
    engine.set("short", 1, ttl=TTL)
    engine.set("long", 2)
    engine.set("longer", 3, ttl=60)
    assert engine.get("short", MISS) == 1
    time.sleep(EXPIRED)
    assert engine.get("short", MISS) is MISS
    assert engine.get("long", MISS) == 2
    assert engine.get("longer", MISS) == 3
    assert len(engine) == 2


def test_expired_entry_is_gone_for_delete_too(engine_factory: EngineFactory) -> None:
    if not engine_factory.capabilities.ttl:
        pytest.skip(f"{engine_factory.name} does not expire entries")
    engine = engine_factory(ttl=TTL)
    engine.set("config-ttl", 1)
    engine.set("entry-ttl", 2, ttl=TTL)
    time.sleep(EXPIRED)
    # No get/exists/len first: those purge expired entries and would hide the answer.
    assert engine.delete("config-ttl") is False
    assert engine.delete("entry-ttl") is False


@pytest.mark.parametrize("bad", [0, -1, -0.5])
def test_per_entry_ttl_must_be_positive(engine_factory: EngineFactory, bad: float) -> None:
    if not engine_factory.capabilities.ttl:
        pytest.skip(f"{engine_factory.name} does not expire entries")
    engine = engine_factory(ttl=60)
    with pytest.raises(ConfigurationError, match="ttl"):
        engine.set("k", 1, ttl=bad)


def test_per_entry_ttl_is_never_silently_dropped(engine_factory: EngineFactory) -> None:
    """An engine built without a ttl must refuse `set(k, v, ttl=...)` or honour it: keeping
    the entry forever would serve stale values the caller asked to expire."""
    engine = engine_factory()
    try:
        engine.set("k", 1, ttl=TTL)
    except ConfigurationError:
        return
    time.sleep(EXPIRED)
    assert engine.get("k", MISS) is MISS, "per-entry ttl accepted but ignored"


def test_engine_without_expiry_refuses_ttl(engine_factory: EngineFactory) -> None:
    if engine_factory.capabilities.ttl:
        pytest.skip(f"{engine_factory.name} expires entries")
    assert engine_factory.unsupported(ttl=60)
    engine = engine_factory()
    with pytest.raises(ConfigurationError):
        engine.set("k", 1, ttl=60)


@pytest.mark.parametrize("options", [{}, {"policy": "fifo"}, {"maxsize": None}])
def test_per_entry_ttl_on_an_instance_built_without_expiry_is_refused(
    engine_factory: EngineFactory, options: dict[str, Any]
) -> None:
    engine = engine_factory(**options)
    if engine.expires:
        pytest.skip(f"{engine_factory.name} was built to expire entries with {options}")
    with pytest.raises(ConfigurationError, match="without expiry"):
        engine.set("k", 1, ttl=5)
    assert engine.get("k", MISS) is MISS
    engine.set("k", 1, ttl=None)  # no ttl asked: stored as usual
    assert engine.get("k", MISS) == 1


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "rr", "ttl"])
def test_maxsize_bound_enforced(engine_factory: EngineFactory, policy: str) -> None:
    options: dict[str, Any] = {"maxsize": 5, "policy": policy}
    if policy == "ttl":
        options["ttl"] = 60
    engine = engine_factory(**options)
    assert engine.maxsize == 5
    for i in range(15):
        engine.set(f"k{i}", i)
        assert len(engine) <= 5
    assert engine.get("k14", MISS) == 14  # the entry just written is kept
    assert len(engine) == 5


def test_default_bound(engine_factory: EngineFactory) -> None:
    engine = engine_factory()
    assert engine.maxsize == DEFAULT_MAXSIZE
    for i in range(DEFAULT_MAXSIZE + 50):
        engine.set(i if not engine_factory.capabilities.stable_keys else f"k{i}", i)
    assert len(engine) == DEFAULT_MAXSIZE


def test_maxsize_none_is_unbounded(engine_factory: EngineFactory) -> None:
    engine = engine_factory(maxsize=None)
    assert engine.maxsize is None
    count = DEFAULT_MAXSIZE + 100
    for i in range(count):
        engine.set(f"k{i}", i)
    assert len(engine) == count
    assert engine.get("k0", MISS) == 0


def test_close_is_idempotent(engine_factory: EngineFactory) -> None:
    engine = engine_factory()
    engine.set("k", 1)
    engine.close()
    engine.close()


def test_context_manager_closes(engine_factory: EngineFactory) -> None:
    engine = engine_factory()
    closed: list[bool] = []
    real_close = engine.close

    def recording_close() -> None:
        closed.append(True)
        real_close()

    engine.close = recording_close  # a spy on the real close, not a replacement
    with engine as entered:
        assert entered is engine
        entered.set("k", 1)
        assert entered.get("k", MISS) == 1
    assert closed == [True]

    closed.clear()
    with pytest.raises(RuntimeError, match="inside"), engine:
        raise RuntimeError("raised inside the block")
    assert closed == [True]  # closed, and the exception not swallowed


def test_persistence_across_reopen(engine_factory: EngineFactory) -> None:
    if not engine_factory.capabilities.persistent:
        pytest.skip(f"{engine_factory.name} is not persistent (capabilities.persistent is False)")
    key = stable_digest("tests.contract.persist", ("k",))
    first = engine_factory(maxsize=100)
    first.set(key, {"value": [1, 2, None]})
    first.close()
    second = engine_factory(maxsize=100)
    assert second.get(key, MISS) == {"value": [1, 2, None]}


def test_persistence_across_reopen_through_mcache(engine_factory: EngineFactory) -> None:
    if not engine_factory.capabilities.persistent:
        pytest.skip(f"{engine_factory.name} is not persistent (capabilities.persistent is False)")
    calls: list[int] = []

    def square(x: int) -> int:
        calls.append(x)
        return x * x

    first = engine_factory.mcache(maxsize=100)(square)
    assert first(7) == 49
    first.cache_engine.close()
    second = engine_factory.mcache(maxsize=100)(square)
    assert second(7) == 49
    assert calls == [7]
    assert second.cache_info().hits == 1


# --- engine level: async (async-native engines: aget/aset/adelete/aclear/aexists/aclose) ---


def arun(main: Callable[[], Any]) -> Any:
    """Run the coroutine function `main` in a fresh event loop, as each asyncio.run does."""
    return asyncio.run(main())


def async_sample_keys(engine: Any) -> list[Any]:
    # The instance's capabilities: one engine class may serve both local and server caches.
    digests = [stable_digest("tests.contract", (i,)) for i in range(3)]
    if capabilities_of(engine).stable_keys:
        return digests
    return [0, 2**70, "a", "", b"1", 1.5, None, (1, "a"), (), frozenset({1, 2}), *digests]


def test_async_roundtrip_over_key_types(engine_factory: EngineFactory) -> None:
    engine = engine_factory.aengine()
    keys = async_sample_keys(engine)

    async def main() -> None:
        for index, key in enumerate(keys):
            await engine.aset(key, ("value", index))
        for index, key in enumerate(keys):
            assert await engine.aget(key, MISS) == ("value", index), key
            assert await engine.aexists(key)

    arun(main)
    assert len(engine) == len(keys)  # the sync bookkeeping sees what the async API wrote


def test_async_none_is_a_value_and_absent_is_miss(engine_factory: EngineFactory) -> None:
    engine = engine_factory.aengine()
    absent, stored = stable_digest("t", ("absent",)), stable_digest("t", ("none",))

    async def main() -> None:
        await engine.aset(stored, None)
        assert await engine.aget(stored, MISS) is None
        assert await engine.aexists(stored)
        assert await engine.aget(absent, MISS) is MISS
        assert await engine.aget(absent) is None
        assert await engine.aget(absent, "fallback") == "fallback"
        assert not await engine.aexists(absent)

    arun(main)


def test_async_overwrite_and_delete(engine_factory: EngineFactory) -> None:
    engine = engine_factory.aengine()

    async def main() -> None:
        await engine.aset("k", 1)
        await engine.aset("k", 2)
        assert await engine.aget("k", MISS) == 2
        await engine.aset("other", None)
        assert await engine.adelete("k") is True
        assert await engine.adelete("k") is False
        assert await engine.aget("k", MISS) is MISS
        assert await engine.adelete("never-set") is False
        assert await engine.adelete("other") is True  # an entry holding None is an entry

    arun(main)
    assert len(engine) == 0


def test_async_clear_and_sync_bookkeeping(engine_factory: EngineFactory) -> None:
    # The wrapper's cache_info/cache_clear/cache_delete use the sync len/clear/delete,
    # which must work on an async-only engine too.
    engine = (
        engine_factory.aengine(maxsize=50)
        if not engine_factory.options().get("url")
        else engine_factory.aengine()
    )

    async def fill() -> None:
        for i in range(20):
            await engine.aset(f"k{i}", i)

    arun(fill)
    assert len(engine) == 20
    assert engine.delete("k0") is True
    assert engine.delete("k0") is False
    assert len(engine) == 19
    engine.clear()
    assert len(engine) == 0
    arun(fill)

    async def clear_then_use() -> None:
        await engine.aclear()
        assert all([await engine.aget(f"k{i}", MISS) is MISS for i in range(20)])
        await engine.aset("after", 1)
        assert await engine.aget("after", MISS) == 1

    arun(clear_then_use)
    assert len(engine) == 1


def test_async_config_ttl_expires_entries(engine_factory: EngineFactory) -> None:
    engine = engine_factory.aengine(ttl=TTL)

    async def main() -> None:
        await engine.aset("k", "v")
        assert await engine.aget("k", MISS) == "v"
        await asyncio.sleep(EXPIRED)
        assert await engine.aget("k", MISS) is MISS
        assert not await engine.aexists("k")

    arun(main)
    assert len(engine) == 0


def test_async_expiry_outlives_the_event_loop(engine_factory: EngineFactory) -> None:
    # Written in one asyncio.run and read after it ended: expiry must not depend on a
    # timer of the loop that wrote the entry.
    engine = engine_factory.aengine(ttl=TTL)
    arun(lambda: engine.aset("k", "v"))
    time.sleep(EXPIRED)
    assert arun(lambda: engine.aget("k", MISS)) is MISS
    assert engine.delete("k") is False


def test_async_per_entry_ttl(engine_factory: EngineFactory) -> None:
    engine = engine_factory.aengine(ttl=60)

    async def main() -> None:
        await engine.aset("short", 1, ttl=TTL)
        await engine.aset("long", 2)
        await engine.aset("longer", 3, ttl=60)
        assert await engine.aget("short", MISS) == 1
        await asyncio.sleep(EXPIRED)
        assert await engine.aget("short", MISS) is MISS
        assert await engine.aget("long", MISS) == 2
        assert await engine.aget("longer", MISS) == 3
        for bad in (0, -1):
            with pytest.raises(ConfigurationError, match="ttl"):
                await engine.aset("k", 1, ttl=bad)

    arun(main)
    assert len(engine) == 2


def test_async_per_entry_ttl_without_expiry_is_refused(engine_factory: EngineFactory) -> None:
    engine = engine_factory.aengine()
    if engine.expires:
        pytest.skip(f"{engine_factory.name} was built to expire entries")

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="without expiry"):
            await engine.aset("k", 1, ttl=5)
        assert await engine.aget("k", MISS) is MISS

    arun(main)


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "rr", "ttl"])
def test_async_maxsize_bound_enforced(engine_factory: EngineFactory, policy: str) -> None:
    options: dict[str, Any] = {"maxsize": 5, "policy": policy}
    if policy == "ttl":
        options["ttl"] = 60
    engine = engine_factory.aengine(**options)
    assert engine.maxsize == 5

    async def main() -> None:
        for i in range(15):
            await engine.aset(f"k{i}", i)
            assert len(engine) <= 5
        assert await engine.aget("k14", MISS) == 14  # the entry just written is kept

    arun(main)
    assert len(engine) == 5


@pytest.mark.parametrize(
    ("policy", "reads", "kept"),
    [("lru", "a", "acd"), ("fifo", "aaa", "bcd"), ("lfu", "aac", "acd")],
)
def test_async_eviction_order(
    engine_factory: EngineFactory, policy: str, reads: str, kept: str
) -> None:
    engine = engine_factory.aengine(policy=policy, maxsize=3)

    async def main() -> str:
        for key in "abc":
            await engine.aset(key, key)
        for key in reads:
            assert await engine.aget(key, MISS) == key
        await engine.aset("d", "d")
        return "".join([k for k in "abcd" if await engine.aget(k, MISS) is not MISS])

    assert arun(main) == kept


def test_async_default_bound(engine_factory: EngineFactory) -> None:
    engine = engine_factory.aengine()
    if engine.maxsize is None:
        pytest.skip(f"{engine_factory.variant} is bounded by its server, not by maxsize")
    assert engine.maxsize == DEFAULT_MAXSIZE

    async def main() -> None:
        for i in range(DEFAULT_MAXSIZE + 50):
            await engine.aset(f"k{i}", i)

    arun(main)
    assert len(engine) == DEFAULT_MAXSIZE


def test_async_maxsize_none_is_unbounded(engine_factory: EngineFactory) -> None:
    engine = engine_factory.aengine(maxsize=None)
    assert engine.maxsize is None
    count = DEFAULT_MAXSIZE + 100

    async def main() -> None:
        for i in range(count):
            await engine.aset(f"k{i}", i)
        assert await engine.aget("k0", MISS) == 0

    arun(main)
    assert len(engine) == count


def test_async_engine_serves_many_event_loops(engine_factory: EngineFactory) -> None:
    # asyncio.run() makes a new loop each time: an engine must serve the next one.
    engine = engine_factory.aengine()
    for round_ in range(3):
        arun(lambda r=round_: engine.aset(f"k{r}", r))
    assert [arun(lambda r=r: engine.aget(f"k{r}", MISS)) for r in range(3)] == [0, 1, 2]


def test_async_aclose_is_idempotent(engine_factory: EngineFactory) -> None:
    engine = engine_factory.aengine()

    async def main() -> None:
        await engine.aset("k", 1)
        await engine.aclose()
        await engine.aclose()

    arun(main)
    engine.close()  # and the sync close after it
    arun(engine.aclose)


def test_async_with_closes(engine_factory: EngineFactory) -> None:
    engine = engine_factory.aengine()
    closed: list[bool] = []
    real_aclose = engine.aclose

    async def recording_aclose() -> None:
        closed.append(True)
        await real_aclose()

    engine.aclose = recording_aclose  # a spy on the real aclose, not a replacement

    async def main() -> None:
        async with engine as entered:
            assert entered is engine
            await entered.aset("k", 1)
            assert await entered.aget("k", MISS) == 1
        assert closed == [True]
        with pytest.raises(RuntimeError, match="inside"):
            async with engine:
                raise RuntimeError("raised inside the block")
        assert closed == [True, True]

    arun(main)


def test_async_persistence_across_reopen(engine_factory: EngineFactory) -> None:
    first = engine_factory.aengine()
    if not capabilities_of(first).persistent:
        pytest.skip(f"{engine_factory.variant} is not persistent")
    key = stable_digest("tests.contract.persist", ("k",))

    async def write() -> None:
        await first.aset(key, {"value": [1, 2, None]})
        await first.aclose()

    arun(write)
    second = engine_factory.aengine()
    assert arun(lambda: second.aget(key, MISS)) == {"value": [1, 2, None]}


# --- decorator level: sync ----------------------------------------------------------------


def test_hits_and_misses_are_counted(engine_factory: EngineFactory) -> None:
    calls: list[int] = []

    @engine_factory.mcache(maxsize=10)
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert [double(1), double(1), double(2), double(1)] == [2, 2, 4, 2]
    assert calls == [1, 2]
    info = double.cache_info()
    assert (info.hits, info.misses, info.maxsize, info.currsize) == (2, 2, 10, 2)


def test_none_result_is_cached(engine_factory: EngineFactory) -> None:
    calls: list[int] = []

    @engine_factory.mcache()
    def nothing(x: int) -> None:
        calls.append(x)

    assert nothing(1) is None
    assert nothing(1) is None
    assert calls == [1]
    assert nothing.cache_info().hits == 1


@pytest.mark.parametrize("falsy", [0, "", [], False, 0.0, (), {}])
def test_falsy_results_are_cached(engine_factory: EngineFactory, falsy: Any) -> None:
    calls: list[int] = []

    @engine_factory.mcache()
    def produce(x: int) -> Any:
        calls.append(x)
        return falsy

    assert produce(1) == falsy
    result = produce(1)
    assert result == falsy
    assert type(result) is type(falsy)
    assert calls == [1]


def test_kwargs_order_is_irrelevant(engine_factory: EngineFactory) -> None:
    calls: list[tuple[Any, ...]] = []

    @engine_factory.mcache()
    def combine(a: int, b: int, c: int = 0) -> int:
        calls.append((a, b, c))
        return a + 10 * b + 100 * c

    @engine_factory.mcache()
    def spread(**options: int) -> int:
        calls.append(tuple(sorted(options.items())))
        return sum(options.values())

    assert combine(a=1, b=2, c=3) == combine(c=3, b=2, a=1) == combine(b=2, c=3, a=1) == 321
    assert spread(x=1, y=2, z=3) == spread(z=3, x=1, y=2) == 6
    assert calls == [(1, 2, 3), (("x", 1), ("y", 2), ("z", 3))]


def test_positional_and_keyword_share_a_key(engine_factory: EngineFactory) -> None:
    calls: list[tuple[int, int, int]] = []

    @engine_factory.mcache()
    def combine(a: int, b: int, c: int = 0) -> int:
        calls.append((a, b, c))
        return a + 10 * b

    results = [
        combine(1, 2),
        combine(1, b=2),
        combine(a=1, b=2),
        combine(b=2, a=1),
        combine(1, 2, 0),
    ]
    assert results == [21] * 5
    assert calls == [(1, 2, 0)]
    assert combine.cache_info().hits == 4
    assert combine.cache_key(1, 2) == combine.cache_key(b=2, a=1) == combine.cache_key(1, 2, c=0)
    assert combine(1, 2, 5) == 21  # a different default value is a different key
    assert len(calls) == 2


def test_keys_are_typed(engine_factory: EngineFactory) -> None:
    seen: list[Any] = []

    @engine_factory.mcache()
    def echo(x: Any) -> str:
        seen.append(x)
        return f"{type(x).__name__}:{x!r}"

    values: list[Any] = [1, 1.0, True, "1", b"1"]
    first = [echo(v) for v in values]
    assert first == ["int:1", "float:1.0", "bool:True", "str:'1'", "bytes:b'1'"]
    assert echo.cache_info().misses == 5
    assert [echo(v) for v in values] == first
    assert echo.cache_info().hits == 5
    assert seen == values


def test_unhashable_arguments_work(engine_factory: EngineFactory) -> None:
    calls: list[Any] = []

    @engine_factory.mcache()
    def describe(value: Any) -> str:
        calls.append(value)
        return repr(value)

    arguments: list[Any] = [
        [1, 2],
        {"a": 1, "b": [2, 3]},
        {3, 1, 2},
        [{"x": {1, 2}}, (3, [4, {"y": [5]}])],
        {"nested": {"deeper": [[], {}]}},
    ]
    first = [describe(a) for a in arguments]
    assert describe.cache_info().misses == len(arguments)
    assert [describe(a) for a in arguments] == first
    assert describe.cache_info().hits == len(arguments)
    # dicts and sets ignore order; a tuple is not a list
    describe({"b": [2, 3], "a": 1})
    describe({2, 3, 1})
    assert describe.cache_info().misses == len(arguments)
    assert describe((1, 2)) == "(1, 2)"
    assert describe.cache_info().misses == len(arguments) + 1


def test_ttl_expiry(engine_factory: EngineFactory) -> None:
    if not engine_factory.capabilities.ttl:
        pytest.skip(f"{engine_factory.name} does not expire entries")
    calls: list[int] = []

    @engine_factory.mcache(ttl=TTL)
    def stamp(x: int) -> int:
        calls.append(x)
        return len(calls)

    assert stamp(1) == stamp(1) == 1
    time.sleep(EXPIRED)
    assert stamp(1) == 2
    assert calls == [1, 1]


def test_cache_delete_and_clear(engine_factory: EngineFactory) -> None:
    calls: list[int] = []

    @engine_factory.mcache()
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    square(2)
    square(3)
    assert square.cache_delete(2) is True
    assert square.cache_delete(2) is False
    assert square.cache_delete(x=99) is False
    assert square.cache_info().currsize == 1
    square(2)
    square(3)
    assert calls == [2, 3, 2]
    square.cache_clear()
    info = square.cache_info()
    assert (info.hits, info.misses, info.currsize) == (0, 0, 0)
    square(3)
    assert calls == [2, 3, 2, 3]


def test_exceptions_are_propagated_not_cached(engine_factory: EngineFactory) -> None:
    calls: list[int] = []

    @engine_factory.mcache()
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise ValueError("first call fails")
        return x

    with pytest.raises(ValueError, match="first call fails"):
        flaky(1)
    assert flaky(1) == 1
    assert flaky(1) == 1
    assert calls == [1, 1]
    assert flaky.cache_info().currsize == 1


STAMPEDE_THREADS = 16


def _all_called(called: list[int]) -> None:
    """Inside the computation: wait until every stampeding thread has called the cached
    function, then a little more for the last ones to reach the wait; so that on a loaded
    machine no thread arrives after the computation ended (and computes again, rightly)."""
    deadline = time.monotonic() + JOIN
    while len(called) < STAMPEDE_THREADS and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)


def _stampede(
    function: Callable[[], Any], threads: int = STAMPEDE_THREADS, called: list[int] | None = None
) -> list[Any]:
    barrier = threading.Barrier(threads)
    outcomes: list[Any] = [None] * threads

    def worker(index: int) -> None:
        barrier.wait()
        if called is not None:
            called.append(index)
        try:
            outcomes[index] = function()
        except BaseException as exc:
            outcomes[index] = exc

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for worker_thread in workers:
        worker_thread.start()
    for worker_thread in workers:
        worker_thread.join(timeout=JOIN)
    assert not any(t.is_alive() for t in workers), "stampede threads stuck"
    return outcomes


def test_thread_stampede_computes_once(engine_factory: EngineFactory) -> None:
    calls: list[int] = []
    called: list[int] = []

    @engine_factory.mcache()
    def slow(x: int) -> dict[str, int]:
        calls.append(x)
        _all_called(called)
        return {"x": x}

    outcomes = _stampede(lambda: slow(21), called=called)
    assert outcomes == [{"x": 21}] * 16
    assert calls == [21]
    assert slow.cache_info().misses == 1
    assert slow(21) == {"x": 21}
    assert calls == [21]


def test_thread_stampede_shares_the_exception(engine_factory: EngineFactory) -> None:
    calls: list[int] = []
    called: list[int] = []
    failing = [True]

    @engine_factory.mcache()
    def slow(x: int) -> int:
        calls.append(x)
        if failing[0]:
            _all_called(called)
            raise LookupError(f"no {x}")
        return x

    outcomes = _stampede(lambda: slow(21), called=called)
    assert all(isinstance(o, LookupError) and str(o) == "no 21" for o in outcomes), outcomes
    assert calls == [21]
    failing[0] = False
    assert slow(21) == 21  # the exception was not cached: the next call recomputes
    assert calls == [21, 21]


def test_same_key_reentry_does_not_deadlock(engine_factory: EngineFactory) -> None:
    entered = [False]

    @engine_factory.mcache()
    def reenter(x: int) -> int:
        if not entered[0]:
            entered[0] = True
            return reenter(x) + 1
        return x

    assert run_in_thread(lambda: reenter(5)) == [6]
    assert reenter(5) == 6  # a later call sees what the first caller got
    assert reenter.cache_info().hits == 1


# --- decorator level: async ---------------------------------------------------------------


def test_async_hits_misses_and_none(engine_factory: EngineFactory) -> None:
    calls: list[Any] = []

    @engine_factory.mcache(maxsize=10)
    async def fetch(x: Any) -> Any:
        calls.append(x)
        await asyncio.sleep(0)
        return None if x is None else [x]

    async def main() -> list[Any]:
        return [await fetch(1), await fetch(1), await fetch(None), await fetch(None)]

    assert asyncio.run(main()) == [[1], [1], None, None]
    assert calls == [1, None]
    info = fetch.cache_info()
    assert (info.hits, info.misses, info.currsize) == (2, 2, 2)


def test_async_keys_typed_and_unhashable(engine_factory: EngineFactory) -> None:
    calls: list[Any] = []

    @engine_factory.mcache()
    async def echo(x: Any, *, flag: bool = False) -> str:
        calls.append(x)
        return repr(x)

    values: list[Any] = [1, 1.0, True, "1", b"1", [1], {"a": {1}}]

    async def main() -> None:
        for value in values:
            await echo(value)
        for value in values:
            await echo(value, flag=False)
        await echo({"a": {1}})

    asyncio.run(main())
    assert calls == values
    assert echo.cache_info().misses == len(values)


def test_async_ttl_delete_clear(engine_factory: EngineFactory) -> None:
    if not engine_factory.capabilities.ttl:
        pytest.skip(f"{engine_factory.name} does not expire entries")
    calls: list[int] = []

    @engine_factory.mcache(ttl=TTL)
    async def stamp(x: int) -> int:
        calls.append(x)
        return len(calls)

    async def main() -> None:
        assert await stamp(1) == await stamp(1) == 1
        await asyncio.sleep(EXPIRED)
        assert await stamp(1) == 2
        assert await stamp.acache_delete(1) is True
        assert await stamp.acache_delete(1) is False
        assert await stamp(1) == 3
        await stamp.acache_clear()
        assert stamp.cache_info().currsize == 0
        assert await stamp(1) == 4

    asyncio.run(main())


def test_async_exceptions_propagated_not_cached(engine_factory: EngineFactory) -> None:
    calls: list[int] = []

    @engine_factory.mcache()
    async def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise ValueError("first call fails")
        return x

    async def main() -> None:
        with pytest.raises(ValueError, match="first call fails"):
            await flaky(1)
        assert await flaky(1) == 1
        assert await flaky(1) == 1

    asyncio.run(main())
    assert calls == [1, 1]


def test_asyncio_stampede_computes_once(engine_factory: EngineFactory) -> None:
    calls: list[int] = []

    @engine_factory.mcache()
    async def slow(x: int) -> dict[str, int]:
        calls.append(x)
        await asyncio.sleep(0.05)
        return {"x": x}

    async def main() -> list[Any]:
        return await asyncio.gather(*(slow(3) for _ in range(50)))

    assert asyncio.run(main()) == [{"x": 3}] * 50
    assert calls == [3]
    assert slow.cache_info().misses == 1


def test_asyncio_stampede_shares_the_exception(engine_factory: EngineFactory) -> None:
    calls: list[int] = []
    failing = [True]

    @engine_factory.mcache()
    async def slow(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.05)
        if failing[0]:
            raise LookupError(f"no {x}")
        return x

    async def main() -> list[Any]:
        return await asyncio.gather(*(slow(3) for _ in range(50)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, LookupError) for o in outcomes), outcomes
    assert calls == [3]
    failing[0] = False
    assert asyncio.run(slow(3)) == 3
    assert calls == [3, 3]


def test_async_same_key_reentry_does_not_deadlock(engine_factory: EngineFactory) -> None:
    entered = [False]

    @engine_factory.mcache()
    async def reenter(x: int) -> int:
        if not entered[0]:
            entered[0] = True
            return await reenter(x) + 1
        return x

    assert run_in_thread(lambda: asyncio.run(reenter(5))) == [6]
    assert asyncio.run(reenter(5)) == 6


# --- a degraded backend still answers -----------------------------------------------------


def _faulty_class(base: type, name: str, failing: frozenset[str]) -> type:
    """A real engine of `base`'s kind whose `failing` operations raise OSError, like a
    full disk or a dropped connection (a fault that cannot be produced for real here)."""

    class FaultyEngine:
        capabilities = base.capabilities

        def __init__(self, config: CacheConfig) -> None:
            self.inner = base(config)
            self.maxsize = self.inner.maxsize
            self.capabilities = capabilities_of(self.inner)  # e.g. a server's, per instance

        @classmethod
        def unsupported(cls, config: CacheConfig) -> str | None:
            return base.unsupported(config)  # type: ignore[no-any-return, attr-defined]

        def get(self, key: Any, default: Any = None) -> Any:
            if "get" in failing:
                raise OSError(28, "No space left on device")
            return self.inner.get(key, default)

        def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
            if "set" in failing:
                raise OSError(28, "No space left on device")
            self.inner.set(key, value, ttl)

        def delete(self, key: Any) -> bool:
            return bool(self.inner.delete(key))

        def clear(self) -> None:
            self.inner.clear()

        def exists(self, key: Any) -> bool:
            return bool(self.inner.exists(key))

        def __len__(self) -> int:
            return len(self.inner)

        def close(self) -> None:
            self.inner.close()

        # The async twin, used by the wrapper for async-native engines.
        async def aget(self, key: Any, default: Any = None) -> Any:
            if "get" in failing:
                raise OSError(28, "No space left on device")
            return await self.inner.aget(key, default)

        async def aset(self, key: Any, value: Any, ttl: float | None = None) -> None:
            if "set" in failing:
                raise OSError(28, "No space left on device")
            await self.inner.aset(key, value, ttl)

        async def adelete(self, key: Any) -> bool:
            return bool(await self.inner.adelete(key))

        async def aclear(self) -> None:
            await self.inner.aclear()

        async def aclose(self) -> None:
            await self.inner.aclose()

        # Leases (engines that offer them) work: only `failing` operations fail.
        def lease(self, key: Any, seconds: float) -> Any:
            return self.inner.lease(key, seconds)

        def release(self, key: Any, token: Any) -> None:
            self.inner.release(key, token)

        async def alease(self, key: Any, seconds: float) -> Any:
            return await self.inner.alease(key, seconds)

        async def arelease(self, key: Any, token: Any) -> None:
            await self.inner.arelease(key, token)

    FaultyEngine.name = name  # type: ignore[attr-defined]
    return FaultyEngine


def _needs_sync_api(factory: EngineFactory) -> None:
    if not factory.capabilities.sync_api:
        pytest.skip(f"{factory.name} is async-only: it serves async def functions only")


def _local_or_server(factory: EngineFactory) -> Callable[..., Any]:
    # mcache is a local cache and refuses url=: an engine on a server is decorated with ucache.
    return ucache if factory.options().get("url") else mcache


@pytest.fixture
def faulty_engine(engine_factory: EngineFactory) -> Iterator[Callable[..., str]]:
    """Register, on the global manager, a faulty twin of the engine under test; returns a
    function `register(*failing_operations) -> engine name`. Unregistered afterwards."""
    engine_factory.require()
    names: list[str] = []

    def register(*failing: str) -> str:
        name = f"faulty-{engine_factory.name}-{uuid.uuid4().hex[:8]}"
        get_manager().register(name, _faulty_class(engine_factory.cls, name, frozenset(failing)))
        names.append(name)
        return name

    yield register
    for name in names:
        get_manager().unregister(name)


@pytest.mark.parametrize("failing", [("get", "set"), ("set",)])
def test_degraded_backend_still_answers(
    engine_factory: EngineFactory, faulty_engine: Callable[..., str], failing: tuple[str, ...]
) -> None:
    _needs_sync_api(engine_factory)
    calls: list[int] = []

    @_local_or_server(engine_factory)(
        cache_engine=faulty_engine(*failing), **engine_factory.options()
    )
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    with pytest.warns(CacheFaultWarning) as record:
        results = [square(x) for x in (3, 3, 4, 3, 4)]
    assert results == [9, 9, 16, 9, 16]
    assert calls == [3, 3, 4, 3, 4]  # nothing could be stored, nothing wrong was served
    assert len(record) == 1, [str(w.message) for w in record]
    assert "OSError" in str(record[0].message)


def test_fault_warning_points_at_the_callers_line(
    engine_factory: EngineFactory, faulty_engine: Callable[..., str]
) -> None:
    _needs_sync_api(engine_factory)

    @_local_or_server(engine_factory)(
        cache_engine=faulty_engine("get", "set"), **engine_factory.options()
    )
    def square(x: int) -> int:
        return x * x

    with pytest.warns(CacheFaultWarning) as record:
        square(3)
    assert record[0].filename == __file__


@pytest.mark.parametrize("failing", [("get", "set"), ("set",)])
def test_degraded_backend_still_answers_async(
    engine_factory: EngineFactory, faulty_engine: Callable[..., str], failing: tuple[str, ...]
) -> None:
    calls: list[int] = []

    @_local_or_server(engine_factory)(
        cache_engine=faulty_engine(*failing), **engine_factory.options()
    )
    async def square(x: int) -> int:
        calls.append(x)
        return x * x

    async def main() -> list[int]:
        return [await square(x) for x in (3, 3, 4, 3, 4)]

    with pytest.warns(CacheFaultWarning) as record:
        results = asyncio.run(main())
    assert results == [9, 9, 16, 9, 16]
    assert calls == [3, 3, 4, 3, 4]
    assert len(record) == 1, [str(w.message) for w in record]


@pytest.mark.parametrize("failing", [("get", "set"), ("set",)])
def test_degraded_backend_without_fallback_raises(
    engine_factory: EngineFactory, faulty_engine: Callable[..., str], failing: tuple[str, ...]
) -> None:
    name = faulty_engine(*failing)

    @_local_or_server(engine_factory)(cache_engine=name, fallback=False, **engine_factory.options())
    async def asquare(x: int) -> int:
        return x * x

    with pytest.raises(OSError, match="No space left"):
        asyncio.run(asquare(3))
    _needs_sync_api(engine_factory)

    @_local_or_server(engine_factory)(cache_engine=name, fallback=False, **engine_factory.options())
    def square(x: int) -> int:
        return x * x

    with pytest.raises(OSError, match="No space left"):
        square(3)


# --- eviction order: every policy an engine serves, served as named ---------------------------


def _present(engine: Any, keys: str) -> str:
    # Read only at the end of a test: a read may count as a use for lru and lfu.
    return "".join(k for k in keys if engine.get(k, MISS) is not MISS)


def _fill(engine: Any, keys: str) -> None:
    for key in keys:
        engine.set(key, key)
        time.sleep(0.002)  # distinct store and access times for engines that keep them on disk


def test_lru_evicts_the_least_recently_used(engine_factory: Any) -> None:
    engine = engine_factory(policy="lru", maxsize=3)
    _fill(engine, "abc")
    assert engine.get("a") == "a"  # b is now the least recently used
    time.sleep(0.002)
    engine.set("d", "d")
    assert _present(engine, "abcd") == "acd"


def test_fifo_evicts_the_oldest_insert_whatever_the_reads(engine_factory: Any) -> None:
    engine = engine_factory(policy="fifo", maxsize=3)
    _fill(engine, "abc")
    for _ in range(3):
        engine.get("a")
    engine.set("d", "d")
    assert _present(engine, "abcd") == "bcd"


def test_lfu_evicts_the_least_frequently_used(engine_factory: Any) -> None:
    engine = engine_factory(policy="lfu", maxsize=3)
    _fill(engine, "abc")
    for key in "aac":  # a read twice, c once, b never
        engine.get(key)
    engine.set("d", "d")
    assert _present(engine, "abcd") == "acd"


def test_rr_evicts_one_of_the_older_entries(engine_factory: Any) -> None:
    engine = engine_factory(policy="rr", maxsize=3)
    _fill(engine, "abcd")
    kept = _present(engine, "abcd")
    assert len(kept) == 3
    assert "d" in kept
