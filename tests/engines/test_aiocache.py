"""AioCacheEngine: the bound on aiocache's memory cache, expiry, event loops in threads, and
on a real redis-server: namespaces, signed payloads, sharing, selection, outages."""

from __future__ import annotations

import asyncio
import math
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from twat_cache import MISS, CacheConfig, acache, mcache
from twat_cache.config import DEFAULT_MAXSIZE
from twat_cache.engines.manager import get_manager
from twat_cache.exceptions import (
    CacheFaultWarning,
    CacheWarning,
    ConfigurationError,
    SecurityWarning,
)
from twat_cache.keys import stable_digest
from twat_cache.serializers import Serializer

aiocache = pytest.importorskip("aiocache")
cachetools = pytest.importorskip("cachetools")

# after the importorskip
from twat_cache.engines.aiocache import (  # noqa: E402
    AioCacheEngine,
    AioCacheMemory,
    AioCacheRemote,
)

TTL, EXPIRED = 0.1, 0.2


def make(**options: Any) -> Any:
    config = CacheConfig(**options)
    assert AioCacheEngine.unsupported(config) is None
    return AioCacheEngine(config)


def run(main: Callable[[], Any]) -> Any:
    return asyncio.run(main())


# --- memory ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "store_class", "bound"),
    [
        ({}, "LRUCache", DEFAULT_MAXSIZE),
        ({"policy": "lfu", "maxsize": 8}, "LFUCache", 8),
        ({"policy": "fifo", "maxsize": 8}, "FIFOCache", 8),
        ({"policy": "rr", "maxsize": 8}, "RRCache", 8),
        ({"ttl": 60, "maxsize": 8}, "TLRUCache", 8),
        ({"policy": "lru", "ttl": 60}, "TLRUCache", DEFAULT_MAXSIZE),
        ({"maxsize": None}, "LRUCache", math.inf),
    ],
)
def test_policy_maps_to_a_cachetools_store_inside_aiocache(
    options: dict[str, Any], store_class: str, bound: float
) -> None:
    engine = make(**options)
    assert type(engine) is AioCacheMemory
    assert engine._aio._cache is engine._store  # aiocache reads and writes our store
    assert type(engine._store._cache) is getattr(cachetools, store_class)
    assert engine._store.maxsize == bound


def test_bound_is_enforced_in_aiocaches_own_store() -> None:
    engine = make(maxsize=10)

    async def main() -> None:
        for i in range(1000):
            await engine.aset(i, i)

    run(main)
    assert len(engine._aio._cache) == 10  # what aiocache itself holds
    assert len(engine) == 10
    assert sorted(engine._aio._cache) == list(range(990, 1000))  # LRU kept the newest


def test_policies_with_expiry_other_than_lru_are_refused() -> None:
    for policy in ("lfu", "fifo", "rr"):
        reason = AioCacheEngine.unsupported(CacheConfig(policy=policy, ttl=60))
        assert reason is not None
        assert policy in reason


def test_none_and_falsy_values_are_cached() -> None:
    engine = make()

    async def main() -> list[Any]:
        for key, value in enumerate([None, 0, "", (), False]):
            await engine.aset(key, value)
        return [await engine.aget(key, MISS) for key in range(6)]

    assert run(main) == [None, 0, "", (), False, MISS]


def test_ttl_expiry_config_and_per_entry() -> None:
    engine = make(ttl=60)

    async def main() -> None:
        await engine.aset("short", 1, ttl=TTL)
        await engine.aset("long", 2)
        await asyncio.sleep(EXPIRED)
        assert await engine.aget("short", MISS) is MISS
        assert await engine.aget("long", MISS) == 2

    run(main)
    assert len(engine) == 1
    short = make(ttl=TTL)
    run(lambda: short.aset("k", 1))
    time.sleep(EXPIRED)  # no event loop runs meanwhile: expiry is the store's, not a timer
    assert len(short) == 0
    assert run(lambda: short.aget("k", MISS)) is MISS


def test_sync_get_set_exists_name_their_async_twin() -> None:
    engine = make()
    for call, twin in [
        (lambda: engine.get("k"), "aget"),
        (lambda: engine.set("k", 1), "aset"),
        (lambda: engine.exists("k"), "aexists"),
        (lambda: "k" in engine, "aexists"),
    ]:
        with pytest.raises(TypeError, match=twin):
            call()


def _two_loops_in_two_threads(engine: Any, keys: int, rounds: int) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(offset: int) -> None:
        async def main() -> None:
            for r in range(rounds):
                key = f"k{(r * 7 + offset) % keys}"
                value = await engine.aget(key, MISS)
                if value is not MISS and value != ("v", key):
                    raise AssertionError(f"{key} read {value!r}")
                await engine.aset(key, ("v", key))
                if r % 10 == 0:
                    await asyncio.sleep(0)

        try:
            barrier.wait()
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "a loop thread is stuck"
    return errors


def test_two_event_loops_in_two_threads_share_one_memory_engine() -> None:
    engine = make(maxsize=16)
    assert _two_loops_in_two_threads(engine, keys=40, rounds=3000) == []
    assert len(engine) == 16


def test_a_changed_aiocache_layout_is_refused_not_run_unbounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fault injection: an aiocache whose memory cache keeps entries somewhere else.
    class Elsewhere(aiocache.SimpleMemoryCache):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            del self._cache
            self._entries: dict[Any, Any] = {}

        async def _get(self, key: Any, encoding: Any = None, _conn: Any = None) -> Any:
            return self._entries.get(key)

        async def _set(self, key: Any, value: Any, ttl: Any = None, **_: Any) -> bool:
            self._entries[key] = value
            return True

    monkeypatch.setattr(aiocache, "SimpleMemoryCache", Elsewhere)
    reason = AioCacheEngine.unsupported(CacheConfig(maxsize=10))
    assert reason is not None
    assert "cannot be bounded" in reason
    with pytest.raises(ConfigurationError, match="cannot be bounded"):
        AioCacheEngine(CacheConfig(maxsize=10))
    # A store that aiocache's layout ignores (a `_cache` dict it never reads) is caught too.

    class Ignoring(Elsewhere):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._cache: dict[Any, Any] = {}

    monkeypatch.setattr(aiocache, "SimpleMemoryCache", Ignoring)
    assert "cannot be bounded" in (AioCacheEngine.unsupported(CacheConfig()) or "")


def test_acache_on_aiocache_memory_end_to_end() -> None:
    calls: list[int] = []

    @acache(cache_engine="aiocache", maxsize=3)
    async def square(x: int) -> int | None:
        calls.append(x)
        return None if x == 0 else x * x

    async def main() -> None:
        assert [await square(x) for x in (2, 2, 0, 0, 3)] == [4, 4, None, None, 9]
        info = square.cache_info()
        assert (info.hits, info.misses, info.maxsize, info.currsize) == (2, 3, 3, 3)
        assert await square.acache_delete(2) is True
        assert await square.acache_delete(2) is False
        assert square.cache_delete(3) is True
        await square(5)
        await square(6)
        await square(7)
        assert square.cache_info().currsize == 3
        await square.acache_clear()
        assert square.cache_info() == (0, 0, 3, 0)
        await square(6)
        square.cache_clear()
        assert square.cache_info().currsize == 0

    run(main)
    assert square.cache_engine.name == "aiocache"
    assert calls == [2, 0, 3, 5, 6, 7, 6]


def test_sync_function_falls_back_with_one_warning() -> None:
    with pytest.warns(CacheWarning) as record:

        @mcache(cache_engine="aiocache")
        def double(x: int) -> int:
            return 2 * x

    assert len(record) == 1, [str(w.message) for w in record]
    assert "async only" in str(record[0].message)
    assert double.cache_engine.name in get_manager().chain("memory")
    assert double(2) == double(2) == 4
    assert double.cache_info().hits == 1


def test_default_async_chain_stays_on_in_process_memory() -> None:
    @acache
    async def fetch(x: int) -> int:
        return x

    assert fetch.cache_engine.name in get_manager().chain("async")
    assert fetch.cache_engine.name != "aiocache"


# --- URLs: what is served, and why not ----------------------------------------------------


def test_memcached_url_gives_the_reason_it_is_not_served() -> None:
    config = CacheConfig(url="memcached://127.0.0.1:11211", folder_name="f")
    reason = AioCacheEngine.unsupported(config)
    assert reason is not None
    expected = "aiomcache" if "memcached" not in aiocache.AIOCACHE_CACHES else "memcached"
    assert expected in reason
    assert get_manager().available(config)["aiocache"] == reason


def test_unknown_scheme_and_missing_folder_are_refused() -> None:
    assert "http://" in (
        AioCacheEngine.unsupported(CacheConfig(url="http://x", folder_name="f")) or ""
    )
    assert "folder_name" in (AioCacheEngine.unsupported(CacheConfig(url="redis://x")) or "")
    with pytest.raises(ConfigurationError, match="folder_name"):
        AioCacheEngine(CacheConfig(url="redis://x"))


def test_maxsize_with_a_url_is_refused_with_the_reason() -> None:
    config = CacheConfig(url="redis://127.0.0.1:1/0", folder_name="f", maxsize=10)
    reason = AioCacheEngine.unsupported(config)
    assert reason is not None
    assert "maxsize" in reason
    assert "maxmemory" in reason
    with pytest.raises(ConfigurationError, match="maxmemory"):
        AioCacheEngine(config)
    explicit_policy = CacheConfig(url="redis://127.0.0.1:1/0", folder_name="f", policy="lfu")
    assert "maxmemory-policy" in (AioCacheEngine.unsupported(explicit_policy) or "")
    # maxsize=None (no bound asked) is what a server cache is
    assert AioCacheEngine.unsupported(config.merged(maxsize=None)) is None


def test_password_is_not_shown() -> None:
    engine = make(url="redis://user:s3cret@127.0.0.1:1/0", folder_name="f")
    assert type(engine) is AioCacheRemote
    assert "s3cret" not in repr(engine)
    assert engine.maxsize is None
    engine.close()


def test_unreachable_server_degrades_to_calling_the_function() -> None:
    # Nothing listens on port 1: connections are refused at once.
    calls: list[int] = []

    @acache(cache_engine="aiocache", url="redis://127.0.0.1:1/0")
    async def square(x: int) -> int:
        calls.append(x)
        return x * x

    async def main() -> list[int]:
        return [await square(x) for x in (3, 3, 4)]

    started = time.monotonic()
    with pytest.warns(CacheFaultWarning) as record:
        assert run(main) == [9, 9, 16]
    assert time.monotonic() - started < 5
    assert calls == [3, 3, 4]
    assert len(record) == 1, [str(w.message) for w in record]
    square.cache_engine.close()


# --- on a real redis-server -----------------------------------------------------------------


@pytest.fixture
def raw(redis_url: str) -> Any:
    """A plain redis-py client on the test's server: what another program would see."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def remote(redis_url: str) -> Any:
    opened: list[Any] = []

    def build(folder: str = "app", **options: Any) -> Any:
        engine = make(url=options.pop("url", redis_url), folder_name=folder, **options)
        opened.append(engine)
        return engine

    yield build
    for engine in opened:
        engine.close()


@pytest.mark.redis
def test_keys_live_under_the_cache_namespace(remote: Any, raw: Any) -> None:
    engine = remote("app")
    key = stable_digest("m.f", (1,))
    run(lambda: engine.aset(key, {"v": 1}))
    assert raw.keys("*") == [f"twat_cache:app:{key}".encode()]
    payload = raw.get(f"twat_cache:app:{key}")
    assert payload.startswith(b"TWC\x01")  # our signed payload, stored untouched


@pytest.mark.redis
def test_clear_removes_only_its_own_namespace(remote: Any, raw: Any) -> None:
    first, second = remote("first"), remote("second")
    # a name with glob characters must not match other namespaces
    starry = remote("st*r")

    async def fill() -> None:
        for i in range(1200):  # more than one SCAN/UNLINK batch
            await first.aset(f"k{i}", i)
        for i in range(5):
            await second.aset(f"k{i}", i)
            await starry.aset(f"k{i}", i)

    run(fill)
    raw.set("foreign:key", b"theirs")
    raw.set("twat_cache:firstling:k", b"x")  # a prefix of ours, not our namespace
    assert (len(first), len(second), len(starry)) == (1200, 5, 5)
    first.clear()
    assert (len(first), len(second), len(starry)) == (0, 5, 5)
    assert raw.get("foreign:key") == b"theirs"
    assert raw.get("twat_cache:firstling:k") == b"x"
    run(second.aclear)
    assert (len(second), len(starry)) == (0, 5)
    assert raw.dbsize() == 2 + 5


@pytest.mark.redis
def test_two_engines_on_one_url_and_folder_share_entries(remote: Any) -> None:
    writer, reader, other = remote("shared"), remote("shared"), remote("other")
    key = stable_digest("m.f", ("x",))
    run(lambda: writer.aset(key, [1, None]))
    assert run(lambda: reader.aget(key, MISS)) == [1, None]
    assert run(lambda: other.aget(key, MISS)) is MISS
    assert reader.delete(key) is True
    assert run(lambda: writer.aget(key, MISS)) is MISS


@pytest.mark.redis
def test_unix_socket_url(redis_server: Any, redis_url: str, remote: Any) -> None:
    engine = remote("unix", url=redis_server.unix_url)
    run(lambda: engine.aset("k", 1))
    assert run(lambda: engine.aget("k", MISS)) == 1
    assert len(engine) == 1


class _Gadget:
    """Unpickling this writes a file: what a forged payload would do if it were loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.redis
def test_forged_payloads_are_misses_dropped_never_unpickled(
    remote: Any, raw: Any, tmp_path: Path
) -> None:
    engine = remote("victim")
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Gadget(control)))
    assert control.exists()  # the gadget is live: loading it would write its file

    marker = tmp_path / "pwned"
    gadget = pickle.dumps(_Gadget(marker))
    forged = {
        "raw-pickle": gadget,
        "other-key": Serializer(CacheConfig(), secret=b"x" * 32).frame(gadget),
        "unsigned": Serializer(CacheConfig(secure=False)).frame(gadget),
        "truncated": b"TWC",
    }
    for name, payload in forged.items():
        raw.set(f"twat_cache:victim:{name}", payload)

    async def read_all() -> list[Any]:
        return [await engine.aget(name, MISS) for name in forged]

    with pytest.warns(SecurityWarning) as record:
        assert run(read_all) == [MISS] * len(forged)
    assert len(record) == 1, [str(w.message) for w in record]
    assert "victim" in str(record[0].message)
    assert not marker.exists()
    assert raw.keys("twat_cache:victim:*") == []  # every rejected entry was dropped


@pytest.mark.redis
def test_forged_entry_is_recomputed_through_acache(redis_url: str, raw: Any) -> None:
    calls: list[int] = []

    @acache(cache_engine="aiocache", url=redis_url)
    async def square(x: int) -> int:
        calls.append(x)
        return x * x

    key = square.cache_engine.key_of(square.cache_key(4))
    raw.set(key, Serializer(CacheConfig(), secret=b"y" * 32).dumps(999))
    with pytest.warns(SecurityWarning):
        assert asyncio.run(square(4)) == 16
    assert asyncio.run(square(4)) == 16
    assert calls == [4]
    square.cache_engine.close()


@pytest.mark.redis
def test_acache_on_aiocache_redis_end_to_end(redis_url: str, raw: Any) -> None:
    calls: list[Any] = []

    @acache(cache_engine="aiocache", url=redis_url, ttl=60)
    async def fetch(x: Any) -> Any:
        calls.append(x)
        return None if x is None else {"x": x}

    async def main() -> None:
        results = [await fetch(v) for v in (1, 1, None, None, [2], [2])]
        assert results == [{"x": 1}, {"x": 1}, None, None, {"x": [2]}, {"x": [2]}]
        info = fetch.cache_info()
        assert (info.hits, info.misses, info.maxsize, info.currsize) == (3, 3, None, 3)
        assert await fetch.acache_delete(1) is True
        assert await fetch.acache_delete(1) is False
        assert fetch.cache_delete([2]) is True
        await fetch.acache_clear()
        assert fetch.cache_info() == (0, 0, None, 0)
        await fetch(3)

    run(main)
    engine = fetch.cache_engine
    assert engine.name == "aiocache"
    assert engine.capabilities.shared
    assert calls == [1, None, [2], 3]
    (key,) = raw.keys("*")
    assert key.startswith(f"twat_cache:{engine.config.folder_name}:".encode())
    assert 0 < raw.pttl(key) <= 60_000  # the ttl reached the server
    fetch.cache_clear()
    assert raw.dbsize() == 0
    engine.close()


@pytest.mark.redis
def test_acache_with_a_url_uses_a_server_engine(redis_url: str) -> None:
    @acache(url=redis_url)
    async def fetch(x: int) -> int:
        return x

    assert run(lambda: fetch(1)) == 1
    assert fetch.cache_engine.name in {"redis", "aiocache"}  # the redis chain
    assert fetch.cache_engine.capabilities.shared
    fetch.cache_engine.close()


@pytest.mark.redis
def test_unserializable_result_is_returned_uncached(redis_url: str) -> None:
    @acache(cache_engine="aiocache", url=redis_url)
    async def make_lock(x: int) -> Any:
        return threading.Lock()

    with pytest.warns(CacheFaultWarning, match="write"):
        first = run(lambda: make_lock(1))
    assert type(first) is type(threading.Lock())
    assert make_lock.cache_info().currsize == 0
    make_lock.cache_engine.close()


@pytest.mark.redis
def test_two_event_loops_in_two_threads_share_one_remote_engine(remote: Any) -> None:
    engine = remote("threads")
    assert _two_loops_in_two_threads(engine, keys=20, rounds=300) == []
    assert len(engine) == 20
    assert engine._loops == {}  # each loop's connections were closed when it ended


@pytest.mark.redis
def test_connections_close_with_their_event_loop(remote: Any, raw: Any) -> None:
    engine = remote("loops")

    def clients() -> int:
        return len(raw.client_list())

    baseline = clients()
    for i in range(5):
        run(lambda i=i: engine.aset(f"k{i}", i))
    assert engine._loops == {}
    assert clients() == baseline  # nothing left open by the five loops


@pytest.mark.redis
def test_server_restart_is_survived(redis_server: Any, redis_url: str, remote: Any) -> None:
    engine = remote("restart")

    async def write_read(value: int) -> Any:
        await engine.aset("k", value)
        return await engine.aget("k", MISS)

    async def session() -> list[Any]:
        first = await write_read(1)
        redis_server.kill()
        redis_server.start()  # same port, empty (no persistence)
        return [first, await engine.aget("k", MISS), await write_read(2)]

    # One loop across the restart: its pooled connection is dead and reconnects once.
    assert run(session) == [1, MISS, 2]


@pytest.mark.redis
def test_a_loop_ends_cleanly_after_its_server_died(
    redis_server: Any, redis_url: str, remote: Any
) -> None:
    engine = remote("dead")

    async def main() -> None:
        await engine.aset("k", 1)
        redis_server.kill()

    run(main)  # its shutdown closes a connection to a dead server: no error, no warning
    assert engine._loops == {}
    redis_server.start()
    assert run(lambda: engine.aget("k", MISS)) is MISS  # a new loop, a new connection
