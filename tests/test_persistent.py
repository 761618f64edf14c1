"""bcache and fcache as decorators: forms, folders, versions, processes, async, fallback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from twat_cache import bcache, fcache
from twat_cache.config import CacheConfig
from twat_cache.engines.base import ALL_POLICIES, MISS, Capabilities, PersistentEngine
from twat_cache.engines.manager import CacheEngineManager, get_manager
from twat_cache.exceptions import CacheWarning, ConfigurationError
from twat_cache.identity import folder_names
from twat_cache.paths import cache_root, default_folder

# --- forms -------------------------------------------------------------------------------


def test_bare_and_called_forms() -> None:
    calls: list[int] = []

    @bcache
    def bare(x: int) -> int:
        calls.append(x)
        return x * 2

    @bcache("positional_folder", 100, 60)
    def positional(x: int) -> int:
        return x * 3

    @fcache(folder_name="file_folder", compress=True)
    def called(x: int) -> list[int]:
        return [x] * 3

    assert bare(2) == bare(2) == 4
    assert calls == [2]
    assert bare.cache_engine.name == "diskcache"
    params = positional.cache_parameters()
    assert (params["folder_name"], params["maxsize"], params["ttl"]) == (
        "positional_folder",
        100,
        60,
    )
    assert params["policy"] == "ttl"  # a ttl without a policy evicts by expiry
    assert called(1) == called(1) == [1, 1, 1]
    assert called.cache_engine.name == "joblib"
    assert called.cache_parameters()["compress"] == "zlib"


def test_bcache_default_policy_keeps_hits_read_only() -> None:
    @bcache
    def f(x: int) -> int:
        return x

    @bcache(policy="lru")
    def g(x: int) -> int:
        return x

    assert f.cache_parameters()["policy"] == "fifo"
    assert g.cache_parameters()["policy"] == "lru"


def test_bad_folder_is_refused_before_the_disk_is_touched() -> None:
    root = Path(os.environ["TWAT_CACHE_DIR"])
    before = sorted(root.iterdir())
    for bad in ("../up", "a/b", "/abs", ".hidden", "x\0y"):
        with pytest.raises(ConfigurationError, match="folder_name"):
            bcache(bad)
    assert sorted(root.iterdir()) == before


def test_default_folder_is_named_after_the_function() -> None:
    @bcache
    def compute(x: int) -> int:
        return x

    folder = compute.cache_parameters()["folder_name"]
    assert folder == default_folder(*folder_names(compute))
    assert (cache_root() / folder).is_dir()
    assert compute.cache_engine.directory == cache_root() / folder


# --- keys: functions, versions, processes ---------------------------------------------------


def test_two_functions_in_one_folder_never_share_entries() -> None:
    @bcache("shared")
    def double(x: int) -> int:
        return 2 * x

    @bcache("shared")
    def triple(x: int) -> int:
        return 3 * x

    assert double(5) == 10
    assert triple(5) == 15
    assert double(5) == 10
    assert triple.cache_info().misses == 1
    assert double.cache_info().hits == 1


MODULE = """
from twat_cache import bcache, fcache

calls = []

@bcache(version=VERSION)
def area(w, h):
    calls.append((w, h))
    return {"area": w * h}

@fcache
def table(n):
    calls.append(n)
    return list(range(n))
"""

SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import cached_module as m
results = [m.area(3, 4), m.table(5)]
info = [m.area.cache_info()._asdict(), m.table.cache_info()._asdict()]
print(json.dumps({"results": results, "calls": m.calls, "info": info}))
"""


def _run(tmp_path: Path, version: object, seed: str) -> dict[str, Any]:
    (tmp_path / "cached_module.py").write_text(MODULE.replace("VERSION", repr(version)))
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    import json

    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_entries_of_one_process_are_hits_in_the_next(tmp_path: Path) -> None:
    first = _run(tmp_path, 1, "1")
    assert first["calls"] == [[3, 4], 5]
    second = _run(tmp_path, 1, "2")  # another process, another hash seed
    assert second["results"] == first["results"] == [{"area": 12}, [0, 1, 2, 3, 4]]
    assert second["calls"] == []
    assert [i["hits"] for i in second["info"]] == [1, 1]


def test_version_invalidates_a_functions_entries(tmp_path: Path) -> None:
    _run(tmp_path, 1, "0")
    bumped = _run(tmp_path, 2, "0")
    assert bumped["calls"] == [[3, 4]]  # area recomputed under version 2; table untouched
    again = _run(tmp_path, 2, "0")
    assert again["calls"] == []


def test_version_is_part_of_the_key() -> None:
    @bcache("versions", version="a")
    def v1(x: int) -> int:
        return x

    @bcache("versions", version="b")
    def v2(x: int) -> int:
        return x

    assert v1.cache_key(1) != v2.cache_key(1)
    assert v1.cache_key(1).startswith(f"{v1.__module__}.{v1.__qualname__}@")


# --- async ---------------------------------------------------------------------------------


class RecordingEngine(PersistentEngine):
    """A persistent engine that notes which thread reads and writes."""

    name = "recording"
    capabilities = Capabilities(policies=ALL_POLICIES, persistent=True, shared=True, blocking=True)
    threads: list[tuple[str, int]] = []  # noqa: RUF012  # shared record, reset per test

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.data: dict[Any, Any] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        type(self).threads.append(("get", threading.get_ident()))
        return self.data.get(key, default)

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        type(self).threads.append(("set", threading.get_ident()))
        self.data[key] = value

    def delete(self, key: Any) -> bool:
        return self.data.pop(key, MISS) is not MISS

    def clear(self) -> None:
        self.data.clear()

    def __len__(self) -> int:
        return len(self.data)


@pytest.fixture
def recording() -> Any:
    RecordingEngine.threads = []
    get_manager().register("recording", RecordingEngine)
    yield RecordingEngine
    get_manager().unregister("recording")


def test_async_functions_do_disk_io_off_the_event_loop(recording: Any) -> None:
    @bcache(cache_engine="recording")
    async def fetch(x: int) -> bytes:
        await asyncio.sleep(0)
        return bytes(x)

    async def main() -> tuple[bytes, bytes, int]:
        first = await fetch(1000)
        second = await fetch(1000)
        return first, second, threading.get_ident()

    first, second, loop_thread = asyncio.run(main())
    assert first == second == bytes(1000)
    assert fetch.cache_info()[:2] == (1, 1)
    ops = [op for op, _ in recording.threads]
    assert ops.count("get") >= 2
    assert "set" in ops
    assert all(ident != loop_thread for _, ident in recording.threads)


def test_async_bcache_on_diskcache_caches_the_awaited_value() -> None:
    calls: list[int] = []

    @bcache("async_disk")
    async def square(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return x * x

    async def main() -> list[int]:
        return [await square(4), await square(4), *await asyncio.gather(square(5), square(5))]

    assert asyncio.run(main()) == [16, 16, 25, 25]
    assert calls == [4, 5]


# --- without a persistent engine --------------------------------------------------------------


def test_without_persistent_engines_bcache_warns_once_and_still_caches(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["diskcache"] = None
        sys.modules["klepto"] = None
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            from twat_cache import bcache

            @bcache
            def f(x):
                return x * 2

            results = [f(1), f(1)]
        messages = [str(w.message) for w in caught]
        print(f.cache_engine.name, f.cache_info().hits, len(messages))
        print(messages[0] if messages else "")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    engine, hits, warnings_count = out[0].split()
    assert engine in ("cachebox", "cachetools", "functools")
    assert (hits, warnings_count) == ("1", "1")
    assert "will not survive the process" in out[1]


@pytest.mark.parametrize("kind", ["disk", "file"])
def test_the_persistence_warning_is_a_cache_warning(kind: str) -> None:
    manager = CacheEngineManager()
    for name in ("diskcache", "joblib", "klepto"):
        manager.unregister(name)
    with pytest.warns(CacheWarning, match="will not survive"):
        engine = manager.select(kind, CacheConfig(folder_name="nowhere"))
    assert not engine.capabilities.persistent
