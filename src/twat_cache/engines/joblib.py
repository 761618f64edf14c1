"""JoblibEngine: one signed file per entry, for large NumPy and pandas values (fcache).

The files themselves (records, signatures, `.npy` data files) are `_joblib_files`.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import joblib
from pydantic import ByteSize

from twat_cache._fork import reset_in_child
from twat_cache.config import CacheConfig
from twat_cache.engines import _joblib_files as files
from twat_cache.engines._evictions import EvictionQueue
from twat_cache.engines._joblib_files import HEAD, MAGIC, Listing, Meta
from twat_cache.engines._joblib_mac import MAC_SIZE, check, file_mac
from twat_cache.engines.base import PersistentEngine, persistent_capabilities
from twat_cache.paths import (
    atomic_write,
    cache_root,
    disk_usage,
    file_identity,
    folder_bytes,
    looks_unsafe,
    recheck_folder,
    set_times,
)
from twat_cache.serializers import PayloadError, UnserializableError, get_secret, sign, verify

__all__ = ["JoblibEngine"]

_RETRIES = 3
_COMPRESSION = {"zlib": ("zlib", 3), "lzma": ("lzma", 3)}


class JoblibEngine(PersistentEngine):
    """Files engine: one data file per entry. A plain NumPy array (an `ndarray` itself, of
    a dtype without Python objects) is written in NumPy's `.npy` format and read back with
    no pickle at all; anything else goes through `joblib.dump`/`joblib.load` (arrays inside
    written raw). Compressed entries always go through joblib.

    With `secure=True` (the default) each data file is signed (keyed BLAKE2b in tree mode,
    leaves hashed in parallel) and verified before `joblib.load` unpickles it, or before an
    `.npy` array read into memory is handed out. `maxsize` is an entry count or a byte size
    (default 1 GiB) of disk usage (the blocks files take, not their lengths), enforced after
    each write by evicting least recently used entries (or oldest first for 'fifo', nearest
    expiry for 'ttl', at random for 'rr'), from a queue of the next victims a scan of the
    folder fills (`QUEUE_FRACTION`); entries expire by stored time. `mmap_mode` maps arrays
    after their file is verified; it has no effect on compressed entries (joblib cannot map
    them: they load into memory, as with joblib itself) nor on empty `.npy` arrays, and
    'r+' is refused with `secure=True` (it would write into signed files). Keys that are
    not `str` are turned into stable digests. `prune()` removes what killed writers left
    behind.

    >>> engine = JoblibEngine(CacheConfig(folder_name="doctest-joblib", maxsize="10MB"))
    >>> engine.set("answer", {"value": 42})
    >>> engine.get("answer")
    {'value': 42}
    >>> engine.clear()
    """

    name = "joblib"
    capabilities = persistent_capabilities(frozenset({"lru", "fifo", "rr", "ttl"}))

    #: Seconds after which a temporary file no writer finished is removed (on open, prune).
    TEMP_MAX_AGE: ClassVar[float] = 3600.0
    #: Seconds a data file without a record may wait for its writer to commit it.
    COMMIT_GRACE: ClassVar[float] = 60.0
    #: Seconds between a writer's checks that its folder is the one it opened: a folder
    #: deleted and made again by someone else is checked as at creation. One stat, next to
    #: the files every write makes: checked on each write.
    FOLDER_CHECK: ClassVar[float] = 0.0

    @classmethod
    def unsupported(cls, config: CacheConfig) -> str | None:
        if config.serializer != "pickle":
            return "joblib persists with pickle only (serializer='json' is not served)"
        if config.mmap_mode == "r+" and config.secure:
            return "mmap_mode='r+' writes into signed cache files: use 'r' or 'c', or secure=False"
        return super().unsupported(config)

    def __init__(self, config: CacheConfig | None = None, *, sweep: bool = True) -> None:
        """`sweep=False` opens without removing anything (expired entries, what killed
        writers left, entries over the bound): for tools that read the folder or report
        what their own `prune` removes."""
        super().__init__(config)
        self._opened = file_identity(self.directory)
        self._checked_at = time.monotonic()
        self._secret = get_secret(cache_root()) if self.config.secure else None
        self._compress: Any = _COMPRESSION.get(self.config.compress or "", 0)
        self._touch = self.config.policy == "lru"
        bound = self.maxsize
        self._bound = bound
        self._by_bytes = isinstance(bound, ByteSize)
        self._new_locks()
        self._queue = EvictionQueue(self._by_bytes)
        # Entries, bytes (net) and writes by the accounting; bytes written since the last
        # scan (`_rescan_due`).
        self._count = self._bytes = self._writes = self._written = 0
        # What this engine's writes have added since it opened (entries, bytes), never
        # reset: an accounting taken from a scan adds what was written since it began.
        self._added = self._grown = 0
        self._scanned_at = 0.0
        if sweep:
            self._account(prune=True)
        else:  # a tool's open: no scan until a first write needs the accounting
            self._writes = self.RESCAN_WRITES
        reset_in_child(self)

    def _new_locks(self) -> None:
        self._lock = threading.Lock()
        self._scanning = threading.Lock()
        self._evicting = threading.RLock()
        self._names = tuple(threading.Lock() for _ in range(64))  # see `_name_lock`

    def after_fork(self) -> None:
        """In a forked child: new locks (a thread of the parent may have held one at the
        fork; it does not exist here), and a rescan before the next write's eviction."""
        self._new_locks()
        self._writes = self.RESCAN_WRITES

    # --- reading ------------------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        text = self.key_text(key)
        name = files.name_of(text)
        record = self.directory / f"{name}.sig"
        try:
            raw = files.read(record)
            for _ in range(_RETRIES):
                if raw is None:
                    return default
                meta = self._verified(raw, name, text)
                if meta.expired(time.time()):
                    self._claim(name)
                    return default
                try:
                    value = self._load(meta)
                except FileNotFoundError:
                    again = files.read(record)
                    if again != raw:  # replaced or deleted meanwhile: a race, not damage
                        raw = again
                        continue
                    raise PayloadError("the entry's data file is missing") from None
                if self._touch:
                    with contextlib.suppress(OSError):
                        now = time.time_ns()
                        set_times(record, (now, now))
                return value
        except PayloadError as exc:
            self.rejected(key, exc)
        return default

    def exists(self, key: Any) -> bool:
        """Whether a live entry is stored (its record verifies and its data file is there);
        the value is not loaded."""
        text = self.key_text(key)
        name = files.name_of(text)
        try:
            raw = files.read(self.directory / f"{name}.sig")
            if raw is None:
                return False
            meta = self._verified(raw, name, text)
        except PayloadError as exc:
            self.rejected(key, exc)
            return False
        if meta.expired(time.time()):
            self._claim(name)
            return False
        try:
            info = os.lstat(self.directory / meta.data)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(info.st_mode) and info.st_size == meta.size

    def _verified(self, raw: bytes, name: str, text: str) -> Meta:
        if len(raw) < HEAD or raw[: len(MAGIC)] != MAGIC:
            raise PayloadError("not a joblib cache record (truncated or foreign)")
        body = raw[HEAD:]
        if self._secret is not None and not verify(
            self._secret, MAGIC + body, raw[len(MAGIC) : HEAD]
        ):
            raise PayloadError("entry record signature does not verify (tampered or foreign key)")
        meta = files.decode(body, name)
        if meta.key != text:
            raise PayloadError("entry record belongs to another key")
        return meta

    def _load(self, meta: Meta) -> Any:
        path = self.directory / meta.data
        mmap_mode = self.config.mmap_mode
        try:
            if meta.format == files.NPY:
                return files.load_npy(path, meta, self._secret, mmap_mode)
            with open(files.open_data(path), "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size != meta.size:
                    raise PayloadError(f"data file has {size} bytes, its record says {meta.size}")
                if self._secret is not None:
                    check(file_mac(handle.fileno(), size, self._secret), meta.mac)
                    handle.seek(0)  # where positional reads are missing (Windows), it moved
                if mmap_mode is not None and not meta.compressed:
                    # joblib maps by path. Data files are never rewritten in place (a new
                    # write gets a new name), so the path names the file just verified,
                    # unless something was put in its place since: then it is refused.
                    if not os.path.samestat(os.fstat(handle.fileno()), os.lstat(path)):
                        raise PayloadError("the data file was replaced while it was verified")
                    return joblib.load(path, mmap_mode=mmap_mode)
                return joblib.load(handle)
        except (OSError, PayloadError):
            raise
        except Exception as exc:
            raise PayloadError(f"data file does not load: {type(exc).__name__}: {exc}") from exc

    # --- writing ------------------------------------------------------------------------

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        ttl = self._check_ttl(ttl)
        now = time.monotonic()
        if now - self._checked_at >= self.FOLDER_CHECK:
            self._checked_at = now
            moved = file_identity(self.directory) not in (self._opened, None)
            if moved or looks_unsafe(self.directory):
                self._recreate()  # made again by someone else meanwhile: checked anew
        try:
            self._write(key, value, ttl)
        except FileNotFoundError:
            if os.path.isdir(self.directory):
                raise
            self._recreate()
            self._write(key, value, ttl)

    def _recreate(self) -> None:
        """The folder was deleted (to clear the cache, say): make it again, with the checks
        it was created with, and start the accounting afresh."""
        recheck_folder(self.directory)
        self._opened = file_identity(self.directory)
        self._record_manifest()  # gone too if the whole root was deleted
        with self._evicting:
            self._queue.clear()
            self._reset(0, 0, self._mark())

    def _write(self, key: Any, value: Any, ttl: float | None) -> None:
        text = self.key_text(key)
        name = files.name_of(text)
        # A plain array is written as `.npy` (no pickle at all); compressed, or anything
        # else, goes through joblib.
        header = None if self._compress else files.npy_header(value)
        suffix = files.JOBLIB if header is None else files.NPY
        data = self.directory / f"{name}.{secrets.token_hex(8)}.{suffix}"
        with atomic_write(data) as temp:
            if header is None:
                size, mac = self._dump(temp, value)
            else:
                size, mac = files.write_npy(temp, value, header, self._secret)
            # The data file is never written again: its mtime is the entry's store time,
            # which `stats` reads without opening the record.
            stored_ns = time.time_ns()
            os.utime(temp, ns=(stored_ns, stored_ns))
        record = self.directory / f"{name}.sig"
        try:
            stored = stored_ns / 1e9
            meta = Meta(
                key=text,
                data=data.name,
                size=size,
                mac=mac,
                stored=stored,
                expires=None if ttl is None else stored + ttl,
                compressed=bool(self._compress),
                format=suffix,
                header=header or b"",
            )
            body = files.encode(meta)
            signature = (
                bytes(MAC_SIZE) if self._secret is None else sign(self._secret, MAGIC + body)
            )
            blob = MAGIC + signature + body
            # Whether the write adds an entry or replaces one is read under the lock that
            # this process's removals of the entry take: none can slip in between.
            with self._name_lock(name):
                try:
                    old = files.read(record)
                except PayloadError:  # a link planted there: replaced, never followed
                    old = None
                with atomic_write(record) as temp:
                    temp.write_bytes(blob)
                    os.utime(temp, ns=(stored_ns, stored_ns))  # exact: the LRU/FIFO order
        except BaseException:
            files.unlink(data)  # never committed: no reader can have it
            raise
        old_meta = files.peek(old, name)
        # Disk usage (blocks, as the bound counts them): the new files, less the old data
        # file; a replaced record takes about what its replacement takes.
        written = files.usage_of(data) + (files.usage_of(record) if old is None else 0)
        grown = written
        if old_meta is not None:
            old_data = self.directory / old_meta.data
            grown -= files.usage_of(old_data)
            files.unlink(old_data)
        self._after_write(name, 0 if old is not None else 1, grown, written)

    def _dump(self, path: Path, value: Any) -> tuple[int, bytes]:
        """Write `value` with joblib.dump; returns the file's size and MAC."""
        with open(path, "w+b") as raw:
            try:
                joblib.dump(value, raw, compress=self._compress)
            except OSError:
                raise  # a full disk or an I/O error: the wrapper reports it, not a bad value
            except Exception as exc:
                raise UnserializableError(
                    f"joblib cannot persist a {type(value).__name__}: {type(exc).__name__}: {exc}"
                ) from exc
            raw.flush()
            size = raw.tell()
            if self._secret is None:
                return size, b""
            return size, file_mac(raw.fileno(), size, self._secret)

    # --- removing -----------------------------------------------------------------------

    def delete(self, key: Any) -> bool:
        name = files.name_of(self.key_text(key))
        raw = self._claim(name)
        if raw is None:
            return False
        meta = files.peek(raw, name)
        return meta is None or not meta.expired(time.time())

    def _meta_of(self, name: str) -> Meta | None:
        """The record of entry `name` as stored, unverified (None: absent, unreadable, or a
        link, never followed): for bookkeeping, never to serve a value."""
        try:
            return files.peek(files.read(self.directory / f"{name}.sig"), name)
        except PayloadError:
            return None

    def _claim(self, name: str) -> bytes | None:
        """Remove one entry and its data file; returns its record, None if there was none.

        The record is first renamed to a private name: of several processes removing or
        replacing the same entry, exactly one gets each version, and deletes its data file.
        """
        record = self.directory / f"{name}.sig"
        claimed = self.directory / f".{name}.sig.{secrets.token_hex(4)}.tmp"
        try:
            with self._name_lock(name):
                os.replace(record, claimed)
        except FileNotFoundError:
            return None
        try:
            raw = files.read(claimed) or b""
        except PayloadError:  # a link was there: removed below, never followed
            raw = b""
        finally:
            files.unlink(claimed)
        meta = files.peek(raw, name)
        if meta is not None:
            files.unlink(self.directory / meta.data)
        return raw

    def clear(self) -> None:
        """Remove every entry of this engine (files of other engines in the folder stay)."""
        mark = self._mark()
        listing = self._scan()
        for name in listing.records:
            self._claim(name)
        self._remove_orphans(self._scan(), time.time())
        with self._evicting:
            self._queue.clear()  # its victims are gone: evicted, they would count twice
            self._reset(0, 0, mark)

    def prune(self) -> int:
        """Remove what killed writers left (temporary files older than `TEMP_MAX_AGE`, data
        files no record names older than `COMMIT_GRACE`) and expired entries, then enforce
        the size limit; opening does the same unless `sweep=False`. Returns the number of
        files and entries removed."""
        return self._account(prune=True, expire=True)

    def stats(self) -> dict[str, Any]:
        """Live entries and the store times of the oldest and newest entry, from one
        directory scan, and the bytes of every file in the folder. A store time is the
        mtime of the entry's data file, which `set` pins to the time in its record (for
        entries written before it did, the moment the data file was finished, milliseconds
        earlier). Records are read only when this engine expires entries (a ttl or the
        'ttl' policy), to leave expired ones out, or for an entry with two data files (an
        overwrite in flight): then the time is the record's."""
        listing = self._scan()
        now = time.time()
        entries, times = 0, []
        for name in listing.records:
            found = listing.data.get(name, [])
            meta = None
            if self.expires or len(found) > 1:
                meta = self._meta_of(name)
                if meta is not None and meta.expired(now):
                    continue
            entries += 1
            if meta is not None:
                times.append(meta.stored)
            elif len(found) == 1:
                times.append(found[0][1].st_mtime)
        return {
            "entries": entries,
            "bytes": folder_bytes(self.directory),
            "oldest": min(times, default=None),
            "newest": max(times, default=None),
        }

    def __len__(self) -> int:
        listing = self._scan()
        if not self.expires:
            return len(listing.records)
        return len(listing.records) - self._expire(listing, time.time())

    def close(self) -> None:
        """Nothing is held open between operations; the folder is released (see
        `release_folder`)."""
        self.release_folder()

    # --- bounds -------------------------------------------------------------------------

    def _after_write(self, name: str, added: int, grown: int, written: int) -> None:
        """Count a write (`added` entries, `grown` bytes net, `written` bytes of new files)
        and evict down to the bound."""
        with self._lock:
            self._count += added
            self._bytes += grown
            self._added += added
            self._grown += written
            self._writes += 1
            self._written += written
            stale = self._rescan_due()
        over = self._evict_queued() > 0
        due = over or (stale and (self._bound is not None or self.expires))
        # Over the bound, wait for a scan in another thread; merely due, one scan is enough.
        if due and self._scanning.acquire(blocking=over):
            try:
                # Victims used or written again since the scan stay: if too many did for the
                # queue to cover the excess, scan again rather than return past the bound.
                for _ in range(_RETRIES):
                    self._account(keep=name)
                    if not self._excess():
                        break
            finally:
                self._scanning.release()

    def _rescan_due(self) -> bool:
        """Whether other processes' writes may have filled the folder unseen: after
        `rescan_due`'s count of writes, or, for a byte bound, once this process has written
        `RESCAN_FRACTION` of it since the last scan (so that large entries, which pass the
        bound in few writes, are rescanned as often as their bytes need)."""
        since = time.monotonic() - self._scanned_at
        if self.rescan_due(self._writes, self._count, since):
            return True
        bound = self._bound
        return (
            self._by_bytes and bound is not None and self._written >= self.RESCAN_FRACTION * bound
        )

    def _name_lock(self, name: str) -> threading.Lock:
        """The lock (one of `_names`, by `name`) taken around replacing or claiming entry
        `name`'s record in this process, so that a write knows whether it adds an entry
        (other processes' removals are found by rescans)."""
        return self._names[int(name[:8], 16) % len(self._names)]

    def _scan(self) -> Listing:
        return files.scan(self.directory)

    def _mark(self) -> tuple[int, int]:
        """Where the writes' ledger stands: taken before a scan, for `_reset`."""
        with self._lock:
            return self._added, self._grown

    def _reset(self, count: int, total: int, mark: tuple[int, int]) -> None:
        """Set the accounting to `count` entries and `total` bytes found by a scan (or left
        by a clear) that began at `mark`, plus what writes added since: those that finished
        while it ran may be missing from it. One both listed and counted counts twice,
        which only evicts early; one missed would let the folder pass its bound."""
        with self._lock:
            self._count = count + self._added - mark[0]
            self._bytes = total + self._grown - mark[1]

    def _excess(self) -> int:
        """Bytes or entries past the bound, by the accounting (0 when within it)."""
        if self._bound is None:
            return 0
        return max(0, (self._bytes if self._by_bytes else self._count) - self._bound)

    def _evict_queued(self) -> int:
        """Evict from the queue the last scan filled until the folder is within its bound;
        returns what is still past it (the queue ran out)."""
        with self._evicting:
            excess = self._excess()
            if excess:
                freed, entries = self._queue.evict(excess, self._unchanged, self._claim)
                with self._lock:
                    self._bytes -= freed
                    self._count -= entries
                excess = self._excess()
            return excess

    def _unchanged(self, name: str, stamp: int) -> bool | None:
        """Whether entry `name`'s record is the one a scan saw (`stamp`: its mtime): not
        used (lru) or written again since; None if it is gone."""
        try:
            return os.lstat(self.directory / f"{name}.sig").st_mtime_ns == stamp
        except FileNotFoundError:
            return None

    def _remove_orphans(self, listing: Listing, now: float) -> int:
        removed = 0
        for file_name, info in listing.temps:
            if now - info.st_mtime > self.TEMP_MAX_AGE:
                removed += files.unlink(self.directory / file_name)
        for name, found in list(listing.data.items()):
            old = [f for f, info in found if now - info.st_mtime > self.COMMIT_GRACE]
            if not old:
                continue
            if name in listing.records:
                if len(found) == 1:  # the committed entry's own file (the usual case)
                    continue
                meta = self._meta_of(name)
                old = [f for f in old if meta is None or f != meta.data]
            for file_name in old:
                removed += files.unlink(self.directory / file_name)
            listing.data[name] = [(f, s) for f, s in found if f not in old]
        return removed

    def _expire(self, listing: Listing, now: float) -> int:
        """Drop expired entries from the directory and from `listing`; count them."""
        expired = 0
        for name in list(listing.records):
            meta = self._meta_of(name)
            if meta is not None and meta.expired(now):
                self._claim(name)
                del listing.records[name]
                listing.data.pop(name, None)
                expired += 1
        return expired

    def _account(self, *, prune: bool = False, expire: bool = False, keep: str = "") -> int:
        """Refresh the size accounting from a scan and evict down to the bound; the entry
        `keep` (just written) goes last, whatever the policy."""
        mark = self._mark()
        listing = self._scan()
        now = time.time()
        removed = self._remove_orphans(listing, now) if prune else 0
        if expire or self.expires:
            removed += self._expire(listing, now)
        weights = {
            name: disk_usage(info) + sum(disk_usage(s) for _, s in listing.data.get(name, ()))
            for name, info in listing.records.items()
        }
        loose = sum(
            disk_usage(s) for n, f in listing.data.items() if n not in weights for _, s in f
        )
        count, total = len(weights), sum(weights.values()) + loose
        bound = self._bound
        with self._evicting:
            self._reset(count, total, mark)
            with self._lock:
                self._writes = self._written = 0
                self._scanned_at = time.monotonic()
            excess = self._excess()
            if not excess:
                self._queue.clear()
                return removed
            order = self._eviction_order(listing)
            if keep in weights:  # the entry just written goes last, whatever the policy
                order.remove(keep)
                order.append(keep)
            records = listing.records
            self._queue.refill(
                ((name, records[name].st_mtime_ns, weights[name]) for name in order),
                self.queue_depth(bound or 0, excess),
            )
            before = self._count
            self._evict_queued()
            return removed + before - self._count

    def _eviction_order(self, listing: Listing) -> list[str]:
        names = list(listing.records)
        policy = self.config.policy
        if policy == "rr":
            random.shuffle(names)
            return names
        if policy == "ttl":

            def expiry(name: str) -> tuple[float, int]:
                meta = self._meta_of(name)
                expires = meta.expires if meta is not None and meta.expires is not None else 0.0
                return (expires or float("inf"), listing.records[name].st_mtime_ns)

            return sorted(names, key=expiry)
        # lru: the record's mtime is its last use; fifo: it is never touched after the write
        return sorted(names, key=lambda name: listing.records[name].st_mtime_ns)
