"""Classes made at run time are not kept alive by the cache (issue 13, item 7).

A method's instance is keyed by identity when its class hashes by identity; the classes met
that way were kept in a set for ever, with everything they refer to (500 classes of 100 KB:
50 MB kept after `cache_clear()` and a collection). Nothing is remembered of them now: the
wrapper tests the class's `__hash__` at each call.
"""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from typing import Any

import pytest

from twat_cache import bcache, mcache, ucache
from twat_cache._io_threads import WORKERS


class Base:
    @mcache
    def plus(self, x: int) -> int:
        return x + 1


def _collected(refs: list[weakref.ref[Any]]) -> int:
    gc.collect()
    return sum(ref() is None for ref in refs)


def test_subclasses_made_at_run_time_are_freed_after_a_clear() -> None:
    refs = []
    for i in range(50):
        cls = type(f"Made{i}", (Base,), {"payload": bytearray(100_000)})
        assert cls().plus(i) == i + 1
        refs.append(weakref.ref(cls))
        del cls
    Base.plus.cache_clear()
    assert _collected(refs) == 50


@pytest.mark.parametrize("decorator", [mcache, ucache, bcache], ids=["mcache", "ucache", "bcache"])
def test_classes_with_their_own_cached_method_are_freed(
    decorator: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWAT_CACHE_DIR", str(tmp_path))
    refs = []
    for i in range(20):

        def times(self: Any, x: int) -> int:
            return x * 2

        cached = decorator(folder_name="made") if decorator is bcache else decorator
        cls = type(f"Own{i}", (), {"times": cached(times), "payload": bytearray(100_000)})
        assert cls().times(i) == 2 * i
        cls.times.cache_clear()
        refs.append(weakref.ref(cls))
        del cls, times
    assert _collected(refs) == 20


def test_equality_and_hash_assigned_after_the_first_call_are_followed() -> None:
    # Nothing is remembered of a class: __eq__/__hash__ assigned to it later (mocking, a
    # decorator applied after the fact) make its instances keyed through `Ident`, never
    # by an equality under which two instances share an entry.
    class Box:
        def __init__(self, value: int) -> None:
            self.value = value

        @mcache
        def read(self) -> int:
            return self.value

    assert Box(1).read() == 1
    Box.__eq__ = lambda self, other: True  # type: ignore[method-assign,assignment]
    Box.__hash__ = lambda self: 1  # type: ignore[method-assign,assignment]
    assert Box(2).read() == 2
    assert Box(3).read() == 3


def test_a_class_reusing_a_dead_identity_class_address_is_keyed_by_its_own_equality() -> None:
    # Addresses are reused at once in CPython. Were the id of a collected identity class left
    # in the set, a new class born at its address with an __eq__ that makes every instance
    # equal would have its instances keyed as themselves, and share one entry.
    class Host:
        @mcache
        def read(self, x: int) -> Any:
            return (self.state, x)

    reused = 0
    for attempt in range(10):
        plain = type("Plain", (Host,), {"state": None})
        assert plain().read(0) == (None, 0)
        address = id(plain)
        Host.read.cache_clear()
        del plain
        gc.collect()

        def eq(self: Any, other: Any) -> bool:
            return True

        def hash_(self: Any) -> int:
            return 1

        def init(self: Any, state: str) -> None:
            self.state = state

        lenient = type(
            "Lenient",
            (Host,),
            {"__eq__": eq, "__hash__": hash_, "__init__": init},
        )
        reused += id(lenient) == address
        assert lenient("a").read(attempt) == ("a", attempt)
        assert lenient("b").read(attempt) == ("b", attempt)  # equal by __eq__: its own entry
        Host.read.cache_clear()
        del lenient
        gc.collect()
    assert reused, "no address was reused: the case this test is about never arose"


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_event_loops_made_and_closed_open_no_descriptors_on_a_disk_cache(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blocking engines run in twat-cache's own worker threads: each loop's default executor
    # started fresh threads, each opening a SQLite connection that SQLite kept open after
    # the thread was gone (50 descriptors after 2,000 `asyncio.run` calls).
    monkeypatch.setenv("TWAT_CACHE_DIR", str(tmp_path))

    @bcache(folder_name="loops")
    async def triple(x: int) -> int:
        await asyncio.sleep(0)
        return 3 * x

    for i in range(100):
        assert asyncio.run(triple(i % 10)) == 3 * (i % 10)
    gc.collect()
    before = _descriptors()
    for i in range(900):
        assert asyncio.run(triple(i % 10)) == 3 * (i % 10)
    gc.collect()
    # At most one connection for each of twat-cache's worker threads that started late
    # (they start as the load needs them): about 20 more with a fresh executor per loop.
    assert _descriptors() - before <= WORKERS
