"""Cross-process stampede protection on Redis: real processes racing for one cold key, a
holder killed while it holds the lease, a holder that raises, leases released only by
their owner, and leasing that fails falling back to computing unlocked."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from _redis import RedisServer  # noqa: E402
from twat_cache import CacheConfig, ucache  # noqa: E402
from twat_cache.engines import _redis_breaker as breakers  # noqa: E402
from twat_cache.engines.redis import RedisEngine  # noqa: E402
from twat_cache.exceptions import CacheFaultWarning  # noqa: E402

pytestmark = pytest.mark.redis

WORK = 0.3  # seconds the cached function works: the window in which the others arrive
PROCESS_TIMEOUT = 30.0  # a hang guard for one worker process, far above its normal time


@pytest.fixture(autouse=True)
def _fresh_breakers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(breakers, "_BREAKERS", {})


# One worker process: waits at a barrier (files), calls the cached function on one key,
# prints what it got. The function appends its pid to a file on every execution.
_WORKER = """
import asyncio, json, os, sys, time
from pathlib import Path
from twat_cache import acache, ucache

opts = json.loads(sys.argv[1])
sync = Path(opts["sync"])


def executed():
    with open(sync / "executions", "a") as log:
        log.write(f"{os.getpid()} {time.time()}\\n")
    (sync / "holding").touch()


def wait_for(condition, what):
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.002)


options = dict(url=opts["url"], folder_name="stampede", lock=opts["lock"], lease=opts["lease"])

if opts["async"]:
    decorator = acache if opts["decorator"] == "acache" else ucache

    @decorator(**options)
    async def compute(x):
        executed()
        await asyncio.sleep(opts["work"])
        if opts["fail"]:
            raise ValueError("the holder failed")
        return [x, os.getpid()]

    async def call():
        # several tasks of this process on the key, besides the other processes
        values = await asyncio.gather(*(compute(7) for _ in range(3)))
        assert all(v == values[0] for v in values), values
        return values[0]

    run = lambda: asyncio.run(call())
else:

    @ucache(**options)
    def compute(x):
        executed()
        time.sleep(opts["work"])
        if opts["fail"]:
            raise ValueError("the holder failed")
        return [x, os.getpid()]

    run = lambda: compute(7)

(sync / f"ready-{os.getpid()}").touch()
wait_for(lambda: len(list(sync.glob("ready-*"))) >= opts["parties"], "the other processes")
if opts["after_holding"]:
    wait_for((sync / "holding").exists, "a holder")
(sync / f"calling-{os.getpid()}").touch()
try:
    print(json.dumps({"value": run()}))
except ValueError as exc:
    print(json.dumps({"error": str(exc)}))
"""


class Workers:
    """Starts worker processes on one test's server and directory and collects them."""

    def __init__(self, url: str, sync: Path) -> None:
        self.url = url
        self.sync = sync
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, **options: Any) -> subprocess.Popen[str]:
        opts = {
            "url": self.url,
            "sync": str(self.sync),
            "lock": True,
            "lease": 10,
            "async": False,
            "decorator": "ucache",
            "work": WORK,
            "fail": False,
            "parties": 1,
            "after_holding": False,
            **options,
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_WORKER), json.dumps(opts)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def result(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT)
        assert proc.returncode == 0, err
        return dict(json.loads(out))

    def executions(self) -> list[int]:
        """The pid of each execution of the cached function, in order."""
        return [pid for pid, _ in self.timed_executions()]

    def timed_executions(self) -> list[tuple[int, float]]:
        log = self.sync / "executions"
        lines = log.read_text().splitlines() if log.exists() else []
        return [(int(pid), float(at)) for pid, at in (line.split() for line in lines)]

    def calling(self, proc: subprocess.Popen[str]) -> bool:
        return (self.sync / f"calling-{proc.pid}").exists()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    sync = tmp_path / "sync"
    sync.mkdir()
    group = Workers(redis_url, sync)
    yield group
    group.close()


def wait_until(condition: Any, what: str, bound: float = PROCESS_TIMEOUT) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# --- stampedes across processes ----------------------------------------------------------


def test_six_processes_on_a_cold_key_run_the_function_once(workers: Workers) -> None:
    procs = [workers.start(parties=6) for _ in range(6)]
    values = [workers.result(proc)["value"] for proc in procs]
    (executor,) = workers.executions()
    assert executor in {proc.pid for proc in procs}
    assert values == [[7, executor]] * 6  # everyone got the holder's value


def test_without_lock_several_processes_compute(workers: Workers) -> None:
    # The control: the same race without the lease computes more than once, so the test
    # above can fail.
    procs = [workers.start(parties=6, lock=False) for _ in range(6)]
    values = [workers.result(proc)["value"] for proc in procs]
    executions = workers.executions()
    assert len(executions) > 1
    assert {tuple(value) for value in values} == {(7, pid) for pid in executions}


def test_six_async_processes_on_a_cold_key_run_the_function_once(workers: Workers) -> None:
    procs = [
        workers.start(parties=6, decorator="acache" if i % 2 else "ucache", **{"async": True})
        for i in range(6)
    ]
    values = [workers.result(proc)["value"] for proc in procs]
    (executor,) = workers.executions()
    assert values == [[7, executor]] * 6


def test_a_killed_holders_lease_expires_and_another_process_computes(workers: Workers) -> None:
    lease = 1.0
    holder = workers.start(lease=lease, work=PROCESS_TIMEOUT)  # takes the lease, then hangs
    waiter = workers.start(lease=lease, after_holding=True)
    wait_until(lambda: workers.calling(waiter), "the waiter to call")
    holder.kill()  # a crash: the lease is never released
    holder.wait()
    assert workers.result(waiter)["value"] == [7, waiter.pid]
    (first, held_at), (second, computed_at) = workers.timed_executions()
    assert (first, second) == (holder.pid, waiter.pid)
    # The waiter computed only once the crashed holder's lease had expired (the holder
    # logs just after taking it; 0.1 s of slack for the two processes' clocks' reading).
    assert computed_at - held_at >= lease - 0.1


def test_a_holder_that_raises_releases_the_lease_and_a_waiter_computes(
    workers: Workers, redis_url: str
) -> None:
    # A lease of 30 s: the waiter can only be done well before that if the holder released
    # the lease when its function raised (PROCESS_TIMEOUT bounds the wait).
    holder = workers.start(lease=30, fail=True)
    waiter = workers.start(lease=30, after_holding=True)
    started = time.monotonic()
    assert workers.result(holder) == {"error": "the holder failed"}
    assert workers.result(waiter)["value"] == [7, waiter.pid]
    assert time.monotonic() - started < 30  # not by the lease's expiry
    assert workers.executions() == [holder.pid, waiter.pid]
    with redis.Redis.from_url(redis_url) as client:
        assert list(client.scan_iter(match="twat_cache:{stampede}#lease:*")) == []


# --- the lease itself -------------------------------------------------------------------


@pytest.fixture
def engine(redis_url: str) -> Iterator[RedisEngine]:
    with RedisEngine(CacheConfig(url=redis_url, folder_name="t")) as built:
        yield built


def test_a_lease_is_exclusive_and_released_only_by_its_owner(
    engine: RedisEngine, redis_url: str
) -> None:
    first = engine.lease("k", 5)
    assert first is not None
    assert engine.lease("k", 5) is None
    engine.release("k", "not-the-owners-token")
    assert engine.lease("k", 5) is None  # still held
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("twat_cache:{t}#lease:0:k") == first.encode()
        assert 0 < client.pttl("twat_cache:{t}#lease:0:k") <= 5000
    engine.release("k", first)
    second = engine.lease("k", 5)
    assert second is not None
    assert second != first
    assert engine.lease("other", 5) is not None  # leases are per key


def test_a_late_release_does_not_free_a_newer_holders_lease(
    engine: RedisEngine, redis_url: str
) -> None:
    stale = engine.lease("k", 0.1)
    assert stale is not None
    time.sleep(0.2)  # expired: another holder takes it
    newer = engine.lease("k", 5)
    assert newer is not None
    engine.release("k", stale)
    assert engine.lease("k", 5) is None
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("twat_cache:{t}#lease:0:k") == newer.encode()


def test_async_leases(engine: RedisEngine) -> None:
    async def main() -> None:
        first = await engine.alease("k", 5)
        assert first is not None
        assert await engine.alease("k", 5) is None
        await engine.arelease("k", "not-the-owners-token")
        assert await engine.alease("k", 5) is None
        await engine.arelease("k", first)
        assert await engine.alease("k", 5) is not None

    asyncio.run(main())


def test_leases_do_not_count_as_entries_and_clear_keeps_them(engine: RedisEngine) -> None:
    token = engine.lease("k", 5)
    assert token is not None
    engine.set("a", 1)
    assert len(engine) == 1
    engine.clear()
    assert engine.lease("k", 5) is None  # a computation in flight keeps its lease


# --- leasing that fails -----------------------------------------------------------------


def test_leasing_failing_computes_unlocked_and_returns(redis_server: RedisServer) -> None:
    server = RedisServer()  # private: this test stops it
    server.start()
    try:
        calls: list[int] = []

        @ucache(url=server.url, folder_name="leasing", cooldown=60)
        def square(x: int) -> int:
            calls.append(x)
            return x * x

        # Another process holds the lease of the key: this call waits for its value...
        with redis.Redis.from_url(server.url) as client:
            client.set(f"twat_cache:{{leasing}}#lease:0:{square.cache_key(4)}", "other", px=60_000)
        outcome: dict[str, Any] = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            thread = threading.Thread(target=lambda: outcome.update(value=square(4)))
            thread.start()
            time.sleep(0.1)
            assert thread.is_alive()  # waiting, not computing
            assert calls == []
            # ...and the server goes away: reading and leasing fail, the call computes.
            server.stop()
            thread.join(PROCESS_TIMEOUT)
            assert not thread.is_alive()
        assert outcome == {"value": 16}
        assert calls == [4]
        faults = [str(w.message) for w in caught if issubclass(w.category, CacheFaultWarning)]
        assert len(faults) == len(caught)
        assert any("failed to take a lease" in message for message in faults)
    finally:
        server.close()
