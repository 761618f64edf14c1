"""Scenario 9, permissions: under umask 022 every directory the engines create is 0700 and
every file 0600 (entries, databases and their journals, manifests, the secret); a cache
root or folder that others can write, or that another user owns, is refused; and symbolic
links planted where entry files go are not followed: nothing outside the cache root is read
or written through them.

Reads and writes through a link are seen by an audit hook (every file-system event Python
raises: open, mkdir, rename, sqlite3.connect..., with its path resolved), and by comparing
the files outside the root before and after.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stress.common import (
    ZERO,
    Rows,
    cli_command,
    decorator,
    per_engine,
    progress,
    selected,
    umask,
)

NAME = "permissions"
FILE_ENGINES = ("diskcache", "joblib", "klepto")
LARGE = 100_000  # bytes: past diskcache's 32 KB, a value gets its own file


def _large(i: int) -> bytes:
    return bytes([i % 256]) * LARGE


# --- modes ---------------------------------------------------------------------------------


def _exercise(engine: str, folder: str, url: str | None, **options: Any) -> None:
    """Create, read, overwrite and delete entries of every kind the engine stores."""
    import numpy as np

    def compute(i: int) -> Any:
        return {0: b"small", 1: _large(1), 2: np.arange(1000.0), 3: [1, 2, 3]}[i % 4]

    f = decorator(engine, folder, url, **options)(compute)
    for i in range(8):
        f(i)
        f(i)
    f.cache_refresh(1)
    f.cache_delete(2)
    f.cache_engine.close()


def _bad_modes(top: Path) -> list[str]:
    bad = []
    for path in [top, *top.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        want = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        if stat.S_IMODE(info.st_mode) != want:
            bad.append(f"{oct(stat.S_IMODE(info.st_mode))} {path.relative_to(top.parent)}")
    return bad


def modes(engine: str, base: Path, url: str | None) -> tuple[list[str], list[str]]:
    """(files and dirs with another mode, parent dirs created for the root and their modes),
    from a root the library creates itself, under umask 022."""
    root = base / f"modes-{engine}" / "made-by-twat-cache" / "root"
    os.environ["TWAT_CACHE_DIR"] = str(root)
    folder = f"modes-{engine}"
    _exercise(engine, folder, url)
    if engine == "klepto":
        _exercise(engine, f"{folder}-sql", url, use_sql=True)
    if engine != "redis":
        for command in ("stats", "prune"):
            subprocess.run(
                cli_command(command),
                check=True,
                capture_output=True,
                env={**os.environ, "TWAT_CACHE_DIR": str(root)},
                timeout=300,
            )
    parents = [f"{oct(stat.S_IMODE(p.stat().st_mode))} {p.name}/" for p in (root.parent,)]
    return _bad_modes(root), parents


# --- unsafe roots and folders ----------------------------------------------------------------


def _unsafe_cases() -> list[tuple[str, Callable[[Path], None]]]:
    cases: list[tuple[str, Callable[[Path], None]]] = [
        ("world-writable (0777)", lambda p: p.chmod(0o777)),
        ("group-writable (0770)", lambda p: p.chmod(0o770)),
        ("world-writable, sticky (1777)", lambda p: p.chmod(0o1777)),
    ]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        cases.append(("owned by nobody", lambda p: os.chown(p, nobody.pw_uid, nobody.pw_gid)))
    return cases


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def unsafe(engine: str, base: Path, url: str | None) -> tuple[list[str], list[str]]:
    """(cases in which an unsafe root or folder was used, every case and what happened)."""
    from twat_cache.config import CacheConfig
    from twat_cache.engines.manager import get_manager
    from twat_cache.exceptions import ConfigurationError

    accepted, seen = [], []
    # A Redis cache keeps nothing in a folder: only its root (the secret) applies.
    for where in ("root",) if engine == "redis" else ("root", "folder"):
        for label, make_unsafe in _unsafe_cases():
            case = f"{where} {label}"
            root = base / f"unsafe-{engine}-{where}-{len(seen)}" / "root"
            root.mkdir(parents=True, mode=0o700)
            folder = "victim"
            target = root
            if where == "folder":
                target = root / folder
                target.mkdir(mode=0o700)
            make_unsafe(target)
            before = _tree(root)
            os.environ["TWAT_CACHE_DIR"] = str(root)
            # The engine built directly must refuse...
            options = {"url": url} if engine == "redis" else {}
            try:
                built = get_manager().load(engine)(CacheConfig(folder_name=folder, **options))
            except ConfigurationError:
                outcome = "engine refused"
            else:
                built.close()
                outcome = "engine built"
            # ...and a decorated function must not cache there (it falls back or raises).
            try:
                f = decorator(engine, folder, url)(lambda x: x)
                f(1)
                f(1)
                served = f.cache_engine.name
            except ConfigurationError:
                served = "refused at decoration"
            wrote = sorted(set(_tree(root)) - set(before))
            if outcome == "engine built" or wrote:
                accepted.append(f"{case}: {outcome}, wrote {wrote[:3]}")
            seen.append(f"{case}: {outcome}; decorated: {served}")
    return accepted, seen


# --- planted symbolic links ---------------------------------------------------------------------

_WATCHED = {
    "open",
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.utime",
    "os.chmod",
    "os.chown",
    "os.symlink",
    "os.link",
    "os.truncate",
    "os.listdir",
    "os.scandir",
    "shutil.rmtree",
    "shutil.copyfile",
    "shutil.move",
    "sqlite3.connect",
    "os.walk",
}

#: Events acting on a link itself, never on its target: creating a directory where a link is
#: fails (EEXIST), and renaming, replacing or removing a link in the cache leaves the file it
#: points to alone (the snapshot of the outside files checks that too).
_ON_LINK_ITSELF = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink"}


class Watch:
    """Records every file-system audit event whose path resolves under `outside`."""

    def __init__(self) -> None:
        self.outside: str | None = None
        self.events: list[str] = []
        self._busy = threading.local()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.outside is None or event not in _WATCHED or getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            if event == "open" and len(args) == 3 and isinstance(args[2], int):
                if not isinstance(args[0], str | bytes | os.PathLike):
                    return  # open(fd): the file was opened, and checked, by path before
                path, flags = os.fsdecode(args[0]), args[2]
                nofollow = flags & getattr(os, "O_NOFOLLOW", 0)
                exclusive = flags & os.O_CREAT and flags & os.O_EXCL
                if (nofollow or exclusive) and os.path.islink(path):
                    return  # fails (ELOOP, EEXIST) without following the link
            for arg in args:
                if isinstance(arg, str | bytes | os.PathLike):
                    path = os.fsdecode(arg)
                    if event in _ON_LINK_ITSELF:  # the last component is never followed
                        head, tail = os.path.split(os.path.abspath(path))
                        real = os.path.join(os.path.realpath(head), tail)
                    else:
                        real = os.path.realpath(path)
                    if real == self.outside or real.startswith(self.outside + os.sep):
                        self.events.append(f"{event} {path}")
        finally:
            self._busy.on = False


def _snapshot(top: Path) -> dict[str, tuple[int, int, str]]:
    found = {}
    for path in sorted(top.rglob("*")):
        if path.is_file() and not path.is_symlink():
            info = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(top))] = (info.st_size, info.st_mtime_ns, digest)
    return found


def _plant(link: Path, target: Path) -> None:
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.symlink_to(target, target_is_directory=target.is_dir())


class Case:
    """One planted link: a fresh root, a fresh folder, and the files outside it."""

    def __init__(self, base: Path, engine: str, name: str, url: str | None) -> None:
        self.directory = base / f"links-{engine}-{name.replace(' ', '-')}"
        self.root = self.directory / "root"
        self.outside = self.directory / "outside"
        self.root.mkdir(parents=True, mode=0o700)
        self.outside.mkdir(mode=0o700)
        (self.outside / "decoy").write_bytes(b"not a cache file\n")
        os.environ["TWAT_CACHE_DIR"] = str(self.root)
        self.folder = "linked"
        self.engine = engine
        self.url = url
        self.f: Any = None

    def open(self) -> None:
        """A cache on the folder, as a new process would open it."""
        if self.f is not None:
            self.f.cache_engine.close()
        self.f = decorator(self.engine, self.folder, self.url)(_large)

    @property
    def cache(self) -> Path:
        return self.root / self.folder

    def new_files(self, call: Callable[[], Any]) -> list[Path]:
        before = set(self.cache.rglob("*"))
        call()
        return sorted(p for p in set(self.cache.rglob("*")) - before if p.is_file())

    def copy_out(self, path: Path) -> Path:
        """A copy of a real file or directory of the cache, outside the root."""
        target = self.outside / f"copy-of-{path.name}"
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copyfile(path, target)
        return target


def _cases(engine: str) -> list[tuple[str, Callable[[Case], None]]]:
    """The links to plant for `engine`: (what, how to plant it before the calls)."""

    def diskcache_database(case: Case) -> None:
        case.f.cache_engine.close()
        for part in ("cache.db", "cache.db-wal", "cache.db-shm"):
            if (case.cache / part).exists():
                (case.cache / part).unlink()
        _plant(case.cache / "cache.db", case.outside / "planted.db")

    def diskcache_value_dirs(case: Case) -> None:
        (case.outside / "values").mkdir()
        for n in range(256):
            (case.outside / "values" / f"{n:02x}").mkdir()
            _plant(case.cache / f"{n:02x}", case.outside / "values" / f"{n:02x}")

    def existing_file(pick: Callable[[list[Path]], Path]) -> Callable[[Case], None]:
        def plant(case: Case) -> None:
            made = case.new_files(lambda: case.f(7))
            chosen = pick(made)
            _plant(chosen, case.copy_out(chosen))

        return plant

    def klepto_entry_dir(case: Case) -> None:
        made = case.new_files(lambda: case.f(7))
        entry = made[0].parent
        _plant(entry, case.copy_out(entry))

    def klepto_archive(case: Case) -> None:
        (case.outside / "archive").mkdir()
        shutil.rmtree(case.cache / "klepto", ignore_errors=True)
        _plant(case.cache / "klepto", case.outside / "archive")

    def joblib_record_ahead(case: Case) -> None:
        made = case.new_files(lambda: case.f(7))
        record = next(p for p in made if p.suffix == ".sig")
        copy = case.copy_out(record)
        case.f.cache_delete(7)
        _plant(record, copy)

    def manifest(case: Case) -> None:
        path = case.root / ".manifests" / f"{case.folder}.json"
        _plant(path, case.copy_out(path))

    def secret(case: Case) -> None:
        # Planted in a root no engine has opened yet: a process keeps the secret it read.
        (case.outside / "secret").write_bytes(os.urandom(32))
        _plant(case.root / ".secret", case.outside / "secret")

    def value_file(made: list[Path]) -> Path:
        return next(p for p in made if p.suffix == ".val")

    def data_file(made: list[Path]) -> Path:
        return next(p for p in made if p.suffix in (".joblib", ".npy"))

    def record_file(made: list[Path]) -> Path:
        return next(p for p in made if p.suffix == ".sig")

    def entry_file(made: list[Path]) -> Path:
        return made[0]

    per_engine: dict[str, list[tuple[str, Callable[[Case], None]]]] = {
        "diskcache": [
            ("database file", diskcache_database),
            ("value directories", diskcache_value_dirs),
            ("a value file", existing_file(value_file)),
        ],
        "joblib": [
            ("an entry record", existing_file(record_file)),
            ("an entry record, before the entry is stored", joblib_record_ahead),
            ("a data file", existing_file(data_file)),
        ],
        "klepto": [
            ("the archive directory", klepto_archive),
            ("an entry directory", klepto_entry_dir),
            ("an entry file", existing_file(entry_file)),
        ],
        "redis": [],
    }
    shared = [("the secret, before the root is first used", secret)]
    if engine != "redis":
        shared.append(("the manifest", manifest))
    return per_engine[engine] + shared


def links(engine: str, base: Path, url: str | None, watch: Watch) -> tuple[list[str], list[str]]:
    """(cases in which something outside the root was read or written, every case)."""
    followed, seen = [], []
    for name, plant in _cases(engine):
        case = Case(base, engine, name, url)
        if not name.startswith("the secret"):
            case.open()
            case.f(1)  # the folder, its database and manifest, the secret exist
        plant(case)
        if case.f is not None:
            case.f.cache_engine.close()
        before = _snapshot(case.outside)
        watch.events.clear()
        watch.outside = os.path.realpath(case.outside)
        problems = []
        try:
            case.f = None
            case.open()
            if case.f.cache_engine.name != engine:
                problems.append(f"served by {case.f.cache_engine.name}")
            for i in (7, 7, 8, 8, 9):
                if case.f(i) != _large(i):
                    problems.append("wrong value")
            case.f.cache_engine.close()
        except Exception as exc:
            problems.append(f"raised {type(exc).__name__}: {exc}"[:200])
        finally:
            watch.outside = None
        after = _snapshot(case.outside)
        events = sorted(set(watch.events))
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if events or changed:
            followed.append(
                f"{name}: {'; '.join((events + [f'changed {c}' for c in changed])[:4])}"
            )
        seen.append(
            f"{name}: {'followed' if events or changed else 'not followed'}"
            f"{'; ' + '; '.join(problems) if problems else ''}"
        )
    return followed, seen


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    # No sizes: every case runs in both profiles.
    base = Path(os.environ["TWAT_CACHE_DIR"]).parent / "permissions-cases"
    base.mkdir(mode=0o700)
    watch = Watch()

    def work(engine: str, rows: Rows) -> None:
        if engine == "redis" and redis_url is None:
            rows.skip(
                engine, "files not 0600, dirs not 0700 (umask 022)", "skipped: no redis-server"
            )
            return
        progress(f"{NAME}: {engine}")
        with umask(0o022):
            bad, parents = modes(engine, base, redis_url)
        rows.judge(
            engine,
            "files not 0600, dirs not 0700 (umask 022)",
            len(bad),
            ZERO,
            shown=f"{len(bad)}",
            files=bad[:20],
            parents_of_root=parents,
        )
        accepted, cases = unsafe(engine, base, redis_url)
        rows.judge(
            engine,
            "unsafe roots and folders accepted",
            len(accepted),
            ZERO,
            shown=f"{len(accepted)} of {len(cases)} cases",
            accepted=accepted,
            cases=cases,
        )
        followed, cases = links(engine, base, redis_url, watch)
        rows.judge(
            engine,
            "planted symlinks followed (outside read or written)",
            len(followed),
            ZERO,
            shown=f"{len(followed)} of {len(cases)} links",
            followed=followed,
            cases=cases,
        )

    # One engine at a time: the cases point TWAT_CACHE_DIR at roots of their own.
    return per_engine(NAME, selected(engines), work, parallel=False).as_dicts()
