"""Findings of the hostile review of issue 13's fork and leader changes, each a regression
test: a cached function that forks, an interrupt between a leader's unpublishing and its
hand-over, the aiocache memory store's lock at a fork, a server URL from the environment
past the duration bounds."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from typing import Any

import pytest

from _support import held_by_another_thread, wait_child
from twat_cache import acache, bcache, disabled, mcache, ucache
from twat_cache.config import REDIS_URL_ENV
from twat_cache.exceptions import ConfigurationError

fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@fork_only
@pytest.mark.parametrize("decorator", ["mcache", "acache", "bcache"])
def test_a_cached_function_that_forks_returns_in_the_child(
    decorator: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child's after-fork reset dropped the flight its own thread was leading, and the
    # wrapper's end of flight raised KeyError in the child.
    monkeypatch.setenv("TWAT_CACHE_DIR", str(tmp_path))

    def spawn(x: int) -> int:
        return os.fork()

    async def aspawn(x: int) -> int:
        return os.fork()

    if decorator == "acache":
        cached = acache(aspawn)
        call: Any = lambda: asyncio.run(cached(1))  # noqa: E731
    else:
        cached = (mcache if decorator == "mcache" else bcache(folder_name="forks"))(spawn)
        call = lambda: cached(1)  # noqa: E731
    try:
        pid = call()
    except BaseException:  # only a child gets here
        os._exit(1)
    if pid == 0:
        os._exit(0)
    assert wait_child(pid) == 0


def test_waiters_survive_an_interrupt_between_unpublishing_and_handing_over() -> None:
    # An interrupt (a Ctrl-C's KeyboardInterrupt) can land between any two bytecodes: here,
    # right after the leader removed its flight and before it handed its value over. The
    # waiters then saw no hand-over and waited for ever; now they find the flight gone.
    calls: list[int] = []

    @mcache
    def f(x: int) -> int:
        calls.append(x)
        time.sleep(0.3)
        return x * 2

    scope = f.__globals__

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.startswith("<twat_cache wrapper"):
            return None

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and 1 not in scope["__twat_flights"] and scope["__twat_waiting"]:
                sys.settrace(None)
                frame.f_trace = None
                raise KeyboardInterrupt
            return local

        return local

    def leader() -> None:
        sys.settrace(tracer)
        try:
            f(1)
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)

    results: list[int] = []
    lead = threading.Thread(target=leader)
    lead.start()
    time.sleep(0.1)
    waiters = [threading.Thread(target=lambda: results.append(f(1)), daemon=True) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    lead.join()
    for waiter in waiters:
        waiter.join(10)
    assert not any(waiter.is_alive() for waiter in waiters)
    assert results == [2, 2, 2]
    assert calls == [1]  # the leader had stored its value: the waiters read it


@fork_only
def test_the_aiocache_memory_store_lock_held_at_fork_does_not_hang_the_child() -> None:
    @acache(cache_engine="aiocache")
    async def double(x: Any) -> Any:
        return x

    assert asyncio.run(double(1)) == 1
    store = double.cache_engine._store  # the `_Store` aiocache reads and writes
    with held_by_another_thread(store._lock):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = asyncio.run(double(2)) == 2 and asyncio.run(double(2)) == 2
            os._exit(0 if ok else 1)
        assert wait_child(pid, 10) == 0


def test_a_server_url_from_the_environment_is_held_to_the_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given as url= the same URL is refused by CacheConfig; from the variable it was taken,
    # and every read then failed with OverflowError: the cache never cached.
    monkeypatch.setenv(REDIS_URL_ENV, "redis://127.0.0.1:1/0?socket_timeout=1e20")
    with pytest.raises(ConfigurationError, match=rf"\${REDIS_URL_ENV}: url's socket_timeout"):
        ucache(cache_engine="redis", name="bounded-env")(lambda x: x)


@fork_only
def test_a_child_forked_during_another_threads_disabled_block_reads_directly() -> None:
    # The parent's block belongs to a thread that does not exist in the child: it stopped
    # counting there, so the child's hits go back to the direct reader (they stayed on the
    # checked one for the child's whole life). A block of the forking thread still counts.
    @mcache
    def h(x: int) -> int:
        return x

    h(1)
    scope = h.__globals__
    inside, leave = threading.Event(), threading.Event()

    def block() -> None:
        with disabled():
            inside.set()
            leave.wait(30)

    other = threading.Thread(target=block)
    other.start()
    assert inside.wait(5)
    try:
        assert scope["__twat_get"] is not scope["__twat_direct_get"]  # checked while open
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            direct = scope["__twat_get"] is scope["__twat_direct_get"]
            with disabled():
                checked = scope["__twat_get"] is not scope["__twat_direct_get"]
                hits = h.cache_info().hits
                uncached = h(1) == 1 and h.cache_info().hits == hits
            again = scope["__twat_get"] is scope["__twat_direct_get"]
            os._exit(0 if direct and checked and uncached and again else 1)
        assert wait_child(pid) == 0
    finally:
        leave.set()
        other.join()
    assert scope["__twat_get"] is scope["__twat_direct_get"]  # the parent's block ended


@fork_only
@pytest.mark.parametrize("engine", ["diskcache", "klepto"])
def test_children_forked_while_threads_use_a_sqlite_cache_never_hang(
    engine: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fork while another thread was inside SQLite (its allocator's mutex held, the GIL
    # released) left the mutex held in the child: its first call blocked for ever, within
    # 1-9 forks. Forks now wait for threads inside the engine's SQLite calls.
    monkeypatch.setenv("TWAT_CACHE_DIR", str(tmp_path))
    options: dict[str, Any] = {"cache_engine": engine}
    if engine == "klepto":
        options["use_sql"] = True

    @bcache(folder_name="forked", **options)
    def triple(x: int) -> int:
        return x * 3

    assert triple.cache_engine.name == engine
    stop = threading.Event()

    def hammer(offset: int) -> None:
        i = 0
        while not stop.is_set():
            triple(offset + i % 300)  # reads and writes
            i += 1

    threads = [threading.Thread(target=hammer, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    codes = []
    try:
        for round_ in range(30):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                os._exit(0 if triple(10**6 + round_) == 3 * (10**6 + round_) else 3)
            codes.append(wait_child(pid))
            if codes[-1] != 0:
                break
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert codes == [0] * 30, f"None is a child that hung: {codes}"


class _SlowKey:
    """A key whose __eq__ lets other threads run while cachebox compares it under its lock."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        time.sleep(0.5)
        return isinstance(other, _SlowKey) and self.value == other.value


@fork_only
def test_a_child_forked_while_cachebox_compares_a_key_uses_a_new_store() -> None:
    # cachebox holds its own (Rust) lock while it calls a key's __eq__: a fork then copied
    # it held, and the child's first call blocked for ever. The child replaces a store that
    # does not answer, and its wrappers use the new one.
    runs: list[Any] = []

    @mcache
    def f(key: Any) -> int:
        runs.append(key)
        return getattr(key, "value", key) * 2

    assert f.cache_engine.name == "cachebox"
    f(_SlowKey(1))  # one entry hashing to 1: the next such lookup calls __eq__
    inside = threading.Thread(target=f, args=(_SlowKey(2),))
    inside.start()
    time.sleep(0.2)  # the thread is now inside cachebox, in _SlowKey.__eq__
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        before = len(runs)
        ok = f(5) == 10 and f(5) == 10 and len(runs) == before + 1  # computed once, then a hit
        os._exit(0 if ok else 1)
    inside.join()
    assert wait_child(pid) == 0
