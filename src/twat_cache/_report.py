"""Warnings aimed at the user's own line, and cache faults reported once, not once per call."""

from __future__ import annotations

import asyncio
import sys
import threading
import warnings
from pathlib import Path

from twat_cache.exceptions import CacheFaultWarning, CacheWarning
from twat_cache.logging import logger

__all__ = ["WRAPPER_FILENAME_PREFIX", "FaultReporter", "shorten", "warn"]

#: The longest text of one fault a warning quotes: a key fault of a deeply nested argument
#: names its path (`x[0][0]...`), which may be any length.
MAX_DETAIL = 400

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
#: Generated wrappers are compiled under this pseudo file name (see `_wrap.py`).
WRAPPER_FILENAME_PREFIX = "<twat_cache wrapper of "


#: Frames skipped when looking for the user's line: the package, its generated wrappers, and
#: asyncio's event loop (a cached coroutine run by `asyncio.run(f(...))` has the loop as its
#: caller: the user's line is the one that started the loop).
_SKIPPED = (_PACKAGE_DIR, WRAPPER_FILENAME_PREFIX, str(Path(asyncio.__file__).resolve().parent))


def _user_stacklevel() -> int:
    # Point the warning at the first frame outside twat_cache (the user's decoration or
    # call), however deep inside the package or its generated wrappers it was raised.
    level = 1
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        frame = frame.f_back  # type: ignore[assignment]  # None ends the loop
        level += 1
    return level


def shorten(text: str, limit: int = MAX_DETAIL) -> str:
    """`text`, or its beginning and end around an ellipsis when it is longer than `limit`."""
    if len(text) <= limit:
        return text
    head = (limit - 1) * 2 // 3
    return f"{text[:head]}\u2026{text[len(text) - (limit - 1 - head) :]}"


def warn(message: str, category: type[Warning] = CacheWarning) -> None:
    """Emit a warning attributed to the user's code, and log it."""
    logger.warning(message)
    warnings.warn(message, category, stacklevel=_user_stacklevel())


class FaultReporter:
    """Reports each kind of fault of one cache once: the first occurrence warns, later ones
    are only counted (a failing backend must not flood the application with warnings)."""

    __slots__ = ("_lock", "_seen", "count", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self._seen: set[tuple[str, type[BaseException]]] = set()
        self._lock = threading.Lock()

    def report(self, operation: str, exc: BaseException) -> None:
        kind = (operation, type(exc))
        with self._lock:
            self.count += 1
            first = kind not in self._seen
            self._seen.add(kind)
        if first:
            detail = shorten(str(exc))
            logger.opt(exception=exc).warning(
                "cache {} failed to {}: {}; going on without the cache",
                self.name,
                operation,
                shorten(repr(exc)),
            )
            warnings.warn(
                f"twat_cache: cache {self.name!r} failed to {operation} ({type(exc).__name__}: "
                f"{detail}); the call goes on without the cache (reported once)",
                CacheFaultWarning,
                stacklevel=_user_stacklevel(),
            )

    def after_fork(self) -> None:
        """In a forked child: a new lock (the fork may have copied this one held)."""
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
            self.count = 0
