"""RedisEngine on a real redis-server: key layout, signed payloads, expiry, namespaced clear
and len, per-cache bounds, URLs, async twins across event loops and threads, fork, and
processes sharing one cache."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from twat_cache import MISS, CacheConfig, ucache  # noqa: E402
from twat_cache.engines import _redis_breaker as breakers  # noqa: E402
from twat_cache.engines.redis import (  # noqa: E402
    DEFAULT_REMOTE_MAXSIZE,
    URL_ENV,
    RedisEngine,
)
from twat_cache.exceptions import ConfigurationError, SecurityWarning  # noqa: E402
from twat_cache.serializers import MAC_SIZE, MAGIC, Serializer  # noqa: E402

pytestmark = pytest.mark.redis

TTL = 0.5  # seconds: short enough to wait out, long enough to read PTTL before it ends


@pytest.fixture(autouse=True)
def _fresh_breakers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Circuit breakers are per server and per process: a test elsewhere that stopped the
    # shared server must not leave this one skipping it for a cool-down.
    monkeypatch.setattr(breakers, "_BREAKERS", {})


@pytest.fixture
def raw(redis_url: str) -> Iterator[Any]:
    """A plain redis-py client on the test server, to look behind the engine's back."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make(redis_url: str) -> Iterator[Callable[..., RedisEngine]]:
    """`make(**options)`: a RedisEngine on the test server, folder "t" unless given (closed
    at teardown)."""
    opened: list[RedisEngine] = []

    def build(**options: Any) -> RedisEngine:
        config = CacheConfig(**{"url": redis_url, "folder_name": "t", **options})
        assert RedisEngine.unsupported(config) is None
        engine = RedisEngine(config)
        opened.append(engine)
        return engine

    yield build
    for engine in opened:
        engine.close()


def keys_of(raw: Any, pattern: str = "*") -> set[str]:
    return {key.decode() for key in raw.scan_iter(match=pattern, count=1000)}


# --- key layout and payloads ------------------------------------------------------------


def test_keys_are_namespaced_by_folder_and_version(make: Any, raw: Any) -> None:
    make().set("a", 1)
    make(version=3).set("a", 2)
    make(folder_name="other").set("a", 3)
    entries = keys_of(raw) - {k for k in keys_of(raw) if "#index" in k}
    assert entries == {"twat_cache:{t}:0:a", "twat_cache:{t}:3:a", "twat_cache:{other}:0:a"}


def test_decorated_function_keys_are_stable_digests_under_the_prefix(
    redis_url: str, raw: Any
) -> None:
    @ucache(url=redis_url, folder_name="layout")
    def double(x: int) -> int:
        return 2 * x

    try:
        assert double(21) == 42
        (entry,) = keys_of(raw, "twat_cache:{layout}:0:*")
        # the function's stable key: its qualified name and identity digest (128 bits),
        # the key version, then a 160-bit hex digest of the arguments
        assert entry.startswith("twat_cache:{layout}:0:")
        assert re.search(rf"\.{re.escape(double.__qualname__)}@[0-9a-f]{{32}}:k2:", entry)
        assert len(entry.rsplit(":", 1)[1]) == 40
        assert double.cache_key(21) == entry.removeprefix("twat_cache:{layout}:0:")
    finally:
        double.cache_engine.close()


def test_values_are_signed_payloads(make: Any, raw: Any) -> None:
    make().set("a", {"value": [1, 2]})
    payload = raw.get("twat_cache:{t}:0:a")
    assert payload.startswith(MAGIC)
    assert pickle.dumps({"value": [1, 2]}, protocol=pickle.HIGHEST_PROTOCOL) in payload
    assert payload[len(MAGIC) + 1 : len(MAGIC) + 1 + MAC_SIZE] != bytes(MAC_SIZE)


class _Gadget:
    """Unpickling this creates the directory `path`: proof that forged bytes were loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def _forgeries(marker: Path) -> dict[str, bytes]:
    gadget = pickle.dumps(_Gadget(marker))
    signed_by_another = Serializer(CacheConfig(), secret=b"another-secret-key-0123456789abc")
    return {
        "bare pickle": gadget,
        "unsigned frame": MAGIC + bytes([0x81]) + bytes(MAC_SIZE) + gadget,
        "foreign key": signed_by_another.dumps(_Gadget(marker)),
        "truncated": signed_by_another.dumps(1)[:10],
    }


@pytest.mark.parametrize("forgery", ["bare pickle", "unsigned frame", "foreign key", "truncated"])
def test_a_forged_payload_is_a_miss_warned_once_and_deleted(
    make: Any, raw: Any, tmp_path: Path, forgery: str
) -> None:
    marker = tmp_path / "gadget-fired"
    engine = make()
    raw.set("twat_cache:{t}:0:a", _forgeries(marker)[forgery])
    raw.set("twat_cache:{t}:0:b", _forgeries(marker)[forgery])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert engine.get("a", MISS) is MISS
        assert engine.get("b", MISS) is MISS  # a second one is logged, not warned again
    assert [w.category for w in caught] == [SecurityWarning]
    assert "failed verification" in str(caught[0].message)
    assert raw.exists("twat_cache:{t}:0:a", "twat_cache:{t}:0:b") == 0
    assert not marker.exists()


def test_a_forged_entry_behind_a_decorated_function_is_recomputed(
    redis_url: str, raw: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "gadget-fired"
    calls: list[int] = []

    @ucache(url=redis_url, folder_name="forged")
    def triple(x: int) -> int:
        calls.append(x)
        return 3 * x

    try:
        full = "twat_cache:{forged}:0:" + triple.cache_key(5)
        raw.set(full, _forgeries(marker)["foreign key"])
        with pytest.warns(SecurityWarning):
            assert triple(5) == 15
        assert triple(5) == 15
        assert calls == [5]
        assert not marker.exists()
        # Overwritten with a payload bound to (signed with) its own key.
        assert triple.cache_engine.serializer.loads(raw.get(full), full.encode()) == 15
    finally:
        triple.cache_engine.close()


# --- expiry -----------------------------------------------------------------------------


def test_ttl_is_set_with_px_and_entries_expire(make: Any, raw: Any) -> None:
    engine = make(ttl=TTL)
    engine.set("a", 1)
    assert 0 < raw.pttl("twat_cache:{t}:0:a") <= TTL * 1000
    assert engine.get("a", MISS) == 1
    time.sleep(TTL + 0.1)
    assert engine.get("a", MISS) is MISS
    assert not engine.exists("a")


def test_per_entry_ttl(make: Any, raw: Any) -> None:
    engine = make()  # no ttl configured: entries live until evicted
    engine.set("forever", 1)
    engine.set("short", 2, ttl=TTL)
    assert raw.pttl("twat_cache:{t}:0:forever") == -1
    assert 0 < raw.pttl("twat_cache:{t}:0:short") <= TTL * 1000
    longer = make(folder_name="t2", ttl=60)
    longer.set("short", 3, ttl=TTL)
    assert 0 < raw.pttl("twat_cache:{t2}:0:short") <= TTL * 1000
    time.sleep(TTL + 0.1)
    assert engine.get("short", MISS) is MISS
    assert longer.get("short", MISS) is MISS
    assert engine.get("forever") == 1
    with pytest.raises(ConfigurationError, match="ttl"):
        engine.set("bad", 1, ttl=0)


# --- clear and len ----------------------------------------------------------------------


def _fill(raw: Any, engine: RedisEngine, count: int) -> None:
    # Payloads written in one pipeline (a thousand round trips would only slow the test);
    # they are the engine's own signed payloads under its own keys.
    payload = engine.serializer.dumps("v")
    pipe = raw.pipeline(transaction=False)
    for i in range(count):
        pipe.set(engine._full(f"k{i}"), payload)
    pipe.execute()


def test_clear_removes_only_this_caches_keys_in_batches(
    make: Any, raw: Any, redis_url: str
) -> None:
    engine, other = make(), make(folder_name="other")
    _fill(raw, engine, 1_200)  # more than two SCAN/UNLINK batches
    engine.set("indexed", 1)
    make(version=2).set("older", 1)  # another version of the same cache
    other.set("kept", 1)
    raw.set("foreign", b"x")
    raw.set("twat_cache:{t}", b"not ours: no version part")
    with redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1") as db1:
        db1.set("twat_cache:{t}:0:k0", b"another database")
        assert len(engine) == 1_201
        engine.clear()
        assert keys_of(raw, "twat_cache:{t}:*") == set()
        assert not raw.exists("twat_cache:{t}#index")
        assert len(engine) == 0
        assert other.get("kept") == 1
        assert raw.get("foreign") == b"x"
        assert raw.get("twat_cache:{t}") == b"not ours: no version part"
        assert db1.get("twat_cache:{t}:0:k0") == b"another database"  # never FLUSHDB
        db1.flushdb()


def test_aclear_removes_only_this_caches_keys_in_batches(make: Any, raw: Any) -> None:
    engine, other = make(), make(folder_name="other")
    _fill(raw, engine, 1_100)
    other.set("kept", 1)

    async def clear() -> int:
        assert await engine.alen() == 1_100
        await engine.aclear()
        return await engine.alen()

    assert asyncio.run(clear()) == 0
    assert keys_of(raw, "twat_cache:{t}:*") == set()
    assert other.get("kept") == 1


def test_len_counts_only_this_cache_and_version(make: Any, raw: Any) -> None:
    v1, v2, other = make(version=1), make(version=2), make(folder_name="other")
    for i in range(3):
        v1.set(f"k{i}", i)
    for i in range(2):
        v2.set(f"k{i}", i)
    other.set("k", 1)
    raw.set("twat_cache:{t}:1", b"looks close")
    assert (len(v1), len(v2), len(other)) == (3, 2, 1)


def test_a_new_version_is_a_new_namespace_and_clear_removes_every_version(make: Any) -> None:
    v1, v2 = make(version=1), make(version=2)
    v1.set("a", "one")
    assert v2.get("a", MISS) is MISS
    v2.set("a", "two")
    assert (v1.get("a"), v2.get("a")) == ("one", "two")
    v2.clear()
    assert v1.get("a", MISS) is MISS
    assert len(v1) == len(v2) == 0


# --- bounds -----------------------------------------------------------------------------


def _stored(engine: RedisEngine, count: int) -> set[int]:
    return {i for i in range(count) if engine.exists(f"k{i}")}


def _set(engine: RedisEngine, i: int) -> None:
    engine.set(f"k{i}", i)
    time.sleep(0.002)  # distinct store times (the server's clock, in microseconds)


def test_fifo_evicts_the_oldest_stored_even_if_read(make: Any) -> None:
    engine = make(maxsize=3, policy="fifo")
    for i in range(3):
        _set(engine, i)
    assert engine.get("k0") == 0
    _set(engine, 3)
    assert _stored(engine, 4) == {1, 2, 3}
    assert len(engine) == 3


def test_lru_keeps_a_read_entry(make: Any) -> None:
    engine = make(maxsize=3, policy="lru")
    for i in range(3):
        _set(engine, i)
    assert engine.get("k0") == 0
    time.sleep(0.002)
    _set(engine, 3)
    assert _stored(engine, 4) == {0, 2, 3}
    assert len(engine) == 3


def test_lfu_keeps_a_frequently_read_entry(make: Any) -> None:
    engine = make(maxsize=3, policy="lfu")
    for i in range(3):
        _set(engine, i)
    for _ in range(3):
        assert engine.get("k0") == 0
        assert engine.get("k2") == 2
    _set(engine, 3)
    assert _stored(engine, 4) == {0, 2, 3}


def test_ttl_with_a_bound_evicts_expired_entries_first(make: Any) -> None:
    engine = make(maxsize=3, policy="lru", ttl=TTL)
    for i in range(3):
        _set(engine, i)
    time.sleep(TTL + 0.1)
    for i in range(3, 6):
        _set(engine, i)
    assert _stored(engine, 6) == {3, 4, 5}


def test_lfu_with_ttl_is_refused_rather_than_shrinking_the_cache(redis_url: str) -> None:
    # Under lfu an expired entry would keep its hit count in the index and never be the
    # one evicted: the engine refuses the combination, and selection says why.
    config = CacheConfig(url=redis_url, folder_name="lfu_ttl", maxsize=3, policy="lfu", ttl=TTL)
    reason = RedisEngine.unsupported(config)
    assert reason is not None
    assert "'lfu'" in reason
    assert "expiry" in reason
    assert RedisEngine.unsupported(config.merged(policy="lru")) is None


def test_bound_holds_through_a_decorated_function(redis_url: str) -> None:
    @ucache(url=redis_url, folder_name="bounded", maxsize=5)
    def square(x: int) -> int:
        return x * x

    try:
        for i in range(20):
            assert square(i) == i * i
        info = square.cache_info()
        assert (info.maxsize, info.currsize) == (5, 5)
    finally:
        square.cache_engine.close()


def test_explicit_none_is_unbounded_with_no_index(make: Any, raw: Any, redis_url: str) -> None:
    engine = make(maxsize=None)
    assert engine.maxsize is None
    for i in range(10):
        engine.set(f"k{i}", i)
    assert len(engine) == 10
    assert not raw.exists("twat_cache:{t}#index")

    @ucache(url=redis_url, config=CacheConfig(maxsize=None), folder_name="unbounded")
    def square(x: int) -> int:
        return x * x

    try:
        assert square.cache_info().maxsize is None
    finally:
        square.cache_engine.close()


def test_default_bound_is_the_remote_default(make: Any, raw: Any, redis_url: str) -> None:
    engine = make()
    assert engine.maxsize == DEFAULT_REMOTE_MAXSIZE
    engine.set("a", 1)
    assert raw.zcard("twat_cache:{t}#index") == 1  # the bound is kept by the index

    @ucache(url=redis_url)
    def square(x: int) -> int:
        return x * x

    try:
        assert square.cache_info().maxsize == DEFAULT_REMOTE_MAXSIZE
    finally:
        square.cache_engine.close()


def test_byte_maxsize_is_refused_with_a_reason(redis_url: str) -> None:
    reason = RedisEngine.unsupported(CacheConfig(url=redis_url, folder_name="t", maxsize="10MB"))
    assert reason is not None
    assert "maxsize" in reason
    with pytest.raises(ConfigurationError, match="maxsize"):

        @ucache(url=redis_url, maxsize="10MB")
        def f(x: int) -> int:
            return x


# --- URLs -------------------------------------------------------------------------------


def test_the_environment_url_serves_when_no_url_is_given(
    redis_url: str, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = CacheConfig(folder_name="t")
    assert RedisEngine.unsupported(config) is not None
    assert URL_ENV in (RedisEngine.unsupported(config) or "")
    monkeypatch.setenv(URL_ENV, redis_url)
    assert RedisEngine.unsupported(config) is None
    with RedisEngine(config) as engine:
        engine.set("a", 1)
    assert raw.exists("twat_cache:{t}:0:a")

    @ucache(cache_engine="redis", folder_name="from_env")
    def square(x: int) -> int:
        return x * x

    try:
        assert square.cache_engine.name == "redis"
        assert square(3) == 9
        assert keys_of(raw, "twat_cache:{from_env}:0:*")
    finally:
        square.cache_engine.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "memcached://127.0.0.1:11211"])
def test_a_non_redis_url_is_refused_with_a_reason(url: str) -> None:
    reason = RedisEngine.unsupported(CacheConfig(url=url, folder_name="t"))
    assert reason is not None
    assert "redis://" in reason
    with pytest.raises(ConfigurationError, match="redis://"):

        @ucache(url=url)
        def f(x: int) -> int:
            return x


def test_unix_socket_url(redis_server: Any, redis_url: str, raw: Any) -> None:
    with RedisEngine(CacheConfig(url=redis_server.unix_url, folder_name="t")) as engine:
        engine.set("a", [1])
        assert engine.get("a") == [1]
        assert len(engine) == 1
    assert raw.exists("twat_cache:{t}:0:a")  # the same server, seen through TCP


# --- async twins, event loops, threads, fork --------------------------------------------


def _connected_clients(raw: Any, expected: int | None = None) -> int:
    """Clients connected to the server; with `expected`, wait (2 s at most) for the server
    to have processed the disconnections that bring the count there."""
    deadline = time.monotonic() + 2
    while True:
        count = int(raw.info("clients")["connected_clients"])
        if expected is None or count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.01)


def test_async_twins_in_consecutive_event_loops(make: Any, raw: Any) -> None:
    engine = make()
    engine.set("sync", 0)  # the sync pool holds its connection from now on
    baseline = _connected_clients(raw)

    async def round_trip(n: int) -> None:
        await engine.aset(f"k{n}", n)
        assert await engine.aget(f"k{n}") == n
        assert await engine.aexists(f"k{n}")
        assert await engine.aget("absent", MISS) is MISS
        assert await engine.alen() == 2
        assert await engine.adelete(f"k{n}") is True
        assert await engine.adelete(f"k{n}") is False
        await engine.aset("extra", n)
        await engine.aclear()
        assert await engine.alen() == 0
        engine.set("sync", 0)

    for n in range(3):
        asyncio.run(round_trip(n))
        # each loop's connections were closed with their loop
        assert _connected_clients(raw, baseline) == baseline
    _no_unraisable_after_gc()


def _no_unraisable_after_gc() -> None:
    """Collect garbage with ResourceWarning as an error: an unclosed connection's finalizer
    would then report to the unraisable hook."""
    seen: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert [str(s.exc_value) for s in seen] == []


def test_a_finished_event_loop_is_not_kept_alive(make: Any) -> None:
    engine = make()
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def use() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await engine.aset("a", 1)
        assert await engine.aget("a") == 1

    for _ in range(3):
        asyncio.run(use())
    gc.collect()
    assert [ref() is None for ref in loops] == [True, True, True]


def test_two_event_loops_in_two_threads_at_once(make: Any) -> None:
    engine = make()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    async def work(name: str) -> None:
        for i in range(50):
            await engine.aset(f"{name}{i}", (name, i))
            await asyncio.sleep(0)
            assert await engine.aget(f"{name}{i}") == (name, i)

    def thread(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            asyncio.run(work(name))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(engine) == 100


def test_after_fork_the_child_uses_the_cache(make: Any) -> None:
    engine = make()
    engine.set("parent", "from the parent")  # the pool now holds a connection
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork in a threaded process: none of ours are running.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            ok = engine.get("parent") == "from the parent"
            engine.set("child", os.getpid())
            ok = ok and asyncio.run(engine.aget("child")) == os.getpid()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert engine.get("child") == pid
    assert engine.get("parent") == "from the parent"  # the parent's connection survived


def test_close_and_aclose_are_idempotent(make: Any) -> None:
    engine = make()
    engine.set("a", 1)

    async def use_and_close() -> None:
        assert await engine.aget("a") == 1
        await engine.aclose()
        await engine.aclose()

    asyncio.run(use_and_close())
    engine.close()
    engine.close()


# --- processes sharing one cache --------------------------------------------------------

_SHARER = """
import json, os, sys, time
from pathlib import Path
from twat_cache import ucache

url, index, sync = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
computed = []

@ucache(url=url, folder_name="shared4")
def square(x):
    computed.append(x)
    return x * x

own = [index * 10 + i for i in range(5)]
assert [square(x) for x in own] == [x * x for x in own]
(sync / f"ready{index}").touch()
deadline = time.monotonic() + 30
while len(list(sync.glob("ready*"))) < 4:  # a barrier through files
    assert time.monotonic() < deadline, "the other processes never got ready"
    time.sleep(0.01)
every = [p * 10 + i for p in range(4) for i in range(5)]
assert [square(x) for x in every] == [x * x for x in every]
print(json.dumps({"computed": computed, "hits": square.cache_info().hits}))
"""


def test_four_processes_share_one_cache(redis_url: str, raw: Any, tmp_path: Path) -> None:
    script = textwrap.dedent(_SHARER)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, redis_url, str(i), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    for index, result in enumerate(results):
        # each process computed only its own keys and read the 15 others' from Redis
        assert result["computed"] == [index * 10 + i for i in range(5)]
        assert result["hits"] == 5 + 15
    assert len(keys_of(raw, "twat_cache:{shared4}:0:*")) == 20
