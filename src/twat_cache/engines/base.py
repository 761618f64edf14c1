"""The engine contract: key-value stores behind the one wrapper, their capabilities, and MISS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, runtime_checkable

from twat_cache._fork import renewed, reset_in_child
from twat_cache.config import DEFAULT_MAXSIZE, CacheConfig, check_duration
from twat_cache.exceptions import ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ALL_POLICIES",
    "MISS",
    "RECORD_MANIFESTS",
    "AsyncCacheEngineProtocol",
    "BaseEngine",
    "CacheEngineProtocol",
    "Capabilities",
    "FolderSettingsError",
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


# The stores outside the process (serialized payloads, folders), in a module of their own;
# imported last, as they build on the classes above.
from twat_cache.engines._persistent import (  # noqa: E402
    RECORD_MANIFESTS,
    FolderSettingsError,
    PersistentEngine,
    SerializingEngine,
    persistent_capabilities,
)
