"""ucache's selection table, case by case: which engine serves which options and functions,
checked through `f.cache_engine.name`, and for persistent choices through another process."""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import pytest
from pydantic import ValidationError

from twat_cache import (
    CacheConfig,
    acache,
    bcache,
    clear_cache,
    fcache,
    get_stats,
    list_caches,
    mcache,
    ucache,
)
from twat_cache.config import DEFAULT_MAXSIZE
from twat_cache.decorators import universal_kind
from twat_cache.engines.manager import CHAINS, get_manager
from twat_cache.exceptions import CacheFaultWarning, CacheWarning, ConfigurationError
from twat_cache.identity import folder_names
from twat_cache.paths import default_folder

MEMORY = {"cachebox", "cachetools", "functools"}
DOCS_TABLE = Path(__file__).resolve().parent.parent / "docs" / "selection.md"


def identity(x: Any) -> Any:
    return x


def fresh(name: str = "f", annotation: Any = None, *, is_async: bool = False) -> Any:
    """A new function (its own qualname, so its own default folder), optionally with a
    return annotation given as a real object rather than a string."""
    namespace: dict[str, Any] = {}
    prefix = "async " if is_async else ""
    exec(f"{prefix}def {name}(x):\n    return x\n", namespace)
    func = namespace[name]
    func.__module__ = __name__
    func.__qualname__ = f"{name}_{uuid.uuid4().hex[:8]}"
    if annotation is not None:
        func.__annotations__["return"] = annotation
    return func


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    """Cached functions whose engines are closed after the test."""
    functions: list[Any] = []
    yield functions
    for f in functions:
        close = getattr(f.cache_engine, "close", None)
        if close is not None:
            close()


# --- bare, called, and the memory chain ----------------------------------------------------


def test_bare_and_called() -> None:
    calls: list[int] = []

    @ucache
    def bare(x: int) -> int:
        calls.append(x)
        return x + 1

    @ucache()
    def called(x: int) -> int:
        calls.append(x)
        return x + 2

    assert [bare(1), bare(1), called(1), called(1)] == [2, 2, 3, 3]
    assert calls == [1, 1]
    assert bare.cache_engine.name == called.cache_engine.name == mcache(identity).cache_engine.name
    assert bare.cache_engine.name in MEMORY


@pytest.mark.parametrize(
    "options",
    [{}, {"maxsize": 10}, {"policy": "lfu"}, {"ttl": 60}, {"policy": "lru", "ttl": 60}],
    ids=repr,
)
def test_plain_sync_function_is_served_as_mcache_would(options: dict[str, Any]) -> None:
    by_ucache = ucache(**options)(fresh())
    by_mcache = mcache(**options)(fresh())
    assert by_ucache.cache_engine.name == by_mcache.cache_engine.name
    assert by_ucache.cache_engine.name in MEMORY
    assert by_ucache.cache_info().maxsize == by_mcache.cache_info().maxsize
    assert by_ucache.cache_parameters()["policy"] == by_mcache.cache_parameters()["policy"]


def test_positional_maxsize_none_means_the_default_bound() -> None:
    f = ucache(None, None)(fresh())
    assert f.cache_engine.name == mcache(fresh()).cache_engine.name
    assert f.cache_info().maxsize == DEFAULT_MAXSIZE
    # Positional options are accepted in the documented order.
    g = ucache(None, 7, 60, "lru")(fresh())
    params = g.cache_parameters()
    assert (params["maxsize"], params["ttl"], params["policy"]) == (7, 60, "lru")
    assert g.cache_engine.name == mcache(maxsize=7, ttl=60, policy="lru")(fresh()).cache_engine.name


# --- async ----------------------------------------------------------------------------------


def test_async_function_caches_the_awaited_value_in_memory() -> None:
    calls: list[int] = []

    @ucache
    async def fetch(x: int) -> dict[str, int]:
        calls.append(x)
        await asyncio.sleep(0)
        return {"x": x}

    async def main() -> list[Any]:
        first = await fetch(1)
        return [first, await fetch(1), *await asyncio.gather(fetch(2), fetch(2))]

    results = asyncio.run(main())
    assert results == [{"x": 1}, {"x": 1}, {"x": 2}, {"x": 2}]
    assert results[0] is results[1]  # a hit returns the stored object
    assert calls == [1, 2]
    assert fetch.cache_engine.name in MEMORY
    assert fetch.cache_engine.name == acache(fresh(is_async=True)).cache_engine.name
    stored = fetch.cache_engine.get(fetch.cache_key(1))
    assert stored == {"x": 1}
    assert not inspect.isawaitable(stored)
    assert inspect.iscoroutinefunction(fetch)


def test_async_function_with_a_folder_runs_disk_io_off_the_event_loop(
    opened: list[Any],
) -> None:
    size = 32 * 2**20  # large enough that pickling, signing and writing take a while

    @ucache(folder_name="async_big")
    async def big(x: int) -> bytes:
        return bytes([x]) * size  # no await: only the cache's own I/O could yield

    opened.append(big)
    assert big.cache_engine.name == "diskcache"

    async def measured(call: Callable[[], Any]) -> tuple[Any, int]:
        ticks = 0
        running = True

        async def ticker() -> None:
            nonlocal ticks
            while running:
                await asyncio.sleep(0.002)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        start = ticks
        value = await call()
        during = ticks - start
        running = False
        await task
        return value, during

    async def main() -> list[tuple[Any, int]]:
        return [await measured(lambda: big(3)), await measured(lambda: big(3))]

    (written, ticks_writing), (read, ticks_reading) = asyncio.run(main())
    assert written == read == bytes([3]) * size
    assert big.cache_info().hits == 1
    # Blocking I/O on the loop would have frozen the ticker for the whole operation.
    assert ticks_writing >= 5, f"the event loop was blocked while writing ({ticks_writing})"
    assert ticks_reading >= 5, f"the event loop was blocked while reading ({ticks_reading})"


# --- the disk and file chains -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "policy"),
    [
        ({"folder_name": "u_fifo"}, "fifo"),
        ({"folder_name": "u_lru", "policy": "lru"}, "lru"),
        ({"folder_name": "u_lfu", "policy": "lfu"}, "lfu"),
        ({"folder_name": "u_ttl", "ttl": 60}, "ttl"),
        ({"use_sql": True}, "fifo"),
        ({"compress": True}, "fifo"),
        ({"cache_engine": "disk"}, "fifo"),
        ({"cache_engine": "diskcache"}, "fifo"),
    ],
    ids=repr,
)
def test_disk_chain(options: dict[str, Any], policy: str, opened: list[Any]) -> None:
    f = ucache(**options)(fresh())
    opened.append(f)
    assert f.cache_engine.name == "diskcache"
    assert f.cache_engine.capabilities.persistent
    assert f.cache_parameters()["policy"] == policy
    assert f(3) == f(3) == 3
    assert f.cache_info().hits == 1


def test_positional_folder_name(opened: list[Any]) -> None:
    f = ucache("positional_folder")(fresh())
    opened.append(f)
    assert f.cache_engine.name == "diskcache"
    assert f.cache_engine.directory.name == "positional_folder"


def test_named_disk_engine_without_folder_uses_the_functions_own_folder(
    opened: list[Any],
) -> None:
    func = fresh()
    f = ucache(cache_engine="diskcache")(func)
    opened.append(f)
    assert f.cache_engine.name == "diskcache"
    assert f.cache_engine.directory.name == default_folder(*folder_names(func))


def returns_array(n: int) -> np.ndarray:  # a string annotation (from __future__ import)
    return np.arange(n)


def returns_typed_array(n: int) -> np.typing.NDArray[np.float64]:
    return np.arange(n, dtype=np.float64)


@pytest.mark.parametrize(
    "func",
    [
        pytest.param(fresh("array", np.ndarray), id="ndarray-object"),
        pytest.param(fresh("raw", bytes), id="bytes-object"),
        pytest.param(fresh("raw_text", "bytes"), id="bytes-string"),
        pytest.param(returns_array, id="ndarray-string-future-annotations"),
        pytest.param(returns_typed_array, id="NDArray-string"),
    ],
)
def test_compress_with_a_large_result_type_uses_the_file_chain(
    func: Any, opened: list[Any]
) -> None:
    f = ucache(compress=True)(func)
    opened.append(f)
    assert f.cache_engine.name == "joblib"
    assert f.cache_parameters()["compress"] == "zlib"


@pytest.mark.parametrize(
    "annotation",
    [Optional[np.ndarray], list[np.ndarray]],  # noqa: UP045  # typing.Optional on purpose
    ids=["Optional", "list"],
)
def test_large_result_types_are_found_whether_annotations_are_text_or_objects(
    annotation: Any, opened: list[Any]
) -> None:
    as_text = ucache(compress=True)(fresh("as_text", repr(annotation).replace("numpy", "np")))
    as_object = ucache(compress=True)(fresh("as_object", annotation))
    opened.extend([as_text, as_object])
    assert as_text.cache_engine.name == "joblib"
    assert as_object.cache_engine.name == as_text.cache_engine.name


def test_compress_with_a_small_result_type_stays_on_the_disk_chain(opened: list[Any]) -> None:
    def count(n: int) -> int:
        return n

    f = ucache(compress=True)(count)
    opened.append(f)
    assert f.cache_engine.name == "diskcache"


@pytest.mark.parametrize(
    "options", [{"mmap_mode": "r"}, {"cache_engine": "joblib"}, {"cache_engine": "file"}]
)
def test_file_chain(options: dict[str, Any], opened: list[Any]) -> None:
    def table(n: int) -> np.ndarray:
        return np.arange(n, dtype=np.float64)

    f = ucache(**options)(table)
    opened.append(f)
    assert f.cache_engine.name == "joblib"
    first, second = f(1000), f(1000)
    assert np.array_equal(first, second)
    assert f.cache_info().hits == 1
    if options.get("mmap_mode") == "r":
        assert isinstance(second, np.memmap)  # loaded memory-mapped, read-only
        assert not second.flags.writeable


# --- persistence across processes ---------------------------------------------------------------

MODULE = """
import numpy as np
from twat_cache import ucache

CALLS = []

@ucache(folder_name="proc_folder")
def folder(x):
    CALLS.append("folder")
    return {"folder": x}

@ucache(use_sql=True)
def sql(x):
    CALLS.append("sql")
    return {"sql": x}

@ucache(compress=True)
def compressed(x):
    CALLS.append("compressed")
    return {"compressed": x}

@ucache(compress=True)
def array(n) -> np.ndarray:
    CALLS.append("array")
    return np.arange(n)

@ucache(mmap_mode="r")
def mapped(n) -> np.ndarray:
    CALLS.append("mapped")
    return np.arange(n) * 2

@ucache(cache_engine="diskcache")
def named_disk(x):
    CALLS.append("named_disk")
    return {"named_disk": x}

@ucache(cache_engine="joblib")
def named_joblib(x):
    CALLS.append("named_joblib")
    return {"named_joblib": x}

FUNCTIONS = [folder, sql, compressed, array, mapped, named_disk, named_joblib]

def run():
    results = [f(5) for f in FUNCTIONS]
    return {
        "results": [r.tolist() if hasattr(r, "tolist") else r for r in results],
        "engines": [f.cache_engine.name for f in FUNCTIONS],
        "hits": [f.cache_info().hits for f in FUNCTIONS],
        "calls": CALLS,
    }
"""

READER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import {module} as m
print(json.dumps(m.run()))
"""


def test_persistent_choices_are_read_by_another_process(tmp_path: Path) -> None:
    name = f"ucache_module_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        here = module.run()
        for f in module.FUNCTIONS:
            f.cache_engine.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
    expected_engines = ["diskcache"] * 3 + ["joblib"] * 2 + ["diskcache", "joblib"]
    assert here["engines"] == expected_engines
    assert here["hits"] == [0] * 7
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", READER.format(module=name), str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    there = json.loads(out.stdout)
    assert there["engines"] == expected_engines
    assert there["calls"] == []  # every entry was read, none recomputed
    assert there["hits"] == [1] * 7
    assert there["results"] == here["results"]


#: Calls of `area` below: a global, not a captured list, whose contents (a value the
#: function captured) would be part of its identity and change with every call.
AREA_CALLS: list[int] = []


def test_a_redecorated_function_reads_the_entry(opened: list[Any]) -> None:
    calls = AREA_CALLS
    calls.clear()

    def area(w: int, h: int) -> int:
        AREA_CALLS.append(w)
        return w * h

    first = ucache(folder_name="redecorated")(area)
    opened.append(first)
    assert first(3, 4) == 12
    first.cache_engine.close()
    second = ucache(folder_name="redecorated")(area)
    opened.append(second)
    assert second(3, 4) == 12
    assert calls == [3]
    assert second.cache_info().hits == 1


# --- explicit engines ---------------------------------------------------------------------------


def test_cache_engine_and_preferred_engine_name_the_engine() -> None:
    by_keyword = ucache(cache_engine="cachetools")(fresh())
    by_preferred = ucache(preferred_engine="cachetools")(fresh())
    by_position = ucache(None, None, None, "lru", "cachetools")(fresh())
    both_agreeing = ucache(preferred_engine="cachetools", cache_engine="cachetools")(fresh())
    for f in (by_keyword, by_preferred, by_position, both_agreeing):
        assert f.cache_engine.name == "cachetools"
        assert f.cache_parameters()["cache_engine"] == "cachetools"


@pytest.mark.parametrize(
    "decorate",
    [
        lambda: ucache(preferred_engine="cachetools", cache_engine="cachebox"),
        lambda: ucache(None, None, None, "lru", "cachetools", cache_engine="functools"),
    ],
    ids=["keywords", "positional"],
)
def test_disagreeing_engine_names_are_a_configuration_error(decorate: Any) -> None:
    with pytest.raises(ConfigurationError, match="disagree"):
        decorate()


@pytest.mark.parametrize("alias", ["memory", "async"])
def test_in_process_aliases(alias: str) -> None:
    sync = ucache(cache_engine=alias)(fresh())
    assert sync.cache_engine.name == mcache(fresh()).cache_engine.name
    asynchronous = ucache(cache_engine=alias)(fresh(is_async=True))
    assert asynchronous.cache_engine.name in MEMORY
    assert asyncio.run(asynchronous(4)) == 4


def test_unknown_engine_is_refused_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match="unknown cache engine 'no_such_engine'"):
        ucache(cache_engine="no_such_engine")
    with pytest.raises(ConfigurationError, match="'no_such_engine_either'"):
        ucache(None, None, None, "lru", "no_such_engine_either")


@pytest.fixture
def unavailable_engine() -> Iterator[str]:
    """A known engine whose module does not exist, registered globally for the test."""
    name = f"unavailable-{uuid.uuid4().hex[:8]}"
    get_manager().register(name, "twat_cache_tests_nosuch_module:Engine")
    yield name
    get_manager().unregister(name)


def test_known_but_unavailable_engine_warns_once_and_falls_back(unavailable_engine: str) -> None:
    with pytest.warns(CacheWarning) as record:
        f = ucache(cache_engine=unavailable_engine)(fresh())
    assert len(record) == 1, [str(w.message) for w in record]
    message = str(record[0].message)
    assert unavailable_engine in message
    assert "twat_cache_tests_nosuch_module" in message
    expected = mcache(fresh()).cache_engine.name  # the chain's next engine
    assert f.cache_engine.name == expected
    assert f"using {expected!r}" in message
    assert record[0].filename == __file__  # attributed to the decorating line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(1) == f(1) == 1  # calls do not warn again


def test_url_on_a_sync_function_is_loud() -> None:
    url = "redis://127.0.0.1:1/0"  # loopback, nothing listens: never a real server
    config = CacheConfig(url=url, folder_name="url_check")
    manager = get_manager()
    if "redis" not in manager.registered() or manager.available(config)["redis"] is not None:
        # No engine of the remote chain serves a plain def (aiocache is async-only).
        with pytest.raises(ConfigurationError, match="redis"):
            ucache(url=url)(fresh())
        return
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        f = ucache(url=url)(fresh())
        # A Redis engine served it: the unreachable server degrades to calling the function.
        assert f(2) == 2
        assert f(2) == 2
    assert record, f"url= served silently by {f.cache_engine.name}"
    assert all(issubclass(w.category, CacheWarning | CacheFaultWarning) for w in record)


@pytest.mark.parametrize("decorator", [mcache, bcache, fcache], ids=lambda d: d.__name__)
def test_local_decorators_refuse_url(decorator: Any) -> None:
    with pytest.raises(ConfigurationError, match="url"):
        decorator(url="redis://127.0.0.1:1/0")(fresh())


def test_acache_can_name_the_aiocache_engine() -> None:
    try:
        get_manager().load("aiocache")
    except Exception as exc:
        pytest.skip(f"the aiocache engine does not import yet: {exc}")
    calls: list[int] = []

    @acache(cache_engine="aiocache")
    async def fetch(x: int) -> dict[str, int]:
        calls.append(x)
        return {"x": x}

    async def main() -> list[Any]:
        return [await fetch(1), await fetch(1), *await asyncio.gather(fetch(2), fetch(2))]

    assert asyncio.run(main()) == [{"x": 1}, {"x": 1}, {"x": 2}, {"x": 2}]
    assert calls == [1, 2]
    assert fetch.cache_engine.name == "aiocache"
    assert ucache(cache_engine="aiocache")(fresh(is_async=True)).cache_engine.name == "aiocache"


def test_a_sync_function_naming_aiocache_falls_back_with_one_warning() -> None:
    with pytest.warns(CacheWarning, match="aiocache") as record:
        f = ucache(cache_engine="aiocache")(fresh())
    assert len(record) == 1, [str(w.message) for w in record]
    assert f.cache_engine.name in MEMORY
    assert f(1) == f(1) == 1
    assert f.cache_info().hits == 1


# --- bad values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "named"),
    [
        ({"maxsize": -1}, ValidationError, "maxsize"),
        ({"ttl": "soon"}, ValidationError, "ttl"),
        ({"policy": "mru"}, ValidationError, "policy"),
        ({"folder_name": "../x"}, ConfigurationError, "folder_name"),
        ({"folder_name": "/abs"}, ConfigurationError, "folder_name"),
        ({"mmap_mode": "w"}, ValidationError, "mmap_mode"),
        ({"policy": "ttl"}, ConfigurationError, "ttl"),
    ],
    ids=repr,
)
def test_bad_values_raise_at_decoration_naming_the_parameter(
    options: dict[str, Any], error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=re.escape(named)):
        ucache(**options)  # before any function is given: at decoration time


def test_bad_positional_values_raise_too() -> None:
    with pytest.raises(ConfigurationError, match="folder_name"):
        ucache("../x")
    with pytest.raises(ValidationError, match="maxsize"):
        ucache(None, -1)
    with pytest.raises(ValidationError, match="ttl"):
        ucache(None, None, "soon")
    with pytest.raises(ValidationError, match="policy"):
        ucache(None, None, None, "mru")


# --- methods ------------------------------------------------------------------------------------


def test_methods_static_and_class_methods() -> None:
    calls: list[str] = []

    class Shape:
        def __init__(self, side: int) -> None:
            self.side = side

        @ucache
        def area(self, scale: int) -> int:
            calls.append("area")
            return self.side * self.side * scale

        @ucache(maxsize=10)
        @staticmethod
        def double(x: int) -> int:
            calls.append("double")
            return 2 * x

        @ucache
        @classmethod
        def unit(cls, side: int) -> str:
            calls.append("unit")
            return f"{cls.__name__}({side})"

    small, large = Shape(2), Shape(2)
    assert [small.area(1), small.area(1), large.area(1)] == [4, 4, 4]
    assert calls == ["area", "area"]  # instances never share an entry in memory
    assert [Shape.double(5), small.double(5), Shape.unit(1), large.unit(1)] == [
        10,
        10,
        "Shape(1)",
        "Shape(1)",
    ]
    assert calls == ["area", "area", "double", "unit"]
    expected = mcache(fresh()).cache_engine.name
    assert {Shape.area.cache_engine.name, Shape.double.cache_engine.name} == {expected}
    assert Shape.unit.cache_engine.name == expected


class Square:
    """A module-level class (instances and the class pickle by name: stable disk keys)."""

    calls: ClassVar[list[str]] = []

    def __init__(self, side: int) -> None:
        self.side = side

    def area(self, scale: int) -> int:
        Square.calls.append("area")
        return self.side * self.side * scale

    @staticmethod
    def double(x: int) -> int:
        Square.calls.append("double")
        return 2 * x

    @classmethod
    def unit(cls, side: int) -> str:
        Square.calls.append("unit")
        return f"{cls.__name__}({side})"


def test_methods_static_and_class_methods_on_disk(
    monkeypatch: pytest.MonkeyPatch, opened: list[Any]
) -> None:
    monkeypatch.setattr(Square, "calls", [])
    for name in ("area", "double", "unit"):
        # What @ucache(folder_name=...) in the class body does, undone after the test.
        monkeypatch.setattr(Square, name, ucache(folder_name="methods")(Square.__dict__[name]))
    assert isinstance(Square.__dict__["double"], staticmethod)
    assert isinstance(Square.__dict__["unit"], classmethod)
    opened.extend([Square.area, Square.double, Square.unit])
    assert {f.cache_engine.name for f in opened} == {"diskcache"}
    one, same, other = Square(2), Square(2), Square(3)
    assert [one.area(1), one.area(1), other.area(1)] == [4, 4, 9]
    assert same.area(1) == 4  # on disk, equal instances share the entry (keys are pickles)
    assert [Square.double(5), one.double(5), Square.unit(1), other.unit(1)] == [
        10,
        10,
        "Square(1)",
        "Square(1)",
    ]
    assert Square.calls == ["area", "area", "double", "unit"]


# --- registry -----------------------------------------------------------------------------------


def test_registry_sees_ucache_functions(opened: list[Any]) -> None:
    prefix = f"ucache-registry-{uuid.uuid4().hex[:8]}"

    @ucache(name=f"{prefix}.memory")
    def in_memory(x: int) -> int:
        return x

    @ucache(folder_name="registry_disk", name=f"{prefix}.disk")
    def on_disk(x: int) -> int:
        return x

    opened.extend([in_memory, on_disk])
    for f in (in_memory, on_disk):
        f(1)
        f(1)
    assert {f"{prefix}.memory", f"{prefix}.disk"} <= set(list_caches())
    memory_stats = get_stats(f"{prefix}.memory")
    disk_stats = get_stats(f"{prefix}.disk")
    assert memory_stats["engine"] == in_memory.cache_engine.name
    assert disk_stats["engine"] == "diskcache"
    assert (disk_stats["hits"], disk_stats["misses"], disk_stats["currsize"]) == (1, 1, 1)
    assert disk_stats["hit_rate"] == 0.5
    assert get_stats()[f"{prefix}.disk"] == disk_stats
    clear_cache(f"{prefix}.disk")
    assert get_stats(f"{prefix}.disk")["currsize"] == 0
    assert get_stats(f"{prefix}.memory")["currsize"] == 1
    clear_cache(f"{prefix}.memory")
    assert get_stats(f"{prefix}.memory")["currsize"] == 0


# --- the documented table -------------------------------------------------------------------------


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of `text`, as rows of cells (header row first)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if stripped.startswith("|"):
            if not set(stripped) <= set("|-: "):  # skip the |---| separator
                current.append([cell.strip() for cell in stripped.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def _table(header_start: str) -> list[list[str]]:
    for table in _tables(DOCS_TABLE.read_text()):
        if table[0][0].startswith(header_start):
            return table[1:]
    raise AssertionError(f"docs/selection.md has no table starting {header_start!r}")


def _example(cell: str) -> tuple[dict[str, Any], bool, str | None]:
    """The options, async-ness and return annotation of a row's example, such as
    ``@ucache(compress=True)` on `def f() -> np.ndarray``."""
    match = re.search(r"@ucache(?:\((.*?)\))?`", cell)
    assert match, f"no @ucache example in {cell!r}"
    call = ast.parse(f"f({match.group(1) or ''})", mode="eval").body
    assert isinstance(call, ast.Call)
    options = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    annotation = re.search(r"def \w+\(\) -> ([\w.\[\]]+)", cell)
    return options, "async def" in cell, annotation.group(1) if annotation else None


def test_docs_selection_table_matches_the_code(opened: list[Any]) -> None:
    rows = _table("when")
    assert len(rows) >= 10, rows
    registered = set(get_manager().registered())
    for when, chain, first, example in rows:
        options, is_async, annotation = _example(example)
        func = fresh(is_async=is_async, annotation=annotation)
        config = CacheConfig(**options)
        kind = chain.strip("`")
        assert universal_kind(config, func, is_async) == kind, (when, example)
        if config.url is not None:
            continue  # a server: chosen without connecting, checked above
        first_engine = first.split()[0].strip("`(,")
        if first.startswith("the named engine"):
            first_engine = config.cache_engine or ""
        assert first_engine in registered, (when, first)
        available = get_manager().available(config.merged(folder_name="docs_table"))
        if available[first_engine] is not None:
            continue  # not a full install here: the next engine of the chain serves
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a documented first engine serves without a warning
            cached = ucache(**options)(func)
        opened.append(cached)
        assert cached.cache_engine.name == first_engine, (when, example)


def test_docs_chain_table_matches_the_chains() -> None:
    rows = _table("chain")
    assert {row[0].strip("`") for row in rows} == set(CHAINS)
    known = {name for chain in CHAINS.values() for name in chain}
    for chain, engines in rows:
        text = engines.replace("the memory engines", " ".join(CHAINS["memory"]))
        listed = [word for word in re.findall(r"[a-z]+", text) if word in known]
        assert tuple(listed) == CHAINS[chain.strip("`")], (chain, engines)


def test_ucache_of_a_generator_is_refused() -> None:
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    with pytest.raises(ConfigurationError, match="generator"):
        ucache(numbers)
