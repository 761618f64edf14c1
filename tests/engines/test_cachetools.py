"""CachetoolsEngine: policy → cachetools class, eviction orders, expiry, thread safety."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from twat_cache import MISS, CacheConfig
from twat_cache.config import DEFAULT_MAXSIZE
from twat_cache.exceptions import ConfigurationError

cachetools = pytest.importorskip("cachetools")

from twat_cache.engines.cachetools import CachetoolsEngine  # noqa: E402  # after the importorskip


def make(**options: Any) -> CachetoolsEngine:
    config = CacheConfig(**options)
    assert CachetoolsEngine.unsupported(config) is None
    return CachetoolsEngine(config)


def present(engine: CachetoolsEngine, keys: str) -> str:
    """Which of the one-letter `keys` the store holds, read without touching recency."""
    return "".join(k for k in keys if k in set(engine._store.keys()))


@pytest.mark.parametrize(
    ("options", "store_class", "bound"),
    [
        ({}, "LRUCache", DEFAULT_MAXSIZE),
        ({"policy": "lru", "maxsize": 8}, "LRUCache", 8),
        ({"policy": "lfu", "maxsize": 8}, "LFUCache", 8),
        ({"policy": "fifo", "maxsize": 8}, "FIFOCache", 8),
        ({"policy": "rr", "maxsize": 8}, "RRCache", 8),
        ({"ttl": 60, "maxsize": 8}, "TLRUCache", 8),
        ({"policy": "lru", "ttl": 60, "maxsize": 8}, "TLRUCache", 8),
        ({"policy": "ttl", "ttl": "1m"}, "TLRUCache", DEFAULT_MAXSIZE),
        ({"maxsize": None}, "LRUCache", math.inf),
        ({"maxsize": None, "ttl": 60}, "TLRUCache", math.inf),
    ],
)
def test_policy_maps_to_cachetools_class(
    options: dict[str, Any], store_class: str, bound: float
) -> None:
    engine = make(**options)
    assert type(engine._store) is getattr(cachetools, store_class)
    assert engine._store.maxsize == bound


@pytest.mark.parametrize("options", [{"policy": "lru"}, {"policy": "lru", "ttl": 60}])
def test_lru_evicts_least_recently_used(options: dict[str, Any]) -> None:
    engine = make(maxsize=3, **options)
    for key in "abc":
        engine.set(key, key)
    assert engine.get("a") == "a"
    engine.set("d", "d")
    assert present(engine, "abcd") == "acd"
    engine.get("c")
    engine.set("e", "e")
    assert present(engine, "abcde") == "cde"


def test_ttl_policy_evicts_expired_entries_first() -> None:
    engine = make(ttl=60, maxsize=3)
    engine.set("a", 1)
    engine.set("b", 2, ttl=0.05)
    engine.set("c", 3)
    time.sleep(0.1)
    engine.set("d", 4)  # full: the expired b goes, although a is less recently used
    assert present(engine, "abcd") == "acd"


@pytest.mark.parametrize("ttl", [None, 60])
def test_unbounded(ttl: float | None) -> None:
    engine = make(maxsize=None, ttl=ttl)
    assert engine.maxsize is None
    for i in range(3 * DEFAULT_MAXSIZE):
        engine.set(i, i)
    assert len(engine) == 3 * DEFAULT_MAXSIZE
    assert engine.get(0, MISS) == 0


@pytest.mark.parametrize("policy", ["lfu", "fifo", "rr"])
def test_policy_with_ttl_is_unsupported(policy: str) -> None:
    reason = CachetoolsEngine.unsupported(CacheConfig(policy=policy, ttl=60))
    assert reason is not None
    assert repr(policy) in reason
    assert "expiry" in reason


def test_byte_size_is_unsupported() -> None:
    reason = CachetoolsEngine.unsupported(CacheConfig(maxsize="500MB"))
    assert reason is not None
    assert "counts entries" in reason


@pytest.mark.parametrize(
    "options",
    [{}, {"policy": "lfu"}, {"policy": "rr"}, {"ttl": 60}, {"policy": "lru", "ttl": 60}],
)
def test_servable_configs_are_supported(options: dict[str, Any]) -> None:
    assert CachetoolsEngine.unsupported(CacheConfig(**options)) is None


def test_per_entry_ttl() -> None:
    engine = make(ttl=60)
    engine.set("short", 1, ttl=0.05)
    engine.set("config", 2)
    engine.set("none", 3, ttl=None)
    engine.set("after-short", 4)  # the short ttl must not leak into the next entry
    time.sleep(0.15)
    assert engine.get("short", MISS) is MISS
    assert engine.get("config", MISS) == 2
    assert engine.get("none", MISS) == 3
    assert engine.get("after-short", MISS) == 4
    with pytest.raises(ConfigurationError):
        engine.set("bad", 5, ttl=-1)


def test_len_ignores_expired_entries() -> None:
    engine = make(ttl=60)
    for i in range(3):
        engine.set(f"short{i}", i, ttl=0.05)
    engine.set("kept1", 1)
    engine.set("kept2", 2)
    assert len(engine) == 5
    time.sleep(0.15)
    assert len(engine) == 2


@pytest.mark.parametrize(
    "options", [{"policy": "lru"}, {"policy": "lfu"}, {"ttl": 60}], ids=["lru", "lfu", "ttl"]
)
def test_thread_safety_smoke(hammer: Callable[..., int], options: dict[str, Any]) -> None:
    # cachetools' caches are not thread-safe on their own (an LRU read reorders entries):
    # the engine's lock must keep the store consistent under concurrent get/set/delete.
    engine = make(maxsize=16, **options)
    hammer(engine, threads=8, seconds=0.5 if options == {"policy": "lru"} else 0.2)
    assert len(engine) <= 16
    for key in list(engine._store.keys()):
        assert engine.get(key, MISS) == ("value", key)


def test_concurrent_per_entry_ttls_stay_with_their_entries() -> None:
    # The ttl of an entry is handed to TLRUCache through engine state while `set` holds the
    # lock: entries written concurrently with different ttls must each keep their own.
    engine = make(ttl=60, maxsize=2000)
    barrier = threading.Barrier(8)

    def writer(index: int) -> None:
        barrier.wait()
        for i in range(200):
            if index % 2:
                engine.set(("short", index, i), i, ttl=0.05)
            else:
                engine.set(("long", index, i), i)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    time.sleep(0.15)
    assert len(engine) == 4 * 200
    assert all(key[0] == "long" for key in engine._store)
