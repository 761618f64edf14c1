"""The files of JoblibEngine: entry records, `.npy` data files, listings (signing: `_joblib_mac`).

On disk, per entry (`name` = 128-bit BLAKE2b of the key, so no key ever chooses a path):
  <name>.<nonce>.joblib  the value, written by joblib.dump, never modified once in place;
  <name>.<nonce>.npy     or, for a plain NumPy array, the value in NumPy's `.npy` format;
  <name>.sig             the commit record: MAGIC | MAC | JSON (key, data file, its format,
                         size and MAC, stored and expiry times; for `.npy`, the file's
                         header, so an array is shaped from the signed record, never from
                         unverified bytes), replaced atomically.
Readers go through the record, so a value becomes visible in one os.replace; a fresh nonce
per write means a reader never sees a data file change under it. The record's mtime is the
entry's last use (LRU) or its store time (other policies).

NumPy is imported only to read an `.npy` entry: a value can only be an array (and so take
the `.npy` path) once NumPy is imported, and the engine works without it installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from twat_cache.engines._joblib_mac import MAC_SIZE, buffer_mac, check, file_mac, fill, read_mac
from twat_cache.paths import NotFollowedError, disk_usage, open_file, read_file
from twat_cache.serializers import PayloadError, UnserializableError

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"TWJ\x01"
HEAD = len(MAGIC) + MAC_SIZE
RECORD = re.compile(r"([0-9a-f]{32})\.sig")
DATA = re.compile(r"([0-9a-f]{32})\.[0-9a-f]{16}\.(joblib|npy)")
# Temporary files of paths.atomic_write (".<target>.<random>.tmp"), and claimed records.
TEMP = re.compile(r"\.([0-9a-f]{32})(?:\.[0-9a-f]{16}\.(?:joblib|npy)|\.sig)\.[A-Za-z0-9_]+\.tmp")
JOBLIB, NPY = "joblib", "npy"


@dataclass(frozen=True)
class Meta:
    key: str
    data: str
    size: int
    mac: bytes
    stored: float
    expires: float | None
    compressed: bool
    format: str = JOBLIB
    header: bytes = b""  # of an `.npy` data file: its first bytes, as written

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


def name_of(key: str) -> str:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def read(path: Path) -> bytes | None:
    """The bytes of a record; None if there is none. A link in its place is not followed:
    `PayloadError`, so the entry is rejected (the link removed, never its target)."""
    try:
        return read_file(path)
    except FileNotFoundError:
        return None
    except NotFollowedError as exc:
        raise PayloadError(f"{path.name}: {exc.strerror}") from None


def open_data(path: Path, flags: int = os.O_RDONLY) -> int:
    """A descriptor of a data file (`FileNotFoundError` if gone); a link in its place is
    not followed: `PayloadError`."""
    try:
        return open_file(path, flags)
    except NotFollowedError as exc:
        raise PayloadError(f"the data file {path.name}: {exc.strerror}") from None


def usage_of(path: Path) -> int:
    """`disk_usage` of the file at `path` (not following a link); 0 if it is gone."""
    try:
        return disk_usage(os.lstat(path))
    except FileNotFoundError:
        return 0


def unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# --- records -----------------------------------------------------------------------------


def encode(meta: Meta) -> bytes:
    """The record's body (what follows MAGIC and its MAC)."""
    fields: dict[str, Any] = {
        "k": meta.key,
        "d": meta.data,
        "f": meta.format,
        "n": meta.size,
        "h": meta.mac.hex(),
        "t": meta.stored,
        "e": meta.expires,
        "z": meta.compressed,
    }
    if meta.format == NPY:
        fields["a"] = meta.header.decode("latin-1")  # any bytes, one char each
    return json.dumps(fields, separators=(",", ":")).encode()


def decode(body: bytes, name: str) -> Meta:
    try:
        fields = json.loads(body)
        meta = Meta(
            key=str(fields["k"]),
            data=str(fields["d"]),
            size=int(fields["n"]),
            mac=bytes.fromhex(fields["h"]),
            stored=float(fields["t"]),
            expires=None if fields["e"] is None else float(fields["e"]),
            compressed=bool(fields["z"]),
            format=str(fields.get("f", JOBLIB)),
            header=str(fields.get("a", "")).encode("latin-1"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PayloadError(f"entry record does not decode: {type(exc).__name__}: {exc}") from exc
    match = DATA.fullmatch(meta.data)
    if match is None or match.group(1) != name:
        raise PayloadError("entry record names a data file that is not its own")
    if match.group(2) != meta.format:
        raise PayloadError(f"entry record names a .{match.group(2)} file for {meta.format!r} data")
    return meta


def peek(raw: bytes | None, name: str) -> Meta | None:
    """The record's metadata without checking its signature: only to clean up, never to
    serve a value. None when it does not parse or names a data file not of this entry."""
    if raw is None or raw[: len(MAGIC)] != MAGIC:
        return None
    try:
        return decode(raw[HEAD:], name)
    except PayloadError:
        return None


# --- listing -----------------------------------------------------------------------------


@dataclass
class Listing:
    """One pass over the directory: records, data files and temporary files, with stats."""

    records: dict[str, os.stat_result]
    data: dict[str, list[tuple[str, os.stat_result]]]
    temps: list[tuple[str, os.stat_result]]


def scan(directory: Path) -> Listing:
    """List the engine's files in `directory` (each with its lstat: links are not followed);
    a missing `directory` lists nothing."""
    listing = Listing({}, {}, [])
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:  # the folder was deleted: it holds nothing
        return listing
    with entries:
        for entry in entries:
            try:
                if match := RECORD.fullmatch(entry.name):
                    listing.records[match.group(1)] = entry.stat(follow_symlinks=False)
                elif match := DATA.fullmatch(entry.name):
                    stat = entry.stat(follow_symlinks=False)
                    listing.data.setdefault(match.group(1), []).append((entry.name, stat))
                elif TEMP.fullmatch(entry.name):
                    listing.temps.append((entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:  # removed since it was listed
                continue
    return listing


# --- .npy data files ---------------------------------------------------------------------


def npy_header(value: Any) -> bytes | None:
    """The `.npy` header `value` is written with, when it is a plain NumPy array that the
    format stores exactly and without pickle: an `numpy.ndarray` itself (no subclass), of a
    dtype without objects, metadata or a user-defined type. None for anything else."""
    numpy = sys.modules.get("numpy")  # not imported: `value` cannot be an array
    if numpy is None or type(value) is not numpy.ndarray:
        return None
    from numpy.lib import format as npy

    dtype = value.dtype
    if dtype.hasobject or _has_metadata(dtype) or not getattr(type(dtype), "_legacy", False):
        return None
    fields = npy.header_data_from_array_1_0(value)
    if npy.descr_to_dtype(fields["descr"]) != dtype:
        return None  # the format would give back another dtype
    for write_header in (npy.write_array_header_1_0, npy.write_array_header_2_0):
        buffer = io.BytesIO()
        try:
            write_header(buffer, fields)
        except ValueError:  # too long for version 1.0, or names not in latin-1
            continue
        return buffer.getvalue()
    return None


def _has_metadata(dtype: np.dtype[Any]) -> bool:
    if dtype.metadata is not None:
        return True
    if dtype.fields is not None:
        return any(_has_metadata(field[0]) for field in dtype.fields.values())
    return dtype.subdtype is not None and _has_metadata(dtype.subdtype[0])


def write_npy(path: Path, array: Any, header: bytes, secret: bytes | None) -> tuple[int, bytes]:
    """Write `array` (with its `npy_header`) to `path`; returns the file's size and MAC.

    When the array's bytes are one block, the MAC is taken from them in memory, in other
    threads while this one writes the file; otherwise it is taken from the file.
    """
    from numpy.lib import format as npy

    signing = None
    if secret is not None and (array.flags.c_contiguous or array.flags.f_contiguous):
        segments = (memoryview(header), _bytes_of(array))
        signing = buffer_mac(segments, secret, background=True)
    try:
        with open(path, "wb") as handle:  # buffered: numpy writes the array with `tofile`
            npy.write_array(handle, array, version=(header[6], header[7]), allow_pickle=False)
            handle.flush()
            size = handle.tell()
    except BaseException as exc:
        if signing is not None:
            with contextlib.suppress(Exception):
                signing()  # threads read the array: they are done before it is handed back
        if isinstance(exc, OSError) or not isinstance(exc, Exception):
            raise  # a full disk or an I/O error: the wrapper reports it, not a bad value
        raise UnserializableError(f"numpy cannot write the array: {exc!r}") from exc
    mac = b"" if signing is None else signing()
    if secret is None or (signing is not None and size == len(header) + array.nbytes):
        return size, mac
    with open(path, "rb") as handle:
        return size, file_mac(handle.fileno(), size, secret)


def _bytes_of(array: Any) -> memoryview:
    """The bytes of a contiguous array (C or Fortran order), as `.npy` stores them: in the
    order they are in memory, without a copy."""
    import numpy

    if array.nbytes == 0:
        return memoryview(b"")
    return memoryview(array.ravel(order="K").view(numpy.uint8))


def _parse_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    from numpy.lib import format as npy

    stream = io.BytesIO(header)
    try:
        version = npy.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(stream, len(header))
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(stream, len(header))
        else:
            raise ValueError(f"unexpected .npy version {version}")
    except (ValueError, SyntaxError, TypeError) as exc:
        raise PayloadError(f"entry record has a bad array header: {exc}") from exc
    if stream.tell() != len(header) or dtype.hasobject:
        raise PayloadError("entry record has a bad array header")
    return shape, fortran, dtype


def load_npy(
    path: Path, meta: Meta, secret: bytes | None, mmap_mode: Literal["r", "r+", "c"] | None
) -> Any:
    """The array of an `.npy` entry whose record is verified. The file is read once, into
    the array itself, and checked against the record's MAC before the array is returned;
    with `mmap_mode` it is hashed, then the open (verified) file is mapped. Never pickle."""
    try:
        import numpy
    except ImportError as exc:
        raise PayloadError("an .npy entry cannot be read without numpy") from exc

    shape, fortran, dtype = _parse_header(meta.header)
    nbytes = dtype.itemsize * math.prod(shape)
    if meta.size != len(meta.header) + nbytes:
        raise PayloadError("entry record's size does not match its array header")
    order: Literal["C", "F"] = "F" if fortran else "C"
    writable = mmap_mode == "r+"
    fd = open_data(path, os.O_RDWR if writable else os.O_RDONLY)
    with open(fd, "r+b" if writable else "rb", buffering=0) as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        if size != meta.size:
            raise PayloadError(f"data file has {size} bytes, its record says {meta.size}")
        head = memoryview(bytearray(len(meta.header)))
        if mmap_mode is not None and nbytes:
            if secret is not None:
                check(file_mac(fd, size, secret), meta.mac)
            fill(fd, (head,), 0)
            _check_head(head, meta.header)
            # The mapped file is the open one just verified, not whatever the path names now.
            return numpy.memmap(
                handle, dtype, mode=mmap_mode, offset=len(head), shape=shape, order=order
            )
        array = numpy.ndarray(shape, dtype, order=order)  # np.empty mishandles itemsize 0
        segments = (head, _bytes_of(array))
        if secret is not None:
            check(read_mac(fd, segments, secret), meta.mac)
        else:
            fill(fd, segments, 0)
        _check_head(head, meta.header)
    return array


def _check_head(head: memoryview, header: bytes) -> None:
    if head != header:
        raise PayloadError("data file's array header is not the one of its record")
