"""`twat_cache.disabled()` (skip every cache for a block) and `f.cache_refresh(...)` (recompute
and store one entry), with real threads, event loops, disk engines and subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from twat_cache import acache, bcache, disabled, fcache, mcache, ucache
from twat_cache.exceptions import CacheFaultWarning

JOIN = 10.0  # seconds before a thread still running is declared stuck
THREADS = 16


class Counted:
    """A function's body that records its calls and tags each result with the call number,
    so a test can tell a stored value from a fresh computation."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def __call__(self, x: int) -> tuple[int, int]:
        self.calls += 1
        if self.fail:
            raise ValueError(f"failed on {x}")
        return (x, self.calls)


#: Sync decorators, each on the engine it picks by default.
SYNC_DECORATORS: dict[str, tuple[Callable[..., Any], str]] = {
    "mcache": (mcache, "memory"),
    "bcache": (bcache, "diskcache"),
    "fcache": (fcache, "joblib"),
    "ucache": (ucache, "memory"),
    "ucache-folder": (lambda: ucache(folder_name="bypass_ucache"), "diskcache"),
}
MEMORY = {"cachebox", "cachetools", "functools"}


def decorate(kind: str, body: Counted) -> Any:
    factory, expected = SYNC_DECORATORS[kind]

    @factory()
    def f(x: int) -> tuple[int, int]:
        return body(x)

    name = f.cache_engine.name
    assert name in MEMORY if expected == "memory" else name == expected
    return f


def assert_hit_path_restored(f: Any) -> None:
    """The "no cost when unused" guarantee: the wrapper reads and writes the engine directly."""
    scope = f.__globals__
    assert scope["__twat_get"] is scope["__twat_direct_get"]
    assert scope["__twat_put"] is scope["__twat_direct_put"]


def close_engine(f: Any) -> None:
    close = getattr(f.cache_engine, "close", None)
    if close is not None:
        close()


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    """Cached functions whose engines are closed after the test."""
    functions: list[Any] = []
    yield functions
    for f in functions:
        close_engine(f)


# --- disabled(): sync decorators ---------------------------------------------------------


@pytest.mark.parametrize("kind", list(SYNC_DECORATORS))
def test_disabled_skips_reads_and_writes_then_caching_resumes(kind: str, opened: list[Any]) -> None:
    body = Counted()
    f = decorate(kind, body)
    opened.append(f)
    assert f(1) == (1, 1)
    assert f(1) == (1, 1)
    with disabled():
        assert f.__globals__["__twat_get"] is not f.__globals__["__twat_direct_get"]
        assert f(1) == (1, 2)  # the stored entry is not read...
        assert f(1) == (1, 3)  # ...nor replaced: the function runs every time
        assert f(2) == (2, 4)
        assert f(2) == (2, 5)  # nothing new is stored
        assert f.cache_info().currsize == 1
    assert_hit_path_restored(f)
    assert f(1) == (1, 1)  # the old entry, untouched
    assert f(2) == (2, 6)  # a miss: the block stored nothing
    assert f(2) == (2, 6)
    assert body.calls == 6
    info = f.cache_info()
    assert (info.hits, info.currsize) == (3, 2)


def test_another_thread_keeps_hitting_while_one_is_in_a_block() -> None:
    body = Counted()

    @mcache
    def f(x: int) -> tuple[int, int]:
        return body(x)

    assert f(1) == (1, 1)
    inside = threading.Event()
    checked = threading.Event()
    seen_inside: list[Any] = []

    def blocker() -> None:
        with disabled():
            seen_inside.append(f(1))
            inside.set()
            checked.wait(JOIN)
            seen_inside.append(f(1))

    thread = threading.Thread(target=blocker, daemon=True)
    thread.start()
    assert inside.wait(JOIN)
    # A block is open in the other thread: this thread, outside any block, still hits...
    assert f.__globals__["__twat_get"] is not f.__globals__["__twat_direct_get"]
    assert [f(1), f(1)] == [(1, 1), (1, 1)]
    # ...and still stores.
    assert f(5) == (5, 3)
    assert f(5) == (5, 3)
    checked.set()
    thread.join(JOIN)
    assert not thread.is_alive()
    assert seen_inside == [(1, 2), (1, 4)]
    assert_hit_path_restored(f)
    assert f(1) == (1, 1)


def test_nested_blocks() -> None:
    body = Counted()

    @mcache
    def f(x: int) -> tuple[int, int]:
        return body(x)

    f(1)
    with disabled():
        with disabled():
            assert f(1) == (1, 2)
        # Still inside the outer block: still bypassed, the guarded hit path still in place.
        assert f.__globals__["__twat_get"] is not f.__globals__["__twat_direct_get"]
        assert f(1) == (1, 3)
        assert f(9) == (9, 4)
    assert_hit_path_restored(f)
    assert f(1) == (1, 1)
    assert f(9) == (9, 5)
    assert f(9) == (9, 5)


def test_an_exception_in_the_block_leaves_caching_enabled() -> None:
    body = Counted()

    @mcache
    def f(x: int) -> tuple[int, int]:
        return body(x)

    def fail_inside_a_block() -> None:
        with disabled():
            f(1)
            raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        fail_inside_a_block()
    assert_hit_path_restored(f)
    assert f(1) == (1, 2)
    assert f(1) == (1, 2)
    assert f.cache_info().hits == 1


def test_a_function_decorated_inside_a_block() -> None:
    body = Counted()
    with disabled():

        @mcache
        def f(x: int) -> tuple[int, int]:
            return body(x)

        assert f.__globals__["__twat_get"] is not f.__globals__["__twat_direct_get"]
        assert f(1) == (1, 1)
        assert f(1) == (1, 2)
        assert f.cache_info().currsize == 0
    assert_hit_path_restored(f)
    assert f(1) == (1, 3)
    assert f(1) == (1, 3)
    assert f.cache_info().currsize == 1


@pytest.mark.parametrize("kind", ["mcache", "bcache"])
def test_stampede_inside_a_block_never_deadlocks(kind: str, opened: list[Any]) -> None:
    barrier = threading.Barrier(THREADS)
    arrived = threading.Semaphore(0)
    all_arrived = threading.Event()
    runs: list[int] = []

    def body(x: int) -> int:
        runs.append(x)
        # Keep this computation in flight until every caller has reached the call.
        all_arrived.wait(JOIN)
        return x * 10

    f = SYNC_DECORATORS[kind][0]()(body)
    opened.append(f)
    results: list[Any] = [None] * THREADS
    errors: list[BaseException] = []

    def call(i: int) -> None:
        with disabled():  # each thread opens its own block
            barrier.wait()
            arrived.release()
            try:
                results[i] = f(7)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for _ in range(THREADS):
        assert arrived.acquire(timeout=JOIN)
    all_arrived.set()
    for thread in threads:
        thread.join(JOIN)
    assert not any(thread.is_alive() for thread in threads), "a caller deadlocked"
    assert errors == []
    assert results == [70] * THREADS
    assert 1 <= len(runs) <= THREADS  # each ran, or shared a computation in flight
    assert f.cache_info().currsize == 0  # and nothing was stored
    assert_hit_path_restored(f)
    assert f(7) == 70
    assert f.cache_info().currsize == 1
    assert f(7) == 70
    assert f.cache_info().hits >= 1


# --- disabled(): async -------------------------------------------------------------------


ASYNC_DECORATORS: dict[str, tuple[Callable[..., Any], str]] = {
    "acache": (acache, "memory"),
    "acache-aiocache": (lambda: acache(cache_engine="aiocache"), "aiocache"),
    "ucache": (ucache, "memory"),
    "ucache-folder": (lambda: ucache(folder_name="bypass_async"), "diskcache"),
}


@pytest.mark.parametrize("kind", list(ASYNC_DECORATORS))
def test_disabled_in_async_code_covers_tasks_started_inside(kind: str, opened: list[Any]) -> None:
    factory, expected = ASYNC_DECORATORS[kind]
    if expected == "aiocache":
        pytest.importorskip("aiocache", reason="the aiocache engine needs aiocache")
    body = Counted()

    @factory()
    async def f(x: int) -> tuple[int, int]:
        await asyncio.sleep(0)
        return body(x)

    opened.append(f)
    name = f.cache_engine.name
    assert name in MEMORY if expected == "memory" else name == expected

    async def main() -> list[Any]:
        seen = [await f(1)]
        early = asyncio.create_task(f(1))  # started before the block: caches as usual
        with disabled():
            seen.append(await f(1))
            seen.extend(await asyncio.gather(f(1), f(2)))  # tasks started inside
            seen.append(await asyncio.create_task(f(2)))
        seen.append(await early)
        seen.extend([await f(1), await f(2), await f(2)])
        return seen

    seen = asyncio.run(main())
    assert seen[0] == (1, 1)
    assert seen[1] == (1, 2)  # the stored entry is not read
    # Tasks started inside the block inherit it: each computed afresh, none stored.
    assert [v[0] for v in seen[2:5]] == [1, 2, 2]
    assert sorted(v[1] for v in seen[2:5]) == [3, 4, 5]
    assert seen[5] == (1, 1)  # the task started outside the block hit the stored entry
    assert seen[6] == (1, 1)  # the old entry survived the block
    assert seen[7] == seen[8] == (2, 6)  # the block stored nothing for 2; now stored
    assert body.calls == 6
    assert_hit_path_restored(f)


# --- cache_refresh -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(SYNC_DECORATORS))
def test_refresh_recomputes_and_stores(kind: str, opened: list[Any]) -> None:
    body = Counted()
    f = decorate(kind, body)
    opened.append(f)
    assert f(1) == (1, 1)
    assert f.cache_refresh(1) == (1, 2)
    assert f(1) == (1, 2)  # the next call hits the new value
    assert f.cache_refresh(x=1) == (1, 3)  # keyword or positional: the same entry
    assert f(1) == (1, 3)
    assert f(x=1) == (1, 3)
    assert f.cache_refresh(4) == (4, 4)  # a cold key is stored too
    assert f(4) == (4, 4)
    assert f.cache_info().currsize == 2


def test_refresh_of_a_function_that_raises_keeps_the_old_entry(opened: list[Any]) -> None:
    body = Counted()

    @bcache
    def f(x: int) -> tuple[int, int]:
        return body(x)

    opened.append(f)
    assert f(1) == (1, 1)
    body.fail = True
    with pytest.raises(ValueError, match="failed on 1"):
        f.cache_refresh(1)
    body.fail = False
    assert f(1) == (1, 1)
    assert body.calls == 2


def test_refresh_inside_a_block_computes_but_stores_nothing() -> None:
    body = Counted()

    @mcache
    def f(x: int) -> tuple[int, int]:
        return body(x)

    f(1)
    with disabled():
        assert f.cache_refresh(1) == (1, 2)
        assert f.cache_refresh(2) == (2, 3)
    assert f(1) == (1, 1)
    assert f(2) == (2, 4)


@pytest.mark.parametrize("kind", ["acache", "ucache-folder"])
def test_async_refresh(kind: str, opened: list[Any]) -> None:
    factory, _ = ASYNC_DECORATORS[kind]
    body = Counted()

    @factory()
    async def f(x: int) -> tuple[int, int]:
        return body(x)

    opened.append(f)

    async def main() -> list[Any]:
        seen = [await f(1), await f.cache_refresh(1), await f(1), await f.cache_refresh(x=1)]
        seen.append(await f(x=1))
        body.fail = True
        with pytest.raises(ValueError, match="failed"):
            await f.cache_refresh(1)
        body.fail = False
        seen.append(await f(1))
        with disabled():
            seen.append(await f.cache_refresh(1))
        seen.append(await f(1))
        return seen

    assert asyncio.run(main()) == [(1, 1), (1, 2), (1, 2), (1, 3), (1, 3), (1, 3), (1, 5), (1, 3)]


def test_refresh_with_an_argument_that_has_no_stable_key_warns_once(opened: list[Any]) -> None:
    calls: list[int] = []

    @bcache
    def f(x: int, lock: Any) -> int:
        calls.append(x)
        return x * 2

    opened.append(f)
    with pytest.warns(CacheFaultWarning, match="build a key") as record:
        results = [f.cache_refresh(3, threading.Lock()), f.cache_refresh(4, threading.Lock())]
    assert results == [6, 8]
    assert calls == [3, 4]
    assert len(record) == 1, [str(w.message) for w in record]
    assert f.cache_info().currsize == 0


# --- cache_refresh across processes ----------------------------------------------------------

MODULE = """
import os
from twat_cache import bcache

@bcache
def tagged(x):
    return [x, os.environ.get("TAG", "none"), os.getpid()]
"""

READER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import {module} as m
print(json.dumps([m.tagged(1), m.tagged.cache_info().hits]))
"""


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A module holding a @bcache function, importable here and in a subprocess."""
    name = f"refresh_module_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    sys.path.insert(0, str(tmp_path))
    yield tmp_path, name
    sys.path.remove(str(tmp_path))
    module = sys.modules.pop(name, None)
    if module is not None:
        close_engine(module.tagged)


def test_refreshed_value_is_what_another_process_reads(
    module_dir: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    path, name = module_dir
    module = importlib.import_module(name)
    monkeypatch.setenv("TAG", "first")
    first = module.tagged(1)
    monkeypatch.setenv("TAG", "refreshed")
    refreshed = module.tagged.cache_refresh(1)
    assert refreshed[1] == "refreshed"
    assert module.tagged(1) == refreshed
    assert first != refreshed
    env = {**os.environ, "TAG": "subprocess"}
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", READER.format(module=name), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    value, hits = json.loads(out.stdout)
    assert value == refreshed
    assert hits == 1
