"""CacheboxEngine: policy → cachebox class, eviction orders, expiry, refusals."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from twat_cache import MISS, CacheConfig
from twat_cache.config import DEFAULT_MAXSIZE
from twat_cache.exceptions import ConfigurationError

cachebox = pytest.importorskip("cachebox")

from twat_cache.engines.cachebox import CacheboxEngine  # noqa: E402  # after the importorskip


def make(**options: Any) -> CacheboxEngine:
    config = CacheConfig(**options)
    assert CacheboxEngine.unsupported(config) is None
    return CacheboxEngine(config)


def present(engine: CacheboxEngine, keys: str) -> str:
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
        ({"ttl": 60, "maxsize": 8}, "VTTLCache", 8),
        ({"policy": "ttl", "ttl": "1m"}, "VTTLCache", DEFAULT_MAXSIZE),
        ({"maxsize": None}, "Cache", None),
        ({"maxsize": None, "policy": "lfu"}, "Cache", None),
        ({"maxsize": None, "ttl": 60}, "VTTLCache", None),
    ],
)
def test_policy_maps_to_cachebox_class(
    options: dict[str, Any], store_class: str, bound: int | None
) -> None:
    engine = make(**options)
    assert type(engine._store) is getattr(cachebox, store_class)
    assert engine.maxsize == bound


def test_lru_evicts_least_recently_used() -> None:
    engine = make(policy="lru", maxsize=3)
    for key in "abc":
        engine.set(key, key)
    assert engine.get("a") == "a"  # a is now the most recently used
    engine.set("d", "d")
    assert present(engine, "abcd") == "acd"
    engine.get("c")
    engine.set("e", "e")
    assert present(engine, "abcde") == "cde"


def test_ttl_policy_when_full_evicts_the_nearest_expiry() -> None:
    engine = make(ttl=100, maxsize=3)
    engine.set("a", 1, ttl=100)
    engine.set("b", 2, ttl=5)
    engine.set("c", 3, ttl=50)
    engine.set("d", 4, ttl=80)
    assert present(engine, "abcd") == "acd"


@pytest.mark.parametrize("ttl", [None, 60])
def test_unbounded(ttl: float | None) -> None:
    engine = make(maxsize=None, ttl=ttl)
    for i in range(3 * DEFAULT_MAXSIZE):
        engine.set(i, i)
    assert len(engine) == 3 * DEFAULT_MAXSIZE
    assert engine.get(0, MISS) == 0


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "rr"])
def test_policy_with_ttl_is_unsupported(policy: str) -> None:
    reason = CacheboxEngine.unsupported(CacheConfig(policy=policy, ttl=60))
    assert reason is not None
    assert repr(policy) in reason
    assert "expiry" in reason


def test_byte_size_is_unsupported() -> None:
    reason = CacheboxEngine.unsupported(CacheConfig(maxsize="500MB"))
    assert reason is not None
    assert "counts entries" in reason


@pytest.mark.parametrize(
    "options", [{}, {"policy": "lfu"}, {"policy": "rr"}, {"ttl": 60}, {"maxsize": None}]
)
def test_servable_configs_are_supported(options: dict[str, Any]) -> None:
    assert CacheboxEngine.unsupported(CacheConfig(**options)) is None


def test_per_entry_ttl() -> None:
    engine = make(ttl=60)
    engine.set("short", 1, ttl=0.05)
    engine.set("config", 2)
    engine.set("none", 3, ttl=None)  # None means "the config's ttl", not "forever"
    time.sleep(0.15)
    assert engine.get("short", MISS) is MISS
    assert engine.get("config", MISS) == 2
    assert engine.get("none", MISS) == 3
    with pytest.raises(ConfigurationError):
        engine.set("bad", 4, ttl=0)


def test_len_ignores_expired_entries() -> None:
    engine = make(ttl=60)
    for i in range(3):
        engine.set(f"short{i}", i, ttl=0.05)
    engine.set("kept1", 1)
    engine.set("kept2", 2)
    assert len(engine) == 5
    time.sleep(0.15)
    assert len(engine) == 2  # counted without reading the expired entries first


def test_get_is_the_store_method() -> None:
    # The hit path runs cachebox's own method with no Python frame in between.
    engine = make(maxsize=4)
    engine.set("k", "v")
    assert engine.get("k") == "v"
    assert engine.get("absent", MISS) is MISS
    assert type(engine.get).__name__ == "builtin_function_or_method"


def test_thread_safety_smoke(hammer: Callable[..., int]) -> None:
    engine = make(policy="lru", maxsize=16)
    hammer(engine, threads=8, seconds=0.3)
    assert len(engine) <= 16
