"""A private redis-server for the demo, the benchmark, the stress harness and the tests.

`RedisServer` runs one server of our own on a free local port (and a unix socket) in a
temporary directory, without persistence (``--save "" --appendonly no``); it can be stopped,
killed and started again on the same port (outage scenarios). Nothing here is used by the
cache itself.

A run killed with SIGTERM (a CI time limit, `kill`) would leave its servers running,
orphaned: while the process that started them has SIGTERM at its default action, the first
start installs a handler that kills them before the process dies of the signal.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

__all__ = ["RedisServer", "private_server"]

STARTUP_TIMEOUT = 10.0  # seconds for a started server to answer PING


# The servers this process runs (a forked child inherits the set, and must not kill them).
_RUNNING: weakref.WeakSet[RedisServer] = weakref.WeakSet()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    for server in list(_RUNNING):
        if server.owner == os.getpid():
            server.kill()
            shutil.rmtree(server.directory, ignore_errors=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # die of the signal, as without the handler


def _kill_on_sigterm() -> None:
    """Install `_on_sigterm` if SIGTERM has its default action (a handler of the
    application's own, or ours already, is left alone) and this is the main thread (the only
    one that may)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
        os.register_at_fork(after_in_child=_default_in_child)


def _default_in_child() -> None:
    # A forked child owns no server: SIGTERM kills it at once, as if nothing had been
    # installed (a Python handler would wait for a blocking C call to return).
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        with contextlib.suppress(ValueError):  # forked from a thread that is not the main one
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _complete(reply: bytes) -> bool:
    if reply[:1] != b"$":
        return True
    head, _, body = reply.partition(b"\r\n")
    return len(body) >= int(head[1:]) + 2


class RedisServer:
    """One private redis-server process on 127.0.0.1 (and a unix socket in its directory):
    `start()`, then `url` (or `unix_url`); `stop()`/`kill()` and `start()` again on the same
    port; `close()` removes everything."""

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = found
        self.port = port or _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="twat-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.owner = os.getpid()  # the process that starts and stops it

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server (again) on its port and wait until it answers PING."""
        if self.running:
            return
        _kill_on_sigterm()
        self.owner = os.getpid()
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.directory),
                    "--unixsocket", str(self.socket_path),
                    "--unixsocketperm", "700",
                    "--daemonize", "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        _RUNNING.add(self)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited at start on port {self.port}:\n{tail}")
            if self.ping():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} in time")

    def command(self, *args: str) -> bytes:
        """Send one command (inline protocol); the reply's first line, or a bulk reply's
        body (``INFO``)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
            conn.sendall(" ".join(args).encode() + b"\r\n")
            reply = b""
            while True:
                chunk = conn.recv(65536)
                reply += chunk
                if not chunk or (reply.endswith(b"\r\n") and _complete(reply)):
                    break
        return reply.split(b"\r\n", 1)[1].strip() if reply[:1] == b"$" else reply.strip()

    @property
    def version(self) -> str:
        """The server's version, from ``INFO server``."""
        info = self.command("INFO", "server").decode(errors="replace")
        found = re.search(r"redis_version:(\S+)", info)
        return found.group(1) if found else "?"

    def ping(self) -> bool:
        try:
            return self.command("PING") == b"+PONG"
        except OSError:
            return False

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def _end(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a killed server leaves it behind

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM); `start()` brings it back on the same port."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server (SIGKILL), as a crash would."""
        self._end(signal.SIGKILL)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def private_server(binary: str | None = None) -> Iterator[RedisServer]:
    """A started `RedisServer` (a few ports are tried: a free port can be taken between
    probing and binding), closed and removed on exit."""
    for attempt in range(3):
        server = RedisServer(binary)
        try:
            server.start()
            break
        except RuntimeError:
            server.close()
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.close()
