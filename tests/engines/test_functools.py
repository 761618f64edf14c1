"""FunctoolsEngine: stdlib-only stores (dict / OrderedDict), eviction orders, expiry, refusals."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest

from twat_cache import MISS, CacheConfig, mcache
from twat_cache.config import DEFAULT_MAXSIZE
from twat_cache.engines.functools import FunctoolsEngine
from twat_cache.exceptions import CacheWarning, ConfigurationError


def make(**options: Any) -> FunctoolsEngine:
    config = CacheConfig(**options)
    assert FunctoolsEngine.unsupported(config) is None
    return FunctoolsEngine(config)


def present(engine: FunctoolsEngine, keys: str) -> str:
    """Which of the one-letter `keys` the store holds, read without touching recency."""
    store = engine._plain if engine._plain is not None else engine._store
    return "".join(k for k in keys if k in store)


@pytest.mark.parametrize(
    ("options", "bound"),
    [
        ({}, DEFAULT_MAXSIZE),
        ({"policy": "lru", "maxsize": 8}, 8),
        ({"policy": "fifo", "maxsize": 8}, 8),
        ({"ttl": 60, "maxsize": 8}, 8),
        ({"policy": "lru", "ttl": 60}, DEFAULT_MAXSIZE),
        ({"maxsize": None, "ttl": 60}, None),
    ],
)
def test_bounded_or_expiring_uses_an_ordered_dict(
    options: dict[str, Any], bound: int | None
) -> None:
    engine = make(**options)
    assert engine._plain is None
    assert type(engine._store) is OrderedDict
    assert engine.maxsize == bound


def test_unbounded_without_ttl_is_a_plain_dict() -> None:
    engine = make(maxsize=None)
    assert type(engine._plain) is dict
    engine.set("k", "v")
    assert engine._plain == {"k": "v"}
    assert engine.get.__self__ is engine._plain  # the hit is dict.get itself


def test_lru_evicts_least_recently_used() -> None:
    engine = make(policy="lru", maxsize=3)
    for key in "abc":
        engine.set(key, key)
    assert engine.get("a") == "a"
    engine.set("d", "d")
    assert present(engine, "abcd") == "acd"
    engine.get("c")
    engine.set("e", "e")
    assert present(engine, "abcde") == "cde"


def test_ttl_policy_evicts_like_lru() -> None:
    engine = make(ttl=60, maxsize=3)
    for key in "abc":
        engine.set(key, key)
    engine.get("a")
    engine.set("d", "d")
    assert present(engine, "abcd") == "acd"


@pytest.mark.parametrize("ttl", [None, 60])
def test_unbounded(ttl: float | None) -> None:
    engine = make(maxsize=None, ttl=ttl)
    for i in range(3 * DEFAULT_MAXSIZE):
        engine.set(i, i)
    assert len(engine) == 3 * DEFAULT_MAXSIZE
    assert engine.get(0, MISS) == 0
    assert engine.delete(0) is True
    assert engine.delete(0) is False
    engine.clear()
    assert len(engine) == 0


@pytest.mark.parametrize("policy", ["lfu", "rr"])
def test_lfu_and_rr_are_unsupported(policy: str) -> None:
    reason = FunctoolsEngine.unsupported(CacheConfig(policy=policy))
    assert reason == f"functools has no {policy!r} policy"


@pytest.mark.parametrize("policy", ["fifo", "lfu", "rr"])
def test_policy_with_ttl_is_unsupported(policy: str) -> None:
    reason = FunctoolsEngine.unsupported(CacheConfig(policy=policy, ttl=60))
    assert reason is not None
    assert repr(policy) in reason


def test_byte_size_is_unsupported() -> None:
    reason = FunctoolsEngine.unsupported(CacheConfig(maxsize="1GiB"))
    assert reason is not None
    assert "counts entries" in reason


def test_lfu_through_mcache_is_served_by_another_engine() -> None:
    with pytest.warns(CacheWarning, match="functools") as record:

        @mcache(cache_engine="functools", policy="lfu")
        def f(x: int) -> int:
            return x

    assert f.cache_engine.name != "functools"
    assert len(record) == 1


def test_per_entry_ttl() -> None:
    engine = make(ttl=60)
    engine.set("short", 1, ttl=0.05)
    engine.set("config", 2)
    engine.set("none", 3, ttl=None)
    time.sleep(0.15)
    assert engine.get("short", MISS) is MISS
    assert engine.get("config", MISS) == 2
    assert engine.get("none", MISS) == 3
    with pytest.raises(ConfigurationError):
        engine.set("bad", 4, ttl=0)


def test_expired_entry_read_is_dropped() -> None:
    engine = make(ttl=0.05)
    engine.set("k", 1)
    time.sleep(0.1)
    assert engine.get("k", MISS) is MISS
    assert "k" not in engine._store


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
    "options",
    [{"policy": "lru"}, {"policy": "fifo"}, {"ttl": 60}, {"maxsize": None}],
    ids=["lru", "fifo", "ttl", "unbounded"],
)
def test_thread_safety_smoke(hammer: Callable[..., int], options: dict[str, Any]) -> None:
    engine = make(**{"maxsize": 16, **options})
    hammer(engine, threads=8, seconds=0.2)
    if engine.maxsize is not None:
        assert len(engine) <= 16
