"""twat-cache: one typed decorator gives a function a cache, on the fastest engine available.

>>> from twat_cache import mcache
>>> @mcache
... def add(a: int, b: int) -> int:
...     return a + b
>>> add(1, 2), add.cache_info().misses
(3, 1)
"""

from __future__ import annotations

from twat_cache.__about__ import __version__
from twat_cache._bypass import disabled
from twat_cache._types import CachedFunction, CacheInfo
from twat_cache.config import CacheConfig, create_cache_config
from twat_cache.context import CacheContext, engine_context
from twat_cache.decorators import acache, bcache, fcache, mcache, ucache
from twat_cache.engines.base import MISS
from twat_cache.exceptions import CacheError, ConfigurationError
from twat_cache.registry import clear_cache, get_stats, list_caches

__all__ = [
    "MISS",
    "CacheConfig",
    "CacheContext",
    "CacheError",
    "CacheInfo",
    "CachedFunction",
    "ConfigurationError",
    "__version__",
    "acache",
    "bcache",
    "clear_cache",
    "create_cache_config",
    "disabled",
    "engine_context",
    "fcache",
    "get_stats",
    "list_caches",
    "mcache",
    "ucache",
]
