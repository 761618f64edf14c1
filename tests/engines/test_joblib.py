"""JoblibEngine: file layout, signing, expiry, bounds, orphans, faults and other processes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest

from twat_cache import MISS, CacheConfig, mcache
from twat_cache.engines import _joblib_files as joblib_files
from twat_cache.engines import _joblib_mac as joblib_mac
from twat_cache.engines.joblib import JoblibEngine
from twat_cache.exceptions import CacheFaultWarning, SecurityWarning
from twat_cache.serializers import UnserializableError

HOUR = 3600.0


@pytest.fixture
def opened() -> Iterator[list[JoblibEngine]]:
    engines: list[JoblibEngine] = []
    yield engines
    for engine in engines:
        engine.close()


@pytest.fixture
def make(opened: list[JoblibEngine]) -> Callable[..., JoblibEngine]:
    """`make(**options)`: a JoblibEngine on the folder 'files' (unless told otherwise)."""

    def build(**options: Any) -> JoblibEngine:
        config = CacheConfig(**{"folder_name": "files", **options})
        assert JoblibEngine.unsupported(config) is None
        engine = JoblibEngine(config)
        opened.append(engine)
        return engine

    return build


def files(engine: JoblibEngine, pattern: str = "*") -> list[Path]:
    return sorted(engine.directory.glob(pattern))


def only(engine: JoblibEngine, pattern: str) -> Path:
    (path,) = files(engine, pattern)
    return path


def age(path: Path, seconds: float) -> None:
    """Set `path`'s times `seconds` into the past (as if written then)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


# --- layout and values -------------------------------------------------------------------


def test_one_private_data_file_and_one_record_per_entry(make: Callable[..., JoblibEngine]) -> None:
    engine = make()
    engine.set("../../escape", "a")
    engine.set(("tuple", 1), "b")  # not a str: stored under a stable digest
    engine.set(5, "c")
    assert (engine.get("../../escape"), engine.get(("tuple", 1)), engine.get(5)) == ("a", "b", "c")
    names = [p.name for p in files(engine)]
    assert len(names) == 6
    assert all(joblib_files.RECORD.fullmatch(n) or joblib_files.DATA.fullmatch(n) for n in names)
    assert {p.stat().st_mode & 0o777 for p in files(engine)} == {0o600}
    assert not list(engine.directory.parent.glob("escape*"))


def test_numpy_array_round_trip_raw_and_compressed(make: Callable[..., JoblibEngine]) -> None:
    np = pytest.importorskip("numpy")
    array = np.arange(200_000, dtype=np.float64).reshape(400, 500)
    sizes = {}
    for compress in (None, "zlib", "lzma"):
        engine = make(folder_name=f"arrays-{compress}", compress=compress)
        engine.set("a", {"array": array, "label": "x"})
        loaded = engine.get("a")
        assert loaded["label"] == "x"
        np.testing.assert_array_equal(loaded["array"], array)
        assert loaded["array"].dtype == array.dtype
        sizes[compress] = only(engine, "*.joblib").stat().st_size
    assert sizes[None] > array.nbytes
    assert sizes["zlib"] < array.nbytes / 2
    assert sizes["lzma"] < array.nbytes / 2


def test_pandas_frame_round_trip(make: Callable[..., JoblibEngine]) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": range(1000), "b": [str(i) for i in range(1000)]})
    engine = make()
    engine.set("frame", frame)
    pd.testing.assert_frame_equal(engine.get("frame"), frame)


@pytest.mark.parametrize("wrapped", [False, True], ids=["npy", "joblib"])
def test_mmap_mode_maps_verified_arrays(make: Callable[..., JoblibEngine], wrapped: bool) -> None:
    # A bare array is an .npy file; in a list, it is written (raw) by joblib.
    np = pytest.importorskip("numpy")
    array = np.linspace(0, 1, 100_000)
    engine = make(mmap_mode="r")
    engine.set("a", [array] if wrapped else array)
    loaded = engine.get("a")[0] if wrapped else engine.get("a")
    assert isinstance(loaded, np.memmap)
    assert not loaded.flags.writeable
    np.testing.assert_array_equal(loaded, array)
    del loaded
    data = only(engine, "*.joblib" if wrapped else "*.npy")
    content = bytearray(data.read_bytes())
    content[-8] ^= 0xFF  # inside the array: only the signature can tell
    data.write_bytes(bytes(content))
    with pytest.warns(SecurityWarning, match="signature"):
        assert engine.get("a", MISS) is MISS


def test_mmap_mode_with_compression_loads_in_memory(make: Callable[..., JoblibEngine]) -> None:
    # joblib cannot map a compressed file: the array is loaded instead, with no warning.
    np = pytest.importorskip("numpy")
    engine = make(mmap_mode="c", compress="zlib")
    engine.set("a", np.ones(1000))
    loaded = engine.get("a")
    assert type(loaded) is np.ndarray
    assert loaded.sum() == 1000


def test_refused_configurations() -> None:
    def why(**options: Any) -> str | None:
        return JoblibEngine.unsupported(CacheConfig(folder_name="f", **options))

    assert "pickle" in (why(serializer="json") or "")
    assert "r+" in (why(mmap_mode="r+") or "")
    assert why(mmap_mode="r+", secure=False) is None
    assert "lfu" in (why(policy="lfu") or "")
    assert why(maxsize="10MB", policy="fifo") is None


# --- plain arrays: the .npy files --------------------------------------------------------


def plain_arrays(np: Any) -> dict[str, Any]:
    """Plain arrays of many dtypes, shapes and layouts: each is written as `.npy`."""
    rng = np.random.default_rng(1)
    padded = np.dtype([("a", "i1"), ("b", "<f8"), ("c", "U3", (2,))], align=True)
    record = np.zeros(4, dtype=padded)
    record["b"] = rng.random(4)
    record["c"] = [["x", "yé"], ["", "zzz"], ["a", "b"], ["c", "d"]]
    return {
        "float64": rng.random((40, 30)),
        "0-d": np.array(3.5),
        "0-d int16": np.array(-7, dtype=np.int16),
        "empty": np.empty((0,)),
        "empty 2-d": np.empty((3, 0), dtype=np.int32),
        "fortran": np.asfortranarray(rng.random((7, 5, 3))),
        "big-endian": np.arange(1000, dtype=">i4"),
        "bool": rng.random(99) > 0.5,
        "complex128": rng.random(10) + 1j * rng.random(10),
        "float16": rng.random(33).astype(np.float16),
        "longdouble": np.arange(5, dtype=np.longdouble) / 3,
        "unicode": np.array(["a", "bé", "çde"]),
        "bytes": np.array([b"x", b"yz"]),
        "datetime64": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
        "timedelta64": np.arange(4, dtype="timedelta64[ms]"),
        "structured, padded": record,
        "strided view": np.arange(100.0)[::3],  # not contiguous: signed from the file
        "transposed view": rng.random((6, 4))[:, ::2].T,
        "several leaves": rng.random((3 * joblib_mac.LEAF) // 8 + 5),
    }


@pytest.mark.parametrize("secure", [True, False], ids=["signed", "unsigned"])
def test_plain_arrays_round_trip_as_npy_files(
    make: Callable[..., JoblibEngine], secure: bool
) -> None:
    np = pytest.importorskip("numpy")
    arrays = plain_arrays(np)
    engine = make(secure=secure)
    for label, array in arrays.items():
        engine.set(label, array)
    assert len(files(engine, "*.npy")) == len(arrays)
    assert files(engine, "*.joblib") == []
    for label, array in arrays.items():
        loaded = engine.get(label, MISS)
        assert type(loaded) is np.ndarray, label
        assert (loaded.dtype, loaded.shape) == (array.dtype, array.shape), label
        np.testing.assert_array_equal(loaded, array)
        assert loaded.flags.writeable, label
        assert loaded.flags.aligned, label
        if array.flags.f_contiguous and not array.flags.c_contiguous:
            assert loaded.flags.f_contiguous, label
    for path in files(engine, "*.npy"):  # plain NumPy files, no pickle inside
        np.load(path, allow_pickle=False)
    assert {path.stat().st_mode & 0o777 for path in files(engine)} == {0o600}


def test_other_arrays_go_through_joblib(make: Callable[..., JoblibEngine]) -> None:
    np = pytest.importorskip("numpy")
    values: dict[str, Any] = {
        "object": np.array([1, "a", None], dtype=object),
        "object field": np.array([(1, 2.0)], dtype=[("a", "O"), ("b", "f8")]),
        "subclass": np.rec.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        "masked": np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
        "metadata": np.zeros(3, dtype=np.dtype("f8", metadata={"unit": "m"})),
    }
    if hasattr(np.dtypes, "StringDType"):  # NumPy 2: a dtype of no fixed size
        values["StringDType"] = np.array(["a", "bcd"], dtype=np.dtypes.StringDType())
    engine = make()
    for label, value in values.items():
        engine.set(label, value)
    assert len(files(engine, "*.joblib")) == len(values)
    assert files(engine, "*.npy") == []
    for label, value in values.items():
        loaded = engine.get(label)
        assert type(loaded) is type(value), label
        assert loaded.dtype == value.dtype, label
        assert loaded.tolist() == value.tolist(), label
    assert engine.get("metadata").dtype.metadata == {"unit": "m"}
    assert engine.get("masked").mask.tolist() == [False, True, False]
    compressed = make(folder_name="compressed", compress="zlib")
    compressed.set("a", np.zeros(100_000))  # compression is joblib's
    assert only(compressed, "*.joblib").stat().st_size < 100_000
    np.testing.assert_array_equal(compressed.get("a"), np.zeros(100_000))


@pytest.mark.parametrize("mmap_mode", [None, "r"])
@pytest.mark.parametrize("secure", [True, False], ids=["signed", "unsigned"])
def test_npy_entries_never_unpickle(
    make: Callable[..., JoblibEngine],
    monkeypatch: pytest.MonkeyPatch,
    secure: bool,
    mmap_mode: str | None,
) -> None:
    np = pytest.importorskip("numpy")
    engine = make(secure=secure, mmap_mode=mmap_mode)
    array = np.arange(300_000, dtype=np.int64).reshape(600, 500)

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an .npy entry went through a loader that may unpickle")

    for module, name in [(joblib, "load"), (np, "load"), (np.lib.format, "read_array")]:
        monkeypatch.setattr(module, name, refused)
    monkeypatch.setattr("pickle.loads", refused)
    monkeypatch.setattr("pickle.load", refused)
    engine.set("a", array)
    np.testing.assert_array_equal(engine.get("a"), array)


@pytest.mark.parametrize("where", ["magic", "header", "data", "last byte"])
@pytest.mark.parametrize("mmap_mode", [None, "c"])
def test_tampered_npy_file_is_a_miss(
    make: Callable[..., JoblibEngine], where: str, mmap_mode: str | None
) -> None:
    np = pytest.importorskip("numpy")
    engine = make(mmap_mode=mmap_mode)
    engine.set("a", np.arange(2 * joblib_mac.LEAF // 8, dtype=np.float64))
    path = only(engine, "*.npy")
    content = bytearray(path.read_bytes())
    content[{"magic": 1, "header": 20, "data": len(content) // 2, "last byte": -1}[where]] ^= 1
    path.write_bytes(bytes(content))
    with pytest.warns(SecurityWarning, match="signature"):
        assert engine.get("a", MISS) is MISS
    assert files(engine) == []  # dropped


@pytest.mark.parametrize("secure", [True, False], ids=["signed", "unsigned"])
def test_npy_file_replaced_by_a_pickled_array_never_runs(
    make: Callable[..., JoblibEngine], tmp_path: Path, secure: bool
) -> None:
    np = pytest.importorskip("numpy")
    engine = make(secure=secure)
    engine.set("a", np.zeros(20_000))
    data = only(engine, "*.npy")
    marker = tmp_path / "pwned"
    forged = tmp_path / "forged.npy"
    np.save(forged, np.array([Evil(str(marker))], dtype=object), allow_pickle=True)
    payload = forged.read_bytes()
    data.write_bytes(payload + b"\0" * (data.stat().st_size - len(payload)))
    # Unsigned, the file's header is still checked against the record's.
    with pytest.warns(SecurityWarning, match="signature" if secure else "header"):
        assert engine.get("a", MISS) is MISS
    assert not marker.exists()
    np.load(forged, allow_pickle=True)  # while the payload itself is live:
    assert marker.exists()


def _edit_record(engine: JoblibEngine, **changes: Any) -> None:
    record = only(engine, "*.sig")
    raw = record.read_bytes()
    fields = json.loads(raw[36:])
    for name, change in changes.items():
        if change is None:
            del fields[name]
        else:
            fields[name] = change(fields[name]) if callable(change) else change
    record.write_bytes(raw[:36] + json.dumps(fields).encode())


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"a": lambda h: h.replace("'<f8'", "'|O8'")}, "bad array header"),
        ({"a": lambda h: h.replace("(1000,)", "(2000,)")}, "size does not match"),
        ({"a": lambda h: h[:9] + h[10:]}, "bad array header"),
        ({"n": 8136}, "size does not match"),
        ({"f": "joblib"}, "names a .npy file"),
    ],
    ids=["object dtype", "shape", "cut", "size", "format"],
)
def test_unsigned_npy_record_must_match_its_file(
    make: Callable[..., JoblibEngine], changes: dict[str, Any], problem: str
) -> None:
    # Unsigned entries are not protected against tampering, but the record's header is
    # what shapes the array: an object dtype is refused, and it must fit the file.
    np = pytest.importorskip("numpy")
    engine = make(secure=False)
    engine.set("a", np.ones(1000))
    _edit_record(engine, **changes)
    with pytest.warns(SecurityWarning, match=problem):
        assert engine.get("a", MISS) is MISS


def test_records_without_a_format_are_joblib_entries(make: Callable[..., JoblibEngine]) -> None:
    engine = make(secure=False)
    engine.set("k", {"v": 1})
    _edit_record(engine, f=None)  # as written before .npy files
    assert engine.get("k") == {"v": 1}
    _edit_record(engine, f="npy")
    with pytest.warns(SecurityWarning, match="names a .joblib file"):
        assert engine.get("k", MISS) is MISS


def test_npy_mmap_maps_the_file_after_verifying_it(
    make: Callable[..., JoblibEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    np = pytest.importorskip("numpy")
    engine = make(mmap_mode="c")
    array = np.asfortranarray(np.arange(60_000, dtype=np.float32).reshape(300, 200))
    engine.set("a", array)
    steps: list[str] = []
    real_mac, real_memmap = joblib_files.file_mac, np.memmap

    def file_mac(*args: Any) -> bytes:
        steps.append("verified")
        return real_mac(*args)

    def memmap(*args: Any, **kwargs: Any) -> Any:
        steps.append("mapped")
        return real_memmap(*args, **kwargs)

    monkeypatch.setattr(joblib_files, "file_mac", file_mac)
    monkeypatch.setattr(np, "memmap", memmap)
    loaded = engine.get("a")
    assert steps == ["verified", "mapped"]
    assert isinstance(loaded, real_memmap)
    assert loaded.flags.f_contiguous
    assert loaded.flags.writeable  # copy-on-write
    np.testing.assert_array_equal(loaded, array)
    loaded[0, 0] = -1.0  # changes the mapping, never the signed file
    assert engine.get("a")[0, 0] == 0.0
    engine.set("0-d", np.array(2.5))
    engine.set("empty", np.empty((0, 3)))
    assert isinstance(engine.get("0-d"), real_memmap)
    assert engine.get("0-d") == 2.5
    assert engine.get("empty").shape == (0, 3)  # nothing to map: in memory


def test_npy_mmap_r_plus_unsigned_writes_into_the_entry(make: Callable[..., JoblibEngine]) -> None:
    # 'r+' (refused when signed) maps the file for writing, as joblib.load does.
    np = pytest.importorskip("numpy")
    engine = make(mmap_mode="r+", secure=False)
    engine.set("a", np.arange(10.0))
    loaded = engine.get("a")
    assert isinstance(loaded, np.memmap)
    loaded[0] = 42.0
    loaded.flush()
    del loaded
    assert engine.get("a")[0] == 42.0


def test_disk_full_while_writing_an_array(
    make: Callable[..., JoblibEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    np = pytest.importorskip("numpy")
    engine = make()

    def write_array(fp: Any, array: Any, *args: Any, **kwargs: Any) -> None:
        fp.write(b"\x93NUMPY" + bytes(100_000))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", write_array)
    with pytest.raises(OSError, match="No space left"):
        engine.set("a", np.ones(3 * joblib_mac.LEAF // 8))
    assert files(engine) == []
    monkeypatch.setattr(np.lib.format, "write_array", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(UnserializableError, match="ZeroDivisionError"):
        engine.set("a", np.ones(10))  # not the disk: the value is reported, not stored
    assert files(engine) == []
    assert not [t for t in threading.enumerate() if t.name == joblib_mac.THREAD_NAME]


def test_engine_works_without_numpy(make: Callable[..., JoblibEngine], tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    make(folder_name="no-numpy").set("array", np.ones(10))
    script = tmp_path / "no_numpy.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, warnings
            sys.modules["numpy"] = None  # `import numpy` fails, as if it were not installed
            from twat_cache import MISS, CacheConfig
            from twat_cache.engines.joblib import JoblibEngine

            engine = JoblibEngine(CacheConfig(folder_name="no-numpy"))
            engine.set("k", {"a": [1, 2]})
            assert engine.get("k") == {"a": [1, 2]}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                print(engine.get("array", MISS) is MISS, [str(w.message) for w in caught])
            """
        )
    )
    missed, warning = run_python(script).split(" ", 1)
    assert missed == "True"
    assert "without numpy" in warning


# --- signatures and damaged entries ------------------------------------------------------


class Evil:
    """A pickle that runs code when loaded: it creates the directory `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (self.marker,))


def test_forged_pickle_never_runs(make: Callable[..., JoblibEngine], tmp_path: Path) -> None:
    engine = make()
    engine.set("k", "x" * 10_000)
    data = only(engine, "*.joblib")
    marker = tmp_path / "pwned"
    forged = tmp_path / "forged.joblib"
    joblib.dump(Evil(str(marker)), forged)
    payload = forged.read_bytes()
    # Same size as the genuine file, so only the signature stands in the way.
    data.write_bytes(payload + b"\0" * (data.stat().st_size - len(payload)))
    with pytest.warns(SecurityWarning, match="signature"):
        assert engine.get("k", MISS) is MISS
    assert not marker.exists()
    assert files(engine) == []  # the forged entry was dropped
    joblib.load(forged)  # while the payload itself is live:
    assert marker.exists()


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_file_signature_is_the_same_for_any_number_of_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: int
) -> None:
    # Written on a machine with many cores, verified on one with a single core: one MAC.
    leaf = joblib_mac.LEAF
    path = tmp_path / "data"
    path.write_bytes(os.urandom(3 * leaf + extra))
    secret = os.urandom(32)
    macs = set()
    with open(path, "rb") as handle:
        for workers in (1, 2, 3, 4):
            monkeypatch.setattr(joblib_mac, "WORKERS", workers)
            for size in (0, 1, leaf + extra, 3 * leaf + extra):
                macs.add((size, joblib_mac.file_mac(handle.fileno(), size, secret)))
        assert handle.tell() == 0  # positional reads: joblib.load starts at the beginning
    assert len(macs) == 4  # one per size, whatever the threads
    assert len({mac for _, mac in macs}) == 4


def test_contiguous_arrays_are_signed_from_memory_when_stored(
    make: Callable[..., JoblibEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    np = pytest.importorskip("numpy")
    engine = make()
    reread: list[int] = []
    real_mac = joblib_files.file_mac

    def file_mac(fd: int, size: int, secret: bytes) -> bytes:
        reread.append(size)
        return real_mac(fd, size, secret)

    monkeypatch.setattr(joblib_files, "file_mac", file_mac)
    array = np.arange(3 * joblib_mac.LEAF // 8 + 3, dtype=np.float64)
    engine.set("c", array)
    engine.set("f", np.asfortranarray(array[:-3].reshape(8, -1)))
    assert reread == []  # the bytes just written were hashed where they were
    engine.set("strided", array[::2])
    assert len(reread) == 1  # a strided view is not one block: signed from its file
    np.testing.assert_array_equal(engine.get("c"), array)
    np.testing.assert_array_equal(engine.get("strided"), array[::2])


def test_signature_from_memory_from_the_file_and_while_reading_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written arrays are signed from memory, read ones while they are read into place:
    # the MAC is the same as the file's, wherever a leaf begins in the pieces.
    leaf = 1024
    monkeypatch.setattr(joblib_mac, "LEAF", leaf)
    content = os.urandom(5 * leaf + 17)
    path = tmp_path / "data"
    path.write_bytes(content)
    secret = os.urandom(32)
    view = memoryview(content)
    macs = set()
    with open(path, "rb") as handle:
        fd = handle.fileno()
        for workers in (1, 2, 3):
            monkeypatch.setattr(joblib_mac, "WORKERS", workers)
            macs.add(joblib_mac.file_mac(fd, len(content), secret))
            for cut in (0, 1, 100, leaf - 1, leaf, 2 * leaf + 5, len(content)):
                for background in (False, True):
                    signing = joblib_mac.buffer_mac(
                        (view[:cut], view[cut:]), secret, background=background
                    )
                    macs.add(signing())
                into = (memoryview(bytearray(cut)), memoryview(bytearray(len(content) - cut)))
                macs.add(joblib_mac.read_mac(fd, into, secret))
                assert b"".join(into) == content
    assert len(macs) == 1


def test_unsigned_entries_are_refused_when_secure(make: Callable[..., JoblibEngine]) -> None:
    insecure = make(secure=False)
    insecure.set("k", [1, 2])
    assert make(secure=False).get("k") == [1, 2]
    secure = make()
    with pytest.warns(SecurityWarning):
        assert secure.get("k", MISS) is MISS
    secure.set("k", [3])
    assert insecure.get("k") == [3]  # secure=False reads signed entries


def test_record_naming_another_file_is_refused(make: Callable[..., JoblibEngine]) -> None:
    engine = make(secure=False)
    engine.set("k", 1)
    record = only(engine, "*.sig")
    raw = record.read_bytes()
    fields = json.loads(raw[36:])
    fields["d"] = "../secret.joblib"
    record.write_bytes(raw[:36] + json.dumps(fields).encode())
    with pytest.warns(SecurityWarning, match="not its own"):
        assert engine.get("k", MISS) is MISS


def test_record_copied_to_another_key_is_refused(make: Callable[..., JoblibEngine]) -> None:
    engine = make()
    engine.set("a", "value of a")
    engine.set("b", "value of b")
    record_a = engine.directory / f"{joblib_files.name_of('a')}.sig"
    record_b = engine.directory / f"{joblib_files.name_of('b')}.sig"
    record_b.write_bytes(record_a.read_bytes())
    with pytest.warns(SecurityWarning, match="not its own"):  # a's data file, not b's
        assert engine.get("b", MISS) is MISS
    assert engine.get("a") == "value of a"


def _flip(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "zero-filled": lambda p: p.write_bytes(bytes(p.stat().st_size)),
    "byte-flipped": _flip,
    "deleted": lambda p: p.unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("part", ["*.joblib", "*.sig"])
def test_damaged_entry_is_a_miss_and_recomputed(
    make: Callable[..., JoblibEngine], damage: str, part: str
) -> None:
    calls: list[int] = []

    @mcache(cache_engine="joblib", folder_name="damaged")
    def compute(x: int) -> dict[str, Any]:
        calls.append(x)
        return {"x": x, "payload": list(range(500))}

    expected = compute(3)
    engine = compute.cache_engine
    assert compute(3) == expected
    DAMAGE[damage](only(engine, part))
    if part == "*.sig" and damage == "deleted":
        assert compute(3) == expected  # no record, no entry: a plain miss
    else:
        with pytest.warns(SecurityWarning):
            assert compute(3) == expected
    assert calls == [3, 3]
    assert compute(3) == expected  # stored again, whole
    assert calls == [3, 3]
    DAMAGE[damage](only(engine, part))
    assert compute(3) == expected  # the security warning is given once per cache
    assert calls == [3, 3, 3]
    compute.cache_engine.close()


# --- expiry and bounds -------------------------------------------------------------------


def test_ttl_counts_from_the_store_not_the_last_read(make: Callable[..., JoblibEngine]) -> None:
    engine = make(ttl=0.4)
    engine.set("k", "v")
    time.sleep(0.2)
    assert engine.get("k") == "v"
    time.sleep(0.3)
    assert engine.get("k", MISS) is MISS
    assert files(engine) == []  # the expired entry was removed


def test_prune_drops_expired_entries(make: Callable[..., JoblibEngine]) -> None:
    engine = make(ttl=60)
    engine.set("a", 1, ttl=0.1)
    engine.set("b", 2, ttl=0.1)
    engine.set("c", 3)
    time.sleep(0.2)
    assert engine.prune() == 2
    assert len(files(engine)) == 2
    assert engine.get("c") == 3


def test_lru_order_survives_other_instances(make: Callable[..., JoblibEngine]) -> None:
    writer = make(maxsize=3)
    for key in "abc":
        writer.set(key, key)
    assert make(maxsize=3).get("a") == "a"  # another instance (or process) reads a
    writer.set("d", "d")
    assert [k for k in "abcd" if writer.exists(k)] == ["a", "c", "d"]


def test_fifo_ignores_reads(make: Callable[..., JoblibEngine]) -> None:
    engine = make(maxsize=3, policy="fifo")
    for key in "abc":
        engine.set(key, key)
    assert engine.get("a") == "a"
    engine.set("d", "d")
    assert [k for k in "abcd" if engine.exists(k)] == ["b", "c", "d"]


def test_ttl_policy_evicts_the_nearest_expiry(make: Callable[..., JoblibEngine]) -> None:
    engine = make(maxsize=2, ttl=60, policy="ttl")
    engine.set("a", 1, ttl=50)
    engine.set("b", 2, ttl=10)
    engine.set("c", 3)
    assert [k for k in "abc" if engine.exists(k)] == ["a", "c"]


def test_byte_limit(make: Callable[..., JoblibEngine]) -> None:
    engine = make(maxsize="200KB")
    for i in range(10):
        engine.set(f"k{i}", os.urandom(40_000))
        assert sum(p.stat().st_size for p in files(engine)) <= 200_000
    assert engine.exists("k9")
    assert not engine.exists("k0")
    engine.set("huge", os.urandom(300_000))  # larger than the whole bound: not kept
    assert not engine.exists("huge")
    assert sum(p.stat().st_size for p in files(engine)) <= 200_000


def _blocks(engine: JoblibEngine) -> int:
    return sum(p.lstat().st_blocks * 512 for p in files(engine))


def test_a_byte_bound_counts_the_blocks_files_take(make: Callable[..., JoblibEngine]) -> None:
    # Tiny entries take a whole block or more per file (4 KiB and up), far more than their
    # lengths: the bound is on what the folder takes on disk.
    engine = make(maxsize="100KB")
    for i in range(200):
        engine.set(f"k{i}", i)
        assert _blocks(engine) <= 100_000
    lengths = sum(p.lstat().st_size for p in files(engine))
    assert lengths < 100_000 // 4  # what a bound on lengths would have let grow 4x and more
    assert engine.exists("k199")


def test_past_a_byte_bound_each_write_evicts_about_what_it_adds(
    make: Callable[..., JoblibEngine],
) -> None:
    # The folder stays full: a write past the bound evicts the oldest entries it displaces,
    # taken from the queue the last scan filled, never a batch beyond them.
    engine = make(maxsize="200KB", policy="fifo")
    for i in range(8):
        engine.set(f"k{i}", os.urandom(40_000))
    held = len(files(engine, "*.sig"))
    assert held >= 3
    for i in range(8, 40):
        engine.set(f"k{i}", os.urandom(40_000))
        assert _blocks(engine) <= 200_000
        assert len(files(engine, "*.sig")) >= held - 1
        assert engine.exists(f"k{i}")
        assert not engine.exists(f"k{i - held}")  # oldest first


def test_an_entry_count_is_kept_exactly(make: Callable[..., JoblibEngine]) -> None:
    engine = make(maxsize=50)
    for i in range(120):
        engine.set(f"k{i}", i)
    assert len(engine) == 50
    assert all(engine.exists(f"k{i}") for i in range(70, 120))


def test_scans_get_rarer_as_the_folder_grows(
    make: Callable[..., JoblibEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The accounting follows each write; the directory is rescanned (for other processes'
    # writes) after a fraction of the entries, not a fixed number of writes, and past the
    # bound once per queue of victims (a tenth of the bound): a scan reads every file's
    # metadata, so rescans at a fixed rate made each write cost more as the folder grew.
    scans: list[int] = []  # the number of writes made when each scan happened
    written = [0]
    real_scan = joblib_files.scan

    def counted(directory: Path) -> Any:
        scans.append(written[0])
        return real_scan(directory)

    monkeypatch.setattr(joblib_files, "scan", counted)
    monkeypatch.setattr(JoblibEngine, "RESCAN_WRITES", 4)
    under = make(folder_name="under")  # the default bound, 1 GiB: never reached here
    scans.clear()
    for i in range(1_000):
        under.set(f"k{i}", i)
        written[0] += 1
    early = sum(1 for at in scans if at < 500)
    late = len(scans) - early
    assert late * 2 < early  # every 4 writes: 125 scans in each half
    assert len(scans) <= 130  # every 4 writes: 250
    monkeypatch.setattr(JoblibEngine, "RESCAN_WRITES", 64)  # the default
    bounded = make(folder_name="bounded", maxsize="800KB")  # about 100 tiny entries
    scans.clear()
    for i in range(1_000):
        bounded.set(f"k{i}", i)
    # Rescans after 1/32 of the byte bound written (25 KB: about 3 of these 8 KB entries on
    # disk): about 330-390 scans; a scan on every write past the bound would be ~900.
    assert len(scans) <= 450
    assert _blocks(bounded) <= 800_000


def test_bound_covers_entries_of_other_instances(make: Callable[..., JoblibEngine]) -> None:
    first, second = make(maxsize=4), make(maxsize=4)
    for i in range(4):
        first.set(f"a{i}", i)
    for i in range(4):
        second.set(f"b{i}", i)
    # `second` counted only its own writes; its next rescan (or a prune) sees them all.
    second.prune()
    assert len(second) == 4
    assert all(second.exists(f"b{i}") for i in range(4))
    third = make(maxsize=4)  # opening scans the directory
    third.set("c", 0)
    assert len(third) == 4


# --- orphans -----------------------------------------------------------------------------


def test_orphans_removed_by_age_on_open_and_by_prune(
    make: Callable[..., JoblibEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make()
    engine.set("k", 1)
    folder = engine.directory
    old_temp = folder / f".{'a' * 32}.{'b' * 16}.joblib.x1y2z3.tmp"
    fresh_temp = folder / f".{'c' * 32}.sig.q9w8e7.tmp"
    uncommitted = folder / f"{'d' * 32}.{'e' * 16}.joblib"  # written, never recorded
    foreign = [folder / "cache.db", folder / ".other.tmp", folder / "notes.txt"]
    for path in [old_temp, fresh_temp, uncommitted, *foreign]:
        path.write_bytes(b"left behind")
        age(path, 2 * HOUR)
    age(fresh_temp, 60)
    reopened = make()
    assert not old_temp.exists()
    assert not uncommitted.exists()
    assert fresh_temp.exists()
    monkeypatch.setattr(JoblibEngine, "TEMP_MAX_AGE", 30.0)
    assert reopened.prune() == 1
    assert not fresh_temp.exists()
    assert all(path.exists() for path in foreign)  # other engines' files are never touched
    reopened.clear()
    assert all(path.exists() for path in foreign)
    assert reopened.get("k", MISS) is MISS


# --- faults ------------------------------------------------------------------------------


def test_unpicklable_value_is_refused_and_leaves_nothing(make: Callable[..., JoblibEngine]) -> None:
    engine = make()
    for value in (threading.Lock(), lambda: 1):
        with pytest.raises(UnserializableError):
            engine.set("k", value)
    assert files(engine) == []


def test_unpicklable_result_is_returned_uncached() -> None:
    calls: list[int] = []

    @mcache(cache_engine="joblib", folder_name="unpicklable")
    def make_lock(x: int) -> Any:
        calls.append(x)
        return threading.Lock()

    with pytest.warns(CacheFaultWarning, match="UnserializableError") as record:
        assert make_lock(1) is not make_lock(1)
    assert len(record) == 1
    assert calls == [1, 1]
    assert files(make_lock.cache_engine) == []
    make_lock.cache_engine.close()


def test_disk_full_mid_write(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    @mcache(cache_engine="joblib", folder_name="full")
    def compute(x: int) -> bytes:
        calls.append(x)
        return bytes([x]) * 300_000

    def dump(value: Any, file: Any, compress: Any = 0) -> None:
        file.write(b"\x80" * 100_000)  # part of the file is on disk when the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(joblib, "dump", dump)
    with pytest.warns(CacheFaultWarning, match="No space left") as record:
        results = [compute(7), compute(7)]
    assert results == [bytes([7]) * 300_000] * 2
    assert len(record) == 1
    assert calls == [7, 7]
    assert files(compute.cache_engine) == []
    compute.cache_engine.close()


def test_read_only_directory_when_committing(
    make: Callable[..., JoblibEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root in CI, where a chmod'ed directory stays writable: mock EROFS on the
    # rename that commits the record, after the data file is already in place.
    engine = make()
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if str(dst).endswith(".sig"):
            raise OSError(errno.EROFS, "Read-only file system")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Read-only"):
        engine.set("k", list(range(100)))
    assert files(engine) == []


def test_threads_set_get_delete_and_clear(
    make: Callable[..., JoblibEngine], hammer: Callable[..., int]
) -> None:
    engine = make(maxsize=16)
    stop = threading.Event()
    errors: list[BaseException] = []

    def clearing() -> None:
        try:
            while not stop.is_set():
                engine.clear()
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    clearer = threading.Thread(target=clearing, daemon=True)
    clearer.start()
    try:
        assert hammer(engine, threads=4, seconds=0.5, keys=24) > 0
    finally:
        stop.set()
        clearer.join(timeout=10)
    assert errors == []
    assert len(engine) <= 16


def test_a_write_that_finishes_while_clear_runs_is_counted(
    make: Callable[..., JoblibEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # clear() lists the folder, removes what it listed, then resets the accounting: a write
    # that lands in between survives it and must still count, or the folder passes its bound.
    engine = make(maxsize=4)
    for i in range(4):
        engine.set(f"old{i}", i)
    real_scan = joblib_files.scan
    pending = ["late"]

    def scan_then_write(directory: Path) -> Any:
        listing = real_scan(directory)
        if pending:
            engine.set(pending.pop(), 0)  # another thread's write, finished after the listing
        return listing

    monkeypatch.setattr(joblib_files, "scan", scan_then_write)
    engine.clear()
    monkeypatch.setattr(joblib_files, "scan", real_scan)
    assert engine.exists("late")
    for i in range(4):
        engine.set(f"new{i}", i)
    assert len(engine) == 4


def test_clear_empties_the_eviction_queue(make: Callable[..., JoblibEngine]) -> None:
    # Victims queued by the last scan are gone after clear(): evicting them again would
    # count them as freed a second time, and the folder would pass its bound.
    engine = make(maxsize=20, policy="fifo")
    for i in range(21):  # the 21st write scans, evicts one and queues two more victims
        engine.set(f"old{i}", i)
    assert len(engine) == 20
    engine.clear()
    for i in range(22):  # the 21st and 22nd would "evict" the two gone victims
        engine.set(f"new{i}", i)
    assert len(engine) == 20
    assert all(engine.exists(f"new{i}") for i in range(2, 22))


def test_a_removal_waits_for_a_write_of_the_same_entry(
    make: Callable[..., JoblibEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write reads whether the entry exists (it replaces it, or adds one) and then puts its
    # record in place; a removal in this process in between (a clear, an eviction) would make
    # an entry the accounting believes replaced. Removals of that entry wait for the write.
    engine = make(maxsize=4)
    engine.set("k", 0)
    record = engine.directory / f"{joblib_files.name_of('k')}.sig"
    real_read = joblib_files.read
    clearing: list[threading.Thread] = []

    def read_then_clear(path: Path) -> bytes | None:
        raw = real_read(path)
        if path == record and not clearing:  # the write of "k", between its read and commit
            clearing.append(threading.Thread(target=engine.clear))
            clearing[0].start()
            clearing[0].join(0.5)  # done here before the fix; now waits for the write
        return raw

    monkeypatch.setattr(joblib_files, "read", read_then_clear)
    engine.set("k", 1)
    clearing[0].join(10)
    monkeypatch.setattr(joblib_files, "read", real_read)
    for i in range(4):
        engine.set(f"new{i}", i)
    assert len(engine) == 4


def test_a_victim_used_after_the_scan_does_not_leave_the_folder_past_its_bound(
    make: Callable[..., JoblibEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A victim read (lru) between the scan that queued it and its eviction stays; the write
    # scans again rather than return with the folder past its bound.
    engine = make(maxsize=4)
    for i in range(4):
        engine.set(f"k{i}", i)
        time.sleep(0.002)  # distinct mtimes: k0 is the least recently used
    real_scan = joblib_files.scan
    used = ["k0"]

    def scan_then_use(directory: Path) -> Any:
        listing = real_scan(directory)
        if used:
            assert engine.get(used.pop()) == 0  # another thread's read, after the listing
        return listing

    monkeypatch.setattr(joblib_files, "scan", scan_then_use)
    engine.set("k4", 4)
    assert len(engine) == 4
    assert engine.exists("k0")
    assert not engine.exists("k1")


# --- other processes ---------------------------------------------------------------------


def run_python(script: Path, *args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_value_stored_by_one_process_is_a_hit_in_the_next(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from twat_cache import mcache

            @mcache(cache_engine="joblib", folder_name="cross-process")
            def compute(x):
                with open(sys.argv[1], "a") as calls:
                    calls.write(f"{x}\\n")
                return {"x": x, "square": x * x}

            print(compute(12), compute.cache_info().hits, compute.cache_engine.name)
            """
        )
    )
    first = run_python(script, str(calls))
    second = run_python(script, str(calls))
    assert first.split() == ["{'x':", "12,", "'square':", "144}", "0", "joblib"]
    assert second.split()[-2:] == ["1", "joblib"]
    assert calls.read_text() == "12\n"


WORKER = """
import hashlib, os, random, sys, threading, warnings
warnings.simplefilter("error")  # a false security warning in a race would fail the run
from twat_cache import MISS, CacheConfig
from twat_cache.engines.joblib import JoblibEngine

def value(key, rng, repeat=1):
    payload = rng.randbytes(rng.randrange(1, 40_000)) * repeat
    return (key, payload, hashlib.blake2b(key.encode() + payload).hexdigest())

def check(key, got):
    if got is MISS:
        return 0
    k, payload, digest = got
    return int(k != key or hashlib.blake2b(key.encode() + payload).hexdigest() != digest)
"""


def test_four_processes_share_keys_without_wrong_values(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        WORKER
        + textwrap.dedent(
            """
            engine = JoblibEngine(CacheConfig(folder_name="shared", maxsize=6))
            counts = {"wrong": 0, "hits": 0, "ops": 0}
            lock = threading.Lock()

            def work(seed):
                rng = random.Random(seed)
                for _ in range(150):
                    key = f"k{rng.randrange(8)}"
                    roll = rng.random()
                    if roll < 0.5:
                        engine.set(key, value(key, rng))
                    elif roll < 0.95:
                        got = engine.get(key, MISS)
                        with lock:
                            counts["wrong"] += check(key, got)
                            counts["hits"] += got is not MISS
                    else:
                        engine.delete(key)
                    with lock:
                        counts["ops"] += 1

            threads = [threading.Thread(target=work, args=(int(sys.argv[1]) * 10 + i,))
                       for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            print(counts["wrong"], counts["hits"], counts["ops"])
            """
        )
    )
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [worker.communicate(timeout=60) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    wrong, hits, ops = (sum(int(out.split()[i]) for out, _ in outputs) for i in range(3))
    assert (wrong, ops) == (0, 4 * 2 * 150)
    assert hits > 0


def test_writer_killed_mid_write_leaves_whole_entries_or_misses(
    tmp_path: Path, make: Callable[..., JoblibEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "writer.py"
    script.write_text(
        WORKER
        + textwrap.dedent(
            """
            engine = JoblibEngine(CacheConfig(folder_name="killed", maxsize=8))
            rng = random.Random(int(sys.argv[1]))
            for i in range(10**6):
                key = f"k{i % 6}"  # every key is overwritten again and again
                engine.set(key, value(key, rng, repeat=60))
                if i == 0:
                    print("ready", flush=True)
            """
        )
    )
    seen = 0
    for round_ in range(4):
        writer = subprocess.Popen(
            [sys.executable, str(script), str(round_)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        time.sleep(0.05 + 0.07 * round_)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        writer.stdout.close()
        engine = make(folder_name="killed", maxsize=8)
        for i in range(6):
            key = f"k{i}"
            got = engine.get(key, MISS)
            if got is not MISS:
                stored_key, payload, digest = got
                assert stored_key == key
                assert hashlib.blake2b(key.encode() + payload).hexdigest() == digest
                seen += 1
    assert seen > 0
    # What the killed writers left is removed by age (here: at once); entries stay whole.
    monkeypatch.setattr(JoblibEngine, "TEMP_MAX_AGE", 0.0)
    monkeypatch.setattr(JoblibEngine, "COMMIT_GRACE", 0.0)
    engine.prune()
    assert files(engine, ".*") == []
    assert len(files(engine, "*.joblib")) == len(engine) > 0
