"""A real redis-server for the tests: started on a free local port in a temporary directory.

`RedisServer` runs one private server (no persistence: ``--save "" --appendonly no``) that a
test may stop, kill and start again on the same port (outage tests). The fixtures:

- `redis_server` (session): the running server; skips when the `redis-server` binary is
  missing, but fails under ``CI=true`` (CI installs it: a skip there would hide the tests);
- `redis_url` (function): its ``redis://`` URL, the server running and emptied (FLUSHALL)
  for each test, so tests never see each other's keys.

Registered for every test module by an import in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server", "redis_url"]

STARTUP_TIMEOUT = 10.0  # seconds for a started server to answer PING


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One private redis-server process on 127.0.0.1 (and a unix socket in its directory).

    >>> server = RedisServer()  # doctest: +SKIP
    >>> server.start()
    ... server.url  # doctest: +SKIP
    'redis://127.0.0.1:40123/0'
    """

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = found
        self.port = port or _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="twat-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

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
        """Send one command (inline protocol) and return the first reply line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
            conn.sendall(" ".join(args).encode() + b"\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
            return reply.strip()

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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the session (skipped without the binary, failed in CI)."""
    if shutil.which("redis-server") is None:
        reason = (
            "redis-server is not installed (apt-get install redis-server); "
            "the tests that need a real Redis server cannot run"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: under CI=true they must run, not skip")
        pytest.skip(reason)
    for attempt in range(3):
        server = RedisServer()
        try:
            server.start()
            break
        except RuntimeError:  # the free port was taken meanwhile: another one
            server.close()
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private server's URL, the server running and empty for this test."""
    redis_server.start()  # a no-op unless an earlier test stopped or killed it
    redis_server.flushall()
    return redis_server.url
