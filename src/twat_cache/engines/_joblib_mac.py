"""The signatures of JoblibEngine's data files: keyed BLAKE2b in BLAKE2's tree mode."""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterable, Sequence

from twat_cache.serializers import PayloadError

__all__ = [
    "LEAF",
    "MAC_SIZE",
    "THREAD_NAME",
    "buffer_mac",
    "check",
    "file_mac",
    "fill",
    "read_mac",
]

MAC_SIZE = 32
LEAF = 4 << 20
THREAD_NAME = "twat_cache-sign"

# Keyed BLAKE2b in BLAKE2's tree mode (depth 2, 4 MiB leaves) over a data file's bytes.
# Hashing is the whole cost of signing a large value (a 50 MB array hashes slower than it
# is read or written), so leaves are hashed in parallel: hashlib and `os.preadv` release
# the GIL. The same MAC comes from the file (`file_mac`), from the bytes in memory that
# were just written (`buffer_mac`), or while reading the file into its final place
# (`read_mac`). Reads are positional: a file's offset stays where it was.

Pieces = Callable[[int], Sequence[memoryview]]  # leaf index -> that leaf's bytes, in pieces


def _node(secret: bytes, offset: int, depth: int, *, last: bool) -> hashlib.blake2b:
    return hashlib.blake2b(
        key=secret,
        digest_size=MAC_SIZE,
        fanout=0,  # unlimited: as many leaves as the file needs
        depth=2,
        leaf_size=LEAF,
        inner_size=MAC_SIZE,
        node_offset=offset,
        node_depth=depth,
        last_node=last,
    )


def _tree_mac(
    size: int, secret: bytes, leaves_of: Callable[[], Pieces], *, background: bool = False
) -> Callable[[], bytes]:
    """Start hashing `size` bytes whose leaves `leaves_of()` hands out (one per thread);
    returns the call that waits for the MAC. The calling thread hashes its share of the
    leaves first, unless `background` (it has other work to do meanwhile)."""
    leaves = max(1, -(-size // LEAF))
    digests = [b""] * leaves
    errors: list[BaseException] = []

    def hash_leaves(first: int, stop: int) -> None:
        try:
            pieces = leaves_of()
            for index in range(first, stop):
                leaf = _node(secret, index, 0, last=index == leaves - 1)
                for piece in pieces(index):
                    leaf.update(piece)
                digests[index] = leaf.digest()
        except BaseException as exc:
            errors.append(exc)

    workers = min(leaves, WORKERS)
    bounds = [leaves * n // workers for n in range(workers + 1)]
    threads = [
        threading.Thread(
            target=hash_leaves, args=(bounds[n], bounds[n + 1]), name=THREAD_NAME, daemon=True
        )
        for n in range(0 if background else 1, workers)
    ]
    for thread in threads:
        thread.start()
    if not background:
        hash_leaves(bounds[0], bounds[1])

    def finish() -> bytes:
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        root = _node(secret, 0, 1, last=True)
        for digest in digests:
            root.update(digest)
        return root.digest()

    return finish


def _slices(segments: Sequence[memoryview], start: int, stop: int) -> list[memoryview]:
    """Views of the bytes [start, stop) of the concatenation of `segments`."""
    views = []
    base = 0
    for segment in segments:
        end = base + len(segment)
        if end > start and base < stop:
            views.append(segment[max(start, base) - base : min(stop, end) - base])
        base = end
    return views


def fill(fd: int, views: Iterable[memoryview], offset: int) -> None:
    """Read the file from `offset` into `views`, one after the other, completely."""
    for view in views:
        filled = 0
        while filled < len(view):
            count = _read_at(fd, view[filled:], offset + filled)
            if not count:
                raise PayloadError("data file is shorter than its record says")
            filled += count
        offset += len(view)


def file_mac(fd: int, size: int, secret: bytes) -> bytes:
    """The MAC of the first `size` bytes of the file open as `fd`."""

    def leaves_of() -> Pieces:
        buffer = memoryview(bytearray(min(LEAF, size) or 1))

        def pieces(index: int) -> Sequence[memoryview]:
            offset = index * LEAF
            view = buffer[: min(LEAF, size - offset)]
            fill(fd, (view,), offset)
            return (view,)

        return pieces

    return _tree_mac(size, secret, leaves_of)()


def buffer_mac(
    segments: Sequence[memoryview], secret: bytes, *, background: bool = False
) -> Callable[[], bytes]:
    """Start taking the MAC of the concatenation of `segments` (bytes in memory); returns
    the call that waits for it. With `background`, only other threads hash."""
    size = sum(len(segment) for segment in segments)
    return _tree_mac(
        size,
        secret,
        lambda: lambda index: _slices(segments, index * LEAF, (index + 1) * LEAF),
        background=background,
    )


def read_mac(fd: int, segments: Sequence[memoryview], secret: bytes) -> bytes:
    """Read the file into `segments` (as many bytes as they hold) and return their MAC:
    each thread reads its own leaves, then hashes them while they are in its cache."""
    size = sum(len(segment) for segment in segments)

    def pieces(index: int) -> Sequence[memoryview]:
        views = _slices(segments, index * LEAF, (index + 1) * LEAF)
        fill(fd, views, index * LEAF)
        return views

    return _tree_mac(size, secret, lambda: pieces)()


if hasattr(os, "preadv"):

    def _read_at(fd: int, view: memoryview, offset: int) -> int:
        return os.preadv(fd, [view], offset)

    WORKERS = max(1, min(4, os.cpu_count() or 1))
else:  # Windows: no positional reads; one thread, moving the offset (callers seek back)

    def _read_at(fd: int, view: memoryview, offset: int) -> int:
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(view))
        view[: len(data)] = data
        return len(data)

    WORKERS = 1


def check(mac: bytes, expected: bytes) -> None:
    if not hmac.compare_digest(mac, expected):
        raise PayloadError("data file signature does not verify (tampered or damaged)")
