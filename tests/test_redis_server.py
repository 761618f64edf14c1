"""The private redis-server helper (`twat_cache._redis_server`) used by the tests, the demo,
the bench and the stress harness: a run killed with SIGTERM takes its servers with it, an
application's own SIGTERM handler is left alone, and a forked child keeps the default
action. Each case runs in a real subprocess with a real server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _redis import RedisServer

pytestmark = pytest.mark.redis

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _spawn(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether process `pid` has exited (and been reaped) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").exists():
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
            if state == "Z":  # exited; its new parent (init) reaps it
                return True
        time.sleep(0.05)
    return False


STARTS = """
import time
from twat_cache._redis_server import RedisServer
server = RedisServer()
server.start()
print(server.process.pid, server.directory, flush=True)
time.sleep(60)
"""


def test_sigterm_kills_the_servers_the_process_started(redis_server: RedisServer) -> None:
    child = _spawn(STARTS)
    try:
        assert child.stdout is not None
        pid_text, directory = child.stdout.readline().split()
        pid = int(pid_text)
        assert not _gone(pid, within=0.2), "the server should run until the signal"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM  # died of the signal, as before
        assert _gone(pid), "redis-server outlived the process that started it"
        assert not Path(directory).exists()
    finally:
        child.kill()
        child.communicate()


def test_an_application_handler_is_left_alone(redis_server: RedisServer) -> None:
    child = _spawn(
        """
import signal, time
from twat_cache._redis_server import RedisServer
def mine(signum, frame):
    print("mine", flush=True)
signal.signal(signal.SIGTERM, mine)
server = RedisServer()
server.start()
print(signal.getsignal(signal.SIGTERM) is mine, flush=True)
server.close()
"""
    )
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert out.split() == ["True"]


def test_a_forked_child_keeps_the_default_action(redis_server: RedisServer) -> None:
    child = _spawn(
        """
import os, signal
from twat_cache._redis_server import RedisServer
server = RedisServer()
server.start()
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
pid = os.fork()
if pid == 0:
    os._exit(0 if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), server.running, flush=True)
server.close()
"""
    )
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    # The parent has the handler; the forked child has the default action again, and the
    # parent's server still runs after the child exits.
    assert out.split() == ["False", "0", "True"]
