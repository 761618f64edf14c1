"""CacheContext and engine_context: one engine used directly in a block, closed on exit,
persisted across blocks and processes for disk engines, `async with` for async engines."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from _support import MEMORY_ENGINES
from twat_cache import CacheConfig, CacheContext, engine_context
from twat_cache.engines.manager import get_manager
from twat_cache.exceptions import ConfigurationError

PERSISTENT = ["diskcache", "joblib", "klepto"]
TTL = 0.1  # seconds an expiring entry lives in these tests
EXPIRED = 0.25  # sleep after which such an entry must be gone
MEMORY = {"cachebox", "cachetools", "functools"}


def options_for(engine: str, folder: str = "ctx") -> dict[str, Any]:
    """CacheContext keywords for `engine`: persistent engines need a folder."""
    return {"engine_name": engine, **({"folder_name": folder} if engine in PERSISTENT else {})}


def require_ttl(engine: str) -> None:
    if not get_manager().load(engine).capabilities.ttl:
        pytest.skip(f"{engine} cannot expire entries")


ALL_SYNC = [*MEMORY_ENGINES, *PERSISTENT]


# --- the key-value operations ---------------------------------------------------------------


@pytest.mark.parametrize("engine", ALL_SYNC)
def test_get_set_exists_delete_clear_len(engine: str) -> None:
    with CacheContext(**options_for(engine)) as cache:
        assert cache.name == engine
        assert cache.get("absent") is None
        assert cache.get("absent", "fallback") == "fallback"
        cache.set("none", None)
        assert cache.get("none", "fallback") is None  # a stored None is a value
        assert cache.exists("none")
        assert "none" in cache
        assert not cache.exists("absent")
        assert "absent" not in cache
        cache.set("user:1", {"name": "Ada"})
        cache.set(("tuple", 1), [1, 2])  # a non-str key
        cache.set("user:1", {"name": "Grace"})  # overwritten, still one entry
        assert cache.get("user:1") == {"name": "Grace"}
        assert cache.get(("tuple", 1)) == [1, 2]
        assert len(cache) == 3
        assert cache.delete("user:1") is True
        assert cache.delete("user:1") is False
        assert cache.get("user:1", "gone") == "gone"
        assert len(cache) == 2
        cache.clear()
        assert len(cache) == 0
        assert "none" not in cache


@pytest.mark.parametrize("engine", ALL_SYNC)
def test_per_entry_ttl(engine: str) -> None:
    require_ttl(engine)
    with CacheContext(**options_for(engine), ttl=600) as cache:
        cache.set("short", 1, ttl=TTL)
        cache.set("long", 2)
        cache.set("explicit", 3, ttl=600)
        assert cache.get("short") == 1
        time.sleep(EXPIRED)
        assert cache.get("short", "expired") == "expired"
        assert "short" not in cache
        assert (cache.get("long"), cache.get("explicit")) == (2, 3)
        assert len(cache) == 2


@pytest.mark.parametrize("engine", ALL_SYNC)
def test_context_ttl_expires_entries(engine: str) -> None:
    require_ttl(engine)
    with CacheContext(**options_for(engine), ttl=TTL) as cache:
        cache.set("k", "v")
        assert cache.get("k") == "v"
        time.sleep(EXPIRED)
        assert cache.get("k", "expired") == "expired"
        assert len(cache) == 0


@pytest.mark.parametrize("engine", PERSISTENT)
def test_per_entry_ttl_without_a_context_ttl_is_refused_not_ignored(engine: str) -> None:
    with CacheContext(engine_name=engine, folder_name="no_expiry") as cache:
        with pytest.raises(ConfigurationError, match="without expiry"):
            cache.set("k", 1, ttl=60)
        assert "k" not in cache


# --- persistence across blocks and processes --------------------------------------------------


@pytest.mark.parametrize("engine", PERSISTENT)
def test_values_written_in_one_block_are_read_in_the_next(engine: str) -> None:
    with CacheContext(engine_name=engine, folder_name="session") as cache:
        cache.set("user:1", {"name": "Ada"})
        cache.set("none", None)
    with CacheContext(engine_name=engine, folder_name="session") as cache:
        assert cache.get("user:1") == {"name": "Ada"}
        assert cache.get("none", "missing") is None
        assert len(cache) == 2
    with CacheContext(engine_name=engine, folder_name="another") as cache:
        assert cache.get("user:1") is None  # another folder is another cache


SUBPROCESS = """
import json, sys
from twat_cache import CacheContext
with CacheContext(engine_name=sys.argv[1], folder_name="shared") as cache:
    seen = cache.get("from-parent", "missing")
    cache.set("from-child", {"pid": "child", "seen": seen})
print(json.dumps(seen))
"""


@pytest.mark.parametrize("engine", PERSISTENT)
def test_values_are_shared_with_another_process(engine: str) -> None:
    with CacheContext(engine_name=engine, folder_name="shared") as cache:
        cache.set("from-parent", [1, "two", None])
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(SUBPROCESS), engine],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [1, "two", None]
    with CacheContext(engine_name=engine, folder_name="shared") as cache:
        assert cache.get("from-child") == {"pid": "child", "seen": [1, "two", None]}


# --- closing --------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ALL_SYNC)
def test_closed_on_exit_even_when_the_block_raises(engine: str) -> None:
    closes: list[str] = []
    context = CacheContext(**options_for(engine))

    def spy_on(cache: Any) -> None:
        real_close = cache.close

        def close() -> None:
            closes.append(engine)
            real_close()

        cache.close = close

    with context as cache:
        spy_on(cache)
        cache.set("k", 1)
    assert closes == [engine]

    def raise_inside() -> None:
        with context as cache:
            spy_on(cache)
            cache.set("k", 2)
            raise LookupError("raised inside the block")

    with pytest.raises(LookupError, match="inside the block"):
        raise_inside()
    assert closes == [engine, engine]
    cache.close()  # a second close is harmless
    assert closes == [engine, engine, engine]


def test_diskcache_connection_is_really_closed() -> None:
    def raise_inside() -> Any:
        with CacheContext(engine_name="diskcache", folder_name="closing") as cache:
            cache.set("k", 1)
            connection = cache._cache._local.con  # diskcache's per-thread SQLite connection
            connection.execute("SELECT 1")
            holder.append((cache, connection))
            raise LookupError("raised inside the block")

    holder: list[tuple[Any, sqlite3.Connection]] = []
    with pytest.raises(LookupError):
        raise_inside()
    cache, connection = holder[0]
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")
    cache.close()  # a second close is harmless
    cache.close()
    # The entry written before the exception was persisted.
    with CacheContext(engine_name="diskcache", folder_name="closing") as again:
        assert again.get("k") == 1


# --- nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", PERSISTENT)
def test_nested_contexts_on_two_folders_are_independent(engine: str) -> None:
    with CacheContext(engine_name=engine, folder_name="outer") as outer:
        outer.set("k", "outer")
        with CacheContext(engine_name=engine, folder_name="inner") as inner:
            assert inner is not outer
            assert inner.get("k") is None
            inner.set("k", "inner")
            inner.set("only-inner", 1)
        assert outer.get("k") == "outer"  # still usable after the inner block closed
        assert "only-inner" not in outer
        outer.set("after", 2)
        assert len(outer) == 2
    with CacheContext(engine_name=engine, folder_name="inner") as inner:
        assert inner.get("k") == "inner"


@pytest.mark.parametrize("engine", ["cachetools", "diskcache"])
def test_one_context_object_entered_twice_nested(engine: str) -> None:
    context = CacheContext(**options_for(engine, "twice"))
    with context as outer:
        outer.set("a", 1)
        with context as inner:
            assert inner is not outer  # each `with` builds its own engine
            inner.set("b", 2)
            if engine in MEMORY:
                assert inner.get("a") is None  # memory stores are separate
        # The inner block closed its own engine only: the outer one still works.
        outer.set("c", 3)
        assert outer.get("a") == 1
        assert outer.get("c") == 3
        if engine in PERSISTENT:
            assert outer.get("b") == 2  # one folder: what the inner block stored persists
        else:
            assert outer.get("b") is None
    with context as again:
        assert again.get("a") == (1 if engine in PERSISTENT else None)


# --- async with -----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["cachetools", "diskcache"])
def test_async_with_a_sync_engine(engine: str) -> None:
    async def main() -> Any:
        async with CacheContext(**options_for(engine, "async_sync")) as cache:
            cache.set("k", {"v": 1})
            first = cache.get("k")
        async with CacheContext(**options_for(engine, "async_sync")) as cache:
            return first, cache.get("k"), cache.name

    first, second, name = asyncio.run(main())
    assert first == {"v": 1}
    assert name == engine
    assert second == (first if engine in PERSISTENT else None)


def test_async_with_the_aiocache_engine() -> None:
    pytest.importorskip("aiocache", reason="the aiocache engine needs aiocache")
    closed: list[bool] = []

    async def main() -> Any:
        async with CacheContext(engine_name="aiocache", ttl=600) as cache:
            assert cache.name == "aiocache"
            real_aclose = cache.aclose

            async def aclose() -> None:
                closed.append(True)
                await real_aclose()

            cache.aclose = aclose
            await cache.aset("k", {"v": 1})
            await cache.aset("none", None)
            await cache.aset("short", 1, ttl=TTL)
            seen = [
                await cache.aget("k"),
                await cache.aget("none", "missing"),
                await cache.aget("absent", "missing"),
                await cache.aexists("k"),
                await cache.adelete("k"),
                await cache.adelete("k"),
            ]
            await asyncio.sleep(EXPIRED)
            seen.append(await cache.aget("short", "expired"))
            return seen

    assert asyncio.run(main()) == [{"v": 1}, None, "missing", True, True, False, "expired"]
    assert closed == [True]


def test_sync_with_on_aiocache_asks_for_async_with() -> None:
    pytest.importorskip("aiocache", reason="the aiocache engine needs aiocache")
    context = CacheContext(engine_name="aiocache")
    with pytest.raises(ConfigurationError, match="async with"), context:
        pass


# --- choosing the engine ----------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["diskcache", "joblib", "klepto", "disk", "file"])
def test_a_disk_engine_without_folder_name_is_refused(engine: str) -> None:
    context = CacheContext(engine_name=engine)
    with pytest.raises(ConfigurationError, match="folder_name"), context:
        pass


def test_an_unknown_engine_is_refused_when_the_context_is_made() -> None:
    with pytest.raises(ConfigurationError, match="unknown cache engine 'nosuch'"):
        CacheContext(engine_name="nosuch")
    with pytest.raises(ConfigurationError, match="nosuch"):
        engine_context("nosuch")


def test_no_engine_name_is_a_memory_engine() -> None:
    with CacheContext() as cache:
        assert cache.name in MEMORY
        assert not cache.capabilities.persistent
    with CacheContext(engine_name=None, maxsize=5) as cache:
        assert cache.name in MEMORY
        assert cache.maxsize == 5


def test_folder_name_alone_is_diskcache() -> None:
    with CacheContext(folder_name="just_a_folder") as cache:
        assert cache.name == "diskcache"
        cache.set("k", 1)
    with CacheContext(engine_name="diskcache", folder_name="just_a_folder") as cache:
        assert cache.get("k") == 1


def test_aliases_pick_their_chain() -> None:
    with CacheContext(engine_name="memory") as cache:
        assert cache.name in MEMORY
    with CacheContext(engine_name="disk", folder_name="alias_disk") as cache:
        assert cache.name == "diskcache"
    with CacheContext(engine_name="file", folder_name="alias_file") as cache:
        assert cache.name == "joblib"


def test_config_with_keyword_overrides() -> None:
    config = CacheConfig(maxsize=100, ttl=600, cache_engine="cachetools")
    with CacheContext(config=config, maxsize=2) as cache:
        assert cache.name == "cachetools"
        assert cache.maxsize == 2
        cache.set("short", 1, ttl=TTL)  # the config's ttl makes per-entry ttl available
        for key in "abc":
            cache.set(key, key)
        assert len(cache) == 2
    with CacheContext("diskcache", config=CacheConfig(folder_name="from_config")) as cache:
        assert cache.name == "diskcache"
        assert cache.directory.name == "from_config"
    with pytest.raises(ConfigurationError, match="CacheConfig"):
        CacheContext(config={"maxsize": 3})  # type: ignore[arg-type]  # the wrong type on purpose


def test_engine_context_is_the_function_form() -> None:
    with engine_context("cachetools", maxsize=2) as cache:
        assert cache.name == "cachetools"
        for key in "abc":
            cache.set(key, key.upper())
        assert (len(cache), cache.get("a"), cache.get("c")) == (2, None, "C")
    with engine_context(engine_name="diskcache", folder_name="fn_form") as cache:
        cache.set("k", "v")
    with engine_context("diskcache", folder_name="fn_form") as cache:
        assert cache.get("k") == "v"


def test_bad_values_raise_when_the_context_is_made() -> None:
    from pydantic import ValidationError

    with pytest.raises(ConfigurationError, match="folder_name"):
        CacheContext(engine_name="diskcache", folder_name="../escape")
    with pytest.raises(ValidationError, match="ttl"):
        CacheContext(ttl="soon")
    with pytest.raises(ValidationError, match="maxsize"):
        CacheContext(maxsize=-1)


# --- closing the right engine -----------------------------------------------------------------


def test_async_with_closes_the_diskcache_connection_used_in_the_block() -> None:
    async def main() -> sqlite3.Connection:
        async with CacheContext(engine_name="diskcache", folder_name="async_close") as cache:
            cache.set("k", 1)
            connection: sqlite3.Connection = cache._cache._local.con  # this thread's
        return connection

    connection = asyncio.run(main())
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")


def test_one_context_object_used_by_overlapping_tasks_closes_each_tasks_own_engine() -> None:
    from _user_engine import Mine

    closed: list[int] = []

    class Recorded(Mine):
        def close(self) -> None:
            closed.append(id(self))

    name = "recorded-close"
    get_manager().register(name, Recorded, replace=True)
    context = CacheContext(engine_name=name)  # e.g. one module-level object shared by handlers

    async def block(entered: asyncio.Event, leave: asyncio.Event, engines: list[int]) -> None:
        async with context as cache:
            engines.append(id(cache))
            entered.set()
            await leave.wait()
            assert id(cache) not in closed, "this block's engine was closed by another block"

    async def main() -> tuple[int, int]:
        a_in, a_out, b_in, b_out = (asyncio.Event() for _ in range(4))
        a_engine: list[int] = []
        b_engine: list[int] = []
        first = asyncio.create_task(block(a_in, a_out, a_engine))
        await a_in.wait()
        second = asyncio.create_task(block(b_in, b_out, b_engine))
        await b_in.wait()
        a_out.set()  # the first block ends while the second is still open
        await first
        b_out.set()
        await second
        return a_engine[0], b_engine[0]

    try:
        first_engine, second_engine = asyncio.run(main())
    finally:
        get_manager().unregister(name)
    assert closed == [first_engine, second_engine]
