"""The engine contract: key-value stores behind the one wrapper, their capabilities, and MISS."""

from __future__ import annotations

import gc
import itertools
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, runtime_checkable

from twat_cache._fork import renewed, reset_in_child
from twat_cache.config import DEFAULT_MAXSIZE, CacheConfig, check_duration
from twat_cache.exceptions import ConfigurationError, SecurityWarning

if TYPE_CHECKING:
    from pathlib import Path

    from typing_extensions import Self

__all__ = [
    "ALL_POLICIES",
    "MISS",
    "AsyncCacheEngineProtocol",
    "BaseEngine",
    "CacheEngineProtocol",
    "Capabilities",
    "NullEngine",
    "PersistentEngine",
    "SerializingEngine",
    "capabilities_of",
    "engine_name",
    "persistent_capabilities",
    "put_of",
    "unsupported_by_capabilities",
]


class _Miss:
    """The type of `MISS`, what `engine.get(key, MISS)` returns for an absent entry, so that
    `None` can be a cached value; one instance exists.

    >>> from twat_cache import MISS, CacheContext
    >>> with CacheContext(engine_name="cachetools") as cache:
    ...     cache.set("answer", None)
    ...     cache.get("answer", MISS) is None, cache.get("question", MISS) is MISS
    (True, True)
    """

    __slots__ = ()
    _instance: ClassVar[_Miss | None] = None

    def __new__(cls) -> _Miss:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISS"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISS"


#: What `engine.get(key, MISS)` returns for an absent entry, so that `None` is a value.
MISS: Final = _Miss()

ALL_POLICIES: frozenset[str] = frozenset({"lru", "lfu", "fifo", "rr", "ttl"})


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; the manager and the wrapper read it at decoration time."""

    #: Eviction policies served (`CacheConfig.policy` values).
    policies: frozenset[str] = frozenset({"lru"})
    #: Entries can expire (a `ttl`), including per-entry ttl in `set(key, value, ttl)`.
    ttl: bool = False
    #: The policies served together with a ttl; None means all of `policies`.
    ttl_policies: frozenset[str] | None = None
    #: Entries survive the process.
    persistent: bool = False
    #: Entries are visible to other processes (so keys must be stable digests).
    shared: bool = False
    #: Safe to call from many threads at once (the engine locks inside if it must).
    thread_safe: bool = True
    #: Implements `aget`/`aset`/...; the async wrapper awaits those instead of `get`/`set`.
    async_native: bool = False
    #: Its synchronous `get`/`set` can serve a sync function. False for async-only engines
    #: (their sync `len`/`clear`/`delete` still serve bookkeeping such as `cache_info`):
    #: the manager then selects them for `async def` functions only.
    sync_api: bool = True
    #: Values are serialized (so they must be picklable or JSON-able).
    needs_serialization: bool = False
    #: `maxsize` may be a byte size ("500MB").
    byte_limits: bool = False
    #: Implements `lease(key, seconds) -> token | None` and `release(key, token)` (and
    #: `alease`/`arelease` when async-native): a computation lease visible to every
    #: process, so that with `lock=True` one process computes a cold key and the others
    #: wait for its result.
    leases: bool = False
    #: Reads and writes block on I/O: async wrappers run them in a worker thread so the
    #: event loop is never blocked by a large value.
    blocking: bool = False

    @property
    def stable_keys(self) -> bool:
        """Whether keys must be identical across processes (persistent or shared engines)."""
        return self.persistent or self.shared


_DEFAULT_CAPABILITIES = Capabilities()


def capabilities_of(engine: object) -> Capabilities:
    """An engine's capabilities; a user engine that declares none gets the defaults."""
    capabilities = getattr(engine, "capabilities", None)
    return capabilities if isinstance(capabilities, Capabilities) else _DEFAULT_CAPABILITIES


def engine_name(engine: object) -> str:
    """An engine's `name`, or its class name for a user engine that declares none."""
    name = getattr(engine, "name", None)
    return name if isinstance(name, str) else type(engine).__name__


def put_of(engine: object) -> Any:
    """The two-argument writer the wrapper stores with: the engine's `put` (set with the
    configured ttl, often the library's own method), else its `set`."""
    return getattr(engine, "put", None) or engine.set  # type: ignore[attr-defined]


def unsupported_by_capabilities(engine: object, config: CacheConfig) -> str | None:
    """Why an engine (class or instance) cannot serve `config` as its `capabilities`
    declare them (policy, expiry, byte limits), or None when it can. A user engine that
    declares no capabilities serves LRU without expiry, counting entries."""
    name = getattr(engine, "name", None)
    if not isinstance(name, str):
        name = (engine if isinstance(engine, type) else type(engine)).__name__
    capabilities = capabilities_of(engine)
    if config.policy not in capabilities.policies:
        return f"{name} has no {config.policy!r} policy"
    if config.ttl is not None and not capabilities.ttl:
        return f"{name} cannot expire entries (ttl)"
    with_ttl = capabilities.ttl_policies
    if config.ttl is not None and with_ttl is not None and config.policy not in with_ttl:
        served = " or ".join(repr(p) for p in sorted(with_ttl))
        return f"{name} has no {config.policy!r} policy with expiry (only {served})"
    if config.size_in_bytes and not capabilities.byte_limits:
        return f"{name} counts entries, so maxsize must be an int, not {config.maxsize}"
    return None


@runtime_checkable
class CacheEngineProtocol(Protocol):
    """A synchronous key-value store the wrapper can cache into.

    `get` returns `default` for an absent or expired entry; the wrapper passes `MISS`
    as the default, so a stored `None` is a hit.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def get(self, key: Any, default: Any = None) -> Any: ...
    def set(self, key: Any, value: Any, ttl: float | None = None) -> None: ...
    def delete(self, key: Any) -> bool: ...
    def clear(self) -> None: ...
    def exists(self, key: Any) -> bool: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...


@runtime_checkable
class AsyncCacheEngineProtocol(Protocol):
    """The async twin of `CacheEngineProtocol`, for engines whose I/O is awaited."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    async def aget(self, key: Any, default: Any = None) -> Any: ...
    async def aset(self, key: Any, value: Any, ttl: float | None = None) -> None: ...
    async def adelete(self, key: Any) -> bool: ...
    async def aclear(self) -> None: ...
    async def aexists(self, key: Any) -> bool: ...
    async def aclose(self) -> None: ...


class BaseEngine:
    """Shared plumbing for engine classes: config, bounds, `in`, context manager, repr.

    Subclasses set `name` and `capabilities`, may override `unsupported` to refuse a
    configuration they cannot serve exactly, and implement the store operations.
    """

    name: ClassVar[str] = "base"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, config: CacheConfig | None = None) -> None:
        self.config = config if config is not None else CacheConfig()
        reset_in_child(self)

    def after_fork(self) -> None:
        """In a forked child (see `_fork.py`): the engine's `_lock`, if it has one, may have
        been held by a thread of the parent that does not exist here, and would be held for
        ever; it is renewed. An in-process store that thread may have left half-updated is
        emptied (the child computes again); a persistent or shared store is kept, and an
        engine with connections renews them in its own `after_fork`."""
        lock = getattr(self, "_lock", None)
        if lock is None or not hasattr(lock, "acquire"):
            return
        self._lock, held = renewed(lock)
        if held and not (self.capabilities.persistent or self.capabilities.shared):
            self.clear()

    @classmethod
    def unsupported(cls, config: CacheConfig) -> str | None:
        """Why this engine cannot serve `config` exactly, or None when it can."""
        return unsupported_by_capabilities(cls, config)

    @property
    def maxsize(self) -> int | None:
        """The bound in force: the configured maxsize, or the default when none was given."""
        return self.config.maxsize if self.config.maxsize_given else DEFAULT_MAXSIZE

    @property
    def expires(self) -> bool:
        """Whether this instance was built to expire entries (its config has a ttl or the
        'ttl' policy): only then does `set(key, value, ttl=...)` accept a ttl."""
        config = self.config
        return self.capabilities.ttl and (config.ttl is not None or config.policy == "ttl")

    def _check_ttl(self, ttl: float | None) -> float | None:
        if ttl is None:
            return self.config.ttl
        if not self.expires:
            raise ConfigurationError(
                f"the {self.name} engine was built without expiry; set ttl in its config "
                f"(or policy='ttl') to store entries with a ttl"
            )
        try:  # bounded as the configured ttl is, so the store is never handed more
            return check_duration(ttl, "ttl")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None

    def get(self, key: Any, default: Any = None) -> Any:
        raise NotImplementedError

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        raise NotImplementedError

    def put(self, key: Any, value: Any) -> None:
        """Store with the configured ttl: what the wrapper calls on a miss. Engines may
        replace it with a faster callable taking `(key, value)`."""
        self.set(key, value)

    def delete(self, key: Any) -> bool:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def exists(self, key: Any) -> bool:
        return self.get(key, MISS) is not MISS

    def __contains__(self, key: Any) -> bool:
        return self.exists(key)

    def close(self) -> None:
        """Release resources; memory engines have none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        aclose = getattr(self, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} maxsize={self.maxsize}>"


class NullEngine(BaseEngine):
    """Stores nothing: serves `maxsize=0` (caching switched off, calls still counted)."""

    name = "null"
    capabilities = Capabilities(policies=ALL_POLICIES, ttl=True)

    def get(self, key: Any, default: Any = None) -> Any:
        return default

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        return None

    def delete(self, key: Any) -> bool:
        return False

    def clear(self) -> None:
        return None

    def __len__(self) -> int:
        return 0


def persistent_capabilities(policies: frozenset[str]) -> Capabilities:
    """The capabilities every disk engine shares: expiry, persistence visible to other
    processes, serialized payloads, byte limits, blocking I/O; only the policies differ."""
    return Capabilities(
        policies=policies,
        ttl=True,
        persistent=True,
        shared=True,
        thread_safe=True,
        needs_serialization=True,
        byte_limits=True,
        blocking=True,
    )


class SerializingEngine(BaseEngine):
    """Plumbing for engines that store payloads outside the process (on disk, on a server):
    the serializer (signed payloads by default), keys as text, and the handling of a
    payload that fails verification (a miss, removed, logged as a security warning)."""

    def __init__(self, config: CacheConfig | None = None) -> None:
        super().__init__(config)
        # Imported here: memory engines and `import twat_cache` need none of this.
        from twat_cache.paths import cache_root
        from twat_cache.serializers import Serializer, get_secret

        secret = get_secret(cache_root()) if self.config.secure else None
        self.serializer = Serializer(self.config, secret)
        self._rejections = itertools.count(1)  # next() is atomic: one warning, however raced

    @property
    def location(self) -> str:
        """Where the entries are, for messages."""
        return repr(self)

    @staticmethod
    def key_text(key: Any) -> str:
        """The str an engine stores `key` under: itself when it is a str (what the wrapper
        passes), else a stable digest of it (a `CacheContext` user's own key)."""
        if type(key) is str:
            return key
        from twat_cache.keys import stable_digest

        return stable_digest("ctx", (key,))

    def _report_rejected(self, exc: Exception) -> None:
        from twat_cache._report import warn
        from twat_cache.logging import logger

        logger.warning("security: {} dropped an entry that failed verification: {}", self.name, exc)
        if next(self._rejections) == 1:
            warn(
                f"twat_cache security: the {self.name} cache in {self.location} held an entry "
                f"that failed verification ({exc}); it was dropped and will be recomputed",
                SecurityWarning,
            )

    def rejected(self, key: Any, exc: Exception) -> None:
        """A stored payload failed verification or decoding: drop it and log a security
        warning (the first one of this engine also as a Python warning)."""
        self._report_rejected(exc)
        try:
            self.delete(key)
        except Exception as delete_error:  # the entry is a miss either way
            from twat_cache.logging import logger

            logger.warning("could not drop the rejected entry: {!r}", delete_error)

    async def arejected(self, key: Any, exc: Exception) -> None:
        """`rejected` for async-native engines: the entry is dropped through `adelete`, so
        the event loop never waits on a blocking client."""
        self._report_rejected(exc)
        try:
            await self.adelete(key)  # type: ignore[attr-defined]  # async-native engines only
        except Exception as delete_error:
            from twat_cache.logging import logger

            logger.warning("could not drop the rejected entry: {!r}", delete_error)


#: Whether opening a persistent engine records its settings in the folder's manifest: tools
#: that open a folder with other settings for a moment (`twat-cache prune --max-size`)
#: switch it off, so the folder keeps the settings its cache was opened with.
RECORD_MANIFESTS: ContextVar[bool] = ContextVar("twat_cache_record_manifests", default=True)


class FolderSettingsError(ConfigurationError):
    """Two caches of one process on one folder with different storage settings."""


#: The persistent engines alive in this process, by folder.
_OPEN: dict[str, weakref.WeakSet[Any]] = {}


class PersistentEngine(SerializingEngine):
    """Plumbing for engines that store on disk: their private directory under the cache
    root and the default size bound, on top of `SerializingEngine`."""

    #: Bytes kept when `maxsize` is not given: no persistent cache grows without bound.
    DEFAULT_SIZE_LIMIT: ClassVar[int] = 2**30
    #: For engines that enforce their bound themselves by scanning their folder (joblib,
    #: klepto): each process counts its own writes as it makes them, and rescans the folder
    #: for other processes' writes after `RESCAN_WRITES` writes or `RESCAN_FRACTION` of
    #: the entries, whichever is more, or `RESCAN_SECONDS`. A scan costs one stat per
    #: file, so its cost per write stays flat as the folder grows; what other processes
    #: add unseen stays within (processes - 1) x `RESCAN_FRACTION` of the bound.
    RESCAN_WRITES: ClassVar[int] = 64
    RESCAN_FRACTION: ClassVar[float] = 1 / 32
    RESCAN_SECONDS: ClassVar[float] = 30.0
    #: A scan that finds the folder past its bound queues the next victims, in the
    #: policy's order, up to this fraction of the bound beyond what must go now: the
    #: writes that pass the bound next evict from the queue (each about what it added)
    #: instead of scanning again (`_evictions.EvictionQueue`). The folder stays full, and
    #: no write evicts in bulk.
    QUEUE_FRACTION: ClassVar[float] = 0.1

    @classmethod
    def unsupported(cls, config: CacheConfig) -> str | None:
        if config.folder_name is None:
            return f"{cls.name} needs a folder_name"
        return super().unsupported(config)

    def __init__(self, config: CacheConfig | None = None) -> None:
        from twat_cache.paths import cache_dir

        folder = (config if config is not None else CacheConfig()).folder_name
        if folder is None:
            raise ConfigurationError(f"the {self.name} engine needs a folder_name")
        self.directory = cache_dir(folder)
        super().__init__(config)
        self._record_manifest()

    def recorded_settings(self) -> dict[str, Any]:
        """The settings that change how this engine stores, bounds or reads its folder (what
        its manifest records)."""
        config = self.config
        settings = {name: getattr(config, name) for name in self._RECORDED}
        if not config.maxsize_given:
            del settings["maxsize"]  # the engine's default bound, whatever it is then
        elif config.size_in_bytes:
            settings["maxsize"] = f"{int(config.maxsize or 0)}B"  # bytes, not entries
        return settings

    def claim_folder(self) -> None:
        """For a cache a decorator or `CacheContext` builds (the manager calls it): a folder
        has one engine, one bound and one way of storing, and two caches of this process on
        it with another engine or other settings (two functions sharing a `folder_name`
        with different `maxsize`) would evict each other's entries by their own bound, or
        keep entries a clear of the other's store never sees. Refused. (Tools opening a
        folder directly, as another process would, are not held to it.)"""
        mine = self.recorded_settings()
        key = str(self.directory)
        for attempt in range(2):
            clash = [
                other
                for other in _OPEN.get(key, ())
                if other is not self
                and (other.name != self.name or other.recorded_settings() != mine)
            ]
            if not clash:
                break
            if attempt == 0:
                gc.collect()  # an earlier definition, redefined (a notebook cell run again)
        else:
            theirs = {"engine": clash[0].name, **clash[0].recorded_settings()}
            mine = {"engine": self.name, **mine}
            differ = ", ".join(
                f"{name}={theirs.get(name)!r} there, {mine.get(name)!r} here"
                for name in sorted(set(theirs) | set(mine))
                if theirs.get(name) != mine.get(name)
            )
            clash[0]._record_manifest()  # building this one wrote its own settings there
            raise FolderSettingsError(
                f"folder_name={self.directory.name!r} is already open in this process with "
                f"other settings ({differ}): a folder has one bound and one way of storing; "
                f"give this cache another folder_name, or the same settings"
            )
        _OPEN.setdefault(key, weakref.WeakSet()).add(self)

    #: The directory under the cache root holding, per cache folder, a file naming its
    #: engine and the settings it was opened with, so that tools (`twat-cache stats`,
    #: `prune`, `clear`) open it the same way. Kept out of the folders themselves: those
    #: belong to their engine alone.
    MANIFESTS: ClassVar[str] = ".manifests"
    #: The settings recorded: those that change how entries are stored, bounded or read.
    _RECORDED: ClassVar[tuple[str, ...]] = (
        "maxsize",
        "ttl",
        "policy",
        "serializer",
        "compress",
        "secure",
        "use_sql",
        "mmap_mode",
    )

    def _record_manifest(self) -> None:
        if self.config.secure:  # the signing key went too if the root was deleted: put it back
            from twat_cache.paths import cache_root
            from twat_cache.serializers import get_secret

            get_secret(cache_root())
        if not RECORD_MANIFESTS.get():
            return
        import json

        from twat_cache.paths import atomic_write, make_dirs_beneath

        path = self.manifest_path(self.directory)
        manifest = {"engine": self.name, "settings": self.recorded_settings()}
        if self._read_manifest_file(self.directory) == manifest:
            return  # else absent, unreadable or a link (replaced, never followed): write it
        try:
            make_dirs_beneath(path.parent.parent, path.parent.name)
            with atomic_write(path) as temporary:
                temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        except OSError as exc:  # a read-only root still caches; tools then cannot open it
            from twat_cache.logging import logger

            logger.warning("could not record {}: {!r}", path, exc)

    @classmethod
    def manifest_path(cls, directory: Path) -> Path:
        """Where the manifest of the cache folder `directory` is kept."""
        return directory.parent / cls.MANIFESTS / f"{directory.name}.json"

    @classmethod
    def read_manifest(cls, directory: Path) -> dict[str, Any] | None:
        """The engine name and settings recorded for a cache folder, or None."""
        manifest = cls._read_manifest_file(directory)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("engine"), str):
            return None
        return manifest

    @classmethod
    def _read_manifest_file(cls, directory: Path) -> Any:
        """The decoded manifest file of `directory`; None if absent, unreadable, or a link
        (at the file or at the manifests directory: never followed)."""
        import json

        from twat_cache.paths import beneath, read_file

        relative = f"{cls.MANIFESTS}/{directory.name}.json"
        try:
            return json.loads(read_file(beneath(directory.parent, relative)))
        except (OSError, ValueError):
            return None

    def stats(self) -> dict[str, Any]:
        """Entries, bytes on disk, and the store times of the oldest and newest entry
        (None when the engine does not know them)."""
        from twat_cache.paths import folder_bytes

        size = folder_bytes(self.directory)
        return {"entries": len(self), "bytes": size, "oldest": None, "newest": None}

    def prune(self) -> int:
        """Drop expired entries, enforce the bound, and remove files left by killed writers;
        the number of entries and files removed."""
        return 0

    def rescan_due(self, writes: int, entries: int, since: float) -> bool:
        """Whether the folder is due a rescan, `writes` writes and `since` seconds after
        the last scan, which found `entries` entries."""
        due = writes >= max(self.RESCAN_WRITES, self.RESCAN_FRACTION * entries)
        return due or since > self.RESCAN_SECONDS

    def queue_depth(self, bound: int, excess: int) -> int:
        """How much (bytes or entries, as `bound`) a scan `excess` past `bound` queues."""
        return excess + int(bound * self.QUEUE_FRACTION)

    @property
    def location(self) -> str:
        return str(self.directory)

    @property
    def maxsize(self) -> int | None:
        """The bound in force: entries (int) or bytes (`ByteSize`); unset, a byte limit."""
        if self.config.maxsize_given:
            return self.config.maxsize
        from pydantic import ByteSize

        return ByteSize(self.DEFAULT_SIZE_LIMIT)
