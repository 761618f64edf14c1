"""Public types of decorated functions: `CacheInfo` and the `CachedFunction` protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, NamedTuple, ParamSpec, Protocol, TypeVar

__all__ = ["CacheInfo", "CachedFunction", "P", "R"]

P = ParamSpec("P")
R = TypeVar("R")


class CacheInfo(NamedTuple):
    """Statistics of one cache, shaped like `functools.lru_cache`'s.

    >>> CacheInfo(hits=3, misses=1, maxsize=128, currsize=1).hits
    3
    """

    hits: int
    misses: int
    maxsize: int | None
    currsize: int


class CachedFunction(Protocol, Generic[P, R]):
    """What a type checker sees of a decorated function: its own parameters and return
    type, plus the cache attributes."""

    __wrapped__: Callable[P, R]
    cache_engine: Any
    cache_name: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
    def cache_info(self) -> CacheInfo: ...
    def cache_clear(self) -> None: ...
    async def acache_clear(self) -> None: ...
    def cache_delete(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    async def acache_delete(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...
    def cache_parameters(self) -> dict[str, Any]: ...
