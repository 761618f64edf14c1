"""stats() and prune() of the disk engines (diskcache, joblib, klepto dir and SQL archives):
exact figures, expiry, lowered bounds, and what writers killed with SIGKILL leave behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from twat_cache import MISS, CacheConfig
from twat_cache.engines import _joblib_files as joblib_files
from twat_cache.engines.base import PersistentEngine

KINDS = ["diskcache", "joblib", "klepto-dir", "klepto-sql"]
#: The grace each engine gives a writer before `prune` calls its files left behind.
GRACES = {"diskcache": ["COMMIT_GRACE"], "joblib": ["TEMP_MAX_AGE", "COMMIT_GRACE"]}
SIZES = (100, 5_000, 60_000, 300_000)  # in a database row, and in files (diskcache: >= 32 KiB)


def engine_class(kind: str) -> tuple[type[PersistentEngine], dict[str, Any]]:
    """The engine class of `kind` and the options selecting its store."""
    if kind == "diskcache":
        pytest.importorskip("diskcache")
        from twat_cache.engines.diskcache import DiskCacheEngine

        return DiskCacheEngine, {}
    if kind == "joblib":
        pytest.importorskip("joblib")
        from twat_cache.engines.joblib import JoblibEngine

        return JoblibEngine, {}
    pytest.importorskip("klepto")
    from twat_cache.engines.klepto import KleptoEngine

    return KleptoEngine, {"use_sql": kind == "klepto-sql"}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str) -> Iterator[Callable[..., Any]]:
    """`make(**options)`: an engine of `kind` on the folder "tools" (closed at teardown)."""
    cls, base = engine_class(kind)
    opened: list[Any] = []

    def build(*, sweep: bool = True, **options: Any) -> Any:
        config = CacheConfig(**{"folder_name": "tools", **base, **options})
        engine = cls(config, sweep=sweep)
        opened.append(engine)
        return engine

    yield build
    for engine in opened:
        engine.close()


def no_grace(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let `prune` remove what writers left at once: no writer is alive any more."""
    cls, _ = engine_class(kind)
    for attribute in GRACES.get(kind, ["TEMP_MAX_AGE"]):
        monkeypatch.setattr(cls, attribute, 0.0)


def checked(key: str, size: int, rng: random.Random) -> tuple[str, bytes, str]:
    """A value carrying its key and checksum: a wrong or torn value is always detected."""
    blob = rng.randbytes(size)
    return key, blob, hashlib.sha256(key.encode() + blob).hexdigest()


def exact(key: str, value: Any) -> bool:
    stored_key, blob, digest = value
    return bool(stored_key == key and hashlib.sha256(key.encode() + blob).hexdigest() == digest)


def folder_files(directory: Path) -> dict[str, int]:
    """Every regular file under `directory`: relative path -> size."""
    found = {}
    for top, _, names in os.walk(directory):
        for name in names:
            path = Path(top, name)
            found[path.relative_to(directory).as_posix()] = path.lstat().st_size
    return found


# --- what a folder holds besides its live entries -------------------------------------------


def leftovers(kind: str, directory: Path) -> list[str]:
    """Everything in the folder that is neither an entry nor the store itself, by name."""
    files = set(folder_files(directory))
    if kind == "diskcache":
        with contextlib.closing(sqlite3.connect(directory / "cache.db")) as con:
            rows = con.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")
            own = {"cache.db", "cache.db-wal", "cache.db-shm"} | {f for (f,) in rows}
        return sorted(files - own)
    if kind == "joblib":
        own = set()
        for name in files:
            if match := joblib_files.RECORD.fullmatch(name):
                own.add(name)
                meta = joblib_files.peek((directory / name).read_bytes(), match.group(1))
                own.add(meta.data if meta is not None else "")
        return sorted(files - own)
    if kind == "klepto-dir":
        entry = re.compile(r"klepto/K_[0-9a-f]{40}/output\.json")
        left = [name for name in files if not entry.fullmatch(name)]
        for path in (directory / "klepto").iterdir():
            if path.is_dir() and not (path / "output.json").is_file():
                left.append(f"klepto/{path.name}/")  # a directory without its entry file
        return sorted(left)
    with contextlib.closing(sqlite3.connect(directory / "klepto.sqlite")) as con:
        data = {n for (n,) in con.execute("SELECT argstr FROM twat_data")}
        meta = {n for (n,) in con.execute("SELECT argstr FROM twat_meta")}
    left = sorted(files - {"klepto.sqlite"})
    left += [f"data row {n} without meta" for n in sorted(data - meta)]
    return left + [f"meta row {n} without data" for n in sorted(meta - data)]


# --- stats --------------------------------------------------------------------------------


def test_stats_of_an_empty_cache(make: Callable[..., Any]) -> None:
    engine = make()
    assert engine.stats() == {
        "entries": 0,
        "bytes": sum(folder_files(engine.directory).values()),
        "oldest": None,
        "newest": None,
    }
    assert engine.prune() == 0


def test_stats_counts_entries_bytes_and_store_times(make: Callable[..., Any]) -> None:
    engine = make()
    rng = random.Random(1)
    start = time.time()
    engine.set("first", checked("first", 100, rng))
    after_first = time.time()
    for i, size in enumerate(SIZES * 2):
        engine.set(f"k{i}", checked(f"k{i}", size, rng))
    before_last = time.time()
    engine.set("last", checked("last", 60_000, rng))
    end = time.time()
    assert engine.get("first") is not None  # a hit (lru) changes no store time
    (engine.directory / "notes.txt").write_bytes(b"x" * 1234)  # not the engine's: counted
    stats = engine.stats()
    assert stats["entries"] == len(engine) == 10
    assert stats["bytes"] == sum(folder_files(engine.directory).values())
    assert start <= stats["oldest"] <= after_first
    assert before_last <= stats["newest"] <= end


def test_store_times_survive_a_reopen_and_lru_hits(make: Callable[..., Any]) -> None:
    engine = make(policy="lru")
    engine.set("a", 1)
    time.sleep(0.01)
    engine.set("b", 2)
    stats = engine.stats()
    time.sleep(0.01)
    engine.close()
    reopened = make(policy="lru")
    assert reopened.get("a") == 1
    assert reopened.get("b") == 2
    again = reopened.stats()
    assert (again["oldest"], again["newest"]) == (stats["oldest"], stats["newest"])
    assert again["oldest"] < again["newest"]


def test_expired_entries_are_left_out_then_pruned(make: Callable[..., Any]) -> None:
    engine = make(ttl=60)
    engine.set("a", "x" * 50_000, ttl=0.2)
    engine.set("b", "y" * 50_000, ttl=0.2)
    time.sleep(0.01)
    before_c = time.time()
    engine.set("c", 3)
    time.sleep(0.3)
    files_before = len(folder_files(engine.directory))
    stats = engine.stats()
    assert stats["entries"] == 1
    assert before_c <= stats["oldest"] == stats["newest"]
    assert engine.prune() == 2
    assert engine.stats() == {**stats, "bytes": sum(folder_files(engine.directory).values())}
    assert len(folder_files(engine.directory)) <= files_before
    assert engine.get("c") == 3
    assert engine.prune() == 0


def plant_leftovers(kind: str, engine: Any) -> int:
    """Plant what killed writers leave, two hours old; returns how many things `prune`
    removes (klepto counts a directory, with what is in it, as one)."""
    folder = engine.directory
    if kind == "klepto-sql":  # a delete killed between its data and meta rows
        engine.set("deleted", 0)
        engine._store._tables()[0].pop(engine._name("deleted")[0])
        return 1
    planted = {
        "diskcache": ["ee/ff/" + "0" * 28 + ".val"],
        "joblib": [f".{'a' * 32}.sig.tmp1234.tmp", f"{'a' * 32}.{'b' * 16}.joblib"],
        "klepto-dir": ["klepto/K_.I_killed/output.json", f"klepto/K_{'c' * 40}/"],
    }[kind]
    old = time.time() - 7200
    for name in planted:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir()
        else:
            path.write_text("[null, ")
        os.utime(path, (old, old))
        os.utime(path.parent, (old, old))  # klepto ages a directory by its mtime
    return len(planted)


def test_opened_without_a_sweep_stats_writes_nothing_and_prune_counts_all(
    make: Callable[..., Any], kind: str
) -> None:
    engine = make(ttl=60, maxsize=10)
    engine.set("a", 1, ttl=0.2)
    engine.set("b", 2, ttl=0.2)
    engine.set("c", 3)
    planted = plant_leftovers(kind, engine)
    engine.close()
    time.sleep(0.3)
    before = folder_files(engine.directory)
    tool = make(ttl=60, maxsize=10, sweep=False)  # as `twat-cache stats` and `prune` open it
    assert tool.stats()["entries"] == 1
    sqlite_own = ("cache.db-wal", "cache.db-shm")  # SQLite's, while a connection is open
    assert {k: v for k, v in folder_files(tool.directory).items() if k not in sqlite_own} == {
        k: v for k, v in before.items() if k not in sqlite_own
    }
    assert tool.prune() == 2 + planted
    assert leftovers(kind, tool.directory) == []
    assert tool.get("c") == 3


def test_a_lowered_bound_is_enforced_by_prune(make: Callable[..., Any], kind: str) -> None:
    rng = random.Random(2)
    values = {f"k{i}": checked(f"k{i}", 1000, rng) for i in range(8)}
    small = make(maxsize=3, policy="fifo")  # a process running with a lower bound...
    big = make(maxsize=50, policy="fifo")  # ...while another writes with a higher one
    for key, value in values.items():
        big.set(key, value)
    assert small.stats()["entries"] == 8
    assert small.prune() == 5
    assert small.stats()["entries"] == 3
    assert {k: small.get(k, MISS) for k in values} == {
        k: v if k in ("k5", "k6", "k7") else MISS for k, v in values.items()
    }
    for key, value in values.items():
        big.set(key, value)
    big.close()
    small.close()
    # Reopened with the lower bound, as a tool opens it (joblib and klepto would otherwise
    # enforce it on opening already; diskcache culls entry counts after a write or in prune).
    reopened = make(maxsize=3, policy="fifo", sweep=False)
    assert reopened.stats()["entries"] == 8
    assert reopened.prune() == 5
    assert [k for k in values if reopened.get(k, MISS) == values[k]] == ["k5", "k6", "k7"]
    assert leftovers(kind, reopened.directory) == []


def test_diskcache_lowered_byte_bound_is_culled_by_prune() -> None:
    cls, _ = engine_class("diskcache")
    rng = random.Random(3)
    values = {f"k{i}": checked(f"k{i}", 100_000, rng) for i in range(12)}
    big = cls(CacheConfig(folder_name="bytes", maxsize="20MB", policy="fifo"))
    for key, value in values.items():
        big.set(key, value)
    big.close()
    small = cls(CacheConfig(folder_name="bytes", maxsize="600KB", policy="fifo"))
    removed = small.prune()
    kept = [k for k in values if small.get(k, MISS) is not MISS]
    assert removed == 12 - len(kept) > 0
    assert kept == list(values)[-len(kept) :]
    assert all(exact(k, small.get(k)) for k in kept)
    assert small._cache.volume() <= 600_000  # diskcache's measure: pages and value files
    assert leftovers("diskcache", small.directory) == []
    small.close()


# --- writers killed with SIGKILL ----------------------------------------------------------

WRITER = r"""
import hashlib, json, os, random, signal, sys, time
from twat_cache import CacheConfig

kind, folder, seed, fault, seconds = sys.argv[1:6]
if kind == "diskcache":
    from twat_cache.engines import diskcache as module
    cls, options = module.DiskCacheEngine, {}
elif kind == "joblib":
    from twat_cache.engines import joblib as module
    cls, options = module.JoblibEngine, {}
else:
    from twat_cache.engines import klepto as module
    cls, options = module.KleptoEngine, {"use_sql": kind == "klepto-sql"}
engine = cls(CacheConfig(folder_name=folder, maxsize=1000, **options))
rng = random.Random(int(seed))

def value(key, size=None):
    blob = rng.randbytes(size or rng.choice((100, 5_000, 60_000, 300_000)))
    return (key, blob, hashlib.sha256(key.encode() + blob).hexdigest())

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def then_die(owner, name):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        original(*args, **kwargs)
        die()
    static = isinstance(owner.__dict__.get(name), staticmethod)
    setattr(owner, name, staticmethod(wrapper) if static else wrapper)

if fault not in ("random", "live"):  # two entries, then one operation killed at a point
    engine.set("k0", value("k0", 100_000))
    engine.set("k1", value("k1", 100_000))
    files = getattr(module, "files", None)
    if fault == "value-file":
        from twat_cache.engines._diskcache_disk import PayloadDisk

        then_die(PayloadDisk, "_write_private")
    elif fault == "data-temp":
        then_die(cls, "_dump")
    elif fault == "uncommitted":
        files.encode = die
    elif fault == "old-data":
        files.peek = die
    elif fault == "claimed":
        files.read = die
    elif fault == "temp-dir":
        os.renames = die
    elif fault == "emptied":
        os.rmdir = die
    elif fault == "half-row":
        then_die(module.SqlStore, "_replace")
    elif fault == "half-delete":
        def remove(store, name):
            store._tables()[0].pop(name, None)
            die()
        module.SqlStore.remove = remove
    if fault in ("claimed", "half-delete"):
        engine.delete("k0")
    else:
        key = "k9" if fault == "half-row" else "k0"
        engine.set(key, value(key, 100_000))
    raise SystemExit("the fault never fired")

counts = {"wrong": 0, "errors": []}
deadline = time.monotonic() + float(seconds)
print("ready", flush=True)
while fault == "random" or time.monotonic() < deadline:
    key = f"k{rng.randrange(12)}"
    try:
        roll = rng.random()
        if roll < 0.1:
            engine.delete(key)
        elif roll < 0.4:
            got = engine.get(key, None)
            counts["wrong"] += got is not None and not (
                got[0] == key and hashlib.sha256(key.encode() + got[1]).hexdigest() == got[2])
        else:
            engine.set(key, value(key))
    except Exception as exc:  # SQLite busy past its timeout: reported, tolerated if rare
        counts["errors"].append(repr(exc))
print(json.dumps(counts), flush=True)
"""


def writer(tmp_path: Path, kind: str, fault: str, seed: int = 0, seconds: float = 0) -> Any:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen(
        [sys.executable, "-W", "error", str(script), kind, "tools", str(seed), fault, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def surviving(engine: Any) -> int:
    """Check every entry left reads back exactly; return how many there are."""
    found = 0
    for i in range(12):
        key = f"k{i}"
        value = engine.get(key, MISS)  # a damaged entry would warn: an error under -W error
        assert value is MISS or exact(key, value), key
        found += value is not MISS
    return found


def check_consistent(kind: str, engine: Any) -> None:
    found = surviving(engine)
    stats = engine.stats()
    assert stats["entries"] == found == len(engine)
    assert stats["bytes"] == sum(folder_files(engine.directory).values())


def test_writers_killed_at_random_leave_nothing_after_prune(
    make: Callable[..., Any], kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(4)
    root = make(maxsize=1000).directory.parent  # the folder and its manifest exist
    neighbour = root / "neighbour" / "ab" / "cd" / f"{'e' * 28}.val"
    neighbour.parent.mkdir(parents=True)
    neighbour.write_bytes(b"another cache's file")
    os.utime(neighbour, (0, 0))
    for round_ in range(3):
        process = writer(tmp_path, kind, "random", seed=round_)
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n", process.communicate()[1]
        time.sleep(rng.uniform(0.05, 0.4))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        assert process.returncode == -signal.SIGKILL
    engine = make(maxsize=1000)
    no_grace(kind, monkeypatch)
    engine.prune()
    assert leftovers(kind, engine.directory) == []
    check_consistent(kind, engine)
    assert neighbour.exists()  # another folder's files are never touched
    assert PersistentEngine.read_manifest(engine.directory) is not None


#: Where a writer is killed, what it leaves (listed by `leftovers`, names masked), how
#: many of those `prune` removes, and what is then left of the key it was writing.
FAULTS = {
    # A value file written, its row never committed.
    ("diskcache", "value-file"): (["xx/xx/<hex>.val"], 1, "old"),
    ("joblib", "data-temp"): ([".<hex>.<hex>.joblib.<tmp>.tmp"], 1, "old"),
    ("joblib", "uncommitted"): (["<hex>.<hex>.joblib"], 1, "old"),
    # The new record committed, the old data file not yet removed.
    ("joblib", "old-data"): (["<hex>.<hex>.joblib"], 1, "new"),
    # A delete that renamed the record aside, then died.
    ("joblib", "claimed"): ([".<hex>.sig.<hex>.tmp", "<hex>.<hex>.joblib"], 2, "gone"),
    # klepto removes the old entry directory, then renames its temporary one into place.
    ("klepto-dir", "temp-dir"): (["klepto/K_.I_<hex>/output.json"], 1, "gone"),
    ("klepto-dir", "emptied"): (["klepto/K_.I_<hex>/output.json", "klepto/K_<hex>/"], 2, "gone"),
    # A set between its data and meta rows (adopted, not removed), a delete between them.
    ("klepto-sql", "half-row"): (["data row <hex> without meta"], 0, "new"),
    ("klepto-sql", "half-delete"): (["meta row <hex> without data"], 1, "gone"),
}


def masked(names: list[str]) -> list[str]:
    """`names` with their random parts masked: hex digests, temporary suffixes, subdirs."""
    names = [re.sub(r"\.joblib\.[A-Za-z0-9_]+\.tmp$", ".joblib.<tmp>.tmp", n) for n in names]
    names = [re.sub(r"[0-9a-f]{8,}", "<hex>", name) for name in names]
    return sorted(re.sub(r"^[0-9a-f]{2}/[0-9a-f]{2}/", "xx/xx/", n) for n in names)


@pytest.mark.parametrize(("kind", "fault"), list(FAULTS))
def test_a_writer_killed_at_each_point_leaves_what_prune_removes(
    kind: str,
    fault: str,
    make: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected, removed, outcome = FAULTS[kind, fault]
    engine = make(maxsize=1000)  # a long-running process, open before the writer dies
    process = writer(tmp_path, kind, fault)
    _, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, err
    assert masked(leftovers(kind, engine.directory)) == expected
    key = "k9" if fault == "half-row" else "k0"
    assert engine.stats()["entries"] == 2 - (outcome == "gone") + (key == "k9")
    if kind != "klepto-sql":  # SQL rows are repaired whatever their age
        assert engine.prune() == 0  # young: kept, as a live writer's would be
        assert masked(leftovers(kind, engine.directory)) == expected
    no_grace(kind, monkeypatch)
    assert engine.prune() == removed
    assert leftovers(kind, engine.directory) == []
    check_consistent(kind, engine)
    value = engine.get(key, MISS)
    assert (value is MISS) == (outcome == "gone")
    assert engine.prune() == 0


def test_prune_leaves_other_files_alone(
    make: Callable[..., Any], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make()
    engine.set("k", 1)
    directory = engine.directory
    planted = [
        directory / "notes.txt",
        directory / ".hidden.tmp",
        directory / "ab" / "cd" / "notes.val",
        directory / "klepto" / "README",
        directory.parent / "loose.val",
        directory.parent / "neighbour" / f"{'a' * 32}.{'b' * 16}.joblib",
    ]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not this engine's")
        os.utime(path, (0, 0))
    no_grace(kind, monkeypatch)
    assert engine.prune() == 0
    assert all(path.exists() for path in planted)
    assert engine.stats()["bytes"] == sum(folder_files(directory).values())
    assert engine.get("k") == 1


def test_klepto_sql_journal_left_by_a_killed_writer_is_settled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cls, _ = engine_class("klepto-sql")
    engine = cls(CacheConfig(folder_name="journal", use_sql=True, maxsize=10))
    engine.set("k", 1)
    journal = engine.directory / "klepto.sqlite-journal"
    for left in (b"", bytes(600)):  # created, or its header never written: SQLite ignores it
        journal.write_bytes(left)
        assert engine.get("k") == 1
        assert journal.exists()
        assert engine.prune() == 1
        assert not journal.exists()
        assert engine.get("k") == 1
    engine.close()


def test_prune_spares_a_live_writers_files(
    make: Callable[..., Any], kind: str, tmp_path: Path
) -> None:
    engine = make(maxsize=1000)
    process = writer(tmp_path, kind, "live", seed=5, seconds=1.0)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n", process.communicate()[1]
    prunes, busy = 0, []
    while process.poll() is None:
        try:
            engine.prune()  # with the engine's own graces: the writer is alive
            engine.stats()
            surviving(engine)
        except Exception as exc:  # SQLite busy past its timeout: tolerated if rare
            busy.append(repr(exc))
        prunes += 1
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    counts = json.loads(out)
    assert counts["wrong"] == 0
    errors = counts["errors"] + busy
    assert all("locked" in e or "Timeout" in e for e in errors), errors
    assert len(errors) <= prunes // 4 + 5, errors
    assert prunes > 1
    check_consistent(kind, engine)
