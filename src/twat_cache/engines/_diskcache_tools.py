"""DiskCacheEngine's folder tools (`stats`, `prune`): live entries, and the orphan sweep."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

__all__ = ["Query", "is_value_file", "live_entries", "remove_orphans"]

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
