"""A user engine written the way a user would: a plain class, not a BaseEngine subclass.

`register_user_engine()` registers it on the process-wide manager under "mine", so that
`ucache(cache_engine="mine")` serves from it and the contract suite runs on it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, ClassVar

from twat_cache.config import DEFAULT_MAXSIZE, CacheConfig
from twat_cache.engines.base import Capabilities
from twat_cache.engines.manager import get_manager
from twat_cache.exceptions import ConfigurationError

__all__ = ["Mine", "register_user_engine"]

_ABSENT: Any = object()


class Mine:
    """A dict behind a lock, bounded by `config.maxsize` (default `DEFAULT_MAXSIZE`;
    None = unbounded), evicting the least recently used ("lru") or the oldest stored
    ("fifo") entry. It cannot expire entries, so it refuses a ttl."""

    name: ClassVar[str] = "mine"
    capabilities: ClassVar[Capabilities] = Capabilities(
        policies=frozenset({"lru", "fifo"}), ttl=False, thread_safe=True
    )

    def __init__(self, config: CacheConfig | None = None) -> None:
        self.config = config if config is not None else CacheConfig()
        self.maxsize: int | None = (
            self.config.maxsize if self.config.maxsize_given else DEFAULT_MAXSIZE
        )
        self.expires = False
        self._touch = self.config.policy == "lru"
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def unsupported(cls, config: CacheConfig) -> str | None:
        """Why this engine cannot serve `config` exactly (None when it can)."""
        if config.policy not in cls.capabilities.policies:
            return f"mine has no {config.policy!r} policy"
        if config.ttl is not None:
            return "mine cannot expire entries (ttl)"
        if config.size_in_bytes:
            return "mine counts entries: maxsize must be an int"
        return None

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            value = self._data.get(key, _ABSENT)
            if value is _ABSENT:
                return default
            if self._touch:
                self._data.move_to_end(key)
            return value

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        if ttl is not None:
            raise ConfigurationError("the mine engine was built without expiry: no ttl")
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if self.maxsize is not None:
                while len(self._data) > self.maxsize:
                    self._data.popitem(last=False)

    def delete(self, key: Any) -> bool:
        with self._lock:
            return self._data.pop(key, _ABSENT) is not _ABSENT

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def exists(self, key: Any) -> bool:
        with self._lock:
            return key in self._data

    def __contains__(self, key: Any) -> bool:
        return self.exists(key)

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        """Nothing to release: kept so that `with engine:` and callers of close work."""

    def __enter__(self) -> Mine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def register_user_engine() -> None:
    """Register `Mine` on the process-wide manager under "mine" (idempotent)."""
    manager = get_manager()
    if "mine" not in manager.registered() or manager.load("mine") is not Mine:
        manager.register("mine", Mine, replace=True)
