"""JoblibEngine: one signed joblib file per entry, for large NumPy and pandas values (fcache)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import joblib
from pydantic import ByteSize

from twat_cache.config import CacheConfig
from twat_cache.engines.base import Capabilities, PersistentEngine
from twat_cache.keys import stable_digest
from twat_cache.paths import atomic_write, cache_root
from twat_cache.serializers import PayloadError, UnserializableError, get_secret, sign, verify

__all__ = ["JoblibEngine"]

# On disk, per entry (`name` = 128-bit BLAKE2b of the key, so no key ever chooses a path):
#   <name>.<nonce>.joblib  the value, written by joblib.dump, never modified once in place;
#   <name>.sig             the commit record: MAGIC | MAC | JSON (key, data file, its size
#                          and MAC, stored and expiry times), replaced atomically.
# Readers go through the record, so a value becomes visible in one os.replace; a fresh nonce
# per write means a reader never sees a data file change under it. The record's mtime is
# the entry's last use (LRU) or its store time (other policies).
_MAGIC = b"TWJ\x01"
_MAC_SIZE = 32
_HEAD = len(_MAGIC) + _MAC_SIZE
_RECORD = re.compile(r"([0-9a-f]{32})\.sig")
_DATA = re.compile(r"([0-9a-f]{32})\.[0-9a-f]{16}\.joblib")
# Temporary files of paths.atomic_write (".<target>.<random>.tmp"), and claimed records.
_TEMP = re.compile(r"\.([0-9a-f]{32})(?:\.[0-9a-f]{16}\.joblib|\.sig)\.[A-Za-z0-9_]+\.tmp")
_LEAF = 4 << 20
_RETRIES = 3
_COMPRESSION = {"zlib": ("zlib", 3), "lzma": ("lzma", 3)}


@dataclass(frozen=True)
class _Meta:
    key: str
    data: str
    size: int
    mac: bytes
    stored: float
    expires: float | None
    compressed: bool

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


def _file_mac(fd: int, size: int, secret: bytes) -> bytes:
    """Keyed BLAKE2b, in BLAKE2's tree mode (depth 2, 4 MiB leaves), of a file's bytes.

    Hashing is the whole cost of signing a large value (a 50 MB array hashes slower than
    it is read or written), so the leaves are hashed in parallel: `os.preadv` and hashlib
    release the GIL. Reads are positional: the file offset stays where it was.
    """
    leaves = max(1, -(-size // _LEAF))
    digests = [b""] * leaves
    errors: list[BaseException] = []

    def hash_leaves(first: int, stop: int) -> None:
        buffer = memoryview(bytearray(min(_LEAF, size) or 1))
        try:
            for index in range(first, stop):
                offset = index * _LEAF
                view = buffer[: min(_LEAF, size - offset)]
                filled = 0
                while filled < len(view):
                    count = _read_at(fd, view[filled:], offset + filled)
                    if not count:
                        raise PayloadError("data file is shorter than its record says")
                    filled += count
                leaf = _node(secret, index, 0, last=index == leaves - 1)
                leaf.update(view)
                digests[index] = leaf.digest()
        except BaseException as exc:
            errors.append(exc)

    workers = min(leaves, _WORKERS)
    bounds = [leaves * n // workers for n in range(workers + 1)]
    threads = [
        threading.Thread(target=hash_leaves, args=(bounds[n], bounds[n + 1]), daemon=True)
        for n in range(1, workers)
    ]
    for thread in threads:
        thread.start()
    hash_leaves(bounds[0], bounds[1])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    root = _node(secret, 0, 1, last=True)
    for digest in digests:
        root.update(digest)
    return root.digest()


def _node(secret: bytes, offset: int, depth: int, *, last: bool) -> hashlib.blake2b:
    return hashlib.blake2b(
        key=secret,
        digest_size=_MAC_SIZE,
        fanout=0,  # unlimited: as many leaves as the file needs
        depth=2,
        leaf_size=_LEAF,
        inner_size=_MAC_SIZE,
        node_offset=offset,
        node_depth=depth,
        last_node=last,
    )


if hasattr(os, "preadv"):

    def _read_at(fd: int, view: memoryview, offset: int) -> int:
        return os.preadv(fd, [view], offset)

    _WORKERS = max(1, min(4, os.cpu_count() or 1))
else:  # Windows: no positional reads; one thread, moving the offset (callers seek back)

    def _read_at(fd: int, view: memoryview, offset: int) -> int:
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(view))
        view[: len(data)] = data
        return len(data)

    _WORKERS = 1


def _name(key: str) -> str:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _peek(raw: bytes | None, name: str) -> _Meta | None:
    """The record's metadata without checking its signature: only to clean up, never to
    serve a value. None when it does not parse or names a data file not of this entry."""
    if raw is None or raw[: len(_MAGIC)] != _MAGIC:
        return None
    try:
        return _decode(raw[_HEAD:], name)
    except PayloadError:
        return None


def _decode(body: bytes, name: str) -> _Meta:
    try:
        fields = json.loads(body)
        meta = _Meta(
            key=str(fields["k"]),
            data=str(fields["d"]),
            size=int(fields["n"]),
            mac=bytes.fromhex(fields["h"]),
            stored=float(fields["t"]),
            expires=None if fields["e"] is None else float(fields["e"]),
            compressed=bool(fields["z"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PayloadError(f"entry record does not decode: {type(exc).__name__}: {exc}") from exc
    match = _DATA.fullmatch(meta.data)
    if match is None or match.group(1) != name:
        raise PayloadError("entry record names a data file that is not its own")
    return meta


@dataclass
class _Listing:
    """One pass over the directory: records, data files and temporary files, with stats."""

    records: dict[str, os.stat_result]
    data: dict[str, list[tuple[str, os.stat_result]]]
    temps: list[tuple[str, os.stat_result]]


class JoblibEngine(PersistentEngine):
    """Files engine on `joblib.dump`/`joblib.load`: one file per entry, NumPy arrays
    written raw (memory-mapped on load with `mmap_mode`), optionally compressed.

    With `secure=True` (the default) each data file is signed (keyed BLAKE2b in tree mode,
    leaves hashed in parallel) and verified before `joblib.load` unpickles it. `maxsize` is
    an entry count or a byte size (default 1 GiB), enforced after each write by evicting
    least recently used entries (or oldest first for 'fifo', nearest expiry for 'ttl', at
    random for 'rr'); entries expire by stored time. `mmap_mode` maps arrays after their
    file is verified; it has no effect on compressed entries (joblib cannot map them: they
    load into memory, as with joblib itself), and 'r+' is refused with `secure=True` (it
    would write into signed files). Keys that are not `str` are turned into stable digests.
    `prune()` removes what killed writers left behind.

    >>> engine = JoblibEngine(CacheConfig(folder_name="doctest-joblib", maxsize="10MB"))
    >>> engine.set("answer", {"value": 42})
    >>> engine.get("answer")
    {'value': 42}
    >>> engine.clear()
    """

    name = "joblib"
    capabilities = Capabilities(
        policies=frozenset({"lru", "fifo", "rr", "ttl"}),
        ttl=True,
        persistent=True,
        shared=True,
        thread_safe=True,
        needs_serialization=True,
        byte_limits=True,
        blocking=True,
    )

    #: Seconds after which a temporary file no writer finished is removed (on open, prune).
    TEMP_MAX_AGE: ClassVar[float] = 3600.0
    #: Seconds a data file without a record may wait for its writer to commit it.
    COMMIT_GRACE: ClassVar[float] = 60.0
    #: Writes, and seconds, after which the size accounting is refreshed from the directory
    #: (other processes write there too).
    RESCAN_WRITES: ClassVar[int] = 64
    RESCAN_SECONDS: ClassVar[float] = 30.0

    @classmethod
    def unsupported(cls, config: CacheConfig) -> str | None:
        if config.serializer != "pickle":
            return "joblib persists with pickle only (serializer='json' is not served)"
        if config.mmap_mode == "r+" and config.secure:
            return "mmap_mode='r+' writes into signed cache files: use 'r' or 'c', or secure=False"
        return super().unsupported(config)

    def __init__(self, config: CacheConfig | None = None) -> None:
        super().__init__(config)
        self._secret = get_secret(cache_root()) if self.config.secure else None
        self._compress: Any = _COMPRESSION.get(self.config.compress or "", 0)
        self._touch = self.config.policy == "lru"
        bound = self.maxsize
        self._bound = bound
        self._by_bytes = isinstance(bound, ByteSize)
        self._lock = threading.Lock()
        self._scanning = threading.Lock()
        self._count = self._bytes = self._writes = 0
        self._scanned_at = 0.0
        self._account(self._scan(), prune=True)

    # --- reading ------------------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        text = self._text(key)
        name = _name(text)
        record = self.directory / f"{name}.sig"
        raw = _read(record)
        for _ in range(_RETRIES):
            if raw is None:
                return default
            try:
                meta = self._verified(raw, name, text)
                if meta.expired(time.time()):
                    self._claim(name)
                    return default
                value = self._load(meta)
            except FileNotFoundError:
                again = _read(record)
                if again != raw:  # replaced or deleted meanwhile: a race, not damage
                    raw = again
                    continue
                problem = PayloadError("the entry's data file is missing")
            except PayloadError as exc:
                problem = exc
            else:
                if self._touch:
                    with contextlib.suppress(OSError):
                        now = time.time_ns()
                        os.utime(record, ns=(now, now))
                return value
            self.rejected(key, problem)
            return default
        return default

    def exists(self, key: Any) -> bool:
        """Whether a live entry is stored (its record verifies and its data file is there);
        the value is not loaded."""
        text = self._text(key)
        name = _name(text)
        raw = _read(self.directory / f"{name}.sig")
        if raw is None:
            return False
        try:
            meta = self._verified(raw, name, text)
        except PayloadError as exc:
            self.rejected(key, exc)
            return False
        if meta.expired(time.time()):
            self._claim(name)
            return False
        try:
            return (self.directory / meta.data).stat().st_size == meta.size
        except FileNotFoundError:
            return False

    def _verified(self, raw: bytes, name: str, text: str) -> _Meta:
        if len(raw) < _HEAD or raw[: len(_MAGIC)] != _MAGIC:
            raise PayloadError("not a joblib cache record (truncated or foreign)")
        body = raw[_HEAD:]
        if self._secret is not None and not verify(
            self._secret, _MAGIC + body, raw[len(_MAGIC) : _HEAD]
        ):
            raise PayloadError("entry record signature does not verify (tampered or foreign key)")
        meta = _decode(body, name)
        if meta.key != text:
            raise PayloadError("entry record belongs to another key")
        return meta

    def _load(self, meta: _Meta) -> Any:
        path = self.directory / meta.data
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size != meta.size:
                raise PayloadError(f"data file has {size} bytes, its record says {meta.size}")
            if self._secret is not None:
                mac = _file_mac(handle.fileno(), size, self._secret)
                if not hmac.compare_digest(mac, meta.mac):
                    raise PayloadError("data file signature does not verify (tampered or damaged)")
                handle.seek(0)
            try:
                if self.config.mmap_mode is not None and not meta.compressed:
                    # Data files are never rewritten in place (a new write gets a new name),
                    # so the file mapped by path is the one just verified.
                    return joblib.load(path, mmap_mode=self.config.mmap_mode)
                return joblib.load(handle)
            except OSError:
                raise
            except Exception as exc:
                raise PayloadError(f"data file does not load: {type(exc).__name__}: {exc}") from exc

    # --- writing ------------------------------------------------------------------------

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        ttl = self._check_ttl(ttl)
        text = self._text(key)
        name = _name(text)
        data = self.directory / f"{name}.{secrets.token_hex(8)}.joblib"
        with atomic_write(data) as temp, open(temp, "w+b") as raw:
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
            mac = b"" if self._secret is None else _file_mac(raw.fileno(), size, self._secret)
        record = self.directory / f"{name}.sig"
        try:
            stored_ns = time.time_ns()
            stored = stored_ns / 1e9
            fields = {
                "k": text,
                "d": data.name,
                "n": size,
                "h": mac.hex(),
                "t": stored,
                "e": None if ttl is None else stored + ttl,
                "z": bool(self._compress),
            }
            body = json.dumps(fields, separators=(",", ":")).encode()
            signature = (
                bytes(_MAC_SIZE) if self._secret is None else sign(self._secret, _MAGIC + body)
            )
            blob = _MAGIC + signature + body
            old = _read(record)
            with atomic_write(record) as temp:
                temp.write_bytes(blob)
                os.utime(temp, ns=(stored_ns, stored_ns))  # exact: the LRU/FIFO order
        except BaseException:
            _unlink(data)  # never committed: no reader can have it
            raise
        old_meta = _peek(old, name)
        if old_meta is not None:
            _unlink(self.directory / old_meta.data)
        grown = size + len(blob)
        if old is not None:
            grown -= len(old) + (old_meta.size if old_meta is not None else 0)
        self._after_write(name, 0 if old is not None else 1, grown)

    # --- removing -----------------------------------------------------------------------

    def delete(self, key: Any) -> bool:
        name = _name(self._text(key))
        raw = self._claim(name)
        if raw is None:
            return False
        meta = _peek(raw, name)
        return meta is None or not meta.expired(time.time())

    def _claim(self, name: str) -> bytes | None:
        """Remove one entry and its data file; returns its record, None if there was none.

        The record is first renamed to a private name: of several processes removing or
        replacing the same entry, exactly one gets each version, and deletes its data file.
        """
        record = self.directory / f"{name}.sig"
        claimed = self.directory / f".{name}.sig.{secrets.token_hex(4)}.tmp"
        try:
            os.replace(record, claimed)
        except FileNotFoundError:
            return None
        try:
            raw = _read(claimed) or b""
        finally:
            _unlink(claimed)
        meta = _peek(raw, name)
        if meta is not None:
            _unlink(self.directory / meta.data)
        return raw

    def clear(self) -> None:
        """Remove every entry of this engine (files of other engines in the folder stay)."""
        listing = self._scan()
        for name in listing.records:
            self._claim(name)
        self._remove_orphans(self._scan(), time.time())
        with self._lock:
            self._count = self._bytes = 0

    def prune(self) -> int:
        """Remove temporary files left by killed writers (older than `TEMP_MAX_AGE`), data
        files never committed, and expired entries, then enforce the size limit. Returns
        the number of files and entries removed."""
        return self._account(self._scan(), prune=True, expire=True)

    def __len__(self) -> int:
        listing = self._scan()
        if self.config.ttl is None:
            return len(listing.records)
        return len(listing.records) - self._expire(listing, time.time())

    def close(self) -> None:
        """Nothing is held open between operations."""

    # --- bounds -------------------------------------------------------------------------

    def _text(self, key: Any) -> str:
        return key if isinstance(key, str) else stable_digest("twat_cache.joblib", (key,))

    def _after_write(self, name: str, added: int, grown: int) -> None:
        with self._lock:
            self._count += added
            self._bytes += grown
            self._writes += 1
            used = self._bytes if self._by_bytes else self._count
            over = self._bound is not None and used > self._bound
            stale = self._writes >= self.RESCAN_WRITES or (
                time.monotonic() - self._scanned_at > self.RESCAN_SECONDS
            )
        due = over or (stale and (self._bound is not None or self.config.ttl is not None))
        # Over the bound, wait for a scan in another thread; merely due, one scan is enough.
        if due and self._scanning.acquire(blocking=over):
            try:
                self._account(self._scan(), keep=name)
            finally:
                self._scanning.release()

    def _scan(self) -> _Listing:
        listing = _Listing({}, {}, [])
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    if match := _RECORD.fullmatch(entry.name):
                        listing.records[match.group(1)] = entry.stat(follow_symlinks=False)
                    elif match := _DATA.fullmatch(entry.name):
                        stat = entry.stat(follow_symlinks=False)
                        listing.data.setdefault(match.group(1), []).append((entry.name, stat))
                    elif _TEMP.fullmatch(entry.name):
                        listing.temps.append((entry.name, entry.stat(follow_symlinks=False)))
                except FileNotFoundError:  # removed since it was listed
                    continue
        return listing

    def _remove_orphans(self, listing: _Listing, now: float) -> int:
        removed = 0
        for file_name, stat in listing.temps:
            if now - stat.st_mtime > self.TEMP_MAX_AGE:
                removed += _unlink(self.directory / file_name)
        for name, files in list(listing.data.items()):
            old = [f for f, stat in files if now - stat.st_mtime > self.COMMIT_GRACE]
            if not old:
                continue
            if name in listing.records:
                if len(files) == 1:  # the committed entry's own file (the usual case)
                    continue
                meta = _peek(_read(self.directory / f"{name}.sig"), name)
                old = [f for f in old if meta is None or f != meta.data]
            for file_name in old:
                removed += _unlink(self.directory / file_name)
            listing.data[name] = [(f, s) for f, s in files if f not in old]
        return removed

    def _expire(self, listing: _Listing, now: float) -> int:
        """Drop expired entries from the directory and from `listing`; count them."""
        expired = 0
        for name in list(listing.records):
            meta = _peek(_read(self.directory / f"{name}.sig"), name)
            if meta is not None and meta.expired(now):
                self._claim(name)
                del listing.records[name]
                listing.data.pop(name, None)
                expired += 1
        return expired

    def _account(
        self, listing: _Listing, *, prune: bool = False, expire: bool = False, keep: str = ""
    ) -> int:
        """Refresh the size accounting from `listing` and evict down to the bound; the entry
        `keep` (just written) goes last, whatever the policy."""
        now = time.time()
        removed = self._remove_orphans(listing, now) if prune else 0
        if expire or self.config.ttl is not None:
            removed += self._expire(listing, now)
        weights = {
            name: stat.st_size + sum(s.st_size for _, s in listing.data.get(name, ()))
            for name, stat in listing.records.items()
        }
        loose = sum(s.st_size for n, f in listing.data.items() if n not in weights for _, s in f)
        count, total = len(weights), sum(weights.values()) + loose
        bound = self._bound
        if bound is not None and (total if self._by_bytes else count) > bound:
            order = self._eviction_order(listing)
            if keep in weights:
                order.remove(keep)
                order.append(keep)
            for name in order:
                if (total if self._by_bytes else count) <= bound:
                    break
                self._claim(name)
                count -= 1
                total -= weights[name]
                removed += 1
        with self._lock:
            self._count, self._bytes, self._writes = count, total, 0
            self._scanned_at = time.monotonic()
        return removed

    def _eviction_order(self, listing: _Listing) -> list[str]:
        names = list(listing.records)
        policy = self.config.policy
        if policy == "rr":
            random.shuffle(names)
            return names
        if policy == "ttl":

            def expiry(name: str) -> tuple[float, int]:
                meta = _peek(_read(self.directory / f"{name}.sig"), name)
                expires = meta.expires if meta is not None and meta.expires is not None else 0.0
                return (expires or float("inf"), listing.records[name].st_mtime_ns)

            return sorted(names, key=expiry)
        # lru: the record's mtime is its last use; fifo: it is never touched after the write
        return sorted(names, key=lambda name: listing.records[name].st_mtime_ns)
