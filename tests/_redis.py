"""A real redis-server for the tests: started on a free local port in a temporary directory.

`RedisServer` (from `twat_cache._redis_server`, shared with the demo, the bench and the
stress harness) runs one private server that a test may stop, kill and start again on the
same port (outage tests). The fixtures:

- `redis_server` (session): the running server; skips when the `redis-server` binary is
  missing, but fails under ``CI=true`` (CI installs it: a skip there would hide the tests);
- `redis_url` (function): its ``redis://`` URL, the server running and emptied (FLUSHALL)
  for each test, so tests never see each other's keys.

Registered for every test module by an import in conftest.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from twat_cache._redis_server import RedisServer, private_server

__all__ = ["RedisServer", "redis_server", "redis_url"]


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
    with private_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private server's URL, the server running and empty for this test."""
    redis_server.start()  # a no-op unless an earlier test stopped or killed it
    redis_server.flushall()
    return redis_server.url
