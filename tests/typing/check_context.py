"""What a type checker sees of the rest of the public API: `CacheContext`/`engine_context`
(a `with` block gives a `CacheEngineProtocol`), `disabled()` (a context manager), the
registry functions and the configuration. Checked by `mypy --strict` (`make lint`,
tests/test_typing.py); never run.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from typing_extensions import assert_type

from twat_cache import (
    MISS,
    CacheConfig,
    CacheContext,
    clear_cache,
    create_cache_config,
    disabled,
    engine_context,
    get_stats,
    list_caches,
    mcache,
)
from twat_cache.engines.base import CacheEngineProtocol


def context_checks() -> None:
    context = CacheContext("diskcache", folder_name="session", ttl=600)
    assert_type(context, CacheContext)
    assert_type(context.config, CacheConfig)
    with context as cache:
        assert_type(cache, CacheEngineProtocol)
        assert_type(cache.name, str)
        assert_type(cache.get("user:1"), Any)
        assert_type(cache.get("user:1", default=0), Any)
        assert_type(cache.set("user:1", {"name": "Ada"}), None)
        assert_type(cache.set("user:1", "Ada", ttl=60.0), None)
        assert_type(cache.delete("user:1"), bool)
        assert_type(cache.exists("user:1"), bool)
        assert_type(len(cache), int)
        assert_type(cache.clear(), None)
        assert_type(cache.get("user:1", MISS) is MISS, bool)

    assert_type(engine_context("cachetools", maxsize=2), CacheContext)
    with engine_context(config=CacheConfig(maxsize=2)) as memory:
        assert_type(memory, CacheEngineProtocol)
        assert_type(memory.get("a"), Any)
    with CacheContext(config=create_cache_config(preferred_engine="memory")) as other:
        assert_type(other.delete("a"), bool)


def disabled_checks() -> None:
    @mcache
    def square(x: int) -> int:
        return x * x

    block: AbstractContextManager[None] = disabled()
    with block as nothing:
        assert_type(nothing, None)
    with disabled():
        assert_type(square(3), int)


def registry_checks() -> None:
    @mcache(name="typing.cube")
    def cube(x: int) -> int:
        return x**3

    assert_type(list_caches(), list[str])
    assert_type(clear_cache(), None)
    assert_type(clear_cache("typing.cube"), None)
    assert_type(get_stats(), dict[str, Any])
    assert_type(get_stats("typing.cube"), dict[str, Any])
    assert_type(create_cache_config(maxsize=10, ttl="1h"), CacheConfig)
    assert_type(CacheConfig(maxsize=10, ttl=3600).ttl, float | None)
    assert_type(cube.cache_name, str)
