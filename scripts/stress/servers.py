"""Servers for the harness: the library's private redis-server launcher, and a socket that
accepts connections and never answers."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading

from twat_cache._redis_server import RedisServer, private_server

__all__ = ["Blackhole", "RedisServer", "free_port", "private_server", "redis_binary"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_binary() -> str | None:
    return shutil.which("redis-server")


class Blackhole:
    """Accepts connections on a local port, reads what clients send, never replies: a
    server stuck in a long command, or behind a dead network path."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.listener.settimeout(0.05)
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="blackhole", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self._held.append(conn)  # held open, never read from or written to

    def __enter__(self) -> Blackhole:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()
        self.listener.close()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
