"""Where the klepto engine keeps entries: klepto's dir archive or SQLite table archive,
with the metadata scans (size, access time, expiry) its bounds need."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import klepto.archives

from twat_cache.paths import (
    NotFollowedError,
    beneath,
    disk_usage,
    make_dirs_beneath,
    open_file,
    read_file,
    refuse_links,
    set_times,
)
from twat_cache.serializers import PayloadError

__all__ = ["DirStore", "Entry", "SqlStore"]

#: What a forked child inherited of SqlStore's: its parent's SQLite connections, never
#: used, closed or collected in the child (closing one may roll back what the parent is
#: writing, through the rollback journal both see).
_INHERITED: list[Any] = []


NAME = re.compile(r"[0-9a-f]{40}")  # entry names: a BLAKE2b-160 of the key, in hex
# Each stored record is the JSON list [expiry, payload]: the expiry leads in the clear for
# cheap scans (len, eviction); the signed copy inside the payload is the one `get` obeys.
_EXPIRY_HINT = re.compile(rb'\[(null|[-+0-9.eE]+), "')
_ENTRY_PREFIX, _TEMP_PREFIX, _FILE = "K_", "K_.I_", "output.json"  # klepto's dir layout


@dataclass(frozen=True)
class Entry:
    name: str
    time: float  # last access (lru) or store time (other policies)
    size: int  # bytes it takes on disk (dir archive: blocks), or its length (SQL archive)
    expires: float | None
    stored: float | None = None  # when the entry was written, if known


class DirStore:
    """One directory per entry via klepto's `dir_archive`, in its JSON mode: klepto then
    only ever `json.load`s what it reads, so a planted file can never run code.

    An entry directory's mtime is the entry's store time: klepto writes the entry in a
    fresh temporary directory and renames it into place, nothing changes the directory
    afterwards, and `write` pins it to the clock (the kernel's file clock is coarser). The
    entry file's own mtime is its last use (lru) or store time.

    No link inside the archive is followed. klepto opens entries by name (following links,
    and its removal of an entry whose directory is a link empties the link's target), so
    entries are read here, and a link (or a stray file) in place of an entry directory is
    unlinked before klepto writes or removes that entry: a miss, never the target's data.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        refuse_links(root)
        self.archive = klepto.archives.dir_archive(
            str(root), cached=False, serialized=True, protocol="json", permissions=0o700
        )

    def _entry(self, name: str) -> str:
        return os.path.join(self.root, _ENTRY_PREFIX + name)

    def _file(self, name: str) -> str:
        """The entry's file: `FileNotFoundError` if its directory is missing,
        `NotFollowedError` if a link (or a file) is there instead."""
        return beneath(self.root, f"{_ENTRY_PREFIX}{name}/{_FILE}")

    def _drop_foreign(self, name: str) -> bool:
        """Unlink a link or file in place of the entry's directory (never its target)."""
        entry = self._entry(name)
        try:
            if stat.S_ISDIR(os.lstat(entry).st_mode):
                return False
            os.unlink(entry)
        except FileNotFoundError:
            return False
        return True

    def has(self, name: str) -> bool:
        """Whether something is stored under `name` (a planted link counts: `remove` it)."""
        entry = self._entry(name)
        try:
            if not stat.S_ISDIR(os.lstat(entry).st_mode):
                return True
        except FileNotFoundError:
            return False
        return os.path.lexists(os.path.join(entry, _FILE))

    def read(self, name: str) -> Any:
        """The stored record; KeyError when absent, PayloadError when unreadable. Read here
        as klepto's JSON mode reads it (`json.load` of the entry's file), without following
        links, and telling a missing entry from a damaged one (klepto raises KeyError)."""
        try:
            text = read_file(self._file(name))
        except FileNotFoundError:
            raise KeyError(name) from None
        except NotFollowedError as exc:
            raise PayloadError(f"the stored entry {exc.filename}: {exc.strerror}") from None
        try:
            return json.loads(text)
        except ValueError:
            raise PayloadError("the stored entry is not valid JSON (corrupt)") from None

    def write(self, name: str, record: list[Any]) -> int:
        """Store `record` as entry `name`; returns the bytes it takes on disk (blocks)."""
        expected = len(json.dumps(record))
        start = time.time() - 0.05  # file timestamps come from a coarser clock
        make_dirs_beneath(self.root.parent, self.root.name)  # a concurrent clear may prune it
        self._drop_foreign(name)
        self.archive[name] = record
        # klepto swallows OSError while writing (full disk, read-only dir) and may even move
        # a half-written file into place: check that our entry landed.
        try:
            fd = open_file(self._file(name))
        except (FileNotFoundError, NotFollowedError):
            pass
        else:
            try:
                info = os.fstat(fd)
                landed = info.st_size == expected and info.st_ctime >= start
                if landed:
                    os.chmod(fd if os.chmod in os.supports_fd else self._file(name), 0o600)
            finally:
                os.close(fd)
            if landed:  # klepto's files follow the umask: made private above
                self.touch(name, stored=True)  # precise times: the kernel's file clock is coarse
                try:
                    return disk_usage(info) + disk_usage(os.lstat(self._entry(name)))
                except FileNotFoundError:  # removed meanwhile (a concurrent clear)
                    return 0
        problem = self._write_problem(expected)
        try:
            self.read(name)
        except KeyError:
            if problem:  # else a concurrent clear or delete won the race: a miss, no fault
                raise problem from None
            return 0
        except PayloadError:
            self.remove(name)
            raise problem or OSError(errno.EIO, "klepto wrote a partial entry") from None
        if problem:  # what is there is an older entry our write failed to replace
            raise problem
        return 0

    def _write_problem(self, size: int) -> OSError | None:
        if not os.access(self.root, os.W_OK):
            return OSError(errno.EACCES, f"the klepto archive {self.root} is not writable")
        space = os.statvfs(self.root)
        if space.f_bavail * space.f_frsize < size:
            return OSError(errno.ENOSPC, f"no space left for the klepto archive {self.root}")
        return None

    def remove(self, name: str) -> None:
        # Not klepto's removal: it removes "K_<name>/", a path that follows a link.
        # shutil's refuses to remove through a link.
        if not self._drop_foreign(name):
            shutil.rmtree(self._entry(name), ignore_errors=True)

    def touch(self, name: str, *, stored: bool = False) -> None:
        """Record a use of the entry now (its file's mtime); with `stored`, its store time
        too (its directory's mtime). Links are changed, never their targets."""
        now = time.time_ns()
        with contextlib.suppress(FileNotFoundError, NotFollowedError):
            path = self._file(name)
            set_times(path, (now, now))
            if stored:
                set_times(os.path.dirname(path), (now, now))

    def _listing(self) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.root) as entries:
                return list(entries)
        except FileNotFoundError:
            return []

    def stamp(self, name: str) -> float | None:
        """The entry's `Entry.time` as it is now (its file's mtime); None if it is gone."""
        try:
            return os.lstat(self._file(name)).st_mtime
        except (FileNotFoundError, NotFollowedError):
            return None

    def count(self) -> int:
        names = (e.name for e in self._listing() if e.name.startswith(_ENTRY_PREFIX))
        return sum(1 for name in names if NAME.fullmatch(name[2:]))

    def expiry(self, name: str) -> float | None:
        try:
            with open(open_file(self._file(name)), "rb") as handle:
                head = handle.read(32)
        except (FileNotFoundError, NotFollowedError):
            return None
        match = _EXPIRY_HINT.match(head)
        try:
            return None if match is None or match[1] == b"null" else float(match[1])
        except ValueError:  # a damaged hint: `get` reads the signed expiry anyway
            return None

    def scan(self, now: float, orphan_age: float | None = None) -> tuple[list[Entry], int]:
        """The entries; with `orphan_age`, also remove what killed writers left untouched
        for that many seconds (klepto's temporary directories, entry directories without
        their file), and count those removed. Without it nothing is written."""
        found, removed = [], 0
        for entry in self._listing():
            name = entry.name[2:]
            if entry.name.startswith(_ENTRY_PREFIX) and NAME.fullmatch(name):
                if not entry.is_dir(follow_symlinks=False):  # planted: not an entry
                    if orphan_age is not None and self._drop_foreign(name):
                        removed += 1
                    continue
                try:
                    info = os.lstat(os.path.join(entry.path, _FILE))
                    directory = entry.stat(follow_symlinks=False)
                    if not stat.S_ISREG(info.st_mode):
                        raise NotFollowedError(entry.path, "not a regular file")
                except (FileNotFoundError, NotADirectoryError, NotFollowedError):
                    # Being replaced, or left by a killed writer.
                    removed += self._drop_orphan(entry.path, now, orphan_age)
                    continue
                # What the entry takes on disk: its file's blocks and its directory's.
                size = disk_usage(info) + disk_usage(directory)
                expires = self.expiry(name)
                found.append(Entry(name, info.st_mtime, size, expires, directory.st_mtime))
            elif entry.name.startswith(_TEMP_PREFIX):
                removed += self._drop_orphan(entry.path, now, orphan_age)
        return found, removed

    @staticmethod
    def _drop_orphan(path: str, now: float, age: float | None) -> int:
        if age is None:
            return 0
        try:
            # The directory's mtime is when klepto created the file in it: a live writer's
            # is seconds old (it writes one JSON file, then renames the directory).
            if os.stat(path, follow_symlinks=False).st_mtime >= now - age:
                return 0
        except FileNotFoundError:
            return 0
        # A writer renaming a new entry onto an empty entry directory between the check and
        # this removal loses that entry (a miss, never a wrong value): klepto first removes
        # the old directory, so the window is its rename.
        shutil.rmtree(path, ignore_errors=True)
        return 0 if os.path.lexists(path) else 1

    def clear(self) -> None:
        for entry in self._listing():
            if entry.name.startswith(_ENTRY_PREFIX) and not entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)  # klepto leaves what is not a directory
        self.archive.clear()

    def close(self) -> None:
        """Nothing to release: the archive opens files per operation."""

    def reopen(self) -> None:
        """Make the archive's directory again (0700) after it was deleted."""
        make_dirs_beneath(self.root.parent, self.root.name)

    def after_fork(self) -> None:
        """Nothing is held open between operations."""


class SqlStore:
    """Two tables of one SQLite file via klepto's `sqltable_archive`: `data` holds the
    records, `meta` small rows [expiry, time, size, stored] that scans read instead of
    payloads (rows written before the store time was kept have three: their time is then
    the best store time known).

    Without SQLAlchemy klepto stores values as given (our JSON text); with it we ask for
    `serialized=False` (a Text column): either way klepto never unpickles what it reads.
    SQLite connections are per thread (klepto opens them with check_same_thread). Access
    times (lru) are kept in memory and written in one go before a scan, on close, or a
    second later: a hit costs no commit, and other processes see them at most 1 s late.
    """

    def __init__(self, path: Path) -> None:
        if any(c in str(path) for c in "?#%"):
            raise ValueError(f"klepto cannot open an SQLite path containing ?, # or %: {path}")
        self.path = path
        refuse_links(path, f"{path}-journal")  # SQLite opens them by name
        self.url = f"sqlite:///{path}"
        self._local = threading.local()
        self._touched: dict[str, float] = {}
        self._touched_at = 0.0
        self._tables()  # fail now, not on first use, if the database cannot be opened
        os.chmod(path, 0o600)  # SQLite creates it (and its journals) by the umask

    def _table(self, table: str) -> Any:
        return klepto.archives.sqltable_archive(
            f"{self.url}?table=twat_{table}", cached=False, serialized=False
        )

    def _tables(self) -> tuple[Any, Any]:
        tables: tuple[Any, Any] | None = getattr(self._local, "tables", None)
        if tables is None:
            tables = self._local.tables = (self._table("data"), self._table("meta"))
        return tables

    @staticmethod
    def _replace(table: Any, name: str, value: str) -> None:
        for attempt in range(3):
            table.pop(name, None)  # klepto's stdlib-sqlite table appends, never updates
            try:
                table[name] = value
                return
            except Exception as exc:  # SQLAlchemy's table checks then inserts: racy
                if attempt == 2 or type(exc).__name__ != "IntegrityError":
                    raise

    def has(self, name: str) -> bool:
        return name in self._tables()[0]

    def read(self, name: str) -> Any:
        text = self._tables()[0][name]
        if not isinstance(text, str):
            raise PayloadError(f"the stored entry is a {type(text).__name__}, not a record")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise PayloadError(f"the stored entry is not valid JSON: {exc}") from None

    def write(self, name: str, record: list[Any]) -> int:
        """Store `record` as entry `name`; returns its length (what the bound counts)."""
        data, meta = self._tables()
        text = json.dumps(record)
        self._replace(data, name, text)  # data first: a crash in between leaves data only,
        now = time.time()
        self._replace(meta, name, json.dumps([record[0], now, len(text), now]))  # repaired
        return len(text)

    def remove(self, name: str) -> None:
        data, meta = self._tables()
        data.pop(name, None)  # data first: a crash in between leaves a meta row, dropped
        meta.pop(name, None)

    def touch(self, name: str) -> None:
        now = time.time()
        if not self._touched:
            self._touched_at = now
        self._touched[name] = now
        if now - self._touched_at > 1.0:
            self.flush()

    def flush(self) -> None:
        """Write the access times kept since the last flush."""
        touched, self._touched = self._touched, {}
        meta = self._tables()[1]
        for name, accessed in touched.items():
            row = self._meta(meta.get(name))
            if row is not None:
                self._replace(meta, name, json.dumps([row[0], accessed, *row[2:]]))

    @staticmethod
    def _meta(text: Any) -> list[Any] | None:
        try:
            row = json.loads(text)
        except (TypeError, ValueError):
            return None
        if not (isinstance(row, list) and len(row) in (3, 4)):
            return None
        numbers = all(isinstance(v, int | float) for v in row[1:])
        return row if numbers and (row[0] is None or isinstance(row[0], int | float)) else None

    def stamp(self, name: str) -> float | None:
        """The entry's `Entry.time` as it is now (its meta row's; access times not yet
        flushed are not in it); None if it is gone."""
        row = self._meta(self._tables()[1].get(name))
        return None if row is None else float(row[1])

    def count(self) -> int:
        return len(set(self._tables()[1]))

    def expiry(self, name: str) -> float | None:
        row = self._meta(self._tables()[1].get(name))
        return None if row is None else float_or_none(row[0])

    def scan(self, now: float, orphan_age: float | None = None) -> tuple[list[Entry], int]:
        """The entries; with `orphan_age` (any), also repair what killed writers left (a
        data row without its meta row is adopted as new, a meta row without data dropped)
        and count the rows dropped. Without it nothing is written but pending access times.
        A killed writer's transaction SQLite rolls back itself (and `settle` has it drop a
        journal it ignores): its files are never removed here."""
        self.flush()
        data, meta = self._tables()
        # One SELECT of the small meta rows (klepto's `get` is a query without an index).
        rows = {name: self._meta(text) for name, text in meta.__asdict__().items()}
        found, repair = [], orphan_age is not None
        for name in set(data):
            row = rows.pop(name, None)
            stored = None
            if row is None:  # a writer died between its two rows: adopt the entry as new
                try:
                    record = self.read(name)
                except (KeyError, PayloadError):
                    continue
                row = [record[0] if isinstance(record, list) else None, now, len(str(record))]
                if repair:
                    stored = now
                    self._replace(meta, name, json.dumps([*row, now]))
            else:
                stored = float(row[3] if len(row) == 4 else row[1])
            found.append(Entry(name, float(row[1]), int(row[2]), float_or_none(row[0]), stored))
        if repair:
            for name in rows:  # rows whose data is gone (a delete died half-way)
                meta.pop(name, None)
        return found, len(rows) if repair else 0

    def settle(self) -> int:
        """Have SQLite remove a rollback journal a killed writer left that it will not roll
        back (one whose header the writer never wrote: SQLite ignores those until its next
        write). One write transaction reuses and deletes it. Returns 1 when it went."""
        journal = self.path.with_name(self.path.name + "-journal")
        if not journal.exists():
            return 0
        connection = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
        try:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            connection.execute("BEGIN IMMEDIATE")  # waits for a live writer's journal to go
            connection.execute(f"PRAGMA user_version = {int(version)}")  # rewrites page 1
            connection.execute("COMMIT")
        except sqlite3.OperationalError:  # busy: a live writer's journal, gone with its commit
            return 0
        finally:
            connection.close()
        return 0 if journal.exists() else 1

    def clear(self) -> None:
        self._touched = {}
        for table in self._tables():
            table.clear()

    def close(self) -> None:
        if self._touched:
            self.flush()
        self._local = threading.local()  # drops every thread's connections

    def reopen(self) -> None:
        """Open the database again after it was deleted (with its folder, say): the open
        connections write to the deleted file."""
        self._touched = {}
        self._local = threading.local()
        self._tables()
        os.chmod(self.path, 0o600)

    def after_fork(self) -> None:
        """In a forked child: the parent's connections are set aside unused; this thread
        opens its own on next use."""
        _INHERITED.append(self._local)
        self._local = threading.local()
        self._touched = {}


def float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value else None
