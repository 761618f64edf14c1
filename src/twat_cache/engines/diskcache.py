"""DiskCacheEngine: signed payloads in a diskcache SQLite store (first link of the bcache chain)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Final

import diskcache
from diskcache import EVICTION_POLICY
from diskcache.core import DBNAME, MODE_RAW
from pydantic import ByteSize

from twat_cache._fork import gated, reset_in_child
from twat_cache._report import warn
from twat_cache.config import CacheConfig
from twat_cache.engines._diskcache_disk import PayloadDisk, Vanished
from twat_cache.engines._diskcache_tools import (
    SHARED,
    Locked,
    Shared,
    is_busy,
    is_corrupt,
    live_entries,
    move_aside,
    probe,
    remove_orphans,
)
from twat_cache.engines.base import MISS, PersistentEngine, persistent_capabilities
from twat_cache.exceptions import EngineError
from twat_cache.paths import file_identity as identity
from twat_cache.paths import folder_bytes, recheck_folder
from twat_cache.serializers import PayloadError

__all__ = ["DiskCacheEngine"]

#: Our policies and the diskcache eviction policy serving each. diskcache has no random
#: replacement, so "rr" is refused. "fifo" is first-in-first-out by time stored (an
#: overwrite stores again). "ttl" evicts by time stored, which is nearest expiry when
#: entries share the configured ttl; with an entry count the engine orders by expiry.
_POLICIES: Final = {
    "lru": "least-recently-used",
    "lfu": "least-frequently-used",
    "fifo": "least-recently-stored",
    "ttl": "least-recently-stored",
}
#: The indexed column of diskcache's Cache table each policy evicts by, for entry counts
#: (diskcache culls by bytes only). Single indexed columns keep a cull O(victims log n).
_VICTIM_ORDER: Final = {
    "lru": "access_time",
    "lfu": "access_count",
    "fifo": "store_time",
    "ttl": "expire_time",
}
#: diskcache's size_limit when entries are counted, or nothing is bounded (SQLite's max int).
_NO_BYTE_LIMIT: Final = 2**63 - 1
#: The read of the hit path when reads write nothing: the columns `Disk.fetch` needs, plus
#: the expiry, by the unique (key, raw) index. Expiry is checked in Python (no clock read
#: for the rows without one, which is every row of an engine without a ttl).
_SELECT: Final = "SELECT expire_time, mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
#: What a forked child inherited: its parent's SQLite connections, never used, closed or
#: collected in the child (SQLite forbids carrying a connection across a fork: closing
#: one may roll back or checkpoint what the parent is writing).
_INHERITED: list[Any] = []


def _reads_write(cache: diskcache.Cache) -> bool:
    """Whether diskcache's `get` writes on a hit: the access time (lru) or count (lfu) its
    eviction policy orders by, or hit statistics. diskcache's own get takes its no-write
    path on exactly the opposite condition."""
    return EVICTION_POLICY[cache.eviction_policy]["get"] is not None or bool(cache.statistics)


class DiskCacheEngine(PersistentEngine):
    """Persistent engine on diskcache: one SQLite database (WAL) per folder, shared safely by
    threads and processes; each value a signed payload verified before it is loaded.

    `maxsize` as bytes ("500MB", and the 1 GiB default) is diskcache's `size_limit`, culled
    by diskcache itself; as an int it counts entries, culled after each write in the
    policy's order. A hit under "lru" or "lfu" records the access in a write transaction
    (diskcache's get); under the other policies it is one SELECT and writes nothing. The
    wrapper's reads and writes wait at most `BUSY_TIMEOUT` seconds for a locked database,
    then raise `diskcache.Timeout` (the wrapper then calls the function uncached: a call
    never stalls long on a cache); a direct `set` or `delete` (a `CacheContext` user's)
    keeps trying for `WRITE_PATIENCE` seconds, since its caller asked for that write. In
    WAL mode a writer's lock does not block readers. Keys are str; other keys (CacheContext users)
    are turned into stable digests.

    >>> engine = DiskCacheEngine(CacheConfig(folder_name="doc-diskcache"))
    >>> engine.set("answer", {"value": 42})
    >>> engine.get("answer")
    {'value': 42}
    >>> engine.close()
    """

    name = "diskcache"
    capabilities = persistent_capabilities(frozenset(_POLICIES))
    #: Seconds a read or write waits for another connection's lock (SQLite busy timeout).
    BUSY_TIMEOUT: ClassVar[float] = 1.0
    #: Seconds a direct `set`/`delete` keeps retrying while other writers hold the database
    #: (many processes writing large values at once), before raising `diskcache.Timeout`.
    WRITE_PATIENCE: ClassVar[float] = 10.0
    #: Seconds opening waits for a lock: concurrent processes creating one database.
    OPEN_TIMEOUT: ClassVar[float] = 5.0
    #: Seconds between two checks by reads that the folder was not deleted (writes check
    #: every time): hits from a deleted database end within this time.
    FOLDER_CHECK: ClassVar[float] = 1.0
    #: Seconds a value file no row references may wait for its writer to commit the row
    #: before `prune` removes it (writers commit within `BUSY_TIMEOUT` of writing it).
    COMMIT_GRACE: ClassVar[float] = 60.0

    def __init__(self, config: CacheConfig | None = None, *, sweep: bool = True) -> None:
        """`sweep` is accepted as the other disk engines take it: opening a diskcache
        folder removes nothing either way (diskcache expires and culls on writes)."""
        super().__init__(config)
        bound = self.maxsize
        policy = self.config.policy
        self._count_limit: int | None = None
        if bound is None:
            settings: dict[str, Any] = {"eviction_policy": "none", "size_limit": _NO_BYTE_LIMIT}
        elif isinstance(bound, ByteSize):
            settings = {"eviction_policy": _POLICIES[policy], "size_limit": int(bound)}
        else:
            settings = {"eviction_policy": _POLICIES[policy], "size_limit": _NO_BYTE_LIMIT}
            self._count_limit = int(bound)
        self._victims = (
            f"SELECT rowid, filename FROM Cache WHERE raw = 1 AND key IS NOT ? "
            f"ORDER BY {_VICTIM_ORDER[policy]} LIMIT ?"
        )
        self._ttl = self.config.ttl
        self._settings = settings
        self._database = self.directory / DBNAME
        self._folder = f"{self.config.folder_name}\0".encode()
        self._dumps = self.serializer.dumps
        self._loads = self.serializer.loads
        self._opening = threading.Lock()
        self._checked_at = 0.0
        self._cache: diskcache.Cache | None = None
        try:
            self._attach(self._open(settings, self.OPEN_TIMEOUT))
        except Locked:
            # Another process holds the database (a long write, a backup): this engine is
            # still diskcache's, in this folder. It opens at the first operation that finds
            # the lock gone; until then operations raise diskcache.Timeout, so calls run
            # uncached (one warning), never on another engine.
            self._read = self._read_unopened
        reset_in_child(self)

    def _attach(self, cache: diskcache.Cache) -> None:
        self._identity = identity(self._database)
        self._disk: PayloadDisk = cache.disk
        # lru and lfu hits update the row (access time or count) inside diskcache's write
        # transaction: those keep diskcache's get. Every other policy reads with one SELECT.
        self._read = cache.get if _reads_write(cache) else self._select
        self._cache = cache

    def _live(self) -> diskcache.Cache:
        """The open store, checked to be the database in the folder now: reopened (the
        folder recreated, with the checks it was created with) when the folder was deleted
        or the database replaced since, or opened if it was locked so far."""
        cache = self._cache
        if cache is None or self._identity != identity(self._database):
            cache = self._reopen()
        return cache

    def _reopen(self) -> diskcache.Cache:
        with self._opening:
            cache = self._cache
            if cache is not None and self._identity == identity(self._database):
                return cache  # another thread reopened it meanwhile
            recheck_folder(self.directory)
            try:
                fresh = self._open(self._settings, self.BUSY_TIMEOUT)
            except Locked as exc:
                raise diskcache.Timeout(str(exc)) from exc
            if cache is not None:
                self._record_manifest()  # gone with the folder if the root went too
            self._attach(fresh)
            self._checked_at = time.monotonic()
            if cache is not None:
                cache.close()  # this thread's connection to the deleted file
            return fresh

    def _read_unopened(self, key: str, default: Any) -> Any:
        self._live()
        return self._read(key, default)

    def after_fork(self) -> None:
        """In a forked child: the parent's connections are set aside unused (diskcache
        opens this thread's own on its next use), and the locks are new."""
        self._opening = threading.Lock()
        cache = self._cache
        if cache is not None:
            _INHERITED.append(cache._local)  # diskcache's per-thread connections
            cache._local = threading.local()
            self._disk.after_fork()

    # --- opening ------------------------------------------------------------------------

    @gated
    def _open(self, settings: dict[str, Any], timeout: float) -> diskcache.Cache:
        """The store of this folder's database, once it is probed (a malformed one moved
        aside): the store another engine of this process opened on it with the same
        settings (`_Shared`), else a new one."""
        database = self._database
        key = (str(self.directory), *sorted(settings.items()))
        try:
            probe(database, timeout)
            shared = SHARED.get(key)
            current = identity(database)
            if shared is not None and current is not None and shared.identity == current:
                # What opening a new store would read (diskcache reads its tables): a
                # database damaged in place since the shared store opened shows up here.
                shared.cache._con.execute("SELECT count(*) FROM Cache").fetchall()
                self._shared = shared
                return shared.cache
            return self._new_store(key, settings)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._move_aside(database, exc)
        probe(database, timeout)
        return self._new_store(key, settings)

    def _new_store(self, key: tuple[Any, ...], settings: dict[str, Any]) -> diskcache.Cache:
        cache = diskcache.Cache(
            str(self.directory), timeout=self.BUSY_TIMEOUT, disk=PayloadDisk, **settings
        )
        # The engine keeps its `_Shared` alive; the registry only finds it.
        self._shared = SHARED[key] = Shared(cache, identity(self._database))
        return cache

    def _move_aside(self, database: Path, exc: BaseException) -> None:
        suffix = move_aside(self.directory, database, self.OPEN_TIMEOUT)
        if suffix is not None:
            warn(
                f"twat_cache: the diskcache database {database} was malformed ({exc}); it was "
                f"moved aside to {database.name}{suffix} and an empty cache was created"
            )

    # --- the store ----------------------------------------------------------------------

    @gated
    def get(self, key: Any, default: Any = None) -> Any:
        key = self.key_text(key)
        if time.monotonic() - self._checked_at > self.FOLDER_CHECK:
            # A folder deleted to clear it leaves this process's connection on the deleted
            # file: its entries must not be served for long after.
            self._checked_at = time.monotonic()
            self._live()
        payload = self._read(key, MISS)
        if payload is MISS:
            return default
        if type(payload) is not bytes:
            payload = self._unreadable(key, payload)
            if payload is MISS:
                return default
        try:
            return self._loads(payload, self._context(key))
        except PayloadError as exc:
            self.rejected(key, exc)
            return default

    def _context(self, key: str) -> bytes:
        # What a payload is bound to (signed with): this folder and this key, so an entry
        # copied under another key, or from another cache's database, does not verify.
        return self._folder + key.encode("utf-8", "surrogatepass")

    def _select(self, key: str, default: Any) -> Any:
        """`diskcache.Cache.get(key, default)` where hits write nothing, without its per-call
        overhead: the same row, the same expiry rule, the same `Disk.fetch` for file values.
        A lock held past the busy timeout raises `diskcache.Timeout`, as diskcache's writes do."""
        try:
            found = self._connection().execute(_SELECT, (key,)).fetchone()
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise diskcache.Timeout(str(exc)) from exc
            raise
        if found is None:
            return default
        expire_time, mode, filename, value = found
        # SQLite's `expire_time > now`: NULL never expires, and neither does a text or blob
        # (tampered) column, which sorts above every number.
        if type(expire_time) is float and expire_time <= time.time():
            return default
        if mode == MODE_RAW and type(value) is bytes:
            return value
        try:
            return self._disk.fetch(mode, filename, value, False)
        except OSError:  # what diskcache's get does: the file went before it could be read
            return default

    def _unreadable(self, key: str, found: Any) -> Any:
        """A row without a payload: a value file gone or refused (a link), or a row this
        engine never wrote."""
        if isinstance(found, PayloadError):
            self.rejected(key, found)
            return MISS
        if isinstance(found, Vanished):
            # A concurrent overwrite, delete or cull removes the file after committing its
            # row: read again. Only a row still naming the missing file is broken.
            again = self._read(key, MISS)
            if type(again) is bytes or again is MISS:
                return again
            if not (isinstance(again, Vanished) and again.filename == found.filename):
                return MISS
            self.rejected(key, PayloadError(f"the value file {found.filename} is missing"))
            return MISS
        self.rejected(key, PayloadError("the database row holds no twat-cache payload"))
        return MISS

    @gated
    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        self._patiently(self._store, key, value, self._check_ttl(ttl))

    def _patiently(self, operation: Any, *args: Any) -> Any:
        # Each attempt waits BUSY_TIMEOUT inside SQLite's busy handler: no busy loop here.
        deadline = time.monotonic() + self.WRITE_PATIENCE
        while True:
            try:
                return operation(*args)
            except diskcache.Timeout:
                if time.monotonic() >= deadline:
                    raise

    @gated
    def put(self, key: Any, value: Any) -> None:
        self._store(key, value, self._ttl)

    def _store(self, key: Any, value: Any, ttl: float | None) -> None:
        key = self.key_text(key)
        # UnserializableError: nothing has touched the disk.
        payload = self._dumps(value, self._context(key))
        if self._count_limit == 0:
            return
        cache = self._live()
        try:
            cache.set(key, payload, expire=ttl)
        except Exception:
            # diskcache writes a value file before its transaction and removes it only
            # when the transaction cannot begin: a failed insert (disk full) leaves it.
            self._disk.discard_written()
            raise
        self._disk.committed()
        if self._count_limit is not None and len(cache) > self._count_limit:
            self._cull(key, self._count_limit)

    def _cull(self, keep: str | None, limit: int) -> int:
        # diskcache bounds bytes only: an entry count is enforced here, in the order of
        # the policy's own index, without evicting the entry just written (`keep`).
        cache = self._live()
        removed: int = cache.expire() if self.expires else 0
        files: list[Any] = []
        with cache.transact():
            excess = len(cache) - limit
            if excess > 0:
                for rowid, filename in self._query(self._victims, (keep, excess)):
                    self._query("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                    files.append(filename)
        # Value files go once the deletes have committed, as diskcache's own deletes do
        # (`cache.delete` nested in `transact` removes them before the commit): a reader,
        # which takes no lock, must never see a row whose file is already gone.
        for filename in files:
            if filename is not None:
                self._disk.remove(filename)
        return removed + len(files)

    def _connection(self) -> sqlite3.Connection:
        # The one use of diskcache's private API. diskcache has no public query API: its
        # per-thread connection (`_con`, stable since diskcache 3; it reconnects after a
        # fork and after `close`, and carries the busy timeout and pragmas) runs the reads
        # its public methods lack, over the Cache table's documented columns (key, raw,
        # store_time, expire_time, access_time, access_count, mode, filename, value).
        cache = self._cache if self._cache is not None else self._live()
        return cache._con  # type: ignore[no-any-return]  # untyped library

    def _query(self, statement: str, parameters: tuple[Any, ...]) -> list[Any]:
        return self._connection().execute(statement, parameters).fetchall()

    @gated
    def delete(self, key: Any) -> bool:
        key = self.key_text(key)
        return bool(self._patiently(lambda: self._live().delete(key)))

    @gated
    def clear(self) -> None:
        """Remove every entry, in one transaction (all or nothing: diskcache's own clear
        commits in batches, and stops half-way on a lock), retried for `WRITE_PATIENCE`
        seconds while other writers hold the database; then `EngineError`."""
        try:
            files = self._patiently(self._clear_rows)
        except (diskcache.Timeout, sqlite3.Error) as exc:
            raise EngineError(f"could not clear the cache in {self.directory}: {exc!r}") from exc
        # The files go once the deletes have committed (see `_cull`); one that cannot be
        # removed is an orphan no row names, which `prune` removes.
        for filename in files:
            with contextlib.suppress(OSError):
                self._disk.remove(filename)

    def _clear_rows(self) -> list[Any]:
        cache = self._live()
        with cache.transact():
            rows = self._query("SELECT filename FROM Cache WHERE filename IS NOT NULL", ())
            self._query("DELETE FROM Cache", ())
        return [filename for (filename,) in rows]

    @gated
    def __len__(self) -> int:
        count = len(self._live())  # diskcache's count includes expired entries
        if self.expires and count:
            # Counted, not purged: a read, so cache_info() works while another process
            # holds the write lock.
            expired = "SELECT count(*) FROM Cache WHERE expire_time <= ?"
            ((stale,),) = self._query(expired, (time.time(),))
            count -= stale
        return max(count, 0)

    # --- tools (`twat-cache stats`, `prune`) -------------------------------------------

    @gated
    def stats(self) -> dict[str, Any]:
        """Live entries (expired ones not counted) and the store times of the oldest and
        newest of them, from one query on diskcache's Cache table (its `store_time`
        column); `bytes`: every file in the folder (the database, its WAL, value files)."""
        self._live()
        count, oldest, newest = live_entries(self._query)
        size = folder_bytes(self.directory)
        return {"entries": count, "bytes": size, "oldest": oldest, "newest": newest}

    @gated
    def prune(self) -> int:
        """Drop expired entries (diskcache's `expire`), enforce the bound (diskcache's `cull`
        for bytes, the policy's order for an entry count), and remove the value files no
        row references that are older than `COMMIT_GRACE` (left by writers killed between
        writing a file and committing its row). Returns the entries and files removed."""
        cache = self._live()
        removed: int = cache.expire()
        if isinstance(self.maxsize, ByteSize):
            removed += cache.cull()
        elif self._count_limit is not None:
            removed += self._cull(None, self._count_limit)
        return removed + remove_orphans(self.directory, self._query, self.COMMIT_GRACE)

    @gated
    def close(self) -> None:
        """Close this thread's database connection (diskcache opens one per thread; the
        others close with their threads). Idempotent; a later call reopens lazily."""
        self.release_folder()
        if self._cache is not None:
            self._cache.close()

    def __repr__(self) -> str:
        return f"<DiskCacheEngine directory={str(self.directory)!r} maxsize={self.maxsize}>"
