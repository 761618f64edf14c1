"""The worker threads that run blocking engine I/O for async functions.

`asyncio.to_thread` runs work in the event loop's default executor, which is made with the
loop and shut down with it. A program calling `asyncio.run` again and again (a CLI, a task
queue worker, a notebook) then starts fresh threads for every loop, and each opens its own
database connection (diskcache, klepto's SQL archive: one per thread), which SQLite keeps
open after the thread is gone while other connections of the process hold locks on the
file. One pool owned by twat-cache, living as long as the process, keeps the threads and
so their connections: a loop made and closed costs no thread and no descriptor.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twat_cache._fork import reset_in_child

__all__ = ["in_thread"]

#: Threads at most, as asyncio's default executor has.
WORKERS = min(32, (os.cpu_count() or 1) + 4)


class _Pool:
    __slots__ = ("__weakref__", "executor", "lock")

    def __init__(self) -> None:
        self.executor: ThreadPoolExecutor | None = None
        self.lock = threading.Lock()

    def get(self) -> ThreadPoolExecutor:
        executor = self.executor
        if executor is None:
            with self.lock:
                executor = self.executor
                if executor is None:
                    executor = self.executor = ThreadPoolExecutor(
                        WORKERS, thread_name_prefix="twat-cache-io"
                    )
        return executor

    def after_fork(self) -> None:
        # The parent's threads do not exist in a forked child: it starts a pool of its own.
        self.executor = None
        self.lock = threading.Lock()


_POOL = _Pool()
reset_in_child(_POOL)


def in_thread(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """`function` as a coroutine function run in one of twat-cache's worker threads (with
    the caller's context, as `asyncio.to_thread` does): blocking disk I/O never stalls the
    event loop, however large the value."""

    async def call(*args: Any) -> Any:
        loop = asyncio.get_running_loop()
        run = functools.partial(contextvars.copy_context().run, function, *args)
        return await loop.run_in_executor(_POOL.get(), run)

    return call
