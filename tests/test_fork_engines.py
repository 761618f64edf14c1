"""The memory engines in a forked child (issue 13, item 1): a lock another thread of the
parent held at the fork is renewed in the child, never waited for; a store that thread may
have left half-updated is emptied; a store nobody was changing is kept (a pre-fork server
warms its caches, then forks its workers)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from _support import held_by_another_thread, wait_child
from twat_cache import mcache

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

LOCKED = ["functools", "cachetools"]  # the engines that lock (cachebox locks in Rust)


def _child_status(run_in_child: Any, timeout: float = 10.0) -> int | None:
    """Fork; the child runs `run_in_child()` and exits with its int result. The exit code,
    or None when the child hung past `timeout`."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            code = int(run_in_child())
        finally:
            os._exit(code)
    return wait_child(pid, timeout)


@pytest.mark.parametrize("engine", LOCKED)
def test_a_lock_held_by_another_thread_at_fork_does_not_hang_the_child(engine: str) -> None:
    runs: list[int] = []

    @mcache(cache_engine=engine, maxsize=8)
    def f(x: int) -> int:
        runs.append(x)
        return x * 2

    assert f(1) == 2
    with held_by_another_thread(f.cache_engine._lock):

        def in_child() -> int:
            before = len(runs)
            ok = f(3) == 6 and f(3) == 6 and f(1) == 2
            # The store was emptied (f(1) ran again), and it caches again (f(3) once).
            return 0 if ok and runs[before:] == [3, 1] else 1

        assert _child_status(in_child) == 0


@pytest.mark.parametrize("engine", [*LOCKED, "cachebox"])
def test_a_warm_store_nobody_was_changing_is_kept_in_the_child(engine: str) -> None:
    runs: list[int] = []

    @mcache(cache_engine=engine, maxsize=8)
    def f(x: int) -> int:
        runs.append(x)
        return x * 2

    assert f(1) == 2
    assert f.cache_engine.name == engine

    def in_child() -> int:
        before = len(runs)
        return 0 if f(1) == 2 and len(runs) == before else 1

    assert _child_status(in_child) == 0
