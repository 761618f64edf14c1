"""No link inside a cache folder is followed.

A symbolic link planted where a disk engine keeps its files (the diskcache database and its
journals, value files and value directories, joblib records and data files, klepto's
archive, entry directories and entry files, the SQLite archive, the manifests) is refused
or replaced: nothing outside the cache root is read, written or removed through it, and
the call is recomputed. Most links point to a copy of a *valid* entry of the same cache,
outside the root: an engine that followed one would serve it (a hit, no recompute).

Every case checks the target is unchanged byte for byte (content and mtime; for a
directory, its listing and files) and that the cached function is recomputed and returns
the right value. `paths` holds the helpers all of it rests on.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from twat_cache import CacheConfig, bcache, fcache
from twat_cache.engines import _joblib_files as joblib_files
from twat_cache.engines.base import PersistentEngine
from twat_cache.engines.diskcache import DiskCacheEngine
from twat_cache.engines.joblib import JoblibEngine
from twat_cache.exceptions import (
    CacheFaultWarning,
    CacheWarning,
    ConfigurationError,
    SecurityWarning,
)
from twat_cache.paths import (
    NotFollowedError,
    beneath,
    make_dirs_beneath,
    open_file,
    read_file,
    refuse_links,
    set_times,
)

pytest.importorskip("klepto")
from twat_cache.engines.klepto import KleptoEngine  # after the importorskip

pytestmark = pytest.mark.skipif(
    not hasattr(os, "O_NOFOLLOW") or not hasattr(os, "symlink"),
    reason="needs symbolic links and O_NOFOLLOW (POSIX)",
)

LARGE = 100_000  # bytes: past diskcache's 32 KiB, a value gets a file of its own
OLD_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09: an mtime no write can set by accident


def large(i: int) -> bytes:
    return bytes([i % 256]) * LARGE


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh private cache root (TWAT_CACHE_DIR)."""
    path = tmp_path / "root"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("TWAT_CACHE_DIR", str(path))
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the root: where planted links point."""
    path = tmp_path / "outside"
    path.mkdir(mode=0o700)
    (path / "decoy").write_bytes(b"not a cache file\n")
    return path


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    """Engines (or cached functions' engines) to close at teardown."""
    engines: list[Any] = []
    yield engines
    for engine in reversed(engines):
        engine.close()


class Counted:
    """A function to cache, counting its calls (`calls` lists the arguments)."""

    def __init__(self, make: Callable[[int], Any] = large) -> None:
        self.calls: list[int] = []
        self.make = make

        def compute(i: int) -> Any:
            self.calls.append(i)
            return self.make(i)

        self.compute = compute

    def cached(
        self,
        decorator: Callable[..., Any],
        folder: str,
        engine: str,
        opened: list[Any],
        **options: Any,
    ) -> Any:
        """The function cached by `decorator` on `folder` (a new engine: as another process
        would open it), checked to be served by `engine`."""
        f = decorator(folder_name=folder, cache_engine=engine, **options)(self.compute)
        opened.append(f.cache_engine)
        assert f.cache_engine.name == engine
        return f


def snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under `top`, links not followed: each file's size, mtime and digest,
    each directory and link by name."""
    found: dict[str, tuple[Any, ...]] = {}
    for directory, dirs, names in os.walk(top):
        for name in [*dirs, *names]:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            relative = os.path.relpath(path, top)
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ("dir",)
            else:
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                found[relative] = ("file", info.st_size, info.st_mtime_ns, digest)
    return found


def files_under(top: Path) -> set[Path]:
    """Regular files (and links) under `top`, links not followed."""
    found: set[Path] = set()
    for directory, _, names in os.walk(top):
        found.update(Path(directory, name) for name in names)
    return found


def new_files(top: Path, call: Callable[[], Any]) -> list[Path]:
    """The files `call` creates under `top`."""
    before = files_under(top)
    call()
    return sorted(files_under(top) - before)


def copy_out(path: Path, outside: Path) -> Path:
    """A copy of a file or directory of the cache, outside the root (times kept)."""
    target = outside / f"copy-of-{path.name}"
    if path.is_dir():
        shutil.copytree(path, target, symlinks=True)
    else:
        shutil.copy2(path, target)
    return target


def plant(link: Path, target: Path) -> None:
    """Replace `link` (a file, a directory or nothing) with a symbolic link to `target`."""
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    os.symlink(target, link, target_is_directory=target.is_dir())


@contextmanager
def expect_warnings(*categories: type[Warning]) -> Iterator[list[warnings.WarningMessage]]:
    """Record the warnings of the block; at its end, each of `categories` was warned and
    nothing else was (the suite turns unexpected warnings into errors)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    seen = {w.category for w in caught}
    assert seen == set(categories), [f"{w.category.__name__}: {w.message}" for w in caught]


def messages(caught: list[warnings.WarningMessage], category: type[Warning]) -> str:
    return "\n".join(str(w.message) for w in caught if issubclass(w.category, category))


def swap_in_links(pattern: str, directory: str, target: str) -> str:
    """Unpickled (by `Swapper`) in the middle of a hit: replace every file of `directory`
    matching `pattern` with a link to `target`, as an attacker racing the read would."""
    for path in Path(directory).glob(pattern):
        temporary = path.with_name(path.name + ".planting")
        os.symlink(target, temporary)
        os.replace(temporary, path)
    return "swapped"


class Swapper:
    """A value whose unpickling calls `swap_in_links`: the engine then touches (lru) an
    entry file that has just become a link."""

    def __init__(self, pattern: str, directory: Path, target: Path) -> None:
        self.args = (pattern, str(directory), str(target))

    def __reduce__(self) -> tuple[Any, ...]:
        return (swap_in_links, self.args)


def old_file(path: Path, content: bytes) -> Path:
    """Write `content` to `path` with an mtime in the past (so a touch would show)."""
    path.write_bytes(content)
    os.utime(path, ns=(OLD_NS, OLD_NS))
    return path


# --- 1. the paths helpers --------------------------------------------------------------------


def test_not_followed_error_is_an_eloop_os_error(tmp_path: Path) -> None:
    error = NotFollowedError(tmp_path / "x")
    assert isinstance(error, OSError)
    assert error.errno == errno.ELOOP
    assert error.filename == str(tmp_path / "x")
    assert "not followed" in str(error)


def test_beneath_checks_every_directory_on_the_way(tmp_path: Path, outside: Path) -> None:
    base = tmp_path / "base"
    (base / "real" / "deeper").mkdir(parents=True)
    (base / "file").write_bytes(b"x")
    os.symlink(outside, base / "link")
    assert beneath(base, "real/deeper/entry") == str(base / "real" / "deeper" / "entry")
    assert beneath(base, "entry") == str(base / "entry")
    with pytest.raises(NotFollowedError, match="a symbolic link") as linked:
        beneath(base, "link/entry")
    assert linked.value.filename == str(base / "link")
    with pytest.raises(NotFollowedError, match="a symbolic link"):
        beneath(base, "link/deeper/entry")
    with pytest.raises(NotFollowedError, match="not a directory") as not_dir:
        beneath(base, "file/entry")
    assert not_dir.value.filename == str(base / "file")
    with pytest.raises(FileNotFoundError):
        beneath(base, "missing/entry")
    with pytest.raises(ValueError, match="not a path inside"):
        beneath(base, "../escape")
    # The base itself may be a link (a cache folder a user moved to another disk).
    os.symlink(base / "real", tmp_path / "linked-base")
    assert beneath(tmp_path / "linked-base", "deeper/entry").endswith("deeper/entry")


def test_make_dirs_beneath_creates_private_dirs(tmp_path: Path, umask022: None) -> None:
    base = tmp_path / "base"
    base.mkdir()
    made = make_dirs_beneath(base, "ab/cd")
    assert made == str(base / "ab" / "cd")
    for path in (base / "ab", base / "ab" / "cd"):
        assert path.is_dir()
        assert not path.is_symlink()
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert make_dirs_beneath(base, "ab/cd") == made  # existing real directories are fine


@pytest.mark.parametrize("where", ["first", "last"])
def test_make_dirs_beneath_refuses_a_link(tmp_path: Path, outside: Path, where: str) -> None:
    base = tmp_path / "base"
    base.mkdir()
    before = snapshot(outside)
    if where == "first":  # a link on the way: nothing is created in its target
        os.symlink(outside, base / "ab")
    else:  # a link as the directory asked for
        (base / "ab").mkdir()
        os.symlink(outside, base / "ab" / "cd")
    with pytest.raises(NotFollowedError, match="a symbolic link"):
        make_dirs_beneath(base, "ab/cd")
    assert snapshot(outside) == before
    (base / "file").write_bytes(b"x")
    with pytest.raises(NotFollowedError, match="not a directory"):
        make_dirs_beneath(base, "file/cd")


def test_open_file_refuses_a_link(tmp_path: Path, outside: Path) -> None:
    target = old_file(outside / "target", b"secret\n")
    os.symlink(target, tmp_path / "link")
    before = snapshot(outside)
    for flags in (os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
        with pytest.raises(NotFollowedError, match="a symbolic link") as refused:
            open_file(tmp_path / "link", flags)
        assert refused.value.errno == errno.ELOOP
        assert refused.value.filename == str(tmp_path / "link")
    with pytest.raises(NotFollowedError):
        read_file(tmp_path / "link")
    assert snapshot(outside) == before


def test_open_file_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(NotFollowedError, match="not a regular file"):
        open_file(tmp_path / "dir")
    with pytest.raises(NotFollowedError, match="not a regular file"):
        read_file(tmp_path / "dir")


def test_open_file_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException | int] = []

    def attempt() -> None:
        try:
            outcome.append(open_file(fifo))
        except BaseException as exc:
            outcome.append(exc)
        try:
            read_file(fifo)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout=5)
    if thread.is_alive():  # blocked in open(): a writer end releases it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=5)
        pytest.fail("open_file blocked on a FIFO")
    assert len(outcome) == 2, outcome
    for result in outcome:
        assert isinstance(result, NotFollowedError), result
        assert "not a regular file" in str(result)


def test_open_file_and_read_file_read_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "entry"
    path.write_bytes(b"payload" * 1000)
    assert read_file(path) == b"payload" * 1000
    fd = open_file(path)
    try:
        assert os.read(fd, 7) == b"payload"
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        read_file(tmp_path / "missing")


def test_set_times_changes_the_link_not_its_target(tmp_path: Path, outside: Path) -> None:
    target = old_file(outside / "target", b"x")
    link = tmp_path / "link"
    os.symlink(target, link)
    before = snapshot(outside)
    now = time.time_ns()
    set_times(link, (now, now))
    assert os.lstat(link).st_mtime_ns == now
    assert os.stat(target).st_mtime_ns == OLD_NS
    assert snapshot(outside) == before
    regular = tmp_path / "regular"
    regular.write_bytes(b"y")
    set_times(regular, (OLD_NS, OLD_NS))
    assert regular.stat().st_mtime_ns == OLD_NS


def test_refuse_links_names_the_link(tmp_path: Path, outside: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    refuse_links(tmp_path / "file", tmp_path / "missing", tmp_path)  # nothing to refuse
    link = tmp_path / "cache.db"
    os.symlink(outside / "decoy", link)
    with pytest.raises(ConfigurationError) as refused:
        refuse_links(tmp_path / "file", link)
    assert str(link) in str(refused.value)
    assert "symbolic link" in str(refused.value)
    os.symlink(outside / "nowhere", tmp_path / "dangling")  # a dangling link is refused too
    with pytest.raises(ConfigurationError, match="symbolic link"):
        refuse_links(tmp_path / "dangling")


# --- 2. diskcache ----------------------------------------------------------------------------

_DATABASE_PARTS = ["", "-wal", "-shm", "-journal"]


@pytest.mark.parametrize("part", _DATABASE_PARTS, ids=["db", "wal", "shm", "journal"])
def test_diskcache_refuses_a_linked_database(
    root: Path, outside: Path, opened: list[Any], part: str
) -> None:
    counted = Counted(lambda i: i * 2)
    f = counted.cached(bcache, "db", "diskcache", opened)
    assert f(7) == 14
    f.cache_engine.close()
    database = root / "db" / "cache.db"
    if part:  # a journal: any file outside
        target = old_file(outside / f"planted{part}", b"not a journal\n")
    else:  # the database: a copy holding the entry for 7, served if it were followed
        for journal in _DATABASE_PARTS[1:]:
            Path(f"{database}{journal}").unlink(missing_ok=True)
        target = copy_out(database, outside)
        copy = sqlite3.connect(f"file:{target}?immutable=1", uri=True)
        try:
            assert copy.execute("SELECT count(*) FROM Cache").fetchone() == (1,)
        finally:
            copy.close()
    plant(Path(f"{database}{part}"), target)
    before = snapshot(outside)

    with pytest.raises(ConfigurationError, match="symbolic link") as refused:
        DiskCacheEngine(CacheConfig(folder_name="db"))
    assert f"cache.db{part}" in str(refused.value)
    assert snapshot(outside) == before

    with pytest.warns(CacheWarning, match="no persistent engine can serve"):
        g = bcache(folder_name="db", cache_engine="diskcache")(counted.compute)
    opened.append(g.cache_engine)
    assert g.cache_engine.name != "diskcache"
    assert g(7) == 14
    assert counted.calls == [7, 7]  # recomputed: not read from the linked database
    assert g(7) == 14
    assert counted.calls == [7, 7]
    assert snapshot(outside) == before
    assert Path(f"{database}{part}").is_symlink()  # left for the user to remove


@pytest.mark.parametrize(
    ("decorator", "engine", "options", "suffix"),
    [
        # diskcache hits are read by one SELECT (fifo) or by diskcache's get (lru)
        pytest.param(bcache, "diskcache", {"policy": "fifo"}, ".val", id="diskcache-value-fifo"),
        pytest.param(bcache, "diskcache", {"policy": "lru"}, ".val", id="diskcache-value-lru"),
        pytest.param(fcache, "joblib", {}, ".sig", id="joblib-record"),
        pytest.param(bcache, "klepto", {}, ".json", id="klepto-entry-file"),
    ],
)
def test_an_entry_file_link_is_rejected_and_replaced(
    root: Path,
    outside: Path,
    opened: list[Any],
    decorator: Callable[..., Any],
    engine: str,
    options: dict[str, Any],
    suffix: str,
) -> None:
    counted = Counted()
    f = counted.cached(decorator, "entries", engine, opened, **options)
    made = new_files(root / "entries", lambda: f(7))
    (entry,) = [p for p in made if p.suffix == suffix]
    f.cache_engine.close()
    target = copy_out(entry, outside)  # a valid copy of this very entry's file
    plant(entry, target)
    before = snapshot(outside)

    f = counted.cached(decorator, "entries", engine, opened, **options)
    with pytest.warns(SecurityWarning, match="not followed"):
        assert f(7) == large(7)
    assert counted.calls == [7, 7]
    assert snapshot(outside) == before
    assert not entry.is_symlink()  # removed with the rejected entry, never its target
    # Stored again in a regular file, and served from it.
    (stored,) = [p for p in files_under(root / "entries") if p.suffix == suffix]
    assert stat.S_ISREG(stored.lstat().st_mode)
    assert f(7) == large(7)
    assert counted.calls == [7, 7]
    assert snapshot(outside) == before


@pytest.fixture
def linked_value_dirs(root: Path, outside: Path, opened: list[Any]) -> tuple[Counted, Path]:
    """A diskcache folder holding entries 0-3 in value files, whose 256 value directories
    are all links: to copies of the real trees (with the valid value files), the others
    to empty directories, all outside. Returns the function and the outside directory."""
    counted = Counted()
    f = counted.cached(bcache, "dirs", "diskcache", opened)
    for i in range(4):
        f(i)
    f.cache_engine.close()
    folder = root / "dirs"
    copies = outside / "values"
    copies.mkdir()
    copied = 0
    for n in range(256):
        name = f"{n:02x}"
        if (folder / name).is_dir():
            shutil.copytree(folder / name, copies / name)
            copied += 1
        else:
            (copies / name).mkdir()
        plant(folder / name, copies / name)
    assert copied >= 1
    assert len([p for p in files_under(copies) if p.suffix == ".val"]) == 4
    counted.calls.clear()
    return counted, copies


def test_diskcache_linked_value_dir_get_is_a_miss(
    linked_value_dirs: tuple[Counted, Path], outside: Path, opened: list[Any]
) -> None:
    counted, _ = linked_value_dirs
    before = snapshot(outside)
    f = counted.cached(bcache, "dirs", "diskcache", opened)
    # Rejected (not read through the link), recomputed, and not stored: every value
    # directory is a link, so the write is refused (a fault) rather than made outside.
    with expect_warnings(SecurityWarning, CacheFaultWarning) as caught:
        assert f(0) == large(0)
    assert "not followed" in messages(caught, SecurityWarning)
    assert counted.calls == [0]
    assert snapshot(outside) == before
    with expect_warnings():
        assert f(1) == large(1)  # the other rows are refused the same way
    assert counted.calls == [0, 1]
    assert snapshot(outside) == before


def test_diskcache_linked_value_dir_delete_and_clear_remove_nothing_outside(
    linked_value_dirs: tuple[Counted, Path], outside: Path, opened: list[Any]
) -> None:
    counted, _ = linked_value_dirs
    before = snapshot(outside)
    f = counted.cached(bcache, "dirs", "diskcache", opened)
    assert f.cache_delete(1) is True  # the row goes; its file, behind a link, stays
    assert snapshot(outside) == before
    assert len(f.cache_engine) == 3
    f.cache_clear()
    assert len(f.cache_engine) == 0
    assert snapshot(outside) == before
    assert counted.calls == []


def test_diskcache_linked_value_dir_writes_nothing_outside(
    linked_value_dirs: tuple[Counted, Path], outside: Path, opened: list[Any]
) -> None:
    counted, _ = linked_value_dirs
    before = snapshot(outside)
    engine = DiskCacheEngine(CacheConfig(folder_name="dirs"))
    opened.append(engine)
    for attempt in range(3):  # each write picks a random value directory: all are links
        with pytest.raises(NotFollowedError, match="a symbolic link"):
            engine.set(f"new-{attempt}", large(attempt))
        assert engine.get(f"new-{attempt}", "absent") == "absent"
    assert engine.get("small", "absent") == "absent"
    engine.set("small", b"in the database row")  # below 32 KiB: no value file needed
    assert engine.get("small") == b"in the database row"
    f = counted.cached(bcache, "dirs", "diskcache", opened)
    with expect_warnings(CacheFaultWarning):
        assert f.cache_refresh(2) == large(2)  # computed and returned, not stored
    assert counted.calls == [2]
    assert snapshot(outside) == before


# --- 3. joblib -------------------------------------------------------------------------------


def test_joblib_record_link_planted_before_the_entry_is_stored(
    root: Path, outside: Path, opened: list[Any]
) -> None:
    engine = JoblibEngine(CacheConfig(folder_name="ahead"))
    opened.append(engine)
    name = joblib_files.name_of(engine.key_text("k"))
    record = engine.directory / f"{name}.sig"
    engine.set("k", "old")
    target = copy_out(record, outside)  # this key's own valid record
    assert engine.delete("k") is True
    plant(record, target)
    before = snapshot(outside)

    engine.set("k", "new")  # replaces the link with a regular file, never writes through it
    assert stat.S_ISREG(record.lstat().st_mode)
    assert engine.get("k") == "new"
    assert len(engine) == 1
    assert snapshot(outside) == before


@pytest.mark.parametrize("kind", ["joblib", "npy"])
def test_joblib_data_file_link_is_rejected(
    root: Path, outside: Path, opened: list[Any], kind: str
) -> None:
    if kind == "npy":
        np = pytest.importorskip("numpy")
        counted = Counted(lambda i: np.arange(20_000.0) + i)
    else:
        counted = Counted()
    f = counted.cached(fcache, "data", "joblib", opened)
    made = new_files(root / "data", lambda: f(7))
    (data,) = [p for p in made if p.suffix == f".{kind}"]
    f.cache_engine.close()
    target = copy_out(data, outside)  # the very bytes the record signs
    plant(data, target)
    before = snapshot(outside)

    f = counted.cached(fcache, "data", "joblib", opened)
    with pytest.warns(SecurityWarning, match="not followed"):
        value = f(7)
    assert counted.calls == [7, 7]
    if kind == "npy":
        assert (value == counted.make(7)).all()
    else:
        assert value == large(7)
    assert snapshot(outside) == before
    assert not os.path.lexists(data)  # the link went with the entry
    f(7)
    assert counted.calls == [7, 7]
    assert snapshot(outside) == before


def test_joblib_mapped_load_refuses_a_data_file_replaced_after_verification(
    root: Path, outside: Path, opened: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # joblib maps a file by its path: a link put in place of the data file between its
    # verification and the mapping must not be mapped. The swap is injected at that exact
    # point (just after the MAC is taken), which a real race cannot hit reliably.
    from twat_cache.engines import joblib as joblib_module

    counted = Counted()
    f = counted.cached(fcache, "mapped", "joblib", opened, mmap_mode="r")
    made = new_files(root / "mapped", lambda: f(7))
    (data,) = [p for p in made if p.suffix == ".joblib"]
    target = copy_out(data, outside)  # the same signed bytes, outside the root
    before = snapshot(outside)
    real_mac = joblib_module.file_mac

    def mac_then_swap(fd: int, size: int, secret: bytes) -> bytes:
        mac = real_mac(fd, size, secret)
        plant(data, target)
        return mac

    monkeypatch.setattr(joblib_module, "file_mac", mac_then_swap)
    with pytest.warns(SecurityWarning, match="replaced while it was verified"):
        assert f(7) == large(7)
    assert counted.calls == [7, 7]
    assert snapshot(outside) == before


@pytest.mark.parametrize(
    ("engine_class", "archive", "pattern"),
    [(JoblibEngine, "", "*.sig"), (KleptoEngine, "klepto", "K_*/output.json")],
    ids=["joblib", "klepto"],
)
def test_lru_hit_never_touches_a_link_target(
    root: Path,
    outside: Path,
    opened: list[Any],
    engine_class: type[Any],
    archive: str,
    pattern: str,
) -> None:
    engine = engine_class(CacheConfig(folder_name="lru", policy="lru"))
    opened.append(engine)
    target = old_file(outside / "target", b"outside\n")
    before = snapshot(outside)
    # The entry's file becomes a link while its value loads: the hit then touches the link.
    folder = engine.directory / archive
    engine.set("k", Swapper(pattern, folder, target))
    start = time.time_ns()
    assert engine.get("k") == "swapped"
    (entry,) = folder.glob(pattern)
    assert entry.is_symlink()
    assert os.lstat(entry).st_mtime_ns >= start  # the touch happened, on the link itself
    assert os.stat(target).st_mtime_ns == OLD_NS
    assert snapshot(outside) == before


def test_joblib_lru_touches_a_real_record(root: Path, opened: list[Any]) -> None:
    engine = JoblibEngine(CacheConfig(folder_name="lru", policy="lru"))
    opened.append(engine)
    engine.set("k", "v")
    (record,) = engine.directory.glob("*.sig")
    os.utime(record, ns=(OLD_NS, OLD_NS))
    assert engine.get("k") == "v"
    assert record.stat().st_mtime_ns > OLD_NS


# --- 4. klepto -------------------------------------------------------------------------------


def test_klepto_refuses_a_linked_archive_dir(root: Path, outside: Path, opened: list[Any]) -> None:
    counted = Counted()
    f = counted.cached(bcache, "archive", "klepto", opened)
    f(7)
    f.cache_engine.close()
    archive = root / "archive" / "klepto"
    target = copy_out(archive, outside)  # holds the valid entry for 7
    plant(archive, target)
    before = snapshot(outside)

    with pytest.raises(ConfigurationError, match="symbolic link") as refused:
        KleptoEngine(CacheConfig(folder_name="archive"))
    assert str(archive) in str(refused.value)
    assert snapshot(outside) == before

    with pytest.warns(CacheWarning, match="no persistent engine can serve"):
        g = bcache(folder_name="archive", cache_engine="klepto")(counted.compute)
    opened.append(g.cache_engine)
    assert g.cache_engine.name != "klepto"
    assert g(7) == large(7)
    assert counted.calls == [7, 7]
    assert snapshot(outside) == before
    assert archive.is_symlink()


@pytest.mark.parametrize("part", ["", "-journal"], ids=["sqlite", "journal"])
def test_klepto_sql_refuses_a_linked_database(
    root: Path, outside: Path, opened: list[Any], part: str
) -> None:
    engine = KleptoEngine(CacheConfig(folder_name="sql", use_sql=True))
    engine.set("k", "v")
    engine.close()
    database = root / "sql" / "klepto.sqlite"
    if part:
        target = old_file(outside / "planted-journal", b"not a journal\n")
    else:
        target = copy_out(database, outside)  # holds the valid entry for "k"
    plant(Path(f"{database}{part}"), target)
    before = snapshot(outside)
    with pytest.raises(ConfigurationError, match="symbolic link") as refused:
        KleptoEngine(CacheConfig(folder_name="sql", use_sql=True))
    assert f"klepto.sqlite{part}" in str(refused.value)
    assert snapshot(outside) == before


@pytest.fixture
def klepto_entries(root: Path, opened: list[Any]) -> tuple[Counted, Any, Path]:
    """A cached function on a klepto folder holding entries 7 and 8, still open (as in a
    running process). Returns the function, its cache and the entry directory of 7."""
    counted = Counted()
    f = counted.cached(bcache, "entries", "klepto", opened)
    made = new_files(root / "entries", lambda: f(7))
    f(8)
    (entry_file,) = made
    entry = entry_file.parent
    assert entry.name.startswith("K_")
    assert entry_file.name == "output.json"
    counted.calls.clear()
    return counted, f, entry


def test_klepto_entry_dir_link_is_removed_when_opening(
    klepto_entries: tuple[Counted, Any, Path], outside: Path, opened: list[Any]
) -> None:
    counted, f, entry = klepto_entries
    f.cache_engine.close()
    target = copy_out(entry, outside)  # the valid entry for 7: served if followed
    plant(entry, target)
    before = snapshot(outside)
    f = counted.cached(bcache, "entries", "klepto", opened)  # its sweep drops the link
    assert not os.path.lexists(entry)
    assert f(7) == large(7)
    assert counted.calls == [7]
    assert stat.S_ISDIR(entry.lstat().st_mode)
    assert f(8) == large(8)
    assert counted.calls == [7]
    assert snapshot(outside) == before


def test_klepto_entry_dir_link_get_is_recomputed(
    klepto_entries: tuple[Counted, Any, Path], outside: Path
) -> None:
    counted, f, entry = klepto_entries
    target = copy_out(entry, outside)  # the valid entry for 7: served if followed
    plant(entry, target)  # while the cache is open
    before = snapshot(outside)
    with pytest.warns(SecurityWarning, match="not followed"):
        assert f(7) == large(7)
    assert counted.calls == [7]
    assert snapshot(outside) == before
    assert stat.S_ISDIR(entry.lstat().st_mode)  # stored again, for real
    assert f(7) == large(7)
    assert f(8) == large(8)
    assert counted.calls == [7]
    assert snapshot(outside) == before


@pytest.mark.parametrize("operation", ["delete", "clear", "overwrite"])
def test_klepto_entry_dir_link_target_survives(
    klepto_entries: tuple[Counted, Any, Path], outside: Path, operation: str
) -> None:
    # klepto removes an entry by emptying its directory: through a link, that would empty
    # the link's target. The link must go, never what it points to.
    counted, f, entry = klepto_entries
    target = copy_out(entry, outside)
    plant(entry, target)  # while the cache is open
    before = snapshot(outside)
    listing = sorted(p.name for p in target.iterdir())
    assert listing == ["output.json"]
    if operation == "delete":
        assert f.cache_delete(7) is True
        assert not os.path.lexists(entry)
        assert f(8) == large(8)  # the other entry is untouched
        assert counted.calls == []
    elif operation == "clear":
        f.cache_clear()
        assert not os.path.lexists(entry)
        assert len(f.cache_engine) == 0
    else:
        assert f.cache_refresh(7) == large(7)  # an overwrite, without a read first
        assert counted.calls == [7]
        assert stat.S_ISDIR(entry.lstat().st_mode)
        assert f(7) == large(7)
        assert counted.calls == [7]
    assert sorted(p.name for p in target.iterdir()) == listing
    assert snapshot(outside) == before


# --- 5. manifests ----------------------------------------------------------------------------


def test_manifest_link_is_replaced_never_followed(
    root: Path, outside: Path, opened: list[Any]
) -> None:
    engine = DiskCacheEngine(CacheConfig(folder_name="m"))
    engine.close()
    manifest = root / ".manifests" / "m.json"
    assert PersistentEngine.read_manifest(root / "m") is not None
    target = copy_out(manifest, outside)  # the very manifest the reopen would write
    plant(manifest, target)
    before = snapshot(outside)

    assert PersistentEngine.read_manifest(root / "m") is None  # a link is not read
    engine = DiskCacheEngine(CacheConfig(folder_name="m"))
    opened.append(engine)
    assert not os.path.islink(manifest)
    assert stat.S_ISREG(manifest.lstat().st_mode)
    recorded = PersistentEngine.read_manifest(root / "m")
    assert recorded is not None
    assert recorded["engine"] == "diskcache"
    assert snapshot(outside) == before


def test_linked_manifests_dir_is_not_written_through(
    root: Path, outside: Path, opened: list[Any]
) -> None:
    DiskCacheEngine(CacheConfig(folder_name="m")).close()
    manifests = root / ".manifests"
    target = copy_out(manifests, outside)
    plant(manifests, target)
    before = snapshot(outside)
    # Other settings: the manifest is out of date, so opening wants to write it.
    engine = DiskCacheEngine(CacheConfig(folder_name="m", ttl=60))
    opened.append(engine)
    engine.set("k", "v")
    assert engine.get("k") == "v"  # the cache works; only its manifest is not recorded
    assert snapshot(outside) == before
    assert manifests.is_symlink()
