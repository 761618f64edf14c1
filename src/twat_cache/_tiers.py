"""The in-process tier in front of a persistent or shared cache: the same wrapper twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twat_cache._types import CacheInfo
from twat_cache._wrap import publish, wrap
from twat_cache.config import CacheConfig
from twat_cache.engines.base import engine_name

__all__ = ["tier_config", "wrap_tiered"]


def tier_config(config: CacheConfig) -> CacheConfig:
    """The configuration of the in-process tier in front of a cache configured by `config`."""
    return CacheConfig(
        maxsize=config.l1_maxsize,
        ttl=config.l1_ttl,
        key=config.key,
        ignore=config.ignore,
        typed=config.typed,
        lock=config.lock,
        fallback=config.fallback,
    )


def wrap_tiered(
    func: Callable[..., Any],
    engine: Any,
    l1_engine: Any,
    config: CacheConfig,
    *,
    name: str,
    is_async: bool,
) -> Any:
    """`func` cached in `engine` behind an in-process tier: the same wrapper twice. The outer
    one (in-process keys, `l1_engine`) calls the inner one (`engine`) on a miss, so a tier
    hit costs what an `@mcache` hit costs, and a miss reads the shared engine."""
    inner = wrap(func, engine, config, name=name, is_async=is_async)
    outer = wrap(inner, l1_engine, tier_config(config), name=name, is_async=is_async)
    tier_info, tier_clear, tier_delete = outer.cache_info, outer.cache_clear, outer.cache_delete

    def cache_info() -> CacheInfo:
        """Hits of either tier, misses of the shared engine, and its bound and size."""
        tier, shared = tier_info(), inner.cache_info()
        return CacheInfo(tier.hits + shared.hits, shared.misses, shared.maxsize, shared.currsize)

    def cache_clear() -> None:
        """Clear this process's tier and the shared engine."""
        tier_clear()
        inner.cache_clear()

    async def acache_clear() -> None:
        tier_clear()
        await inner.acache_clear()

    def cache_delete(*args: Any, **kwargs: Any) -> bool:
        """Delete the entry from this process's tier and from the shared engine."""
        in_tier = tier_delete(*args, **kwargs)
        return bool(inner.cache_delete(*args, **kwargs)) or in_tier

    async def acache_delete(*args: Any, **kwargs: Any) -> bool:
        in_tier = tier_delete(*args, **kwargs)
        return bool(await inner.acache_delete(*args, **kwargs)) or in_tier

    def cache_refresh(*args: Any, **kwargs: Any) -> Any:
        """Recompute into the shared engine; this process's tier reads it on the next call."""
        tier_delete(*args, **kwargs)
        return inner.cache_refresh(*args, **kwargs)

    def cache_parameters() -> dict[str, Any]:
        return {**inner.cache_parameters(), "l1_engine": engine_name(l1_engine)}

    publish(
        outer,
        __wrapped__=func,
        cache_info=cache_info,
        cache_clear=cache_clear,
        acache_clear=acache_clear,
        cache_delete=cache_delete,
        acache_delete=acache_delete,
        cache_key=inner.cache_key,
        cache_refresh=cache_refresh,
        cache_parameters=cache_parameters,
        cache_engine=engine,
        cache_l1_engine=l1_engine,
    )
    return outer
