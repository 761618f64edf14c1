"""DiskCacheEngine's `diskcache.Disk`: how signed payload bytes are kept, in the database
row or in a private value file, and read back without ever unpickling anything."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from typing import Any, Final

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from twat_cache.engines._diskcache_tools import is_value_file
from twat_cache.paths import NotFollowedError, beneath, make_dirs_beneath, read_file
from twat_cache.serializers import PayloadError

__all__ = ["FOREIGN", "PayloadDisk", "Vanished", "write_all"]

_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0)


class Vanished:
    """A row whose value file is missing: removed by a concurrent writer, or deleted."""

    __slots__ = ("filename",)

    def __init__(self, filename: str) -> None:
        self.filename = filename


#: A row this engine did not write (a diskcache pickle, text, a NULL or a foreign path).
FOREIGN: Final = object()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class PayloadDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache ships no type information
    """diskcache's Disk for signed payloads: values are bytes stored raw (in the database
    below `min_file_size`, else in a private file), keys are str, and nothing is ever
    unpickled: a row holding a pickle is reported as foreign, never loaded."""

    def __init__(self, directory: str, **settings: Any) -> None:
        super().__init__(directory, **settings)
        self._written = threading.local()

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"keys are str here, not {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise PayloadError("a pickled key was found in the cache database: not loaded")
        return key

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, Any, Any]:
        if type(value) is not bytes or read:
            raise TypeError("only payload bytes are stored")
        if len(value) < self.min_file_size:
            return 0, MODE_RAW, None, sqlite3.Binary(value)
        filename, full_path = self.filename(key, value)
        self._write_private(filename, full_path, value)
        self._written.filename = filename
        return len(value), MODE_BINARY, filename, None

    def _write_private(self, filename: str, full_path: str, data: bytes) -> None:
        # A fresh random name, referenced by the database only once the row commits: a
        # reader never sees this file half-written, and a killed writer leaves an orphan,
        # never a wrong entry. A failed write removes what it wrote (a full disk). A link
        # planted in place of a value directory is refused, never written through.
        for attempt in range(10):
            try:
                make_dirs_beneath(self._directory, os.path.dirname(filename))
                fd = os.open(full_path, _CREATE, 0o600)
                break
            except FileNotFoundError:
                # A concurrent remove() pruned an empty directory between the two calls.
                if attempt == 9:
                    raise
        try:
            write_all(fd, data)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(full_path)
            raise
        os.close(fd)

    def after_fork(self) -> None:
        """In a forked child: forget what the parent's threads were writing."""
        self._written = threading.local()

    def discard_written(self) -> None:
        """Remove the file this thread's last `store` wrote: its row never committed."""
        filename = getattr(self._written, "filename", None)
        self._written.filename = None
        if filename is not None:
            self.remove(filename)

    def committed(self) -> None:
        self._written.filename = None

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode == MODE_RAW and type(value) is bytes:
            return value
        if mode == MODE_BINARY and not read and is_value_file(filename):
            try:
                return read_file(beneath(self._directory, filename))
            except FileNotFoundError:
                return Vanished(filename)
            except NotFollowedError as exc:
                return PayloadError(f"the value file {filename}: {exc.strerror}")
        return FOREIGN

    def remove(self, file_path: Any) -> None:
        # A tampered row, or a link planted in place of a value directory, must not make a
        # delete remove a file outside the cache (a link in place of the file itself is
        # removed, not followed).
        if not is_value_file(file_path):
            return
        try:
            beneath(self._directory, file_path)
        except OSError:  # gone already, or a link on the way
            return
        super().remove(file_path)
