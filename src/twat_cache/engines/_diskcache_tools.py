"""DiskCacheEngine's tools: opening its database (the probe, moving a malformed one aside,
the stores shared in a process) and its folder tools (`stats`, `prune`)."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import diskcache

from twat_cache.exceptions import EngineError
from twat_cache.paths import refuse_links

__all__ = [
    "SHARED",
    "Locked",
    "Query",
    "Shared",
    "is_busy",
    "is_corrupt",
    "is_value_file",
    "live_entries",
    "move_aside",
    "probe",
    "remove_orphans",
]

_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
#: sqlite's primary result codes for a malformed file (SQLITE_CORRUPT, SQLITE_NOTADB).
_CORRUPT_CODES: Final = frozenset({11, 26})
#: sqlite's primary result codes for a lock held past the busy timeout (SQLITE_BUSY, _LOCKED).
_BUSY_CODES: Final = frozenset({5, 6})


# --- opening the database ------------------------------------------------------------------


class Shared:
    """One open diskcache store, shared by every engine of this process on the same
    database with the same settings (the closures of one factory share a folder): each
    connection costs two file descriptors per thread, so 500 engines with their own would
    exhaust a limit of 1024."""

    __slots__ = ("__weakref__", "cache", "identity")

    def __init__(self, cache: diskcache.Cache, identity: tuple[int, int] | None) -> None:
        self.cache = cache
        self.identity = identity


#: The open stores by directory and settings; an entry lives while an engine uses it.
SHARED: weakref.WeakValueDictionary[tuple[Any, ...], Shared] = weakref.WeakValueDictionary()


class Locked(EngineError):
    """The database stayed locked by another connection while it was opened."""


def is_corrupt(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES
    message = str(exc)
    return "malformed" in message or "not a database" in message


def is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    message = str(exc)
    return "locked" in message or "busy" in message


def probe(database: Path, timeout: float) -> None:
    """Create the database file 0600 if missing, and check it can be written within
    `timeout` (`Locked`) and is an SQLite database (`sqlite3.DatabaseError`)."""
    # SQLite opens the database and its journals by name, following links.
    refuse_links(*(f"{database}{part}" for part in ("", "-wal", "-shm", "-journal")))
    with contextlib.suppress(FileExistsError):
        # Created 0600 before SQLite sees it: its -wal and -shm files copy the mode.
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600))
    # diskcache retries a locked database for 60 s while it opens: bound the wait here
    # first, and find a malformed file before diskcache trips over it.
    connection = sqlite3.connect(database, timeout=timeout, isolation_level=None)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if is_corrupt(exc):
            raise
        if is_busy(exc):
            raise Locked(
                f"the cache database {database} stayed locked for {timeout} s ({exc})"
            ) from exc
        raise EngineError(f"the cache database {database} cannot be written ({exc})") from exc
    finally:
        connection.close()


def move_aside(directory: Path, database: Path, timeout: float) -> str | None:
    """Move a malformed database (and its WAL) aside; returns the suffix of the names it
    was given, None when another process rebuilt it meanwhile (a healthy one stays)."""
    with _directory_lock(directory):
        try:
            check = sqlite3.connect(database, timeout=timeout)
            try:
                # A full check, on this rare path only: the opening probe reads the header
                # and schema, a damaged page elsewhere shows up here.
                if check.execute("PRAGMA quick_check").fetchall() == [("ok",)]:
                    return None
            finally:
                check.close()
        except sqlite3.DatabaseError as again:
            if not is_corrupt(again):
                raise
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
        suffix = f".corrupt-{stamp}.{int(now * 1e6) % 1_000_000:06d}"
        # The WAL belongs to the old file: replayed into a new database it would corrupt it.
        for part in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{database}{part}", f"{database}{part}{suffix}")
    return suffix


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Serialize database recovery between processes (flock on the directory itself)."""
    if sys.platform == "win32":  # no flock: recovery races are left to os.replace
        yield
        return
    import fcntl

    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- folder tools --------------------------------------------------------------------------

#: Runs one statement on the engine's database connection and returns every row.
Query = Callable[[str, tuple[Any, ...]], list[Any]]

#: A value file as diskcache's `Disk.filename` names it: ab/cd/<28 hex>.val.
_VALUE_FILE: Final = re.compile(r"[0-9a-f]{2}[/\\][0-9a-f]{2}[/\\][0-9a-f]{28}\.val")
#: Live entries and the oldest and newest store times, in one pass over the Cache table. A
#: NULL expiry never expires; a tampered (text) one sorts above every number, as in
#: `DiskCacheEngine._select`.
_LIVE: Final = (
    "SELECT count(*), min(store_time), max(store_time) FROM Cache "
    "WHERE expire_time IS NULL OR expire_time > ?"
)


def is_value_file(filename: Any) -> bool:
    return isinstance(filename, str) and _VALUE_FILE.fullmatch(filename) is not None


def live_entries(query: Query) -> tuple[int, float | None, float | None]:
    """Live entries (expired ones not counted) and the store times of the oldest and newest
    of them, from one query on diskcache's Cache table (its `store_time` column)."""
    ((count, oldest, newest),) = query(_LIVE, (time.time(),))
    return count, _time(oldest), _time(newest)


def remove_orphans(directory: Path, query: Query, grace: float) -> int:
    """Remove the value files under `directory` no row references that are older than
    `grace` seconds (left by writers killed between writing a file and committing its row),
    and the directories they leave empty. Returns the files removed."""
    # The files are listed before the rows are read: a file listed and not yet
    # referenced belongs to a writer that has not committed, and those commit within
    # their busy timeout of writing it, far inside the grace.
    candidates = [(name, info) for name, info in _files(directory) if is_value_file(name)]
    if not candidates:
        return 0
    rows = query("SELECT filename FROM Cache WHERE filename IS NOT NULL", ())
    referenced = {os.path.normpath(filename) for (filename,) in rows if type(filename) is str}
    removed, now = 0, time.time()
    for name, info in candidates:
        if name in referenced or now - info.st_mtime <= grace:
            continue
        path = directory / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
        for parent in (path.parent, path.parent.parent):  # ab/cd/, then ab/, if empty
            with contextlib.suppress(OSError):
                parent.rmdir()
    return removed


def _files(directory: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file under `directory`: its path relative to it, and its lstat.
    Symbolic links are neither followed nor counted."""
    top_length = len(str(directory)) + 1
    for top, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(top, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:  # removed since it was listed
                continue
            if stat.S_ISREG(info.st_mode):
                yield path[top_length:], info


def _time(value: Any) -> float | None:
    """A store time read from the database (None for an empty table or a tampered cell)."""
    return float(value) if type(value) in (int, float) else None
