"""paths: the cache root, folder names, private 0700 dirs, 0600 files and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import platformdirs
import pytest

from twat_cache.exceptions import ConfigurationError
from twat_cache.paths import (
    atomic_write,
    cache_dir,
    cache_root,
    default_folder,
    private_dir,
    validate_folder_name,
)

NOBODY = 65534


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tree(path: Path) -> list[str]:
    """Every entry under `path` (recursively), for "nothing changed on disk" checks."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def give_away(path: Path) -> None:
    """Make `path` owned by another user (uid 65534, `nobody`).

    CI runs as root, where this always works. Elsewhere, skip when the OS refuses, except
    under CI=true, where a skipped ownership check would hide a security regression.
    """
    try:
        os.chown(path, NOBODY, -1)
    except PermissionError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but cannot chown a directory to another user: run CI as root")
        pytest.skip("not root: cannot make a directory owned by another user")


@pytest.fixture
def fresh_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask022: None) -> Path:
    """A cache root that does not exist yet (so the library creates it), under umask 022."""
    root = tmp_path / "fresh" / "root"
    monkeypatch.setenv("TWAT_CACHE_DIR", str(root))
    return root


# --- cache_root ------------------------------------------------------------------------


def test_root_is_twat_cache_dir_created_0700(fresh_root: Path) -> None:
    assert not fresh_root.exists()
    assert cache_root() == fresh_root
    assert fresh_root.is_dir()
    assert mode_of(fresh_root) == 0o700


def test_root_is_read_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask022: None
) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    monkeypatch.setenv("TWAT_CACHE_DIR", str(first))
    assert cache_root() == first
    monkeypatch.setenv("TWAT_CACHE_DIR", str(second))
    assert cache_root() == second
    assert cache_dir("f").parent == second
    assert mode_of(first) == mode_of(second) == 0o700


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask022: None) -> Path:
    """No TWAT_CACHE_DIR, and HOME / XDG_CACHE_HOME in tmp: the real home is never touched."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("TWAT_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return home


def test_root_defaults_to_platformdirs(tmp_path: Path, fake_home: Path) -> None:
    expected = Path(platformdirs.user_cache_dir("twat_cache"))
    assert expected.is_relative_to(tmp_path)  # the fixture really isolated us
    assert cache_root() == expected
    assert mode_of(expected) == 0o700


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_twat_cache_dir_means_default(
    tmp_path: Path, fake_home: Path, monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    monkeypatch.setenv("TWAT_CACHE_DIR", blank)
    assert cache_root() == Path(platformdirs.user_cache_dir("twat_cache"))
    assert cache_root().is_relative_to(tmp_path)


def test_root_without_xdg_is_under_home(fake_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path(platformdirs.user_cache_dir("twat_cache"))
    assert cache_root().is_relative_to(fake_home)


def test_twat_cache_dir_expands_user(fake_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWAT_CACHE_DIR", "~/caches")
    assert cache_root() == fake_home / "caches"
    assert (fake_home / "caches").is_dir()


# --- private directories and files ------------------------------------------------------


def test_cache_dir_is_created_0700(fresh_root: Path) -> None:
    path = cache_dir("sessions")
    assert path == fresh_root / "sessions"
    assert path.is_dir()
    assert mode_of(path) == 0o700
    assert mode_of(fresh_root) == 0o700
    assert cache_dir("sessions") == path  # idempotent on an existing private dir


def test_atomic_write_files_are_0600(fresh_root: Path) -> None:
    target = cache_dir("files") / "entry"
    with atomic_write(target) as temp:
        assert temp.parent == target.parent
        assert re.fullmatch(r"\.entry\..+\.tmp", temp.name)
        assert mode_of(temp) == 0o600
        assert not target.exists()  # nothing visible under the final name yet
        temp.write_bytes(b"value")
    assert target.read_bytes() == b"value"
    assert mode_of(target) == 0o600


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o720, 0o702, 0o775])
@pytest.mark.parametrize("which", ["root", "cache_dir"])
def test_writable_by_others_is_refused(fresh_root: Path, which: str, mode: int) -> None:
    if which == "root":
        victim = fresh_root
        victim.mkdir(parents=True)
    else:
        victim = cache_root() / "shared"
        victim.mkdir()
    victim.chmod(mode)
    with pytest.raises(ConfigurationError, match="writable by other users") as info:
        cache_root() if which == "root" else cache_dir("shared")
    message = str(info.value)
    assert str(victim) in message
    assert f"chmod 700 {victim}" in message
    assert "TWAT_CACHE_DIR" in message
    assert stat.S_IMODE(victim.stat().st_mode) == mode  # refused, not silently "fixed"
    assert tree(victim) == []  # and nothing was written into it


@pytest.mark.parametrize("which", ["root", "cache_dir"])
def test_owned_by_another_user_is_refused(fresh_root: Path, which: str) -> None:
    if which == "root":
        victim = fresh_root
        victim.mkdir(parents=True, mode=0o700)
    else:
        victim = cache_root() / "theirs"
        victim.mkdir(mode=0o700)
    give_away(victim)
    with pytest.raises(ConfigurationError, match="owned by another user") as info:
        cache_root() if which == "root" else cache_dir("theirs")
    message = str(info.value)
    assert str(victim) in message
    assert str(NOBODY) in message
    assert "TWAT_CACHE_DIR" in message
    assert tree(victim) == []


@pytest.mark.parametrize("which", ["root", "cache_dir"])
def test_existing_file_is_refused(fresh_root: Path, which: str) -> None:
    if which == "root":
        victim = fresh_root
        victim.parent.mkdir(parents=True)
    else:
        victim = cache_root() / "afile"
    victim.write_bytes(b"not a dir")
    with pytest.raises(ConfigurationError) as info:
        cache_root() if which == "root" else cache_dir("afile")
    assert str(victim) in str(info.value)
    assert victim.read_bytes() == b"not a dir"


def test_dangling_symlink_cache_dir_is_refused(fresh_root: Path, tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    (cache_root() / "dangling").symlink_to(nowhere)
    with pytest.raises(ConfigurationError) as info:
        cache_dir("dangling")
    assert str(cache_root() / "dangling") in str(info.value)
    assert not nowhere.exists()  # the link was not followed to create a directory elsewhere


def test_symlinked_private_root_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask022: None
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    monkeypatch.setenv("TWAT_CACHE_DIR", str(link))
    assert cache_root() == link
    assert cache_dir("sub").resolve() == real / "sub"
    assert mode_of(real / "sub") == 0o700


def test_symlinked_root_to_world_writable_dir_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask022: None
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    link = tmp_path / "link"
    link.symlink_to(shared)
    monkeypatch.setenv("TWAT_CACHE_DIR", str(link))
    with pytest.raises(ConfigurationError, match="writable by other users"):
        cache_root()


def test_symlinked_cache_dir_to_world_writable_dir_is_refused(
    fresh_root: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (cache_root() / "c").symlink_to(shared)
    with pytest.raises(ConfigurationError, match="writable by other users") as info:
        cache_dir("c")
    assert str(cache_root() / "c") in str(info.value)
    assert tree(shared) == []


def test_symlinked_cache_dir_to_another_users_dir_is_refused(
    fresh_root: Path, tmp_path: Path
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    give_away(theirs)
    (cache_root() / "c").symlink_to(theirs)
    with pytest.raises(ConfigurationError, match="owned by another user"):
        cache_dir("c")


def test_private_dir_accepts_an_existing_private_dir(tmp_path: Path) -> None:
    existing = tmp_path / "mine"
    existing.mkdir(mode=0o700)
    (existing / "entry").write_bytes(b"kept")
    assert private_dir(existing) == existing
    assert (existing / "entry").read_bytes() == b"kept"


# --- folder names -------------------------------------------------------------------------

BAD_NAMES = ["a/b", "a\\b", "..", ".", "", "/abs", "x\0y", "/", "../x", "a/", "sub/../.."]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_validate_folder_name_rejects(name: str) -> None:
    with pytest.raises(ConfigurationError, match="folder_name") as info:
        validate_folder_name(name)
    assert "sessions" in str(info.value)  # the message shows what a good name looks like


@pytest.mark.parametrize("name", [None, b"bytes", Path("p")])
def test_validate_folder_name_rejects_non_strings(name: object) -> None:
    with pytest.raises(ConfigurationError, match="folder_name"):
        validate_folder_name(name)  # type: ignore[arg-type]  # the point of the test


@pytest.mark.parametrize("name", BAD_NAMES)
def test_cache_dir_rejects_before_touching_the_disk(fresh_root: Path, name: str) -> None:
    outside = cache_root().parent.parent  # the test's tmp_path: ".." stays inside it
    before, abs_before = tree(outside), Path("/abs").exists()
    with pytest.raises(ConfigurationError, match="folder_name"):
        cache_dir(name)
    assert tree(outside) == before
    assert Path("/abs").exists() == abs_before


def test_cache_dir_rejects_before_creating_the_root(fresh_root: Path) -> None:
    with pytest.raises(ConfigurationError, match="folder_name"):
        cache_dir("../escape")
    assert not fresh_root.exists()


@pytest.mark.parametrize("name", ["sessions", "a.b-c_d", "données", "日本語", "x..", "x" * 200])
def test_good_names_are_accepted(fresh_root: Path, name: str) -> None:
    assert validate_folder_name(name) == name
    path = cache_dir(name)
    assert path == fresh_root / name
    assert path.is_dir()
    assert mode_of(path) == 0o700


def test_a_folder_cannot_take_the_secret_files_name(fresh_root: Path) -> None:
    from twat_cache.serializers import SECRET_FILE, get_secret

    with pytest.raises(ConfigurationError, match="reserved"):  # names starting with '.'
        cache_dir(SECRET_FILE)
    assert len(get_secret(cache_root())) == 32


# --- default_folder -----------------------------------------------------------------------

NASTY = [
    ("app.models", "User.load"),
    ("app.models", "User.save"),
    ("app", "models.User.load"),
    ("mod", "outer.<locals>.inner"),
    ("mod", "<lambda>"),
    ("mod", "outer.<locals>.<lambda>"),
    ("mod", "função"),
    ("mod", "funçãp"),
    ("mod", "日本語"),
    ("mod", "日本人"),
    ("mod", "a/b"),
    ("mod", "a_b"),
    ("mod", "a\\b"),
    ("mod", "../../etc"),
    ("mod", "x\0y"),
    ("mod", "..."),
    ("mod", ""),
    ("", ""),
    ("mod", " "),
    ("mod", "x" * 1000),
    ("mod", "x" * 999 + "y"),
    ("mod", "é" * 1000),
    ("other", "<lambda>"),
]


def test_default_folder_is_pinned() -> None:
    # Changing this value orphans every cache users already have on disk: do it on purpose.
    assert default_folder("app.models.User.load", "app.models:User.load") == (
        "app.models.User.load-9a2bab63"
    )


def _folder(module: str, qualname: str) -> str:
    # What `identity.folder_names` gives a function of an imported module.
    return default_folder(f"{module}.{qualname}", f"{module}:{qualname}")


@pytest.mark.parametrize(("module", "qualname"), NASTY)
def test_default_folder_is_one_safe_component(fresh_root: Path, module: str, qualname: str) -> None:
    name = _folder(module, qualname)
    assert _folder(module, qualname) == name
    assert validate_folder_name(name) == name
    assert name.isascii()
    assert not name.startswith(".")  # never hidden, never next to `.secret` or temp files
    assert len(name.encode()) <= 100
    assert cache_dir(name).is_dir()


def test_default_folder_differs_per_function() -> None:
    names = [_folder(module, qualname) for module, qualname in NASTY]
    assert len(set(names)) == len(names)


def test_default_folder_is_the_same_in_every_process() -> None:
    script = (
        "import json, sys\n"
        "from twat_cache.paths import default_folder\n"
        "pairs = json.loads(sys.stdin.read())\n"
        "print(json.dumps([default_folder(f'{m}.{q}', f'{m}:{q}') for m, q in pairs]))\n"
    )
    here = [_folder(module, qualname) for module, qualname in NASTY]
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(NASTY),
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        assert json.loads(done.stdout) == here


# --- atomic_write -------------------------------------------------------------------------


def leftovers(directory: Path, target: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p != target)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty directory of its own (tmp_path also holds the conftest's cache root)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_atomic_write_replaces_the_target(workdir: Path) -> None:
    target = workdir / "entry"
    target.write_bytes(b"old")
    with atomic_write(target) as temp:
        temp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # readers see the old value until the end
    assert target.read_bytes() == b"new"
    assert leftovers(workdir, target) == []


def _fail_inside(target: Path, exc: BaseException) -> None:
    with atomic_write(target) as temp:
        temp.write_bytes(b"half")
        raise exc


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_write_failure_keeps_the_old_target(workdir: Path, exc: BaseException) -> None:
    target = workdir / "entry"
    target.write_bytes(b"old")
    with pytest.raises(type(exc)):
        _fail_inside(target, exc)
    assert target.read_bytes() == b"old"
    assert leftovers(workdir, target) == []


def test_atomic_write_failure_without_a_target_leaves_nothing(workdir: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        _fail_inside(workdir / "entry", RuntimeError("boom"))
    assert list(workdir.iterdir()) == []


def test_atomic_write_failed_replace_removes_the_temp(workdir: Path) -> None:
    target = workdir / "entry"
    target.mkdir()
    (target / "inside").write_bytes(b"x")  # os.replace cannot put a file over this
    with pytest.raises(OSError, match="entry"), atomic_write(target) as temp:
        temp.write_bytes(b"new")
    assert leftovers(workdir, target) == []
    assert (target / "inside").read_bytes() == b"x"


WRITER = """
import hashlib, sys
from pathlib import Path
from twat_cache.paths import atomic_write

target, size = Path(sys.argv[1]), int(sys.argv[2])
chunk = 1 << 16
i = 0
while True:
    i += 1
    block = i.to_bytes(8, "little") * (chunk // 8)
    digest = hashlib.sha256()
    with atomic_write(target) as temp, open(temp, "wb") as handle:
        for _ in range(size // chunk):
            handle.write(block)
            digest.update(block)
        handle.write(digest.digest())
    print(i, flush=True)
"""


def assert_complete(target: Path, size: int) -> int:
    """The target holds one whole value written by WRITER; return its generation."""
    data = target.read_bytes()
    body, digest = data[:-32], data[-32:]
    assert len(body) == size, f"partial target: {len(data)} bytes"
    assert hashlib.sha256(body).digest() == digest, "corrupt target"
    return int.from_bytes(body[:8], "little")


def test_sigkilled_writer_never_leaves_a_partial_target(workdir: Path) -> None:
    size = 4 << 20
    target = workdir / "big.bin"
    rng = random.Random(1234)
    orphans_seen = 0
    for _ in range(8):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target), str(size)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert writer.stdout is not None
        for _ in range(2):  # at least one write over an existing target
            line = writer.stdout.readline()
            assert line, writer.stderr.read() if writer.stderr else "writer died"
        time.sleep(rng.uniform(0, 0.02))
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=30)
        assert writer.returncode == -signal.SIGKILL
        generation = assert_complete(target, size)
        assert generation >= 2
        others = leftovers(workdir, target)
        assert all(re.fullmatch(r"\.big\.bin\..+\.tmp", name) for name in others), others
        orphans_seen += len(others)
        for name in others:  # the next round starts clean
            (workdir / name).unlink()
        if orphans_seen >= 2:
            break
    # Otherwise every kill landed between two writes and the test proved nothing.
    assert orphans_seen >= 1
