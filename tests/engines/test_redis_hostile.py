"""The Redis engines among hostile neighbours, on real servers: names that try to reach into
another cache's keys, bursts beyond the connection pool, a cache with a wrong password,
leases interrupted before their reply, values over the server's limit, replayed expired
entries, event loops closed by hand, and fork while the parent keeps using the server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from twat_cache import MISS, CacheConfig, acache, ucache  # noqa: E402
from twat_cache._redis_server import RedisServer, private_server  # noqa: E402
from twat_cache.engines import _redis_breaker as breakers  # noqa: E402
from twat_cache.engines import _redis_clients as clients  # noqa: E402
from twat_cache.engines.redis import RedisEngine, key_space  # noqa: E402
from twat_cache.exceptions import (  # noqa: E402
    CacheFaultWarning,
    CredentialsError,
    SecurityWarning,
    ServerUnavailableError,
)
from twat_cache.serializers import MAC_SIZE, UnserializableError, sign, verify  # noqa: E402

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _fresh_breakers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(breakers, "_BREAKERS", {})


@pytest.fixture
def raw(redis_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make(redis_url: str) -> Iterator[Callable[..., RedisEngine]]:
    opened: list[RedisEngine] = []

    def build(url: str = redis_url, **options: Any) -> RedisEngine:
        engine = RedisEngine(CacheConfig(**{"url": url, "folder_name": "t", **options}))
        opened.append(engine)
        return engine

    yield build
    for engine in opened:
        engine.close()


def keys_of(raw: Any) -> set[str]:
    return {key.decode() for key in raw.scan_iter(match="*", count=1000)}


# --- names cannot reach into another cache's keys (issue 13, item 11) -------------------


def test_a_closing_brace_in_a_name_cannot_reach_into_another_cache(make: Any, raw: Any) -> None:
    shop, other = make(name="shop"), make(name="shop}:x")
    other.set("k", "other's")
    assert other.lease("busy", 10) is not None
    for i in range(3):
        shop.set(f"s{i}", i)
    # A key of `shop` that spells the other cache's key layout is still shop's own.
    shop.set("x}:0:k", "shop's")
    assert other.get("k") == "other's"
    assert len(shop) == 4
    assert len(other) == 1
    shop.clear()
    assert other.get("k") == "other's"
    assert len(other) == 1
    assert raw.exists(f"twat_cache:{{{key_space('shop}:x')}}}#index")
    assert other.lease("busy", 10) is None  # its lease survived the other's clear
    assert shop.get("x}:0:k", MISS) is MISS


@pytest.mark.parametrize("name", ["a*", "a?", "a[b]", "a\\b", "a%7D", "a\nb", "a b", "{a}", "a:"])
def test_glob_and_separator_characters_keep_caches_apart(make: Any, name: str) -> None:
    mine, neighbour = make(name=name), make(name="a")
    twin = make(name=key_space(name))  # a name spelled like another's encoding is its own
    neighbour.set("k", "neighbour")
    twin.set("k", "twin")
    mine.set("k", "mine")
    mine.clear()
    assert (neighbour.get("k"), twin.get("k"), mine.get("k", MISS)) == ("neighbour", "twin", MISS)


def test_common_names_keep_their_key_layout() -> None:
    assert key_space("pkg.mod.<locals>.f") == "pkg.mod.<locals>.f"
    assert key_space("shop}:x") == "shop%7D%3Ax"
    assert key_space("é") == "é"


def test_the_aiocache_namespace_of_a_folder_with_a_colon_is_its_own(redis_url: str) -> None:
    from twat_cache.engines.aiocache import AioCacheEngine

    shop = AioCacheEngine(CacheConfig(url=redis_url, folder_name="shop", cache_engine="aiocache"))
    other = AioCacheEngine(
        CacheConfig(url=redis_url, folder_name="shop:x", cache_engine="aiocache")
    )

    async def scenario() -> tuple[Any, Any]:
        await other.aset("k", "other's")
        await shop.aset("x:k", "shop's")
        await shop.aclear()
        return await other.aget("k"), await shop.aget("x:k", MISS)

    try:
        assert asyncio.run(scenario()) == ("other's", MISS)
    finally:
        shop.close()
        other.close()


# --- a burst beyond the pool waits (item 13) ---------------------------------------------


def test_a_burst_beyond_the_pool_computes_every_key_once_without_faults(redis_url: str) -> None:
    runs: list[int] = []

    @acache(url=redis_url, name="burst")
    async def work(i: int) -> int:
        runs.append(i)
        await asyncio.sleep(0.01)
        return i * 2

    async def burst() -> list[int]:
        return await asyncio.gather(*(work(i) for i in range(300)))

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheFaultWarning)
        assert asyncio.run(burst()) == [i * 2 for i in range(300)]
    assert sorted(runs) == list(range(300))
    assert work.cache_engine._breaker.failures == 0
    assert asyncio.run(burst()) == [i * 2 for i in range(300)]
    assert len(runs) == 300  # every second call hit


def test_a_pool_that_stays_busy_is_not_a_server_failure(
    make: Any, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clients, "POOL_SIZE", 1)
    monkeypatch.setattr(clients, "POOL_WAIT", 0.05)
    engine = make(timeout=5)
    holding = threading.Thread(target=lambda: engine._client.blpop(["never"], timeout=2))
    holding.start()  # takes the only connection for two seconds
    deadline = time.monotonic() + 10
    while not any(c["cmd"] == "blpop" for c in raw.client_list()):
        assert time.monotonic() < deadline, "BLPOP never reached the server"
        time.sleep(0.01)
    try:
        for _ in range(5):
            with pytest.raises(clients.PoolExhaustedError):
                engine.get("k")
        assert engine._breaker.failures == 0
    finally:
        holding.join(timeout=10)
    engine.set("k", 1)
    assert engine.get("k") == 1


def test_more_threads_than_connections_wait_for_one(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clients, "POOL_SIZE", 4)
    engine = make()
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            for j in range(10):
                engine.set(f"{i}:{j}", j)
                assert engine.get(f"{i}:{j}") == j
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert engine._breaker.failures == 0
    assert len(engine._client.connection_pool._connections) <= 4


# --- a wrong password is that cache's own fault (item 14) --------------------------------


@pytest.fixture
def guarded() -> Iterator[RedisServer]:
    """A server of this test's own that needs the password "right"."""
    with private_server() as server:
        assert server.command("CONFIG", "SET", "requirepass", "right") == b"+OK"
        yield server


def test_a_wrong_password_does_not_disable_the_other_caches(guarded: RedisServer) -> None:
    port = guarded.port
    runs = {"good": 0, "bad": 0}

    @ucache(url=f"redis://:right@127.0.0.1:{port}/0", name="good")
    def good(x: int) -> int:
        runs["good"] += 1
        return x

    @ucache(url=f"redis://:wrong@127.0.0.1:{port}/0", name="bad")
    def bad(x: int) -> int:
        runs["bad"] += 1
        return x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheFaultWarning)  # the bad cache's own warning
        for _ in range(3):
            for x in range(5):
                assert bad(x) == x
                assert good(x) == x
    assert runs == {"good": 5, "bad": 15}  # good: every call after the first a hit
    assert good.cache_engine._breaker is not bad.cache_engine._breaker
    assert good.cache_engine._breaker.failures == 0
    good.cache_clear()  # the server is fine: no ServerUnavailableError
    assert good.cache_info().currsize == 0


def test_an_authentication_error_is_not_counted_as_a_server_failure(
    guarded: RedisServer,
) -> None:
    engine = RedisEngine(CacheConfig(url=f"redis://:wrong@127.0.0.1:{guarded.port}/0", name="t"))
    try:
        for _ in range(5):
            with pytest.raises(clients.CredentialsError, match="credentials"):
                engine.get("k")
        assert engine._breaker.failures == 0
        assert "wrong" not in engine._breaker.server
    finally:
        engine.close()


# --- interrupted leases (item 12) ---------------------------------------------------------


class SlowReplies:
    """A TCP proxy to a real server whose replies are held `delay` seconds: a command has
    run on the server while its client still waits for the answer."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.delay = 0.0
        self.hold_next = 0.0  # seconds to hold the next reply only
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        try:
            while data := source.recv(65536):
                if slow and self.hold_next:
                    held, self.hold_next = self.hold_next, 0.0
                    time.sleep(held)
                if slow and self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def slow(redis_server: RedisServer, redis_url: str) -> Iterator[SlowReplies]:
    proxy = SlowReplies(redis_server.port)
    yield proxy
    proxy.close()


def test_a_cancelled_async_lease_is_released(make: Any, raw: Any, slow: SlowReplies) -> None:
    engine = make(url=slow.url, timeout=5)
    lease_key = engine._lease_key("k")

    async def scenario() -> None:
        assert await engine.aexists("warm") is False  # connected while replies are quick
        slow.delay = 0.4
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.alease("k", 30), 0.1)
        slow.delay = 0.0

    asyncio.run(scenario())
    assert not raw.exists(lease_key)
    assert engine.lease("k", 30) is not None  # the next caller leads at once


def test_a_lease_interrupted_by_keyboardinterrupt_is_released(
    make: Any, raw: Any, slow: SlowReplies
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    engine = make(url=slow.url, timeout=5)
    lease_key = engine._lease_key("k")
    assert engine.exists("warm") is False
    slow.delay = 0.4
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.1, lambda: signal.pthread_kill(main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):  # lands while the reply is held (0.4 s)
            engine.lease("k", 30)
    finally:
        timer.cancel()
        slow.delay = 0.0
    assert raw.get(lease_key) is None
    assert engine.lease("k", 30) is not None


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_lease_whose_reply_timed_out_is_released(
    make: Any, raw: Any, slow: SlowReplies, flavour: str
) -> None:
    engine = make(url=slow.url, timeout=0.5)
    lease_key = engine._lease_key("k")

    async def alease() -> Any:
        assert await engine.aexists("warm") is False
        slow.hold_next = 2.0  # the SET NX runs; its reply comes after the timeout
        return await engine.alease("k", 30)

    if flavour == "sync":
        assert engine.exists("warm") is False
        slow.hold_next = 2.0
        with pytest.raises(ServerUnavailableError):
            engine.lease("k", 30)
    else:
        with pytest.raises(ServerUnavailableError):
            asyncio.run(alease())
    assert raw.get(lease_key) is None


# --- a value over the server's limit (item 10d) ------------------------------------------


def test_a_value_over_the_servers_limit_is_not_a_server_failure() -> None:
    with private_server() as server:
        assert server.command("CONFIG", "SET", "proto-max-bulk-len", "1mb") == b"+OK"
        runs: list[int] = []

        @ucache(url=server.url, name="big")
        def big(n: int) -> bytes:
            runs.append(n)
            return os.urandom(n)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheFaultWarning)  # "not stored", once
            for _ in range(5):
                assert len(big(2_000_000)) == 2_000_000
        engine = big.cache_engine
        assert engine._breaker.failures == 0
        assert big(10) == big(10)  # small values are still cached
        assert runs == [2_000_000] * 5 + [10]
        with pytest.raises(UnserializableError, match="proto-max-bulk-len"):
            engine.set("k", b"x" * 2_000_000)
        assert engine._breaker.failures == 0


# --- signed expiry (item 17b) and MAC length -------------------------------------------


def test_an_expired_entry_written_back_is_a_miss(make: Any, raw: Any) -> None:
    engine = make()
    engine.set("k", "old", ttl=0.3)
    full = engine._full("k")
    payload = raw.get(full)
    time.sleep(0.4)
    assert not raw.exists(full)
    raw.set(full, payload)  # replayed without an expiry
    with warnings.catch_warnings():
        warnings.simplefilter("error", SecurityWarning)
        assert engine.get("k", MISS) is MISS
        assert asyncio.run(engine.aget("k", MISS)) is MISS
    engine.set("k", "new", ttl=30)
    assert engine.get("k") == "new"


def test_the_expiry_is_signed(make: Any, raw: Any) -> None:
    engine = make()
    engine.set("k", "v", ttl=0.3)
    full = engine._full("k")
    payload = bytearray(raw.get(full))
    payload[5 + MAC_SIZE] ^= 0x40  # the expiry's first byte: another date
    raw.set(full, bytes(payload))
    with pytest.warns(SecurityWarning):
        assert engine.get("k", MISS) is MISS


def test_verify_refuses_an_empty_or_short_or_long_mac() -> None:
    secret, data = b"s" * 32, b"payload"
    mac = sign(secret, data)
    assert verify(secret, data, mac)
    assert not verify(secret, data, b"")
    assert not verify(secret, data, mac[:16])
    assert not verify(secret, data, mac[:-1])
    assert not verify(secret, data, mac + b"\0")


# --- event loops closed by hand (item 7a) -----------------------------------------------


def _sockets() -> int:
    return sum(
        os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts sockets in /proc")
@pytest.mark.parametrize("flavour", ["redis", "aiocache"])
def test_hand_closed_event_loops_free_their_clients_and_sockets(
    redis_url: str, flavour: str
) -> None:
    from twat_cache.engines.aiocache import AioCacheEngine

    if flavour == "redis":
        engine: Any = RedisEngine(CacheConfig(url=redis_url, name="loops"))
    else:
        engine = AioCacheEngine(
            CacheConfig(url=redis_url, folder_name="loops", cache_engine="aiocache")
        )
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    unraisable: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            asyncio.run(engine.aset("warm", 0))
            gc.collect()
            before = _sockets()
            for i in range(100):
                loop = asyncio.new_event_loop()
                loops.append(weakref.ref(loop))
                loop.run_until_complete(engine.aset(f"k{i}", i))
                assert loop.run_until_complete(engine.aget(f"k{i}")) == i
                loop.close()  # no shutdown_asyncgens(): the engine is never told
                del loop
            gc.collect()
            assert _sockets() <= before + 1  # the last loop's client at most
            assert sum(ref() is not None for ref in loops) <= 1
            engine.close()
            gc.collect()
            assert _sockets() <= before
            assert [ref() for ref in loops if ref() is not None] == []
    finally:
        sys.unraisablehook = hook
        engine.close()
    assert [str(u.exc_value) for u in unraisable] == []


# --- fork (per-process state) ------------------------------------------------------------


def test_a_forked_child_has_its_own_clients_and_breaker_while_the_parent_works(
    make: Any,
) -> None:
    engine = make()
    engine.set("parent", 0)
    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(engine.aget("parent")) == 0  # a loop client, kept open
    parent_client = engine._client
    engine._breaker.failures = 2  # two failures seen: the child starts without them
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_working() -> None:
        i = 0
        try:
            while not stop.is_set():
                engine.set("parent", i)
                assert engine.get("parent") == i
                i += 1
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=keep_working)
    worker.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with a thread running
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fresh = engine._client is not parent_client and engine._breaker.failures == 0
                fresh = fresh and engine._loops.entries == {}
                for i in range(200):
                    engine.set(f"child{i}", i)
                    fresh = fresh and engine.get(f"child{i}") == i
                fresh = fresh and asyncio.run(engine.aget("child7")) == 7
                code = 0 if fresh else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done[0] == pid, "the child hung"
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        stop.set()
        worker.join(timeout=10)
    assert errors == []
    assert engine.get("child199") == 199
    assert loop.run_until_complete(engine.aget("child3")) == 3  # the parent's loop client
    engine.close()
    loop.close()


def test_a_forked_child_opens_its_own_aiocache_connections(redis_url: str) -> None:
    from twat_cache.engines.aiocache import AioCacheEngine

    engine = AioCacheEngine(
        CacheConfig(url=redis_url, folder_name="forked", cache_engine="aiocache")
    )
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.aset("parent", 1))  # this loop keeps its connections
    assert len(engine) == 1  # the blocking client is open too
    parent_client = engine._sync_client
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fresh = engine._sync_client is None and engine._loops == {}
            fresh = fresh and asyncio.run(engine.aget("parent")) == 1
            asyncio.run(engine.aset("child", 2))
            code = 0 if fresh and len(engine) == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert engine._sync_client is parent_client
        assert loop.run_until_complete(engine.aget("child")) == 2  # the parent's sockets
        assert len(engine) == 2
    finally:
        engine.close()
        loop.close()


# --- ACL users with fewer rights (hostile review) -----------------------------------------


@pytest.fixture
def acl() -> Iterator[RedisServer]:
    """A server of this test's own with two restricted ACL users: `noscript` may run any
    command but scripts; `elsewhere` may touch keys under `other:*` only."""
    with private_server() as server:
        for rules in (
            ("noscript", "on", ">pw", "~*", "&*", "+@all", "-evalsha", "-eval", "-script"),
            ("elsewhere", "on", ">pw", "~other:*", "&*", "+@all"),
        ):
            assert server.command("ACL", "SETUSER", *rules) == b"+OK"
        yield server


def test_a_user_without_scripts_never_leaves_a_lease_to_expire(acl: RedisServer) -> None:
    # SET NX takes the lease; its release is a script the user may not run. Every caller of
    # the key then waited out the lease (10 s a call).
    engine = RedisEngine(
        CacheConfig(url=f"redis://noscript:pw@127.0.0.1:{acl.port}/0", folder_name="acl")
    )
    try:
        token = engine.lease("k", 30)
        assert token is not None
        engine.release("k", token)
        assert engine.lease("k", 30) is not None  # free again at once

        async def in_a_loop() -> bool:
            token = await engine.alease("j", 30)
            assert token is not None
            await engine.arelease("j", token)
            return await engine.alease("j", 30) is not None

        assert asyncio.run(in_a_loop())
    finally:
        engine.close()


def test_a_user_refused_the_caches_keys_gets_a_credentials_error(acl: RedisServer) -> None:
    engine = RedisEngine(
        CacheConfig(url=f"redis://elsewhere:pw@127.0.0.1:{acl.port}/0", folder_name="acl")
    )
    try:
        with pytest.raises(CredentialsError):
            engine.clear()
        with pytest.raises(CredentialsError):
            engine.set("k", 1)
        assert engine._breaker.failures == 0  # the server is fine: this user's rights
    finally:
        engine.close()
