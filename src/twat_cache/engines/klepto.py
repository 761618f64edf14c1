"""KleptoEngine: klepto's dir or SQL archives, the second link of the bcache and fcache chains."""

from __future__ import annotations

import base64
import binascii
import hashlib
import random
import sqlite3
import struct
import threading
import time
from typing import Any, ClassVar

from pydantic import ByteSize

from twat_cache._fork import gated, reset_in_child
from twat_cache.config import CacheConfig
from twat_cache.engines._evictions import EvictionQueue
from twat_cache.engines._klepto_stores import DirStore, Entry, SqlStore
from twat_cache.engines.base import PersistentEngine, persistent_capabilities
from twat_cache.exceptions import EngineError
from twat_cache.paths import file_identity as identity
from twat_cache.paths import folder_bytes, recheck_folder
from twat_cache.serializers import PayloadError

__all__ = ["KleptoEngine"]

# Signed prefix of every payload body: expiry (0.0 = never) and the entry's own key, so a
# valid entry copied under another key's name, or with its expiry edited, never verifies.
_HEAD = struct.Struct("!dI")
_EXPIRED = object()


class KleptoEngine(PersistentEngine):
    """Persistent engine on klepto archives: a directory of entries (default) or an SQLite
    file (`use_sql=True`), shared by every process using the same folder.

    Entries are stored under a BLAKE2b of their key (klepto's own keymaps hash differently
    in every process), as JSON records holding a signed payload. Bounds (entries or bytes:
    the dir archive's blocks on disk, the SQL archive's record lengths) are enforced after
    each write: expired entries go first, then the least recently used (`lru`, access times
    shared by processes), oldest stored (`fifo`), soonest to expire (`ttl`) or random
    (`rr`), from a queue of the next victims a scan fills. `lfu` is refused. Non-str keys
    are turned into stable digests.
    """

    name = "klepto"
    capabilities = persistent_capabilities(frozenset({"lru", "fifo", "rr", "ttl"}))
    #: Seconds after which what a killed writer left in the dir archive (a klepto
    #: temporary directory, an entry directory without its file) is removed, on open, when
    #: a bound is enforced, and by `prune`. A live writer's are younger: it writes them.
    TEMP_MAX_AGE: ClassVar[float] = 300.0
    #: Seconds between two checks by reads that the archive was not deleted (writes,
    #: clears and counts check every time).
    FOLDER_CHECK: ClassVar[float] = 1.0
    #: Seconds `clear` keeps retrying while another process holds the SQL archive.
    CLEAR_PATIENCE: ClassVar[float] = 10.0

    def __init__(self, config: CacheConfig | None = None, *, sweep: bool = True) -> None:
        """`sweep=False` opens without removing anything (expired entries, what killed
        writers left, entries over the bound): for tools that read the folder or report
        what their own `prune` removes."""
        super().__init__(config)
        self._store: DirStore | SqlStore
        if self.config.use_sql:
            self._archive = self.directory / "klepto.sqlite"
            self._store = SqlStore(self._archive)
        else:
            self._archive = self.directory / "klepto"
            self._store = DirStore(self._archive)
        self._opened = identity(self._archive)
        self._checked_at = time.monotonic()
        self._lock = threading.RLock()  # klepto's archives are not thread-safe
        self._touch = self.config.policy == "lru"
        self._bytes = isinstance(self.maxsize, ByteSize)
        self._writes_since_scan = 0
        self._scanned_at = 0.0
        self._entries = 0  # found by the last scan
        self._queue = EvictionQueue(self._bytes)
        self._estimate = 0
        reset_in_child(self)
        try:  # remove expired entries and what killed writers left; best effort
            if sweep:
                self._enforce(None)
        except Exception as exc:  # e.g. a database locked by other processes: next sweep
            from twat_cache.logging import logger

            logger.debug("klepto: the sweep at open failed: {!r}", exc)

    def after_fork(self) -> None:
        """In a forked child: a new lock (`BaseEngine.after_fork`: a thread of the parent
        may have held it at the fork) and the store's own connections (SQL archive)."""
        super().after_fork()
        self._store.after_fork()

    def _check_archive(self) -> None:
        """Check the archive is the one opened (under the lock): when its folder was deleted
        (to clear the cache, say), make it again, with the checks it was created with."""
        self._checked_at = time.monotonic()
        if identity(self._archive) == self._opened:
            return
        recheck_folder(self.directory)  # deleted, or made again by someone: checked anew
        self._record_manifest()  # gone too if the whole root was deleted
        self._store.reopen()
        self._opened = identity(self._archive)
        self._queue.clear()
        self._estimate = 0

    @classmethod
    def _name(cls, key: Any) -> tuple[str, bytes]:
        raw = cls.key_text(key).encode("utf-8", "surrogatepass")
        return hashlib.blake2b(raw, digest_size=20).hexdigest(), raw

    @gated
    def get(self, key: Any, default: Any = None) -> Any:
        name, raw = self._name(key)
        with self._lock:
            if time.monotonic() - self._checked_at > self.FOLDER_CHECK:
                self._check_archive()  # an SQL archive deleted is still read through its connection
            try:
                record = self._store.read(name)
                value = self._decode(record, raw)
            except KeyError:
                return default
            except PayloadError as exc:
                self.rejected(key, exc)
                return default
            if value is _EXPIRED:
                self._store.remove(name)
                return default
            if self._touch:
                self._store.touch(name)
            return value

    def _decode(self, record: Any, raw: bytes) -> Any:
        if not (isinstance(record, list) and len(record) == 2 and isinstance(record[1], str)):
            raise PayloadError("the stored entry is not a klepto engine record")
        try:
            payload = base64.b64decode(record[1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PayloadError(f"the stored payload is not base64: {exc}") from None
        body = self.serializer.unframe(payload)  # verifies the signature first
        try:
            expires, size = _HEAD.unpack_from(body)
        except struct.error:
            raise PayloadError("the payload has no entry header (truncated)") from None
        start = _HEAD.size + size
        if body[_HEAD.size : start] != raw:
            raise PayloadError("the entry holds the value of another key")
        if expires and expires <= time.time():
            return _EXPIRED
        return self.serializer.decode(body[start:])

    @gated
    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        ttl = self._check_ttl(ttl)
        name, raw = self._name(key)
        expires = time.time() + ttl if ttl is not None else None
        body = _HEAD.pack(expires or 0.0, len(raw)) + raw + self.serializer.encode(value)
        encoded = base64.b64encode(self.serializer.frame(body)).decode("ascii")
        with self._lock:
            self._check_archive()
            bound = self.maxsize
            if self._bytes and bound is not None and len(encoded) > bound:
                self._store.remove(name)  # it could never fit: keep nothing stale either
                return
            taken = self._store.write(name, [expires, encoded])
            if self._bytes and bound is not None and taken > bound:
                self._store.remove(name)  # its blocks alone exceed the bound
                return
            # An overwrite is counted again: an estimate on the safe side, which the next
            # scan corrects.
            self._estimate += taken
            self._writes_since_scan += 1
            self._enforce(name)

    def _enforce(self, written: str | None) -> int:
        """Keep the bound after writing `written` (never evicted); None: a full sweep.
        Returns the number of entries and leftovers removed."""
        bound, now = self.maxsize, time.time()
        removed = 0
        if written is not None:
            if bound is None:
                return 0
            if self._bytes:  # an estimate between full scans, which see other processes too
                removed = self._evict_queued(self._estimate - bound, written)
                since = now - self._scanned_at
                due = self.rescan_due(self._writes_since_scan, self._entries, since)
                if not due and self._estimate <= bound:
                    return removed
            else:
                count = self._store.count()
                if count > bound:
                    removed = self._evict_queued(count - bound, written)
                if count - removed <= bound:
                    return removed
        live, swept = self._scan_live(now, sweep=True)
        removed += swept
        self._writes_since_scan, self._scanned_at, self._entries = 0, now, len(live)
        self._estimate = sum(e.size for e in live)
        excess = (self._estimate if self._bytes else len(live)) - (bound or 0)
        if bound is None or excess <= 0:
            self._queue.clear()
            return removed
        victims = self._victims([e for e in live if e.name != written])
        self._queue.refill(
            ((e.name, e.time, e.size) for e in victims), self.queue_depth(bound, excess)
        )
        return removed + self._evict_queued(excess, written)

    def _evict_queued(self, excess: float, written: str | None) -> int:
        """Evict from the queue the last scan filled until `excess` (bytes or entries past
        the bound) is paid, never `written`; the entries evicted (or found gone)."""
        if excess <= 0:
            return 0

        def current(name: str, stamp: float) -> bool | None:
            now = self._store.stamp(name)
            return None if now is None else (name != written and now == stamp)

        freed, entries = self._queue.evict(int(excess), current, self._store.remove)
        self._estimate -= freed
        return entries

    def _live(self, now: float) -> list[Entry]:
        return self._scan_live(now, sweep=True)[0]

    def _scan_live(self, now: float, *, sweep: bool) -> tuple[list[Entry], int]:
        """The live entries; with `sweep`, expired entries and what killed writers left are
        removed (and counted), else nothing is written."""
        entries, removed = self._store.scan(now, self.TEMP_MAX_AGE if sweep else None)
        live = []
        for entry in entries:
            if entry.expires is None or entry.expires > now:
                live.append(entry)
            elif sweep:
                self._store.remove(entry.name)
                removed += 1
        return live, removed

    def _victims(self, entries: list[Entry]) -> list[Entry]:
        policy = self.config.policy
        if policy == "rr":
            random.shuffle(entries)
            return entries
        if policy == "ttl":
            return sorted(entries, key=lambda e: (e.expires or float("inf"), e.time, e.name))
        return sorted(entries, key=lambda e: (e.time, e.name))

    @gated
    def delete(self, key: Any) -> bool:
        name, _ = self._name(key)
        with self._lock:
            self._check_archive()
            if not self._store.has(name):
                return False
            expires = self._store.expiry(name)
            self._store.remove(name)
            return not (expires is not None and expires <= time.time())

    @gated
    def clear(self) -> None:
        """Remove every entry. A database another process holds (SQL archive) is retried
        for `CLEAR_PATIENCE` seconds; what still fails is an `EngineError`."""
        deadline = time.monotonic() + self.CLEAR_PATIENCE
        while True:
            try:
                with self._lock:
                    self._check_archive()
                    self._store.clear()
                    self._estimate = 0
                return
            except sqlite3.OperationalError as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise EngineError(
                    f"could not clear the cache in {self.directory}: {exc!r}"
                ) from exc
            except (OSError, sqlite3.Error) as exc:
                raise EngineError(
                    f"could not clear the cache in {self.directory}: {exc!r}"
                ) from exc

    @gated
    def __len__(self) -> int:
        with self._lock:
            self._check_archive()
            return len(self._live(time.time()))

    @gated
    def stats(self) -> dict[str, Any]:
        """Live entries, bytes of every file in the folder, and the store times of the
        oldest and newest entry; reads only. Store times: the dir archive's are its entry
        directories' mtimes, the SQL archive's are kept in its meta rows (rows written
        before they were give their last access under lru, their store time otherwise)."""
        with self._lock:
            self._check_archive()
            live, _ = self._scan_live(time.time(), sweep=False)
        times = [entry.stored for entry in live if entry.stored is not None]
        return {
            "entries": len(live),
            "bytes": folder_bytes(self.directory),
            "oldest": min(times, default=None),
            "newest": max(times, default=None),
        }

    @gated
    def prune(self) -> int:
        """Remove expired entries and what killed writers left (dir archive: klepto's
        temporary directories and entry directories without their file, untouched for
        `TEMP_MAX_AGE`, one each; SQL archive: meta rows whose data row is gone, and a
        rollback journal SQLite ignores), then enforce the bound; opening does the same but
        for the journal unless `sweep=False`. Returns the number removed."""
        with self._lock:
            self._check_archive()
            removed = self._store.settle() if isinstance(self._store, SqlStore) else 0
            return removed + self._enforce(None)

    @gated
    def close(self) -> None:
        self.release_folder()
        with self._lock:
            self._store.close()
