"""A local TCP server that accepts connections and never replies: a cache server that hangs.

`Blackhole` listens on a free port of 127.0.0.1 in a background thread, accepts every
connection, reads (and counts) what clients send, and never writes a byte back, which is
what a Redis stuck in a long command, or behind a dead network path, looks like to a
client. Used as a context manager:

>>> with Blackhole() as hole:  # doctest: +SKIP
...     hole.url
'redis://127.0.0.1:40123/0'
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType

__all__ = ["Blackhole"]


class Blackhole:
    """A listening socket whose connections are accepted, read, and never answered.

    `connections` counts the connections accepted and `received` the bytes read, so a test
    can tell whether a client talked to it at all (a circuit breaker that skips the server
    sends nothing).
    """

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self.received = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def counts(self) -> tuple[int, int]:
        """(connections accepted, bytes received) so far."""
        with self._lock:
            return self.connections, self.received

    def start(self) -> Blackhole:
        self._thread = threading.Thread(target=self._serve, name="blackhole", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        open_sockets: list[socket.socket] = []
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                for ready, _ in selector.select(timeout=0.05):
                    sock = ready.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        with contextlib.suppress(BlockingIOError):
                            conn, _ = self._listener.accept()
                            conn.setblocking(False)
                            open_sockets.append(conn)
                            selector.register(conn, selectors.EVENT_READ)
                            with self._lock:
                                self.connections += 1
                        continue
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except ConnectionError:
                        data = b""  # reset by the client: as good as a hang-up
                    if not data:  # the client hung up: forget the connection
                        selector.unregister(sock)
                        sock.close()
                        open_sockets.remove(sock)
                        continue
                    with self._lock:
                        self.received += len(data)
            for sock in open_sockets:
                sock.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._listener.close()

    def __enter__(self) -> Blackhole:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
