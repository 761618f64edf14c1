"""CacheContext and engine_context: one engine, used directly as a key-value store in a block."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from twat_cache.config import CacheConfig
from twat_cache.decorators import check_server, resolve_config, universal_kind
from twat_cache.engines.base import CacheEngineProtocol, capabilities_of
from twat_cache.engines.manager import CHAINS, get_manager
from twat_cache.exceptions import ConfigurationError, EngineUnavailableError

__all__ = ["CacheContext", "engine_context"]

_PERSISTENT_KINDS = ("disk", "file")


class CacheContext:
    """A block with one cache engine for direct `get(key, default=None)`,
    `set(key, value, ttl=None)`, `delete(key)`, `exists(key)` (or `key in cache`),
    `clear()` and `len(cache)`; the engine is closed when the block ends, even when it
    raises.

    `engine_name` is a library name (`"diskcache"`, `"cachebox"`...) or a chain
    (`"memory"`, `"disk"`, `"file"`, `"async"`, `"redis"`); the other keywords are
    `CacheConfig` fields (or `config=`). Without a name the engine is chosen as `ucache`
    chooses: `folder_name` → disk, `url` → a server, otherwise memory. A persistent engine
    needs `folder_name`: entries written in one block are read in the next block on that
    folder, in this process or another. Async-only engines (aiocache) need `async with`,
    which also works for every other engine. Each `with` builds its own engine, so nested
    blocks, even of one `CacheContext`, are independent.

    >>> from twat_cache import CacheContext
    >>> with CacheContext(engine_name="diskcache", folder_name="doc_session", ttl=600) as cache:
    ...     cache.set("user:1", {"name": "Ada"})
    ...     cache.get("user:1"), "user:1" in cache, cache.get("user:2", "absent")
    ({'name': 'Ada'}, True, 'absent')
    >>> with CacheContext(engine_name="diskcache", folder_name="doc_session") as cache:
    ...     cache.get("user:1")
    {'name': 'Ada'}
    """

    def __init__(
        self, engine_name: str | None = None, *, config: CacheConfig | None = None, **options: Any
    ) -> None:
        if engine_name is not None:
            options["cache_engine"] = engine_name
        if config is not None:
            options["config"] = config
        self.config = resolve_config(options)
        get_manager().check_name(self.config.cache_engine)
        # The engines this object opened, per thread and per task: a block's exit closes
        # the engine that block opened, even when other threads or tasks use this object.
        self._open: ContextVar[tuple[Any, ...]] = ContextVar(f"CacheContext-{id(self)}", default=())

    def _select(self, is_async: bool) -> Any:
        config = self.config
        kind = universal_kind(config, None, is_async)
        check_server(kind, config, repr(self))
        if kind in _PERSISTENT_KINDS and config.folder_name is None:
            raise ConfigurationError(
                f"a {config.cache_engine or kind} CacheContext needs folder_name=: the folder "
                "its entries persist in"
            )
        name = config.cache_engine
        if not is_async and name is not None and name not in CHAINS:
            try:
                sync_api = capabilities_of(get_manager().load(name)).sync_api
            except EngineUnavailableError:
                sync_api = True  # unavailable: selection falls back, with a warning
            if not sync_api:
                raise ConfigurationError(
                    f"the {name} engine is async-only: use `async with CacheContext(...)`"
                )
        engine = get_manager().select(kind, config, is_async=is_async)
        self._open.set((*self._open.get(), engine))
        return engine

    def _pop(self) -> Any:
        *rest, engine = self._open.get()
        self._open.set(tuple(rest))
        return engine

    def __enter__(self) -> CacheEngineProtocol:
        engine: CacheEngineProtocol = self._select(is_async=False)
        return engine

    def __exit__(self, *exc_info: object) -> None:
        engine = self._pop()
        close = getattr(engine, "close", None)
        if close is not None:
            close()

    async def __aenter__(self) -> Any:
        return self._select(is_async=True)

    async def __aexit__(self, *exc_info: object) -> None:
        engine = self._pop()
        if capabilities_of(engine).async_native:
            await engine.aclose()
        elif getattr(engine, "close", None) is not None:
            # In this thread: the block used the engine here, and some engines (diskcache)
            # hold one connection per thread and close the calling thread's.
            engine.close()

    def __repr__(self) -> str:
        return f"CacheContext(engine_name={self.config.cache_engine!r})"


def engine_context(
    engine_name: str | None = None, *, config: CacheConfig | None = None, **options: Any
) -> CacheContext:
    """The function form of `CacheContext`: ``with engine_context("cachetools") as cache:``.

    >>> from twat_cache import engine_context
    >>> with engine_context("cachetools", maxsize=2) as cache:
    ...     for key in "abc":
    ...         cache.set(key, key.upper())
    ...     len(cache), cache.get("a"), cache.get("c")
    (2, None, 'C')
    """
    return CacheContext(engine_name, config=config, **options)
