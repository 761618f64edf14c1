"""The decorators: resolve a config, select an engine, wrap the function, register it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, TypedDict, overload

from typing_extensions import Unpack

from twat_cache import registry
from twat_cache._types import (
    CachedClassMethod,
    CacheDecorator,
    CachedFunction,
    CachedStaticMethod,
    P,
    R,
)
from twat_cache._wrap import wrap
from twat_cache.config import CacheConfig
from twat_cache.engines.manager import get_manager
from twat_cache.exceptions import ConfigurationError

__all__ = ["CacheOptions", "acache", "mcache"]


class CacheOptions(TypedDict, total=False):
    """Keyword options every decorator accepts (the fields of `CacheConfig`, plus `config`)."""

    config: CacheConfig
    maxsize: int | str | None
    ttl: float | timedelta | str | None
    policy: Literal["lru", "lfu", "fifo", "rr", "ttl"]
    folder_name: str | None
    cache_engine: str | None
    preferred_engine: str | None
    key: Callable[..., Any] | None
    ignore: str | tuple[str, ...] | list[str]
    typed: bool
    lock: bool
    fallback: bool
    serializer: Literal["pickle", "json"]
    compress: bool | Literal["zlib", "lzma"] | None
    compression: bool | Literal["zlib", "lzma"] | None
    secure: bool
    name: str | None
    url: str | None


def resolve_config(options: dict[str, Any]) -> CacheConfig:
    """Validate decorator options; keywords override the fields of a given `config=`."""
    base = options.pop("config", None)
    if base is None:
        return CacheConfig.model_validate(options)
    if not isinstance(base, CacheConfig):
        raise ConfigurationError(f"config must be a CacheConfig, not {type(base).__name__}")
    return base.merged(**options) if options else base


def _apply(kind: str, decorator: str, func: Any, config: CacheConfig) -> Any:
    if isinstance(func, staticmethod | classmethod):
        return type(func)(_apply(kind, decorator, func.__func__, config))
    if not callable(func):
        raise TypeError(
            f"@{decorator} takes keyword options only: write @{decorator} or "
            f"@{decorator}(maxsize=...), not @{decorator}({func!r})"
        )
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise ConfigurationError(
            f"@{decorator} cannot cache the generator function {func.__qualname__}: a "
            "generator is consumed once; cache a function returning a list instead"
        )
    is_async = inspect.iscoroutinefunction(func)
    if kind == "async" and not is_async:
        raise ConfigurationError(
            f"@{decorator} caches async def functions; {func.__qualname__} is not one "
            "(use @mcache for a sync function)"
        )
    module = getattr(func, "__module__", None) or "__main__"
    qualname = getattr(func, "__qualname__", None) or repr(func)
    name = registry.reserve(config.name or f"{module}.{qualname}")
    try:
        engine = get_manager().select(kind, config)
        wrapper = wrap(func, engine, config, name=name, is_async=is_async)
    except BaseException:
        registry.release(name)
        raise
    registry.register(name, wrapper)
    return wrapper


def _decorator(kind: str, decorator: str, func: Any, options: dict[str, Any]) -> Any:
    config = resolve_config(options)  # validated here, at decoration time, never per call
    get_manager().check_name(config.cache_engine)
    if func is None:
        return lambda f: _apply(kind, decorator, f, config)
    return _apply(kind, decorator, func, config)


@overload
def mcache(func: staticmethod[P, R], /) -> CachedStaticMethod[P, R]: ...  # type: ignore[overload-overlap]  # the precise overload for a staticmethod
@overload
def mcache(func: classmethod[Any, P, R], /) -> CachedClassMethod[P, R]: ...
@overload
def mcache(func: Callable[P, R], /) -> CachedFunction[P, R]: ...
@overload
def mcache(func: None = None, /, **options: Unpack[CacheOptions]) -> CacheDecorator: ...
def mcache(func: Any = None, /, **options: Any) -> Any:
    """Cache a function in process memory (cachebox → cachetools → functools).

    Works bare or with options, on sync and `async def` functions (the awaited result is
    cached) and on methods (each instance has its own entries).

    >>> from twat_cache import mcache
    >>> @mcache(maxsize=256)
    ... def slow_square(x: int) -> int:
    ...     return x * x
    >>> slow_square(4), slow_square(4), slow_square.cache_info().hits
    (16, 16, 1)
    """
    return _decorator("memory", "mcache", func, options)


@overload
def acache(func: staticmethod[P, R], /) -> CachedStaticMethod[P, R]: ...  # type: ignore[overload-overlap]  # the precise overload for a staticmethod
@overload
def acache(func: classmethod[Any, P, R], /) -> CachedClassMethod[P, R]: ...
@overload
def acache(func: Callable[P, R], /) -> CachedFunction[P, R]: ...
@overload
def acache(func: None = None, /, **options: Unpack[CacheOptions]) -> CacheDecorator: ...
def acache(func: Any = None, /, **options: Any) -> Any:
    """Cache an `async def` function's awaited result, with one computation per cold key
    however many tasks await it at once.

    >>> import asyncio
    >>> from twat_cache import acache
    >>> @acache(ttl="10m")
    ... async def fetch(user_id: int) -> dict[str, int]:
    ...     return {"id": user_id}
    >>> asyncio.run(fetch(7))
    {'id': 7}
    """
    return _decorator("async", "acache", func, options)
