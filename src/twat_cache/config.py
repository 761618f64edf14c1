"""CacheConfig: the frozen, validated configuration every decorator resolves once."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from pydantic import (
    AliasChoices,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import Unpack

from twat_cache._bounds import (
    DURATION_FLOOR,
    DURATION_HORIZON,
    SIZE_HORIZON,
    check_duration,
    check_url_durations,
    parse_size,
    parse_ttl,
)

__all__ = [
    "DEFAULT_COOLDOWN",
    "DEFAULT_L1_TTL",
    "DEFAULT_LEASE",
    "DEFAULT_MAXSIZE",
    "DEFAULT_TIMEOUT",
    "DURATION_FLOOR",
    "DURATION_HORIZON",
    "REDIS_URL_ENV",
    "SIZE_HORIZON",
    "CacheConfig",
    "ConfigOptions",
    "KeywordOptions",
    "Policy",
    "check_duration",
    "check_url_durations",
    "create_cache_config",
    "parse_size",
    "parse_ttl",
]

Policy = Literal["lru", "lfu", "fifo", "rr", "ttl"]

#: The environment variable giving the cache server when a cache has no `url`.
REDIS_URL_ENV = "TWAT_CACHE_REDIS_URL"
#: Seconds one operation on a cache server may take (connecting included).
DEFAULT_TIMEOUT = 0.25
#: Seconds a failing cache server is skipped before it is tried again.
DEFAULT_COOLDOWN = 5.0
#: Seconds a cross-process computation lease lasts.
DEFAULT_LEASE = 10.0
#: Seconds an entry of the in-process tier lives when l1_ttl is not given.
DEFAULT_L1_TTL = 5.0

#: Entries kept by a memory engine when `maxsize` is not given (lru_cache keeps 128;
#: a cache meant to be reached for first should hold a realistic working set).
DEFAULT_MAXSIZE = 1024


class KeywordOptions(TypedDict, total=False):
    """What each `CacheConfig` option accepts, as typed for callers (before validation),
    except the options `bcache`/`fcache`/`ucache` also take positionally."""

    cache_engine: str | None
    key: Callable[..., Hashable] | None
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
    version: str | int | None
    use_sql: bool
    mmap_mode: Literal["r", "r+", "c"] | None
    timeout: float | timedelta | str
    cooldown: float | timedelta | str
    lease: float | timedelta | str
    l1_maxsize: int | None
    l1_ttl: float | timedelta | str | None


class ConfigOptions(KeywordOptions, total=False):
    """Every option `CacheConfig` accepts, as typed for callers (before validation)."""

    preferred_engine: str | None
    maxsize: int | str | None
    ttl: float | timedelta | str | None
    policy: Policy
    folder_name: str | None


class CacheConfig(BaseModel):
    """Validated settings for one cached function or one `CacheContext`.

    Built once, at decoration time; a bad value raises pydantic's `ValidationError`
    naming the field, a bad combination raises `ConfigurationError`.

    >>> cfg = CacheConfig(maxsize=256, ttl="5m")
    >>> cfg.ttl, cfg.policy
    (300.0, 'ttl')
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, arbitrary_types_allowed=True
    )

    if TYPE_CHECKING:
        # What callers may pass (a ttl as "5m", a size as "500MB"...), not the parsed types
        # the fields hold: type checkers see this constructor, pydantic builds the real one.
        def __init__(self, **options: Unpack[ConfigOptions]) -> None: ...

    maxsize: int | None = Field(
        default=DEFAULT_MAXSIZE,
        description="Entries kept (memory), or bytes such as '500MB' (disk); None = unbounded, "
        "0 = no caching. Unset: the engine's own default bound.",
    )
    ttl: float | None = Field(
        default=None, description="Seconds an entry lives: number, timedelta or '1h30m'."
    )
    policy: Policy = Field(default="lru", description="Eviction policy: lru, lfu, fifo, rr, ttl.")
    folder_name: str | None = Field(default=None, description="Folder of a persistent cache.")
    cache_engine: str | None = Field(
        default=None,
        validation_alias=AliasChoices("cache_engine", "preferred_engine"),
        description="Engine to try first: a library name or memory/disk/file/async/redis.",
    )
    key: Callable[..., Hashable] | None = Field(
        default=None, description="Custom key function, called with the function's arguments."
    )
    ignore: tuple[str, ...] = Field(default=(), description="Parameter names left out of the key.")
    typed: bool = Field(default=True, description="1, 1.0, True and '1' are different keys.")
    lock: bool = Field(default=True, description="Stampede protection: one computation per key.")
    fallback: bool = Field(default=True, description="A cache fault never fails the call.")
    serializer: Literal["pickle", "json"] = Field(
        default="pickle", description="Payload format of persistent and remote engines."
    )
    compress: Literal["zlib", "lzma"] | None = Field(
        default=None,
        validation_alias=AliasChoices("compress", "compression"),
        description="Payload compression: True (zlib), 'zlib' or 'lzma'.",
    )
    secure: bool = Field(default=True, description="Signed payloads and private directories.")
    name: str | None = Field(default=None, description="Registry name; default module.qualname.")
    url: str | None = Field(default=None, description="redis://... URL of a remote cache.")
    version: str | int | None = Field(
        default=None,
        description="Part of persistent keys: change it to invalidate a function's entries.",
    )
    use_sql: bool = Field(default=False, description="klepto: an SQL archive, not a dir archive.")
    mmap_mode: Literal["r", "r+", "c"] | None = Field(
        default=None, description="joblib: load NumPy arrays memory-mapped in this mode."
    )
    timeout: float = Field(
        default=DEFAULT_TIMEOUT,
        description="Seconds one operation on a cache server (Redis) may take, connecting "
        "included; a slower or failed operation is a cache fault and the function is called.",
    )
    cooldown: float = Field(
        default=DEFAULT_COOLDOWN,
        description="Seconds a cache server is skipped after repeated failures (the circuit "
        "breaker), before it is tried again.",
    )
    lease: float = Field(
        default=DEFAULT_LEASE,
        description="Seconds a cross-process computation lease lasts (lock=True on a shared "
        "engine): other processes wait for its result at most that long.",
    )
    l1_maxsize: int | None = Field(
        default=None,
        description="Entries of an in-process memory tier in front of a persistent or remote "
        "engine; None = no tier (unless l1_ttl is given).",
    )
    l1_ttl: float | None = Field(
        default=None,
        description="Seconds an entry stays in the memory tier: how stale another process's "
        "update can look here. Default 5s when the tier is on.",
    )

    @field_validator("maxsize", mode="plain")
    @classmethod
    def _check_maxsize(cls, value: object) -> int | None:
        return parse_size(value)

    @field_validator("ttl", "l1_ttl", mode="plain")
    @classmethod
    def _check_ttl(cls, value: object, info: ValidationInfo) -> float | None:
        return parse_ttl(value, info.field_name or "ttl")

    @field_validator("timeout", "cooldown", "lease", mode="plain")
    @classmethod
    def _check_seconds(cls, value: object, info: ValidationInfo) -> float:
        if value is None:
            raise ValueError("must be a duration greater than 0, not None")
        return check_duration(value, info.field_name or "duration")

    @field_validator("l1_maxsize", mode="plain")
    @classmethod
    def _check_l1_maxsize(cls, value: object) -> int | None:
        return parse_size(value, "l1_maxsize", least=1, units=False)

    @field_validator("compress", mode="before")
    @classmethod
    def _check_compress(cls, value: object) -> object:
        if value is True:
            return "zlib"
        if value is False:
            return None
        return value

    @field_validator("ignore", mode="before")
    @classmethod
    def _check_ignore(cls, value: object) -> object:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, Iterable):
            return tuple(value)
        return value

    @field_validator("key", mode="plain")
    @classmethod
    def _check_key(cls, value: object) -> object:
        if value is not None and not callable(value):
            raise ValueError(f"key must be a callable building the key, not {type(value).__name__}")
        return value

    @field_validator("version", mode="plain")
    @classmethod
    def _check_version(cls, value: object) -> str | int | None:
        # Plain: pydantic's lax int would take True as 1 and 2.0 as 2.
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            raise ValueError(f"version must be a str or an int, not {type(value).__name__}")
        if isinstance(value, str) and (not value or ":" in value):
            raise ValueError("version must be non-empty and contain no ':'")
        return value

    @field_validator("folder_name")
    @classmethod
    def _check_folder(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from twat_cache.paths import validate_folder_name

        return validate_folder_name(value)  # ConfigurationError, before the disk is touched

    @field_validator("cache_engine", "name", "url")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_url_durations(value)
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> CacheConfig:
        # Imported here: exceptions is light, but keep config importable on its own.
        from twat_cache.exceptions import ConfigurationError

        if self.policy == "ttl" and self.ttl is None:
            raise ConfigurationError("policy='ttl' needs a ttl (for example ttl='10m')")
        if self.ttl is not None and "policy" not in self.model_fields_set:
            # A ttl without an explicit policy asks for expiry-driven eviction; an explicit
            # policy together with a ttl must be served exactly (e.g. LRU with expiry).
            object.__setattr__(self, "policy", "ttl")
        if self.l1_ttl is not None and self.l1_maxsize is None:
            object.__setattr__(self, "l1_maxsize", DEFAULT_MAXSIZE)
        if self.l1_maxsize is not None and self.l1_ttl is None:
            object.__setattr__(self, "l1_ttl", DEFAULT_L1_TTL)
        if len(set(self.ignore)) != len(self.ignore):
            raise ConfigurationError(f"ignore lists a parameter twice: {self.ignore}")
        return self

    @property
    def maxsize_given(self) -> bool:
        """Whether `maxsize` was set by the user rather than left at the default."""
        return "maxsize" in self.model_fields_set

    @property
    def size_in_bytes(self) -> bool:
        """Whether `maxsize` counts bytes (it was given as a string like '500MB')."""
        return isinstance(self.maxsize, ByteSize)

    def merged(self, **overrides: Any) -> CacheConfig:
        """A new config: this one's explicitly set fields, then `overrides`, validated again."""
        # Only explicitly set fields are carried over, so derived values (a ttl-driven
        # policy) are derived again from the merged settings.
        base = {name: getattr(self, name) for name in self.model_fields_set}
        named = {_ALIASES.get(option, option): value for option, value in overrides.items()}
        return CacheConfig.model_validate({**base, **named})


#: Alternative option names and the field each one sets.
_ALIASES = {
    alias: name
    for name, field in CacheConfig.model_fields.items()
    if isinstance(field.validation_alias, AliasChoices)
    for alias in field.validation_alias.choices
    if isinstance(alias, str) and alias != name
}


def create_cache_config(**options: Any) -> CacheConfig:
    """Validate keyword options into a `CacheConfig` (aliases like ``preferred_engine`` accepted).

    >>> create_cache_config(preferred_engine="cachetools", maxsize=10).cache_engine
    'cachetools'
    """
    return CacheConfig.model_validate(options)
