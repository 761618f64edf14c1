"""CacheEngineManager: the registry of engine classes, their availability, and the chains."""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from twat_cache._report import warn
from twat_cache.config import CacheConfig
from twat_cache.engines.base import (
    FolderSettingsError,
    NullEngine,
    capabilities_of,
    unsupported_by_capabilities,
)
from twat_cache.exceptions import ConfigurationError, EngineUnavailableError
from twat_cache.logging import logger

__all__ = ["CHAINS", "CacheEngineManager", "get_manager"]

_MEMORY = ("cachebox", "cachetools", "functools")

#: The fallback chain of each kind of cache, first available wins. Names a chain lists but
#: nobody registered are skipped, so a chain can name engines that arrive later.
CHAINS: Mapping[str, tuple[str, ...]] = {
    "memory": _MEMORY,
    # In-process memory is the fastest async cache; aiocache serves when asked for by name.
    "async": _MEMORY,
    "disk": ("diskcache", "klepto", *_MEMORY),
    "file": ("joblib", "klepto", *_MEMORY),
    # A URL: the Redis engine, else aiocache's remote caches (async functions only).
    "redis": ("redis", "aiocache"),
}

_PERSISTENT_KINDS = frozenset({"disk", "file"})
_MEMORY_KINDS = frozenset({"memory", "async"})

# Engines are named by "module:Class" so that importing twat_cache imports no backend
# library; a class is loaded the first time a cache asks for it.
_BUILTIN: dict[str, str] = {
    "cachebox": "twat_cache.engines.cachebox:CacheboxEngine",
    "cachetools": "twat_cache.engines.cachetools:CachetoolsEngine",
    "functools": "twat_cache.engines.functools:FunctoolsEngine",
    "diskcache": "twat_cache.engines.diskcache:DiskCacheEngine",
    "joblib": "twat_cache.engines.joblib:JoblibEngine",
    "klepto": "twat_cache.engines.klepto:KleptoEngine",
    "aiocache": "twat_cache.engines.aiocache:AioCacheEngine",
    "redis": "twat_cache.engines.redis:RedisEngine",
}


def _never_evicts(config: CacheConfig) -> bool:
    return config.maxsize_given and config.maxsize is None and config.ttl is None


class CacheEngineManager:
    """Knows every engine class by name and picks the first that can serve a config.

    An engine is available only if its library imports *and* an instance can be built;
    one that fails is skipped and the reason logged. Selection never swaps the asked
    policy for another: an engine that cannot serve it exactly is skipped.

    >>> manager = CacheEngineManager()
    >>> manager.select("memory", CacheConfig(maxsize=10)).name in manager.registered()
    True
    """

    def __init__(self) -> None:
        self._specs: dict[str, str | type[Any]] = dict(_BUILTIN)
        self._loaded: dict[str, type[Any]] = {}
        self._import_errors: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- registry ---------------------------------------------------------------------

    def register(self, name: str, engine: str | type[Any], *, replace: bool = False) -> None:
        """Register an engine class (or a lazy ``"module:Class"`` path) under `name`.

        The class needs `get`/`set`/`delete`/`clear`/`exists`/`__len__` and is built as
        ``cls(config)``; `twat_cache.engines.base.BaseEngine` provides the rest.
        """
        if not name or name in CHAINS:
            raise ConfigurationError(f"engine name {name!r} is empty or a chain alias")
        if not isinstance(engine, str) and not is_engine_class(engine):
            raise ConfigurationError(
                f"engine {engine!r} is not an engine class: it needs get, set, delete, clear, "
                "exists and __len__ (see twat_cache.engines.base.CacheEngineProtocol)"
            )
        with self._lock:
            if name in self._specs and not replace:
                raise ConfigurationError(f"an engine named {name!r} is already registered")
            self._specs[name] = engine
            self._loaded.pop(name, None)
            self._import_errors.pop(name, None)

    def unregister(self, name: str) -> None:
        """Forget the engine registered under `name`."""
        with self._lock:
            self._specs.pop(name, None)
            self._loaded.pop(name, None)
            self._import_errors.pop(name, None)

    def registered(self) -> list[str]:
        """Names of every registered engine, available or not."""
        return sorted(self._specs)

    def chain(self, kind: str) -> tuple[str, ...]:
        """The registered engines tried, in order, for a kind or alias ('memory', 'disk'...)."""
        if kind not in CHAINS:
            raise ConfigurationError(f"unknown cache kind {kind!r}; known: {', '.join(CHAINS)}")
        return tuple(n for n in CHAINS[kind] if n in self._specs)

    def load(self, name: str) -> type[Any]:
        """The engine class registered under `name`, imported on first use."""
        spec = self._specs.get(name)
        if spec is None:
            raise ConfigurationError(self._unknown(name))
        if not isinstance(spec, str):
            return spec
        cls = self._loaded.get(name)
        if cls is not None:
            return cls
        if name in self._import_errors:
            raise EngineUnavailableError(self._import_errors[name])
        module_name, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
            if not is_engine_class(cls):
                raise TypeError(f"{spec} is not a class with the engine operations")
        except Exception as exc:  # a missing library, or one that breaks on import
            reason = f"{name}: {type(exc).__name__}: {exc}"
            self._import_errors[name] = reason
            raise EngineUnavailableError(reason) from exc
        self._loaded[name] = cls
        return cast(type[Any], cls)

    def available(self, config: CacheConfig | None = None) -> dict[str, str | None]:
        """Every registered engine mapped to None if it can serve `config`, else the reason."""
        config = config if config is not None else CacheConfig()
        result: dict[str, str | None] = {}
        for name in self.registered():
            engine, reason = self._try_build(name, config)
            close = getattr(engine, "close", None)
            if callable(close):
                close()
            result[name] = reason
        return result

    # --- selection --------------------------------------------------------------------

    def select(
        self,
        kind: str,
        config: CacheConfig,
        *,
        is_async: bool = False,
        function: str | None = None,
    ) -> Any:
        """Build the engine serving `config` for a kind of cache ('memory', 'async'...).

        `config.cache_engine` names an engine (tried first) or an alias (its chain replaces
        the kind's). An unknown name raises `ConfigurationError`; a known engine that is
        unavailable falls back along the chain with one warning. Async-only engines serve
        only when `is_async` (the cached function is an `async def`). `function` names the
        cached function, if any: a persistent folder a live cache of another function (or
        another cache without one) uses with other settings is refused
        (`FolderSettingsError`); the same function defined again takes it over.
        """
        is_async = is_async or kind == "async"
        self.check_name(config.cache_engine)
        preferred = config.cache_engine
        if config.maxsize == 0:
            return NullEngine(config)
        if preferred is None:
            names = self.chain(kind)
            if kind in _MEMORY_KINDS and "functools" in names and _never_evicts(config):
                # Nothing is ever evicted or expires: the fastest store is a plain dict, as
                # functools.cache uses, which is what the functools engine is then.
                names = ("functools", *(n for n in names if n != "functools"))
        elif preferred in CHAINS:
            names = self.chain(preferred)
        else:
            names = (preferred, *(n for n in self.chain(kind) if n != preferred))
        reasons: dict[str, str] = {}
        owner = _Owner(self, config)
        for name in names:
            taken = owner.refuses(name)
            if taken is not None:
                if name == preferred:
                    raise ConfigurationError(taken)
                reasons[name] = taken
                logger.debug("engine {} skipped: {}", name, taken)
                continue
            engine, reason = self._try_build(name, config, is_async=is_async)
            if engine is None:
                reasons[name] = reason or "unavailable"
                logger.debug("engine {} skipped: {}", name, reason)
                continue
            claim = getattr(engine, "claim_folder", None)
            if claim is not None:
                try:
                    claim(function)  # two caches of this process on one folder must agree
                except FolderSettingsError:
                    engine.close()
                    raise
            chain_kind = preferred if preferred in CHAINS else kind
            if chain_kind in _PERSISTENT_KINDS and not capabilities_of(engine).persistent:
                warn(  # one warning, naming every engine's reason, the preferred one's too
                    f"no persistent engine can serve this {chain_kind} cache "
                    f"({'; '.join(f'{n}: {r}' for n, r in reasons.items()) or 'none registered'}); "
                    f"using the in-memory {name!r} engine: entries will not survive the process"
                )
            elif preferred in self._specs and name != preferred:
                warn(
                    f"cache engine {preferred!r} is unavailable ({reasons[preferred]}); "
                    f"using {name!r} instead"
                )
            logger.debug("engine {} serves a {} cache ({})", name, chain_kind, config.policy)
            return engine
        detail = "; ".join(f"{n}: {r}" for n, r in reasons.items()) or "no engine registered"
        raise ConfigurationError(f"no {kind} engine can serve this configuration ({detail})")

    def check_name(self, name: str | None) -> None:
        """Raise `ConfigurationError` unless `name` is None, an alias or a registered engine."""
        if name is not None and name not in CHAINS and name not in self._specs:
            raise ConfigurationError(self._unknown(name))

    def _try_build(
        self, name: str, config: CacheConfig, *, is_async: bool = True
    ) -> tuple[Any, str | None]:
        try:
            cls = self.load(name)
        except EngineUnavailableError as exc:
            return None, f"not importable ({exc})"
        if not is_async and not capabilities_of(cls).sync_api:
            return None, "async only: it serves async def functions"
        unsupported = getattr(cls, "unsupported", None)
        # A user engine without its own check is held to the capabilities it declares.
        reason = (
            unsupported(config)
            if callable(unsupported)
            else unsupported_by_capabilities(cls, config)
        )
        if reason:
            return None, reason
        try:
            return _build(cls, config), None
        except Exception as exc:
            return None, f"could not be built: {type(exc).__name__}: {exc}"

    def _unknown(self, name: str) -> str:
        known = ", ".join([*self.registered(), *CHAINS])
        return f"unknown cache engine {name!r}; known engines and aliases: {known}"


class _Owner:
    """Which engine a persistent cache's folder belongs to: the one its manifest names.

    A folder belongs to one engine: another persistent engine never opens it while the
    owner's entries are there (it would not see them, and `twat-cache clear`, which clears
    what the manifest names, would not clear its own). Once the folder holds no entry of
    the owner (cleared, or never written), another engine may take it.
    """

    def __init__(self, manager: CacheEngineManager, config: CacheConfig) -> None:
        self._manager = manager
        self._config = config
        self._engine: str | None = None
        self._directory: Path | None = None
        self._read = False

    def refuses(self, name: str) -> str | None:
        """Why engine `name` may not serve the folder (another engine owns it), or None."""
        try:
            cls = self._manager.load(name)
        except EngineUnavailableError:
            return None  # skipped as unavailable, with its own reason
        folder = self._config.folder_name
        if not capabilities_of(cls).persistent or folder is None:
            return None
        owner = self._owner(folder)
        if owner is None or owner == name or not self._holds_entries(owner, folder):
            return None
        return (
            f"the cache folder {folder!r} holds entries of the {owner} engine (its manifest "
            f"says so): {name} does not take it over; clear it first (`twat-cache clear "
            f"{folder}`) or give this cache another folder_name"
        )

    def _owner(self, folder: str) -> str | None:
        if not self._read:
            from twat_cache.engines.base import PersistentEngine
            from twat_cache.paths import cache_root, validate_folder_name

            self._read = True
            directory = self._directory = cache_root() / validate_folder_name(folder)
            if directory.is_dir():
                manifest = PersistentEngine.read_manifest(directory)
                self._engine = None if manifest is None else manifest["engine"]
        return self._engine

    def _holds_entries(self, owner: str, folder: str) -> bool:
        """Whether the owner's store in `folder` holds an entry; True when it cannot be
        opened to tell (the folder is not taken over on a guess)."""
        from twat_cache.engines.base import RECORD_MANIFESTS, PersistentEngine

        if self._directory is None:
            return True
        token = RECORD_MANIFESTS.set(False)  # the folder keeps its manifest
        try:
            cls = self._manager.load(owner)
            manifest = PersistentEngine.read_manifest(self._directory)
            settings = {} if manifest is None else manifest.get("settings", {})
            config = CacheConfig(folder_name=folder, **settings)
            engine = cls(config, sweep=False)
            try:
                return len(engine) > 0
            finally:
                engine.close()
        except Exception as exc:
            logger.debug("the {} store of {} could not be opened: {!r}", owner, folder, exc)
            return True
        finally:
            RECORD_MANIFESTS.reset(token)


_MANAGER: CacheEngineManager | None = None


def get_manager() -> CacheEngineManager:
    """The process-wide manager every decorator selects from."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = CacheEngineManager()
    return _MANAGER


def _build(cls: type[Any], config: CacheConfig) -> Any:
    """An instance of `cls`: built as ``cls(config)``, or ``cls()`` when its constructor
    takes no positional argument (a user engine that needs no configuration)."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: the documented form
        return cls(config)
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    takes_config = any(
        p.kind in positional or p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
    )
    return cls(config) if takes_config else cls()


def is_engine_class(cls: object) -> bool:
    """Whether `cls` is a class with the store operations of `CacheEngineProtocol`."""
    operations = ("get", "set", "delete", "clear", "exists", "__len__")
    return isinstance(cls, type) and all(callable(getattr(cls, op, None)) for op in operations)
