"""Redis outages through the decorators: refused, blackholed (accepts, never answers), and
killed then restarted. Every call returns the function's result, one warning per kind of
fault, the circuit breaker stops talking to the server, and caching resumes after it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from pydantic import ValidationError  # noqa: E402

from _blackhole import Blackhole  # noqa: E402
from _redis import RedisServer  # noqa: E402
from _support import stampede_on_one_key  # noqa: E402
from twat_cache import (  # noqa: E402
    CacheConfig,
    acache,
    clear_cache,
    get_stats,
    mcache,
    registry,
    ucache,
)
from twat_cache.config import DEFAULT_TIMEOUT  # noqa: E402
from twat_cache.engines import _redis_breaker as breakers  # noqa: E402
from twat_cache.engines.redis import FAILURES_TO_OPEN, RedisEngine  # noqa: E402
from twat_cache.exceptions import CacheFaultWarning, ServerUnavailableError  # noqa: E402

pytestmark = pytest.mark.redis

HANG_GUARD = 5.0  # seconds: a call taking longer is stuck (a guard, not a speed target)
LONG = 60.0  # a cool-down no test outlives: the breaker stays open for the whole test
SHORT = 0.2  # a cool-down a test waits out


@pytest.fixture(autouse=True)
def _fresh_breakers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Breakers are per server and per process; each test starts with none.
    monkeypatch.setattr(breakers, "_BREAKERS", {})


@pytest.fixture
def server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A private redis-server this test may stop, kill and restart (the session one, which
    `redis_server` provides, stays up for the other tests)."""
    private = RedisServer()
    private.start()
    yield private
    private.close()


@pytest.fixture
def refused_url() -> str:
    """A local port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def guarded(call: Callable[[], Any]) -> Any:
    """`call()` in a worker thread, failing the test if it takes longer than HANG_GUARD."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_GUARD)
    assert not worker.is_alive(), f"a cached call hung for more than {HANG_GUARD}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class Faults:
    """The CacheFaultWarnings emitted in a block (from any thread)."""

    def __init__(self) -> None:
        self._catcher = warnings.catch_warnings(record=True)
        self.caught: list[warnings.WarningMessage] = []

    def __enter__(self) -> Faults:
        self.caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._catcher.__exit__(*exc_info)
        others = [w for w in self.caught if not issubclass(w.category, CacheFaultWarning)]
        assert others == [], [str(w.message) for w in others]

    @property
    def messages(self) -> list[str]:
        return [str(w.message) for w in self.caught]

    def operations(self) -> list[str]:
        """The operation each warning names ("read", "write", ...), in order."""
        return [m.split(" failed to ", 1)[1].split(" (", 1)[0] for m in self.messages]


def counter() -> tuple[list[int], Callable[[int], int]]:
    calls: list[int] = []

    def square(x: int) -> int:
        calls.append(x)
        return x * x

    return calls, square


def breaker_open(func: Any) -> bool:
    breaker = func.cache_engine._breaker
    return breaker.failures >= FAILURES_TO_OPEN and breaker.open_until > time.monotonic()


#: Commands of a connection's handshake, of RedisServer.start's PING, and of the reading.
_NOT_CACHE_CALLS = {"hello", "client", "ping", "info"}


def commands_seen(server: RedisServer) -> set[str]:
    """The commands a (re)started server has executed for the cache (reads, writes, scripts)."""
    with redis.Redis.from_url(server.url) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_") for name in stats} - _NOT_CACHE_CALLS


# --- refused ----------------------------------------------------------------------------


def test_refused_sync_calls_return_results_and_the_breaker_stops_trying(
    server: RedisServer,
) -> None:
    calls, square = counter()
    cached = ucache(url=server.url, cooldown=LONG)(square)
    assert cached(1) == 1
    assert cached(1) == 1
    server.stop()
    with Faults() as faults:
        results = [cached(i % 4) for i in range(20)]
    assert results == [(i % 4) ** 2 for i in range(20)]
    assert len(calls) == 1 + 20  # every call during the outage ran the function
    assert faults.operations() == ["read"]  # one warning, not one per call
    assert breaker_open(cached)
    # Calls after the breaker opened never reach the server: back up (empty, restarted),
    # it sees none of them while the cool-down lasts.
    server.start()
    with Faults() as faults:
        assert [cached(i) for i in range(5)] == [i * i for i in range(5)]
    assert faults.caught == []  # the same kind of fault: not warned again
    assert commands_seen(server) == set()
    info = cached.cache_info()
    assert (info.hits, info.misses) == (1, 1 + 20 + 5)


def test_refused_from_the_start(refused_url: str) -> None:
    calls, square = counter()
    cached = ucache(url=refused_url)(square)  # decorating never connects
    with Faults() as faults:
        assert [guarded(lambda i=i: cached(i)) for i in range(10)] == [i * i for i in range(10)]
    assert faults.operations() == ["read"]
    assert len(calls) == 10
    assert breaker_open(cached)


@pytest.mark.parametrize("decorator", [acache, ucache], ids=["acache", "ucache"])
def test_refused_async_calls_return_results(
    server: RedisServer, decorator: Callable[..., Any]
) -> None:
    calls: list[int] = []

    @decorator(url=server.url, cooldown=LONG)
    async def square(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return x * x

    assert square.cache_engine.name == "redis"

    async def many() -> list[int]:
        return [await asyncio.wait_for(square(i % 4), HANG_GUARD) for i in range(20)]

    assert asyncio.run(many()) == [(i % 4) ** 2 for i in range(20)]
    server.stop()
    with Faults() as faults:
        assert asyncio.run(many()) == [(i % 4) ** 2 for i in range(20)]
        assert asyncio.run(many()) == [(i % 4) ** 2 for i in range(20)]  # another loop
    assert faults.operations() == ["read"]
    assert len(calls) == 4 + 40
    assert breaker_open(square)
    server.start()
    assert asyncio.run(many()) == [(i % 4) ** 2 for i in range(20)]
    assert commands_seen(server) == set()


# --- blackholed -------------------------------------------------------------------------


@pytest.mark.parametrize("callers", [{"threads": 16}, {"tasks": 32}], ids=["threads", "tasks"])
def test_refused_callers_of_a_cold_key_compute_once(
    refused_url: str, callers: dict[str, int]
) -> None:
    # Stampede protection holds during an outage: the callers share one computation.
    decorate = (ucache if "threads" in callers else acache)(url=refused_url)
    with Faults() as faults:
        executions, results = stampede_on_one_key(decorate, **callers)
    assert executions == [7]
    assert all(result is results[0] for result in results)
    assert faults.operations() == ["read"]


def test_blackholed_sync_calls_return_and_the_breaker_stops_connecting() -> None:
    calls, square = counter()
    with Blackhole() as hole:
        cached = ucache(url=hole.url, cooldown=LONG)(square)
        with Faults() as faults:
            first = [guarded(lambda i=i: cached(i)) for i in range(FAILURES_TO_OPEN - 1)]
            assert not breaker_open(cached)
            first.append(guarded(lambda: cached(FAILURES_TO_OPEN - 1)))
            assert breaker_open(cached)
            talked = hole.counts()
            assert talked[0] >= 1  # the server was asked, and never answered
            assert talked[1] > 0
            rest = [guarded(lambda i=i: cached(i)) for i in range(FAILURES_TO_OPEN, 20)]
        assert first + rest == [i * i for i in range(20)]
        assert hole.counts() == talked  # the breaker is open: nothing more was sent
        assert faults.operations() == ["read"]
        assert len(calls) == 20
        assert "Timeout" in faults.messages[0]


def test_blackholed_async_calls_return() -> None:
    calls: list[int] = []
    with Blackhole() as hole:

        @acache(url=hole.url, cooldown=LONG)
        async def square(x: int) -> int:
            calls.append(x)
            return x * x

        async def many() -> list[int]:
            return [await asyncio.wait_for(square(i), HANG_GUARD) for i in range(20)]

        with Faults() as faults:
            assert guarded(lambda: asyncio.run(many())) == [i * i for i in range(20)]
            talked = hole.counts()
            assert guarded(lambda: asyncio.run(many())) == [i * i for i in range(20)]
        assert hole.counts() == talked
        assert faults.operations() == ["read"]
        assert breaker_open(square)
        assert len(calls) == 40


def test_a_slow_operation_times_out_at_the_configured_timeout() -> None:
    with Blackhole() as hole:
        fast = ucache(url=hole.url, timeout="50ms")(counter()[1])
        pool = fast.cache_engine._client.connection_pool
        assert pool.connection_kwargs["socket_timeout"] == pytest.approx(0.05)
        assert pool.connection_kwargs["socket_connect_timeout"] == pytest.approx(0.05)
        with Faults() as faults:
            assert guarded(lambda: fast(3)) == 9
        assert "Timeout" in faults.messages[0]


# --- killed mid-run and restarted -------------------------------------------------------


class Caller:
    """Calls a cached function without pause in a thread, checking every result."""

    def __init__(self, call: Callable[[int], Any]) -> None:
        self.call = call
        self.done = 0
        self.wrong: list[tuple[int, Any]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            x = i % 10
            try:
                value = self.call(x)
            except BaseException as exc:
                self.errors.append(exc)
                return
            if value != x * x:
                self.wrong.append((x, value))
            self.done += 1
            i += 1

    def __enter__(self) -> Caller:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(HANG_GUARD)
        assert not self._thread.is_alive(), "the caller thread is stuck"

    def wait_for_calls(self, count: int) -> None:
        """Wait until `count` more calls have returned (a hang guard bounds the wait)."""
        target = self.done + count
        deadline = time.monotonic() + HANG_GUARD
        while self.done < target and not self.errors:
            assert time.monotonic() < deadline, "the calls stopped returning"
            time.sleep(0.005)


def test_killed_mid_run_and_restarted_sync(server: RedisServer) -> None:
    cached = ucache(url=server.url, cooldown=SHORT)(counter()[1])
    with Faults() as faults, Caller(cached) as caller:
        caller.wait_for_calls(50)
        hits_before = cached.cache_info().hits
        assert hits_before > 0
        server.kill()
        caller.wait_for_calls(50)  # the outage: every call still returns
        assert breaker_open(cached) or cached.cache_engine._breaker.failures >= FAILURES_TO_OPEN
        server.start()  # empty: no persistence
        time.sleep(SHORT * 2)  # the cool-down passes; the next call probes the server
        caller.wait_for_calls(50)
        hits_after_restart = cached.cache_info().hits
        caller.wait_for_calls(50)
    assert caller.errors == []
    assert caller.wrong == []
    assert cached.cache_info().hits > hits_after_restart  # caching resumed
    with redis.Redis.from_url(server.url) as client:
        stored = list(client.scan_iter(match="twat_cache:{*}:0:*"))
    assert len(stored) == 10  # the entries are back on the restarted server
    ops = faults.operations()
    assert "read" in ops
    assert len(ops) == len(set(ops)) <= 3  # one warning per kind of fault, not per call


def test_killed_mid_run_and_restarted_async(server: RedisServer) -> None:
    @acache(url=server.url, cooldown=SHORT)
    async def square(x: int) -> int:
        return x * x

    async def rounds(count: int) -> list[int]:
        return [await asyncio.wait_for(square(i % 10), HANG_GUARD) for i in range(count)]

    expected = [i % 10 * (i % 10) for i in range(30)]
    with Faults() as faults:
        assert asyncio.run(rounds(30)) == expected
        assert square.cache_info().hits == 20
        server.kill()
        assert asyncio.run(rounds(30)) == expected
        assert breaker_open(square)
        server.start()
        time.sleep(SHORT * 2)
        assert asyncio.run(rounds(30)) == expected
    info = square.cache_info()
    assert info.hits == 20 + 20  # the ten keys were stored again, then hit twice each
    assert info.currsize == 10
    assert faults.operations() == ["read"]


def test_after_the_cool_down_a_failing_probe_reopens_the_breaker(server: RedisServer) -> None:
    calls, square = counter()
    cached = ucache(url=server.url, cooldown=SHORT)(square)
    server.stop()
    with Faults():
        for i in range(FAILURES_TO_OPEN):
            assert cached(i) == i * i
        assert breaker_open(cached)
        time.sleep(SHORT * 2)
        assert not breaker_open(cached)
        assert cached(7) == 49  # the probe fails: skipped again
        assert breaker_open(cached)
    server.start()
    time.sleep(SHORT * 2)
    assert cached(7) == 49
    assert cached(7) == 49
    assert cached.cache_info().hits == 1
    assert len(calls) == FAILURES_TO_OPEN + 2


def test_each_cache_keeps_its_own_cooldown(server: RedisServer) -> None:
    first = ucache(url=server.url, cooldown=LONG)(counter()[1])  # another cache, built first
    cached = ucache(url=server.url, cooldown=SHORT)(counter()[1])
    server.stop()
    with Faults():
        for i in range(FAILURES_TO_OPEN):
            assert cached(i) == i * i
    server.start()
    time.sleep(SHORT * 3)
    assert cached(9) == 81
    assert cached(9) == 81
    assert cached.cache_info().hits == 1
    # Caches of one server with the same cooldown share a breaker; another cooldown has its own.
    assert first.cache_engine._breaker is not cached.cache_engine._breaker
    same = ucache(url=server.url, cooldown=SHORT)(counter()[1])
    assert same.cache_engine._breaker is cached.cache_engine._breaker


# --- configuration and the other operations ---------------------------------------------


def test_timeout_and_cooldown_are_configurable_and_validated(redis_url: str) -> None:
    assert DEFAULT_TIMEOUT <= 0.25
    config = CacheConfig(url=redis_url, folder_name="t", timeout="100ms", cooldown="2s")
    assert (config.timeout, config.cooldown) == (0.1, 2.0)
    for field, value in [("timeout", 0), ("timeout", -1), ("cooldown", 0), ("cooldown", "x")]:
        with pytest.raises(ValidationError, match=field):
            ucache(url=redis_url, **{field: value})
    with RedisEngine(config) as engine:
        kwargs = engine._client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.1
        assert engine._breaker.cooldown == 2.0


def test_fallback_false_raises_server_unavailable(refused_url: str) -> None:
    calls, square = counter()
    cached = ucache(url=refused_url, fallback=False)(square)
    for _ in range(FAILURES_TO_OPEN + 2):  # refused, then skipped by the breaker
        with pytest.raises(ServerUnavailableError, match=r"127\.0\.0\.1"):
            cached(2)
    assert calls == []

    @acache(url=refused_url, fallback=False)
    async def asquare(x: int) -> int:
        return x * x

    with pytest.raises(ServerUnavailableError):
        asyncio.run(asquare(2))


def test_cache_info_during_an_outage(refused_url: str) -> None:
    cached = ucache(url=refused_url, name="outage.info")(counter()[1])
    with Faults():
        assert cached(3) == 9
    info = cached.cache_info()
    assert info.currsize == -1
    assert (info.hits, info.misses) == (0, 1)
    stats = get_stats("outage.info")
    assert (stats["currsize"], stats["misses"], stats["engine"]) == (-1, 1, "redis")


def test_cache_clear_and_delete_during_an_outage_raise(refused_url: str) -> None:
    # A clear or a delete that did not happen must not look as if it did: the entries would
    # come back when the server does.
    cached = ucache(url=refused_url)(counter()[1])
    with pytest.raises(ServerUnavailableError):
        cached.cache_clear()
    with pytest.raises(ServerUnavailableError):
        cached.cache_delete(3)
    with pytest.raises(ServerUnavailableError):
        asyncio.run(cached.acache_clear())


def test_clear_cache_of_every_cache_goes_on_past_an_unreachable_server(
    refused_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_CACHES", {})  # only this test's caches
    remote = ucache(url=refused_url)(counter()[1])  # registered first, and unreachable
    local = mcache(counter()[1])
    assert local(2) == 4
    with pytest.raises(ServerUnavailableError):
        clear_cache()  # the failure is reported...
    assert local.cache_info().currsize == 0  # ...and the other caches are cleared anyway
    assert remote.cache_info().currsize == -1
