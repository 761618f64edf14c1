"""Where persistent caches live: the cache root, folder names, private dirs and files."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from twat_cache.exceptions import ConfigurationError

__all__ = [
    "NotFollowedError",
    "atomic_write",
    "beneath",
    "cache_dir",
    "cache_root",
    "default_folder",
    "disk_usage",
    "folder_bytes",
    "make_dirs_beneath",
    "make_private_dirs",
    "open_file",
    "private_dir",
    "read_file",
    "refuse_links",
    "set_times",
    "validate_folder_name",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
#: Flags of every open of a file inside a cache folder, on top of the caller's: the last
#: component is never followed if it is a link, a FIFO planted there cannot block the
#: open, and the descriptor is not inherited by child processes.
_SAFE_OPEN: Final = (
    _NOFOLLOW
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


class NotFollowedError(OSError):
    """A path inside a cache folder is a symbolic link, or not the regular file or
    directory the cache keeps there: twat-cache does not follow or use it.

    Links are refused below a cache's folder (not at the root or the folder themselves,
    which are checked after resolving: a user may link those elsewhere): every file there
    is the engine's own, and a link would let reads and writes land outside the cache.
    """

    def __init__(self, path: str | os.PathLike[str], what: str = "a symbolic link") -> None:
        super().__init__(errno.ELOOP, f"{what}: not followed", os.fspath(path))


def cache_root() -> Path:
    """The cache root: `TWAT_CACHE_DIR` if set, else the platform's user cache dir.

    Read on every call (not once at import), so a process can point caches elsewhere;
    created 0700, and refused if it is writable by others or owned by another user.
    Always absolute: a relative `TWAT_CACHE_DIR` is taken from the working directory of
    this call, so a cache created now keeps its folder after a later `os.chdir`.
    """
    configured = os.environ.get("TWAT_CACHE_DIR", "").strip()
    if configured:
        root = Path(configured).expanduser()
    else:
        import platformdirs  # imported here: only persistent caches need it

        root = Path(platformdirs.user_cache_dir("twat_cache"))
    return private_dir(Path(os.path.abspath(root)))


def validate_folder_name(name: str) -> str:
    """Return `name` if it is one safe path component, else raise `ConfigurationError`.

    >>> validate_folder_name("sessions")
    'sessions'
    """
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "must be a non-empty string"
    elif "\0" in name:
        problem = "contains a NUL byte"
    elif "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        problem = "contains a path separator"
    elif name in (".", ".."):
        problem = "is a relative path"
    elif name.startswith("."):
        problem = "starts with '.' (names starting with '.' are reserved, e.g. '.secret')"
    elif os.path.isabs(name) or Path(name).drive:
        problem = "is an absolute path"
    if problem:
        raise ConfigurationError(
            f"folder_name {name!r} {problem}: it must be one folder name such as 'sessions'"
        )
    return name


def cache_dir(folder_name: str) -> Path:
    """The private directory of one cache under the root, created 0700 if missing."""
    name = validate_folder_name(folder_name)  # before the root is created
    return private_dir(cache_root() / name)


def default_folder(readable: str, unique: str) -> str:
    """A folder name from a function's readable name and its unique one (`identity.
    folder_names`: module and qualified name, with a script's path for `__main__`), the
    same in every process.

    >>> default_folder("app.models.User.load", "app.models:User.load")
    'app.models.User.load-9a2bab63'
    """
    text = _UNSAFE.sub("_", readable).strip(".-")[:80] or "function"
    digest = hashlib.blake2b(unique.encode(), digest_size=4).hexdigest()
    return f"{text}-{digest}"


def folder_bytes(directory: Path) -> int:
    """Bytes of every regular file under `directory`, at any depth.

    Symbolic links are neither followed nor counted, and a file removed while the folder
    is walked is skipped, so a folder in use can be measured. The persistent engines'
    `stats()["bytes"]`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as name:
    ...     folder = Path(name)
    ...     _ = (folder / "a.bin").write_bytes(b"12345")
    ...     (folder / "sub").mkdir()
    ...     _ = (folder / "sub" / "b.bin").write_bytes(b"678")
    ...     folder_bytes(folder)
    8
    """
    size = 0
    for top, _, names in os.walk(directory):
        for name in names:
            try:
                info = os.lstat(os.path.join(top, name))
            except FileNotFoundError:  # removed since it was listed
                continue
            if stat.S_ISREG(info.st_mode):
                size += info.st_size
    return size


def disk_usage(info: os.stat_result) -> int:
    """Bytes a file takes on disk, from its `stat`: the blocks allocated to it (a small
    file takes a whole block, 4 KiB and up, whatever its length); where no blocks are
    reported (Windows), its length."""
    blocks = getattr(info, "st_blocks", None)
    return info.st_size if blocks is None else int(blocks) * 512


def make_private_dirs(path: str | os.PathLike[str]) -> None:
    """Create `path` and every missing parent with mode 0700 (`os.makedirs` gives the
    parents it creates the default mode, 0755 under the usual umask)."""
    missing = []
    current = os.fspath(path)
    while current and not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:  # created meanwhile by another thread or process
            if not os.path.isdir(directory):
                raise


def beneath(base: str | os.PathLike[str], relative: str) -> str:
    """The path `relative` names under `base`, once each directory between them is checked
    to be a real directory, not a symbolic link (`NotFollowedError`); a missing one raises
    `FileNotFoundError`. `base` itself may be a link (a cache folder a user linked).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as name:
    ...     os.mkdir(os.path.join(name, "real"))
    ...     os.symlink(os.path.join(name, "real"), os.path.join(name, "link"))
    ...     _ = beneath(name, "real/entry")
    ...     beneath(name, "link/entry")
    Traceback (most recent call last):
    twat_cache.paths.NotFollowedError: [Errno ...] a symbolic link: not followed: '.../link'
    """
    parts = _parts(relative)
    current = os.fspath(base)
    for part in parts[:-1]:
        current = os.path.join(current, part)
        if not stat.S_ISDIR(os.lstat(current).st_mode):
            raise NotFollowedError(current, _what(current))
    return os.path.join(current, parts[-1])


def make_dirs_beneath(base: str | os.PathLike[str], relative: str) -> str:
    """Create the directories `relative` names under `base` (each 0700), refusing
    (`NotFollowedError`) any that exists as a link or a non-directory; returns the path."""
    current = os.fspath(base)
    for part in _parts(relative):
        current = os.path.join(current, part)
        with contextlib.suppress(FileExistsError):  # a link there exists too: not followed
            os.mkdir(current, 0o700)
        if not stat.S_ISDIR(os.lstat(current).st_mode):
            raise NotFollowedError(current, _what(current))
    return current


def refuse_links(*paths: str | os.PathLike[str]) -> None:
    """Raise `ConfigurationError` if one of `paths` exists as a symbolic link: for the
    files a library opens by name (an SQLite database and its journals, an archive
    directory), checked before it opens them."""
    for path in paths:
        if os.path.islink(path):
            raise ConfigurationError(
                f"{os.fspath(path)} is a symbolic link: twat-cache does not follow links inside "
                "a cache folder. Remove it; to keep a cache on another disk, link the cache's "
                "folder itself or set TWAT_CACHE_DIR"
            )


def open_file(path: str | os.PathLike[str], flags: int = os.O_RDONLY) -> int:
    """A descriptor of the regular file `path` (opened with `flags`), never following a
    link at its last component (`NotFollowedError`, as for a FIFO or a directory there);
    a missing file raises `FileNotFoundError`. Check the directories on the way with
    `beneath`."""
    if not _NOFOLLOW and os.path.islink(path):  # no O_NOFOLLOW (Windows): check first
        raise NotFollowedError(path)
    try:
        fd = os.open(path, flags | _SAFE_OPEN)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise NotFollowedError(path) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotFollowedError(path, "not a regular file")
    return fd


def read_file(path: str | os.PathLike[str]) -> bytes:
    """Every byte of the regular file `path`, read as `open_file` opens it."""
    with open(open_file(path), "rb") as handle:
        return handle.read()


def set_times(path: str | os.PathLike[str], ns: tuple[int, int]) -> None:
    """`os.utime(path, ns=ns)` on `path` itself: a link there is changed, never its target
    (where the platform cannot, as on Windows, the link is followed)."""
    os.utime(path, ns=ns, follow_symlinks=os.utime not in os.supports_follow_symlinks)


def _parts(relative: str) -> list[str]:
    parts = [part for part in re.split(r"[/\\]", relative) if part not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"not a path inside a cache folder: {relative!r}")
    return parts


def _what(path: str) -> str:
    return "a symbolic link" if os.path.islink(path) else "not a directory"


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) 0700, or check an existing one is private.

    A directory writable by group or others, or owned by another user, is refused: files
    an attacker can plant there would be read back as cache entries. Where `path` is a
    symbolic link, the link itself is checked too: it must be owned by this user (or by
    root), in a directory where no one else can replace it (not writable by others, or
    sticky as /tmp is). Another user's link in /tmp could otherwise point the cache at any
    directory this user owns (its files would be written, read and removed there).
    """
    _check_links_on_the_way(path.parent)
    try:
        make_private_dirs(path)
        info = path.lstat()
    except OSError as exc:
        raise ConfigurationError(f"cannot create the cache directory {path}: {exc}") from exc
    if stat.S_ISLNK(info.st_mode):
        _check_link(path, info)
        _check_links_on_the_way(path.parent / os.readlink(path))
        info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError(f"the cache path {path} exists and is not a directory")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise ConfigurationError(
            f"the cache directory {path} is owned by another user (uid {info.st_uid}); "
            "refusing to use it: set TWAT_CACHE_DIR to a directory of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigurationError(
            f"the cache directory {path} is writable by other users "
            f"(mode {stat.S_IMODE(info.st_mode):o}); refusing to use it: "
            f"run `chmod 700 {path}` or set TWAT_CACHE_DIR elsewhere"
        )
    return path


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """Which file or directory `path` is now (device, inode); None if there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def looks_unsafe(directory: Path) -> bool:
    """One `lstat`: whether `directory` is now a link, another user's, or writable by
    others (made again by someone else since it was checked; a reused inode hides that
    from a comparison of identities). A missing one is not: it is made again on write."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    if stat.S_ISLNK(info.st_mode):
        return True
    owner = hasattr(os, "getuid") and info.st_uid != os.getuid()
    return owner or bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def recheck_folder(directory: Path) -> Path:
    """A cache folder found deleted or replaced while in use: the root and the folder are
    checked (and made, if missing) as when the cache was created. Whoever made them again in
    the meantime, with other owners or modes, or a link of another user's, is refused."""
    private_dir(directory.parent)
    return private_dir(directory)


def _check_links_on_the_way(path: Path) -> None:
    """Check every link met on the way to `path` (its parents' components, and the links
    those lead to), as `_check_link` checks the last one: another user's link anywhere on
    the way (`/tmp/app` in `/tmp/app/cache`, or a link of one's own to another user's link)
    would point the cache wherever that user wants."""
    pending = list(path.absolute().parts)
    walked = Path(pending.pop(0)) if pending else Path("/")
    hops = 0
    while pending:
        walked = walked / pending.pop(0)
        try:
            info = walked.lstat()
        except OSError:
            return  # missing from here on: made by this user, privately
        if not stat.S_ISLNK(info.st_mode):
            continue
        _check_link(walked, info)
        hops += 1
        if hops > 40:
            raise ConfigurationError(f"the cache path {path} goes through too many links")
        target = Path(os.readlink(walked))
        parts = [*target.parts, *pending]
        if target.is_absolute():  # from the root again
            walked, pending = Path(parts[0]), parts[1:]
        else:  # from the link's own directory
            walked, pending = walked.parent, parts


def _check_link(path: Path, info: os.stat_result) -> None:
    """Refuse the link `path` (its lstat: `info`) unless this user or root made it, in a
    directory where no other user can replace it."""
    if not hasattr(os, "getuid"):  # Windows: no link owners to compare
        return
    if info.st_uid not in (os.getuid(), 0):
        raise ConfigurationError(
            f"the cache path {path} is a symbolic link owned by another user "
            f"(uid {info.st_uid}); refusing to follow it: remove it or set TWAT_CACHE_DIR "
            "to a directory of your own"
        )
    parent = path.parent.stat()
    shared = parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and not parent.st_mode & stat.S_ISVTX:
        raise ConfigurationError(
            f"the cache path {path} is a symbolic link in {path.parent}, a directory other "
            f"users can write to (mode {stat.S_IMODE(parent.st_mode):o}, not sticky): any of "
            "them could replace the link; refusing to follow it"
        )


@contextlib.contextmanager
def atomic_write(target: Path) -> Iterator[Path]:
    """Yield a private temporary path beside `target`; on success it replaces `target`
    atomically (`os.replace`), on failure it is removed. A reader never sees half a file.

    Temporary files are named ``.<name>.<random>.tmp`` so orphans left by a killed writer
    can be recognised and removed by age.
    """
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)  # mkstemp creates the file 0600
    temp = Path(temp_name)
    try:
        yield temp
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
