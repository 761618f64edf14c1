"""Disk engines in a hostile neighbourhood (issue 13): a relative root and `os.chdir`, a
folder deleted while in use, a database locked at decoration, a writer holding the lock
during `cache_clear`, a byte bound shared by processes, a root that is another user's link,
and `os.fork` while the parent keeps using the cache."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from _support import wait_child
from twat_cache import CacheConfig, bcache, fcache
from twat_cache.engines.diskcache import DiskCacheEngine
from twat_cache.engines.joblib import JoblibEngine
from twat_cache.exceptions import (
    CacheError,
    CacheFaultWarning,
    ConfigurationError,
    EngineError,
)
from twat_cache.paths import cache_root, folder_bytes

pytest.importorskip("klepto")
from twat_cache.engines.klepto import KleptoEngine  # after the importorskip

ENGINES: dict[str, dict[str, Any]] = {
    "diskcache": {"cache_engine": "diskcache"},
    "joblib": {"cache_engine": "joblib"},
    "klepto": {"cache_engine": "klepto"},
    "klepto-sql": {"cache_engine": "klepto", "use_sql": True},
}


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "root"
    monkeypatch.setenv("TWAT_CACHE_DIR", str(path))
    return path


def counted(decorator: Callable[..., Any], **options: Any) -> tuple[Any, list[Any]]:
    calls: list[Any] = []

    @decorator(**options)
    def double(x: int) -> int:
        calls.append(x)
        return x * 2

    return double, calls


# --- item 4: a relative root and os.chdir ---------------------------------------------------


@pytest.mark.parametrize("decorator", [bcache, fcache])
def test_relative_root_survives_chdir(
    decorator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TWAT_CACHE_DIR", "relative-root")
    double, calls = counted(decorator, folder_name="rel")
    assert double(1) == 2
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheFaultWarning)
        assert double(1) == 2  # a hit, from the folder made before the chdir
        assert double(3) == 6
        assert double(3) == 6
    assert calls == [1, 3]
    assert double.cache_info().currsize == 2
    assert double.cache_engine.directory == tmp_path / "relative-root" / "rel"
    assert not (elsewhere / "relative-root").exists()
    double.cache_clear()


def test_cache_root_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TWAT_CACHE_DIR", "r")
    assert cache_root() == tmp_path / "r"


# --- item 5: a folder deleted while in use --------------------------------------------------


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_deleted_folder_is_recreated_on_the_next_write(root: Path, engine: str) -> None:
    double, calls = counted(bcache, folder_name="gone", **ENGINES[engine])
    assert double(1) == 2
    assert double(1) == 2
    directory = double.cache_engine.directory
    shutil.rmtree(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheFaultWarning)
        assert double.cache_info().currsize == 0  # never raises, never -1
        double.cache_clear()
        assert double(1) == 2
        assert double(1) == 2  # caching resumed
        assert double(2) == 4
    assert calls == [1, 1, 2]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert double.cache_info().currsize == 2
    # What was written after the deletion is on disk, for every other process.
    options = {k: v for k, v in ENGINES[engine].items() if k != "cache_engine"}
    again = type(double.cache_engine)(CacheConfig(folder_name="gone", **options))
    try:
        assert len(again) == 2
    finally:
        again.close()


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_deleted_root_is_recreated_private(root: Path, engine: str) -> None:
    double, calls = counted(bcache, folder_name="gone", **ENGINES[engine])
    double(1)
    shutil.rmtree(root)
    double.cache_clear()
    double(1)
    double(1)
    assert calls == [1, 1]
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    manifest = json.loads((root / ".manifests" / "gone.json").read_text())
    assert manifest["engine"] == double.cache_engine.name


def test_a_deleted_root_gets_back_the_signing_key_this_process_uses(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key in <root>/.secret went with the root: a new process would make another one
    # and each would reject the other's entries. The recreated root gets this one back.
    monkeypatch.delenv("TWAT_CACHE_SECRET", raising=False)
    double, _ = counted(bcache, folder_name="keyed")
    double(1)
    key = (root / ".secret").read_bytes()
    shutil.rmtree(root)
    double(2)  # a write: the folder, and the root, are made again
    assert (root / ".secret").read_bytes() == key
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from twat_cache.serializers import "
            "get_secret; print(get_secret(Path(sys.argv[1])).hex())",
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert bytes.fromhex(fresh.stdout.strip()) == key


def test_diskcache_stops_serving_a_deleted_database(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deleting the folder clears the cache: the open connection still reads the deleted
    # file, which must not go on serving it.
    monkeypatch.setattr(DiskCacheEngine, "FOLDER_CHECK", 0.0)
    double, calls = counted(bcache, folder_name="gone")
    double(1)
    shutil.rmtree(double.cache_engine.directory)
    double(1)
    assert calls == [1, 1]


# --- item 6: a locked database at decoration -----------------------------------------------


@contextmanager
def held_lock(database: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding `database`'s write lock until the block ends."""
    code = (
        "import sqlite3, sys\n"
        f"c = sqlite3.connect({str(database)!r}, isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"
        "c.execute('ROLLBACK')\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            yield holder
        finally:
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.wait(timeout=30)


def manifest_engine(root: Path, folder: str) -> str:
    return str(json.loads((root / ".manifests" / f"{folder}.json").read_text())["engine"])


@pytest.mark.timeout(60)
def test_locked_database_at_decoration_keeps_the_engine(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DiskCacheEngine, "OPEN_TIMEOUT", 0.2)
    first, _ = counted(bcache, folder_name="locked")
    first(1)
    with held_lock(root / "locked" / "cache.db"), warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheFaultWarning)  # the call runs uncached
        second, calls = counted(bcache, folder_name="locked")
        assert second.cache_engine.name == "diskcache"
        assert manifest_engine(root, "locked") == "diskcache"
        assert second(1) == 2
    assert not (root / "locked" / "klepto").exists()
    # The lock is gone: the engine opens, and serves what the first cache stored.
    assert second(1) == 2
    assert second(5) == 10
    assert second(5) == 10
    assert calls == [1, 5]
    from twat_cache.cli import main

    assert main(["clear", "locked", "--yes"]) == 0
    assert second(5) == 10  # cleared for every process: no stale answer
    assert calls == [1, 5, 5]


def test_another_engine_does_not_take_over_a_folder_with_entries(root: Path) -> None:
    first, _ = counted(bcache, folder_name="owned")
    first(1)
    with pytest.raises(ConfigurationError, match="holds entries of the diskcache engine"):
        counted(bcache, folder_name="owned", cache_engine="klepto")
    assert manifest_engine(root, "owned") == "diskcache"
    first.cache_clear()
    first.cache_engine.close()
    del first  # gone from this process, as in a later run (a live one keeps the folder)
    gc.collect()
    other, _ = counted(bcache, folder_name="owned", cache_engine="klepto")
    assert other.cache_engine.name == "klepto"
    assert manifest_engine(root, "owned") == "klepto"


# --- item 15: cache_clear while another writer holds the lock ------------------------------


@pytest.mark.timeout(60)
def test_clear_waits_for_a_writer_and_clears_everything(root: Path) -> None:
    engine = DiskCacheEngine(CacheConfig(folder_name="c"))
    for i in range(250):  # more than one of diskcache's batches of 100
        engine.set(f"k{i}", i)
    released = threading.Event()

    def hold() -> None:
        with sqlite3.connect(engine.directory / "cache.db", isolation_level=None) as con:
            con.execute("BEGIN IMMEDIATE")
            time.sleep(DiskCacheEngine.BUSY_TIMEOUT * 2)
            con.execute("ROLLBACK")
        released.set()

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.2)
    engine.clear()  # diskcache.Timeout after 1 s before
    assert released.is_set()
    holder.join()
    assert len(engine) == 0
    engine.close()


@pytest.mark.timeout(60)
def test_clear_past_its_patience_raises_engine_error_and_clears_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DiskCacheEngine, "WRITE_PATIENCE", 0.5)
    engine = DiskCacheEngine(CacheConfig(folder_name="c"))
    for i in range(250):
        engine.set(f"k{i}", i)
    with held_lock(engine.directory / "cache.db"), pytest.raises(EngineError):
        engine.clear()
    assert len(engine) == 250  # all or nothing
    engine.close()


@pytest.mark.timeout(60)
def test_klepto_sql_clear_waits_for_a_writer_then_raises_engine_error(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = KleptoEngine(CacheConfig(folder_name="k", use_sql=True))
    for i in range(5):
        engine.set(f"k{i}", i)
    monkeypatch.setattr(KleptoEngine, "CLEAR_PATIENCE", 0.3)
    with held_lock(engine.directory / "klepto.sqlite"), pytest.raises(EngineError):
        engine.clear()  # sqlite3.OperationalError before
    assert len(engine) == 5
    engine.clear()
    assert len(engine) == 0
    engine.close()


# --- item 8: fcache's byte bound across processes ------------------------------------------


def test_byte_bound_holds_for_large_entries_written_by_two_writers(root: Path) -> None:
    numpy = pytest.importorskip("numpy")
    bound = 2_000_000
    # Two engines on one folder keep their accounting apart, as two processes do.
    first = JoblibEngine(CacheConfig(folder_name="f", maxsize="2MB"))
    second = JoblibEngine(CacheConfig(folder_name="f", maxsize="2MB"))
    entry = numpy.ones(100_000 // 8)  # 100 kB: far fewer than the 64 writes of a rescan
    for i in range(15):  # 1.5 MB each: within the bound as each counts its own writes
        first.set(f"a{i}", entry)
    for i in range(15):
        second.set(f"b{i}", entry)
    overshoot = bound / 32 + 110_000  # one writer unseen: 1/32 of the bound, plus its entry
    assert folder_bytes(first.directory) <= bound + overshoot


# --- item 17a: a root that is another user's link ------------------------------------------


def test_root_link_owned_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(mine)
    try:
        os.lchown(link, 12345, 12345)
    except PermissionError:
        pytest.skip("not root: cannot make a link owned by another user")
    monkeypatch.setenv("TWAT_CACHE_DIR", str(link))
    with pytest.raises(ConfigurationError, match="symbolic link owned by another user"):
        cache_root()
    assert list(mine.iterdir()) == []


@pytest.mark.parametrize("way", ["a parent", "a chain"])
def test_another_users_link_anywhere_on_the_way_to_the_root_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    # Only the root itself was checked: /tmp/app/cache with /tmp/app another user's link,
    # or a link of one's own to another user's link, were followed (hostile review).
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    planted = sticky / "planted"
    planted.symlink_to(theirs)
    try:
        os.lchown(planted, 12345, 12345)
    except PermissionError:
        pytest.skip("not root: cannot make a link owned by another user")
    if way == "a parent":
        root = planted / "cache"
    else:
        root = tmp_path / "my-link"
        root.symlink_to(planted)
    monkeypatch.setenv("TWAT_CACHE_DIR", str(root))
    with pytest.raises(ConfigurationError, match="symbolic link owned by another user"):
        cache_root()
    assert list(theirs.iterdir()) == []


@pytest.mark.parametrize(("mode", "refused"), [(0o777, True), (0o1777, False), (0o755, False)])
def test_root_link_in_a_directory_others_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int, refused: bool
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "link").symlink_to(mine)
    shared.chmod(mode)
    monkeypatch.setenv("TWAT_CACHE_DIR", str(shared / "link"))
    if refused:
        with pytest.raises(ConfigurationError, match="could replace the link"):
            cache_root()
    else:
        assert cache_root() == shared / "link"


# --- fork ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
# klepto's SQL archive (a rollback journal, no WAL) reports "database is locked" to writers
# of two processes at once whether or not they forked: its fork reset is covered below.
@pytest.mark.parametrize("engine", ["diskcache", "joblib", "klepto"])
def test_fork_while_the_parent_uses_the_cache(root: Path, engine: str) -> None:
    double, calls = counted(bcache, folder_name="forked", **ENGINES[engine])
    store = double.cache_engine
    double(0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def parent_work() -> None:
        i = 0
        while not stop.is_set():
            try:
                store.set(f"p{i % 50}", i)
                store.get(f"p{(i * 7) % 50}")
            except BaseException as exc:
                errors.append(exc)
            i += 1
            time.sleep(0.002)  # klepto's SQL archive has no WAL: leave the children room

    worker = threading.Thread(target=parent_work)
    worker.start()
    try:
        time.sleep(0.1)
        pids = []
        for n in range(3):
            pid = os.fork()
            if pid == 0:  # the child: its own connections and locks, never its parent's
                code = 1
                try:
                    # A lock a parent thread held at the fork would hang these.
                    assert double(0) == 0
                    for i in range(30):
                        store.set(f"c{n}-{i}", i)
                        assert store.get(f"c{n}-{i}") == i
                    assert double(100 + n) == 200 + 2 * n
                    code = 0
                except BaseException:
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            pids.append(pid)
        assert [wait_child(pid) for pid in pids] == [0, 0, 0]
    finally:
        stop.set()
        worker.join()
    assert errors == []
    assert calls == [0]
    for n in range(3):  # what the children stored is in the shared folder
        assert store.get(f"c{n}-29") == 29
        assert double(100 + n) == 200 + 2 * n
    assert calls == [0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ["joblib", "klepto", "klepto-sql"])
def test_fork_while_a_parent_thread_holds_the_engine_lock(root: Path, engine: str) -> None:
    cls = JoblibEngine if engine == "joblib" else KleptoEngine
    store = cls(CacheConfig(folder_name="locks", use_sql=engine == "klepto-sql"))
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._lock:
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                store.set("k", 1)  # the held lock, copied, would never be released here
                code = 0 if store.get("k") == 1 else 1
            finally:
                os._exit(code)
        assert wait_child(pid) == 0
    finally:
        release.set()
        holder.join()


def test_fork_child_opens_its_own_diskcache_connection(root: Path) -> None:
    store = DiskCacheEngine(CacheConfig(folder_name="own"))
    store.set("k", 1)
    parent = store._connection()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 1
        try:
            code = 0 if store._connection() is not parent and store.get("k") == 1 else 1
        finally:
            os.write(write, b"done")
            os._exit(code)
    os.close(write)
    assert os.read(read, 4) == b"done"
    os.close(read)
    assert wait_child(pid) == 0
    assert store._connection() is parent
    assert store.get("k") == 1
    store.close()


# --- stretch: one diskcache connection per folder, not per function -----------------------


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_closures_of_one_factory_share_one_connection(root: Path) -> None:
    def factory(n: int) -> Any:
        @bcache
        def add(x: int) -> int:
            return x + n

        return add

    before = len(os.listdir("/proc/self/fd"))
    functions = [factory(n) for n in range(200)]
    for n, function in enumerate(functions):
        assert function(1) == 1 + n
        assert function(1) == 1 + n
    # Two descriptors each before (the database and its WAL): 400, past a quarter of a
    # 1024 limit; shared, a handful in all.
    assert len(os.listdir("/proc/self/fd")) - before < 20
    assert {f.cache_info().hits for f in functions} == {1}


@pytest.mark.timeout(60)
def test_cli_clear_all_goes_on_past_a_held_database(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from twat_cache.cli import main

    monkeypatch.setattr(DiskCacheEngine, "WRITE_PATIENCE", 0.3)
    monkeypatch.setattr(DiskCacheEngine, "OPEN_TIMEOUT", 0.2)
    held, free = counted(bcache, folder_name="held")[0], counted(bcache, folder_name="free")[0]
    held(1)
    free(1)
    with held_lock(root / "held" / "cache.db"):
        assert main(["clear", "--all", "--yes"]) == 1  # the others cleared, held named
        assert main(["clear", "held", "--yes"]) == 1
    err = capsys.readouterr().err
    assert "skipped: held: could not clear" in err
    assert "Traceback" not in err
    assert free.cache_info().currsize == 0
    assert held.cache_info().currsize == 1  # all or nothing


@pytest.mark.parametrize("decorator", ["bcache", "fcache"])
def test_a_folder_replaced_by_a_file_never_lets_a_raw_error_out(root: Path, decorator: str) -> None:
    # cache_clear() raised a raw NotADirectoryError (fcache); calls still answer.
    double, _ = counted(bcache if decorator == "bcache" else fcache, folder_name="replaced")
    assert double(1) == 2
    folder = double.cache_engine.directory
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheFaultWarning)
        assert double(2) == 4
        assert double.cache_info().currsize in (-1, 0)  # unknown or empty, not an exception
        # A clear that cannot be done says so in twat-cache's own terms, or clears.
        with contextlib.suppress(CacheError):
            double.cache_clear()


@pytest.mark.parametrize(
    ("decorator", "options"),
    [("bcache", {}), ("bcache", {"cache_engine": "klepto"}), ("fcache", {})],
    ids=["diskcache", "klepto", "joblib"],
)
def test_two_functions_on_one_folder_with_other_bounds_are_refused(
    root: Path, decorator: str, options: dict[str, Any]
) -> None:
    # One folder has one bound: the smaller function's bound evicted the other's entries
    # (all 10 recomputed). The second decoration is refused, naming what differs; the same
    # settings share the folder as before.
    cache = bcache if decorator == "bcache" else fcache

    @cache(folder_name="shared", maxsize="100MB", **options)
    def big(x: int) -> int:
        return x * 2

    big(1)
    with pytest.raises(ConfigurationError, match=r"folder_name='shared'.*maxsize"):

        @cache(folder_name="shared", maxsize="500kB", **options)
        def small(x: int) -> int:
            return x * 3

    manifest = json.loads((root / ".manifests" / "shared.json").read_text())
    assert manifest["settings"]["maxsize"] == "100000000B"  # the live cache's, kept

    @cache(folder_name="shared", maxsize="100MB", **options)
    def twin(x: int) -> int:
        return x * 2

    assert twin(1) == 2


_DISK = [("bcache", {}), ("bcache", {"cache_engine": "klepto"}), ("fcache", {})]


@pytest.mark.parametrize(("decorator", "options"), _DISK, ids=["diskcache", "klepto", "joblib"])
def test_a_folder_made_again_by_someone_else_is_checked_again(
    root: Path, decorator: str, options: dict[str, Any]
) -> None:
    # Deleted, then made again world-writable by someone else: the engines kept writing
    # there (fcache, klepto), though the checks made at creation refuse such a folder.
    double, _ = counted(bcache if decorator == "bcache" else fcache, folder_name="again", **options)
    assert double(1) == 2
    folder = double.cache_engine.directory
    shutil.rmtree(folder)
    folder.mkdir()
    folder.chmod(0o777)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheFaultWarning)
        assert double(5) == 10  # the call answers; nothing is written there
        assert double(6) == 12
    assert os.listdir(folder) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="makes another user's link (needs root)")
@pytest.mark.parametrize(("decorator", "options"), _DISK, ids=["diskcache", "klepto", "joblib"])
def test_a_root_replaced_by_another_users_link_midrun_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decorator: str, options: dict[str, Any]
) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)  # as /tmp is
    root = sticky / "cache"
    monkeypatch.setenv("TWAT_CACHE_DIR", str(root))
    double, _ = counted(bcache if decorator == "bcache" else fcache, folder_name="f", **options)
    assert double(1) == 2
    shutil.rmtree(root)
    target = tmp_path / "theirs"
    target.mkdir()
    root.symlink_to(target)
    os.lchown(root, 12345, 12345)  # another user's link where the root was
    monkeypatch.setattr(type(double.cache_engine), "FOLDER_CHECK", 0.0, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheFaultWarning)
        assert double(2) == 4
        assert double(3) == 6
    assert [p for p in target.rglob("*")] == []


def test_another_engine_is_refused_a_folder_a_live_cache_of_the_process_uses(root: Path) -> None:
    # The folder was empty, so its manifest let klepto take it, while the diskcache cache
    # of g kept writing its own store there: `twat-cache clear` cleared klepto's entries
    # only, and g's stale entry was served after it (hostile review).
    @bcache(folder_name="mix")
    def g(x: int) -> int:
        return x

    g(1)
    g.cache_delete(1)  # the folder holds no entries now
    with pytest.raises(ConfigurationError, match=r"engine='diskcache' there, 'klepto' here"):

        @bcache(folder_name="mix", cache_engine="klepto")
        def h(x: int) -> int:
            return -x


def test_a_function_defined_again_with_other_settings_takes_its_folder_over(root: Path) -> None:
    # A notebook cell run again: the new definition is decorated while the old one is still
    # bound. That is the same function changing its settings, not two caches disagreeing.
    namespace: dict[str, Any] = {"bcache": bcache}
    for bound in (100, 2):
        exec(
            f"@bcache(folder_name='cell', maxsize={bound})\ndef lookup(x):\n    return x * 2\n",
            namespace,
        )
        assert namespace["lookup"](3) == 6
    assert namespace["lookup"].cache_parameters()["maxsize"] == 2
