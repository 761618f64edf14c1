"""The engines whose stores live outside the process: `SerializingEngine` (serialized,
signed payloads; keys as text) and `PersistentEngine` (a private folder under the cache
root, its manifest, its default bound, and the rule that a folder has one engine and one
set of storage settings in a process). Re-exported by `engines.base`."""

from __future__ import annotations

import gc
import itertools
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar

from twat_cache.config import CacheConfig
from twat_cache.engines.base import BaseEngine, Capabilities
from twat_cache.exceptions import ConfigurationError, SecurityWarning

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "RECORD_MANIFESTS",
    "FolderSettingsError",
    "PersistentEngine",
    "SerializingEngine",
    "persistent_capabilities",
]


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

    def release_folder(self) -> None:
        """This cache is closed: its folder may be claimed with other settings (`close`)."""
        live = _OPEN.get(str(self.directory))
        if live is not None:
            live.discard(self)

    def claim_folder(self, owner: str | None = None) -> None:
        """For a cache a decorator or `CacheContext` builds (the manager calls it): a folder
        has one engine, one bound and one way of storing, and two caches of this process on
        it with another engine or other settings (two functions sharing a `folder_name`
        with different `maxsize`) would evict each other's entries by their own bound, or
        keep entries a clear of the other's store never sees. Refused. (Tools opening a
        folder directly, as another process would, are not held to it.) A cache of the
        same `owner` (a function defined again, as a notebook cell run again does, while
        its old definition is still bound) replaces the old one instead."""
        self._owner = owner
        mine = self.recorded_settings()
        key = str(self.directory)

        def clashing() -> list[Any]:
            return [
                other
                for other in _OPEN.get(key, ())
                if other is not self
                and (owner is None or getattr(other, "_owner", None) != owner)
                and (other.name != self.name or other.recorded_settings() != mine)
            ]

        clash = clashing()
        if clash:
            gc.collect()  # a cache whose function was dropped but not collected yet
            clash = clashing()
        if clash:
            theirs = {"engine": clash[0].name, **clash[0].recorded_settings()}
            ours = {"engine": self.name, **mine}
            differ = ", ".join(
                f"{name}={theirs.get(name)!r} there, {ours.get(name)!r} here"
                for name in sorted(set(theirs) | set(ours))
                if theirs.get(name) != ours.get(name)
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
