"""Connections of the Redis engines (redis, aiocache's remote cache): pools that wait for a
free connection, one asyncio client per event loop freed with its loop, fresh ones in a
forked child, and which failures are the server's."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Generic, TypeVar

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    MaxConnectionsError,
    NoPermissionError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from twat_cache._fork import reset_in_child
from twat_cache.exceptions import CredentialsError, PoolExhaustedError

__all__ = [
    "POOL_SIZE",
    "POOL_WAIT",
    "CredentialsError",
    "PerLoop",
    "PoolExhaustedError",
    "async_pool",
    "not_the_servers",
    "reply_lost",
    "shielded",
    "sync_pool",
]

#: Connections one pool (a process's sync client, or one event loop's) opens at most.
POOL_SIZE: Final = 64
#: Seconds a call waits for a free connection when all `POOL_SIZE` are busy. Waiting is
#: the normal answer to a burst (more concurrent calls than connections); past this bound
#: the operation is a cache fault of its own kind, never a server failure.
POOL_WAIT: Final = 5.0

# What redis-py's blocking pools raise when no connection frees up in time (a plain
# ConnectionError, like a dead server's: only its text tells them apart).
_NO_CONNECTION: Final = ("No connection available.",)


def not_the_servers(exc: BaseException, server: str) -> Exception | None:
    """The error to raise for `exc` when it is not a failure of the server (a wrong
    password, an exhausted pool), else None: then the server's breaker counts it."""
    if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError):
        # A wrong password, or an ACL user refused a command or a key: this cache's
        # configuration, not the server's health.
        return CredentialsError(f"{server} refused this cache's credentials: {exc}")
    if isinstance(exc, MaxConnectionsError) or (
        isinstance(exc, RedisConnectionError) and exc.args == _NO_CONNECTION
    ):
        return PoolExhaustedError(
            f"{server}: all {POOL_SIZE} connections of this process stayed busy for "
            f"{POOL_WAIT}s: the operation is skipped"
        )
    return None


def reply_lost(exc: BaseException) -> bool:
    """Whether `exc` may have come after the server ran the command: an interrupt or a
    cancellation while waiting for the reply, or a reply that timed out. (A refused
    connection or an open breaker sent nothing.)"""
    return not isinstance(exc, Exception) or isinstance(exc.__cause__, RedisTimeoutError)


async def shielded(operation: Awaitable[Any]) -> Any:
    """Await `operation` in a task of its own, which a cancellation of the caller does not
    stop: the caller's cancellation goes on at once, the operation (a lease's release) runs
    to its end."""
    task = asyncio.ensure_future(operation)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_quiet)
        raise


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a failed release is no "never retrieved" warning


def sync_pool(url: str, **options: Any) -> Any:
    """A thread-safe pool of at most `POOL_SIZE` connections that waits for a free one."""
    import redis

    return redis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT, **options
    )


def async_pool(url: str, **options: Any) -> Any:
    """`sync_pool` for redis.asyncio: one event loop's tasks wait for a free connection."""
    from redis.asyncio import BlockingConnectionPool

    return BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT, **options
    )


T = TypeVar("T")


class _Entry(Generic[T]):
    __slots__ = ("abandoned", "client", "keeper", "loop", "value")

    def __init__(self, loop: asyncio.AbstractEventLoop, value: T, client: Any) -> None:
        self.loop = loop
        self.value = value
        self.client = client  # the redis.asyncio client whose sockets `value` uses
        self.keeper: Any = None
        self.abandoned = False


class PerLoop(Generic[T]):
    """One `build()` value per event loop (redis.asyncio connections belong to the loop
    that opened them), closed by `close_value` inside its loop when the loop shuts down.

    A loop closed without `shutdown_asyncgens()` (a hand-made loop, `loop.close()`) can no
    longer run that close: the first use of another loop, `close()`, or a fork then closes
    its sockets directly and forgets it, so neither the loop nor its sockets outlive it."""

    __slots__ = ("__weakref__", "_build", "_client_of", "_close_value", "_entries", "_lock")

    def __init__(
        self,
        build: Callable[[], T],
        client_of: Callable[[T], Any],
        close_value: Callable[[T], Awaitable[Any]],
    ) -> None:
        self._build = build
        self._client_of = client_of
        self._close_value = close_value
        self._entries: dict[asyncio.AbstractEventLoop, _Entry[T]] = {}
        self._lock = threading.Lock()
        reset_in_child(self)

    @property
    def entries(self) -> dict[asyncio.AbstractEventLoop, Any]:
        """The loops holding a value now (a live view)."""
        return self._entries

    async def get(self) -> T:
        """This event loop's value, built on the loop's first use."""
        loop = asyncio.get_running_loop()
        entry = self._entries.get(loop)
        if entry is not None:
            return entry.value
        self._prune()
        value = self._build()
        entry = _Entry(loop, value, self._client_of(value))
        entry.keeper = self._keep(entry)
        with self._lock:
            self._entries[loop] = entry
        # Started in the loop, the generator is one the loop tracks: its shutdown (asyncio.run
        # ends with it) closes the generator, whose `finally` closes the value in its loop.
        await entry.keeper.__anext__()
        return value

    async def _keep(self, entry: _Entry[T]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._lock:
                if self._entries.get(entry.loop) is entry:
                    del self._entries[entry.loop]
            if not entry.abandoned:
                await self._close_value(entry.value)

    def _prune(self) -> None:
        with self._lock:
            closed = [entry for loop, entry in self._entries.items() if loop.is_closed()]
            for entry in closed:
                del self._entries[entry.loop]
        for entry in closed:
            _abandon(entry)

    async def aclose_current(self) -> None:
        """Close the running loop's value now."""
        entry = self._entries.get(asyncio.get_running_loop())
        if entry is not None:
            await entry.keeper.aclose()

    def close(self) -> None:
        """Close every loop's value from outside: in its loop when that loop runs, at once
        when it is idle, directly when it is closed."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            loop = entry.loop
            if loop.is_closed():
                _abandon(entry)
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(entry.keeper.aclose(), loop)
            else:
                try:
                    loop.run_until_complete(entry.keeper.aclose())
                except RuntimeError:  # another loop runs in this thread: left to the GC
                    continue

    def after_fork(self) -> None:
        # The parent's sockets: the child closes its copies of the descriptors (a close,
        # never a shutdown, leaves the parent's connections intact) and opens its own.
        self._lock = threading.Lock()
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            _abandon(entry)


def _abandon(entry: _Entry[Any]) -> None:
    """Forget a loop's value without its loop: close its sockets directly, then finish the
    keeper generator here (it skips the close it can no longer await), so that no
    finalizer later asks the dead loop to run it."""
    entry.abandoned = True
    _close_sockets(entry.client)
    closing = entry.keeper.aclose()
    try:
        closing.send(None)
    except StopIteration:
        return
    except Exception:  # the keeper is gone either way
        return
    closing.close()


def _close_sockets(client: Any) -> None:
    # asyncio cannot close a transport of a closed loop (its close is a call_soon); the
    # socket under it can be closed as is. Private attributes of redis-py and asyncio:
    # when they change, the garbage collector closes the sockets (with a ResourceWarning).
    pool = getattr(client, "connection_pool", None)
    connections = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]
    for connection in connections:
        try:
            transport = getattr(getattr(connection, "_writer", None), "transport", None)
            sock = getattr(transport, "_sock", None)
            if sock is not None:
                sock.close()
                transport._sock = None  # type: ignore[union-attr]  # checked above
                transport._closing = True  # type: ignore[union-attr]  # no "unclosed" warning
            connection._writer = connection._reader = None
        except Exception:
            continue
