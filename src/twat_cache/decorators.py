"""The decorators: resolve a config, select an engine, wrap the function, register it."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, overload

from typing_extensions import Unpack

from twat_cache import registry
from twat_cache._callables import is_generator, returns_coroutine
from twat_cache._tiers import tier_config, wrap_tiered
from twat_cache._types import (
    CachedClassMethod,
    CacheDecorator,
    CachedFunction,
    CachedStaticMethod,
    P,
    R,
)
from twat_cache._wrap import wrap
from twat_cache.config import (
    REDIS_URL_ENV,
    CacheConfig,
    ConfigOptions,
    KeywordOptions,
    check_url_durations,
)
from twat_cache.engines.base import capabilities_of, engine_name
from twat_cache.engines.manager import CHAINS, get_manager
from twat_cache.exceptions import ConfigurationError
from twat_cache.identity import describe, folder_names
from twat_cache.paths import default_folder

__all__ = [
    "CacheOptions",
    "CommonOptions",
    "UniversalOptions",
    "acache",
    "bcache",
    "fcache",
    "mcache",
    "ucache",
]

_UNSET: Any = object()


class UniversalOptions(KeywordOptions, total=False):
    """Keyword options of `ucache` besides the ones it also takes positionally (folder_name,
    maxsize, ttl, policy, preferred_engine)."""

    config: CacheConfig


class CommonOptions(UniversalOptions, total=False):
    """Keyword options of every decorator besides the ones `bcache`/`fcache` also take
    positionally (folder_name, maxsize, ttl, policy)."""

    preferred_engine: str | None


class CacheOptions(ConfigOptions, total=False):
    """Keyword options every decorator accepts (the fields of `CacheConfig`, plus `config`)."""

    config: CacheConfig


def resolve_config(options: dict[str, Any]) -> CacheConfig:
    """Validate decorator options; keywords override the fields of a given `config=`."""
    base = options.pop("config", None)
    if base is None:
        return CacheConfig.model_validate(options)
    if not isinstance(base, CacheConfig):
        raise ConfigurationError(f"config must be a CacheConfig, not {type(base).__name__}")
    return base.merged(**options) if options else base


#: Return annotations that mark a function's results as large objects (the file chain).
_LARGE_RESULT = re.compile(r"\b(ndarray|NDArray|DataFrame|Series|Tensor|bytes|bytearray)\b")

#: The chain an engine named by the user belongs to when `ucache` picks a chain for it.
_HOME_KIND = {name: kind for kind in ("file", "disk", "redis") for name in CHAINS[kind][:2]}


def _large_results(func: Any) -> bool:
    annotation = getattr(func, "__annotations__", {}).get("return")
    if annotation is None:
        return False
    # The annotation's text, whether it is stored as a string (`from __future__ import
    # annotations`) or as an object: `Optional[np.ndarray]` reads the same either way.
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return bool(_LARGE_RESULT.search(text))


def universal_kind(config: CacheConfig, func: Any, is_async: bool) -> str:
    """The chain `ucache` (and `CacheContext`) uses for `config` (see docs/selection.md).

    An engine name wins: an alias is its own chain, a library name is tried first in the
    chain it belongs to. Then a URL means a remote cache; `mmap_mode`, or `compress` with a
    large return type (arrays, data frames, bytes), the file chain; a `folder_name`,
    `use_sql` or `compress` the disk chain; an `async def` the async chain; else memory.
    """
    in_process = "async" if is_async else "memory"
    engine = config.cache_engine
    if engine is not None:
        if engine in CHAINS:
            return engine
        home = _HOME_KIND.get(engine, in_process)
        return in_process if home == "redis" and config.url is None else home
    if config.url is not None:
        return "redis"
    if config.mmap_mode is not None or (config.compress and _large_results(func)):
        return "file"
    if config.folder_name is not None or config.use_sql or config.compress:
        return "disk"
    return in_process


def check_server(chain: str | None, config: CacheConfig, user: str) -> None:
    """A cache asking for the server chain must say which server: `url` or the variable;
    a URL taken from the variable is held to the bounds a `url=` is (`url=` is checked by
    `CacheConfig`)."""
    from_env = os.environ.get(REDIS_URL_ENV)
    if chain == "redis" and config.url is None and not from_env:
        raise ConfigurationError(
            f"{user} asks for a Redis cache but names no server: pass "
            f"url='redis://host:port/db' or set ${REDIS_URL_ENV}"
        )
    if config.url is None and from_env and "redis" in (chain, config.cache_engine):
        try:
            check_url_durations(from_env)
        except ValueError as exc:
            raise ConfigurationError(f"${REDIS_URL_ENV}: {exc}") from None


def _apply(kind: str | None, decorator: str, func: Any, config: CacheConfig) -> Any:
    if isinstance(func, staticmethod | classmethod):
        return type(func)(_apply(kind, decorator, func.__func__, config))
    if not callable(func):
        raise TypeError(
            f"@{decorator} takes keyword options only: write @{decorator} or "
            f"@{decorator}(maxsize=...), not @{decorator}({func!r})"
        )
    if is_generator(func):
        raise ConfigurationError(
            f"@{decorator} cannot cache the generator function {describe(func)}: a "
            "generator is consumed once; cache a function returning a list instead"
        )
    is_async = returns_coroutine(func)
    if kind == "async" and not is_async:
        try:
            inner = inspect.unwrap(func, stop=lambda f: not callable(f))
        except ValueError:  # a __wrapped__ chain that loops
            inner = func
        if inner is not func and returns_coroutine(inner):
            raise ConfigurationError(
                f"@{decorator} caches async def functions; {describe(func)} is a plain def "
                f"wrapping the async def {describe(inner)}: put the cache on the async def "
                "itself, under the wrapper, or make the wrapper async def"
            )
        raise ConfigurationError(
            f"@{decorator} caches async def functions; {describe(func)} is not one "
            "(use @mcache for a sync function)"
        )
    if kind is None:
        kind = universal_kind(config, func, is_async)
    elif config.url is not None and kind != "async":
        raise ConfigurationError(
            f"@{decorator} does not use url=: it is a local cache; use @ucache(url=...) "
            "for a cache shared through a server"
        )
    elif config.url is not None and config.cache_engine is None:
        kind = "redis"
    chain = config.cache_engine if config.cache_engine in CHAINS else kind
    check_server(chain, config, f"@{decorator}")
    if (
        chain in ("disk", "redis")
        and "policy" not in config.model_fields_set
        and config.ttl is None
    ):
        # LRU makes every hit a write: diskcache writes the access time (a write transaction
        # per read, measured ~10x slower), Redis runs a script updating the cache's index
        # (measured ~1.5x a plain GET). Eviction by storage time keeps hits read-only.
        config = config.merged(policy="fifo")
    if config.folder_name is None:
        # One folder per function, named after it and the same in every process, for
        # whichever persistent engine serves it (memory engines ignore it).
        config = config.merged(folder_name=default_folder(*folder_names(func)))
    name = registry.reserve(config.name or describe(func))
    try:
        engine = get_manager().select(kind, config, is_async=is_async, function=describe(func))
        if config.l1_maxsize is None:
            wrapper = wrap(func, engine, config, name=name, is_async=is_async)
        else:
            wrapper = _tiered(func, engine, config, name, is_async)
    except BaseException:
        registry.release(name)
        raise
    registry.register(name, wrapper)
    return wrapper


def _tiered(func: Any, engine: Any, config: CacheConfig, name: str, is_async: bool) -> Any:
    capabilities = capabilities_of(engine)
    if not (capabilities.persistent or capabilities.shared):
        raise ConfigurationError(
            f"l1_maxsize/l1_ttl put a memory tier in front of a persistent or remote cache; "
            f"this one is already in memory ({engine_name(engine)})"
        )
    l1_engine = get_manager().select("memory", tier_config(config))
    return wrap_tiered(func, engine, l1_engine, config, name=name, is_async=is_async)


def _decorator(kind: str | None, decorator: str, func: Any, options: dict[str, Any]) -> Any:
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


def _persistent(
    kind: str | None,
    decorator: str,
    folder_name: Any,
    positional: dict[str, Any],
    options: dict[str, Any],
) -> Any:
    func = None
    if callable(folder_name) or isinstance(folder_name, staticmethod | classmethod):
        func, folder_name = folder_name, None  # bare: @bcache
    # None means "not given" here, as in the signature: the engine's default bound, no ttl.
    given = {k: v for k, v in positional.items() if v is not None and v is not _UNSET}
    if folder_name is not None:
        given["folder_name"] = folder_name
    return _decorator(kind, decorator, func, {**given, **options})


@overload
def bcache(folder_name: staticmethod[P, R], /) -> CachedStaticMethod[P, R]: ...  # type: ignore[overload-overlap]  # the precise overload for a staticmethod
@overload
def bcache(folder_name: classmethod[Any, P, R], /) -> CachedClassMethod[P, R]: ...
@overload
def bcache(folder_name: Callable[P, R], /) -> CachedFunction[P, R]: ...
@overload
def bcache(
    folder_name: str | None = None,
    maxsize: int | str | None = None,
    ttl: float | timedelta | str | None = None,
    policy: Literal["lru", "lfu", "fifo", "rr", "ttl"] = "lru",
    **options: Unpack[CommonOptions],
) -> CacheDecorator: ...
def bcache(
    folder_name: Any = None,
    maxsize: Any = None,
    ttl: Any = None,
    policy: Any = _UNSET,
    **options: Any,
) -> Any:
    """Cache a function persistently in SQLite (diskcache → klepto → memory, with a warning
    when persistence is lost), shared between processes.

    Without `folder_name`, the function gets its own folder under the cache root, named
    after its qualified name (the same in every process). `maxsize` is entries (int) or
    bytes ("500MB"); unset, the cache keeps at most 1 GiB. Values are pickled and signed.
    Unless `policy` (or a ttl) is given, the oldest stored entries are evicted first
    ("fifo"): hits then never write; `policy="lru"` makes every hit also a write.

    >>> from twat_cache import bcache
    >>> @bcache(folder_name="doc_bcache", ttl="1d")
    ... def area(width: int, height: int) -> int:
    ...     return width * height
    >>> area(3, 4), area(3, 4), area.cache_info().hits
    (12, 12, 1)
    """
    positional = {"maxsize": maxsize, "ttl": ttl, "policy": policy}
    return _persistent("disk", "bcache", folder_name, positional, options)


@overload
def fcache(folder_name: staticmethod[P, R], /) -> CachedStaticMethod[P, R]: ...  # type: ignore[overload-overlap]  # the precise overload for a staticmethod
@overload
def fcache(folder_name: classmethod[Any, P, R], /) -> CachedClassMethod[P, R]: ...
@overload
def fcache(folder_name: Callable[P, R], /) -> CachedFunction[P, R]: ...
@overload
def fcache(
    folder_name: str | None = None,
    maxsize: int | str | None = None,
    ttl: float | timedelta | str | None = None,
    **options: Unpack[CommonOptions],
) -> CacheDecorator: ...
def fcache(
    folder_name: Any = None,
    maxsize: Any = None,
    ttl: Any = None,
    **options: Any,
) -> Any:
    """Cache a function's large results (NumPy arrays, DataFrames) as one file per entry
    (joblib → klepto → memory, with a warning when persistence is lost).

    Files are written to a temporary name and renamed into place, signed by default, and
    kept under a size limit (1 GiB unless `maxsize` says otherwise), least recently used
    first out. `compress=True` compresses them; `mmap_mode="r"` memory-maps arrays on load.

    >>> from twat_cache import fcache
    >>> @fcache(folder_name="doc_fcache")
    ... def table(n: int) -> list[int]:
    ...     return list(range(n))
    >>> table(3), table(3), table.cache_info().hits
    ([0, 1, 2], [0, 1, 2], 1)
    """
    return _persistent("file", "fcache", folder_name, {"maxsize": maxsize, "ttl": ttl}, options)


@overload
def ucache(folder_name: staticmethod[P, R], /) -> CachedStaticMethod[P, R]: ...  # type: ignore[overload-overlap]  # the precise overload for a staticmethod
@overload
def ucache(folder_name: classmethod[Any, P, R], /) -> CachedClassMethod[P, R]: ...
@overload
def ucache(folder_name: Callable[P, R], /) -> CachedFunction[P, R]: ...
@overload
def ucache(
    folder_name: str | None = None,
    maxsize: int | str | None = None,
    ttl: float | timedelta | str | None = None,
    policy: Literal["lru", "lfu", "fifo", "rr", "ttl"] = "lru",
    preferred_engine: str | None = None,
    **options: Unpack[UniversalOptions],
) -> CacheDecorator: ...
def ucache(
    folder_name: Any = None,
    maxsize: Any = None,
    ttl: Any = None,
    policy: Any = _UNSET,
    preferred_engine: Any = None,
    **options: Any,
) -> Any:
    """Cache a function on the engine its options call for (the table in
    docs/selection.md): a named engine; a URL → a server; `folder_name`/`use_sql` → disk;
    `mmap_mode`, or `compress` with an array/data-frame/bytes return type → files; an
    `async def` → the async chain; otherwise memory, exactly as `@mcache` would.

    `maxsize=None` means "not given": the chosen engine's default bound (use
    ``config=CacheConfig(maxsize=None)`` for an unbounded memory cache). Unless `policy`
    or a ttl is given, memory caches evict least recently used entries and disk caches the
    oldest stored, as `@mcache` and `@bcache` do.

    >>> from twat_cache import ucache
    >>> @ucache
    ... def square(x: int) -> int:
    ...     return x * x
    >>> @ucache(folder_name="doc_ucache")
    ... def cube(x: int) -> int:
    ...     return x**3
    >>> square(3), cube(2), cube(2), cube.cache_info().hits
    (9, 8, 8, 1)
    >>> square.cache_engine.name in {"cachebox", "cachetools", "functools"}
    True
    >>> cube.cache_engine.name
    'diskcache'
    """
    if preferred_engine is not None:
        if options.get("cache_engine", preferred_engine) != preferred_engine:
            raise ConfigurationError(
                f"preferred_engine={preferred_engine!r} and cache_engine="
                f"{options['cache_engine']!r} disagree: give one of them"
            )
        options["cache_engine"] = preferred_engine
    positional = {"maxsize": maxsize, "ttl": ttl, "policy": policy}
    return _persistent(None, "ucache", folder_name, positional, options)
