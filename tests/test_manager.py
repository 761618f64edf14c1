"""CacheEngineManager: registration, chains, aliases, availability and fallback with warnings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from twat_cache import MISS, CacheConfig, mcache
from twat_cache.engines.base import BaseEngine, Capabilities, capabilities_of
from twat_cache.engines.functools import FunctoolsEngine
from twat_cache.engines.manager import CHAINS, CacheEngineManager, get_manager
from twat_cache.exceptions import CacheWarning, ConfigurationError, EngineUnavailableError

MEMORY = ("cachebox", "cachetools", "functools")
BACKENDS = ("cachebox", "cachetools", "diskcache", "joblib", "aiocache", "klepto", "redis")
MISSING_MODULE = "twat_cache_tests_no_such_module:Engine"


class DictEngine:
    """A user engine: a plain dict, not a BaseEngine subclass, with only the store operations
    `register` asks for (no close, no maxsize, no unsupported)."""

    name = "mine"
    capabilities = Capabilities()

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.data: dict[Any, Any] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        self.data[key] = value

    def delete(self, key: Any) -> bool:
        return self.data.pop(key, MISS) is not MISS

    def clear(self) -> None:
        self.data.clear()

    def exists(self, key: Any) -> bool:
        return key in self.data

    def __len__(self) -> int:
        return len(self.data)


class BrokenEngine(BaseEngine):
    """An engine whose library imports but whose store cannot be built."""

    name = "broken"

    def __init__(self, config: CacheConfig | None = None) -> None:
        raise RuntimeError("no backend today")


def first_serving(config: CacheConfig | None = None, kind: str = "memory") -> str:
    """The engine a fresh manager picks for `config`: the first of the chain that can serve
    it here (cachebox is an optional dependency)."""
    fresh = CacheEngineManager()
    available = fresh.available(config)
    return next(name for name in fresh.chain(kind) if available[name] is None)


@pytest.fixture
def manager() -> CacheEngineManager:
    return CacheEngineManager()


@pytest.fixture
def registered_globally() -> Iterator[Any]:
    """`register(name, engine)` on the process-wide manager, undone after the test."""
    names: list[str] = []

    def register(name: str, engine: Any) -> None:
        get_manager().register(name, engine)
        names.append(name)

    yield register
    for name in names:
        get_manager().unregister(name)


# --- chains and aliases -------------------------------------------------------------------


def test_memory_and_async_chains(manager: CacheEngineManager) -> None:
    assert manager.chain("memory") == MEMORY
    assert manager.chain("async") == MEMORY


@pytest.mark.parametrize("kind", ["disk", "file"])
def test_persistent_chains_skip_unregistered_engines(
    manager: CacheEngineManager, kind: str
) -> None:
    chain = manager.chain(kind)
    assert chain[-3:] == MEMORY  # the memory chain is the last resort
    assert set(chain) <= set(manager.registered())
    assert list(chain) == [n for n in CHAINS[kind] if n in chain]  # the chain's own order


def test_registering_a_chain_member_puts_it_in_its_place(manager: CacheEngineManager) -> None:
    manager.unregister("diskcache")
    manager.register("diskcache", DictEngine)
    assert manager.chain("disk")[0] == "diskcache"
    # DictEngine is not persistent: a disk cache served by it says persistence is lost.
    with pytest.warns(CacheWarning, match="will not survive the process"):
        assert manager.select("disk", CacheConfig()).name == "mine"


def test_unregistered_engine_leaves_the_chain(manager: CacheEngineManager) -> None:
    manager.unregister("cachebox")
    assert manager.chain("memory") == ("cachetools", "functools")
    assert manager.select("memory", CacheConfig()).name == "cachetools"
    assert "cachebox" not in manager.registered()


def test_unknown_kind(manager: CacheEngineManager) -> None:
    with pytest.raises(ConfigurationError, match="'nowhere'"):
        manager.chain("nowhere")


def test_preferred_engine_is_an_alias_of_cache_engine() -> None:
    assert CacheConfig(preferred_engine="cachetools").cache_engine == "cachetools"

    @mcache(preferred_engine="cachetools")
    def f(x: int) -> int:
        return x

    assert f.cache_engine.name == "cachetools"
    assert f.cache_parameters()["engine"] == "cachetools"


@pytest.mark.parametrize("alias", ["memory", "async"])
def test_chain_alias_as_cache_engine(alias: str) -> None:
    @mcache(cache_engine=alias)
    def f(x: int) -> int:
        return x

    assert f.cache_engine.name == first_serving(kind=alias)


def test_disk_alias_uses_the_disk_chain() -> None:
    persistent = [
        name
        for name in get_manager().chain("disk")
        if capabilities_of(get_manager().load(name)).persistent
    ]
    with contextlib.ExitStack() as stack:
        if not persistent:  # the chain ends in memory: one warning that persistence is lost
            stack.enter_context(pytest.warns(CacheWarning, match="will not survive"))

        @mcache(cache_engine="disk")
        def f(x: int) -> int:
            return x

    assert f.cache_engine.name in get_manager().chain("disk")
    assert f(2) == f(2) == 2
    assert f.cache_info().hits == 1


@pytest.mark.parametrize("name", ["cachebox", "cachetools", "functools"])
def test_named_engine_is_used(name: str) -> None:
    if get_manager().available()[name] is not None:
        pytest.skip(f"{name} is unavailable here")

    @mcache(cache_engine=name)
    def f(x: int) -> int:
        return x

    assert f.cache_engine.name == name


def test_policy_is_never_swapped_silently() -> None:
    # cachebox has no LRU with expiry: the chain goes on to an engine serving it exactly.
    @mcache(policy="lru", ttl=60)
    def f(x: int) -> int:
        return x

    assert f.cache_engine.name == "cachetools"
    assert f.cache_parameters()["policy"] == "lru"


# --- unknown and unavailable engines ------------------------------------------------------


def test_unknown_engine_is_a_configuration_error(manager: CacheEngineManager) -> None:
    with pytest.raises(ConfigurationError, match="'nosuch_engine'") as info:

        @mcache(cache_engine="nosuch_engine")
        def f(x: int) -> int:
            return x

    assert "cachebox" in str(info.value)  # the message lists what is known
    with pytest.raises(ConfigurationError, match="'nosuch_engine'"):
        manager.load("nosuch_engine")
    with pytest.raises(ConfigurationError, match="'nosuch_engine'"):
        manager.select("memory", CacheConfig(cache_engine="nosuch_engine"))


def test_unknown_engine_is_an_error_even_with_caching_off() -> None:
    with pytest.raises(ConfigurationError, match="nosuch_engine"):

        @mcache(cache_engine="nosuch_engine", maxsize=0)
        def f(x: int) -> int:
            return x


def test_unavailable_preferred_engine_falls_back_with_one_warning(
    manager: CacheEngineManager,
) -> None:
    manager.register("ghost", MISSING_MODULE)
    with pytest.warns(CacheWarning) as record:
        engine = manager.select("memory", CacheConfig(cache_engine="ghost"))
    assert engine.name == first_serving()
    assert len(record) == 1
    message = str(record[0].message)
    assert "'ghost'" in message
    assert "not importable" in message
    assert f"using {engine.name!r}" in message
    with pytest.raises(EngineUnavailableError, match="ModuleNotFoundError"):
        manager.load("ghost")
    reason = manager.available()["ghost"]
    assert reason is not None
    assert "twat_cache_tests_no_such_module" in reason


def test_unavailable_preferred_engine_through_mcache(registered_globally: Any) -> None:
    registered_globally("ghost-engine", MISSING_MODULE)
    with pytest.warns(CacheWarning, match="ghost-engine") as record:

        @mcache(cache_engine="ghost-engine")
        def f(x: int) -> int:
            return x

    assert len(record) == 1
    assert record[0].filename == __file__  # the warning points at the decoration
    assert f.cache_engine.name == first_serving()
    assert f(1) == f(1) == 1
    assert f.cache_info().hits == 1


def test_engine_whose_constructor_raises_is_skipped(manager: CacheEngineManager) -> None:
    manager.register("broken", BrokenEngine)
    available = manager.available()
    assert available["functools"] is None
    reason = available["broken"]
    assert reason is not None
    assert "could not be built" in reason
    assert "RuntimeError: no backend today" in reason
    with pytest.warns(CacheWarning, match="no backend today") as record:
        engine = manager.select("memory", CacheConfig(cache_engine="broken"))
    assert engine.name == first_serving()
    assert len(record) == 1


def test_available_reports_unsupported_configurations(manager: CacheEngineManager) -> None:
    available = manager.available(CacheConfig(policy="lfu"))
    assert available["cachetools"] is None
    assert available["functools"] == "functools has no 'lfu' policy"


def test_unserved_policy_of_the_preferred_engine_falls_back() -> None:
    with pytest.warns(CacheWarning) as record:

        @mcache(policy="lfu", cache_engine="functools")
        def f(x: int) -> int:
            return x

    assert f.cache_engine.name == first_serving(CacheConfig(policy="lfu")) != "functools"
    assert len(record) == 1
    assert "'functools'" in str(record[0].message)
    assert "'lfu'" in str(record[0].message)


def test_policy_no_engine_serves_is_a_configuration_error(manager: CacheEngineManager) -> None:
    manager.unregister("cachebox")
    assert manager.select("memory", CacheConfig(policy="lfu")).name == "cachetools"
    manager.unregister("cachetools")
    with pytest.raises(ConfigurationError, match="no memory engine") as info:
        manager.select("memory", CacheConfig(policy="lfu"))
    assert "functools has no 'lfu' policy" in str(info.value)


def test_no_engine_registered_is_a_configuration_error(manager: CacheEngineManager) -> None:
    for name in manager.registered():
        manager.unregister(name)
    assert manager.chain("memory") == ()
    with pytest.raises(ConfigurationError, match="no engine registered"):
        manager.select("memory", CacheConfig())


# --- register validation ------------------------------------------------------------------


class MissingSet:
    def get(self, key: Any, default: Any = None) -> Any:
        return default

    def delete(self, key: Any) -> bool:
        return False

    def clear(self) -> None:
        return None

    def exists(self, key: Any) -> bool:
        return False

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize(
    "engine", [dict, object, MissingSet, DictEngine(CacheConfig()), 42], ids=repr
)
def test_register_refuses_a_non_engine(manager: CacheEngineManager, engine: Any) -> None:
    with pytest.raises(ConfigurationError, match="not an engine class"):
        manager.register("bad", engine)
    assert "bad" not in manager.registered()


@pytest.mark.parametrize("name", ["", "memory", "disk", "file", "async", "redis"])
def test_register_refuses_empty_and_alias_names(manager: CacheEngineManager, name: str) -> None:
    with pytest.raises(ConfigurationError, match="empty or a chain alias"):
        manager.register(name, DictEngine)


def test_register_duplicate_needs_replace(manager: CacheEngineManager) -> None:
    manager.register("mine", DictEngine)
    with pytest.raises(ConfigurationError, match="already registered"):
        manager.register("mine", BrokenEngine)
    with pytest.raises(ConfigurationError, match="already registered"):
        manager.register("cachebox", DictEngine)
    assert manager.load("mine") is DictEngine
    manager.register("mine", BrokenEngine, replace=True)
    assert manager.load("mine") is BrokenEngine


def test_replace_clears_a_remembered_import_error(manager: CacheEngineManager) -> None:
    manager.register("late", MISSING_MODULE)
    with pytest.raises(EngineUnavailableError):
        manager.load("late")
    manager.register("late", DictEngine, replace=True)
    assert manager.load("late") is DictEngine


def test_lazy_spec_is_imported_on_first_use(manager: CacheEngineManager) -> None:
    manager.register("lazy-functools", "twat_cache.engines.functools:FunctoolsEngine")
    from twat_cache.engines.functools import FunctoolsEngine

    assert manager.load("lazy-functools") is FunctoolsEngine
    manager.register("sep", "os:sep")  # a lazy spec is checked when imported, not before
    with pytest.raises(EngineUnavailableError, match="not a class"):
        manager.load("sep")


def test_lazy_spec_naming_a_non_engine_class_is_unavailable(
    manager: CacheEngineManager,
) -> None:
    manager.register("od", "collections:OrderedDict")
    with pytest.warns(CacheWarning, match="'od'"):
        engine = manager.select("memory", CacheConfig(cache_engine="od"))
    assert engine.name == first_serving()


# --- a user engine ------------------------------------------------------------------------


@pytest.fixture
def mine(registered_globally: Any) -> type[DictEngine]:
    registered_globally("dict-engine", DictEngine)
    return DictEngine


def test_user_engine_serves_mcache(mine: type[DictEngine]) -> None:
    calls: list[int] = []

    @mcache(cache_engine="dict-engine")
    def tenfold(x: int) -> int:
        calls.append(x)
        return 10 * x

    engine = tenfold.cache_engine
    assert type(engine) is mine
    assert tenfold(1) == tenfold(1) == 10
    assert calls == [1]
    assert list(engine.data.values()) == [10]
    # A value planted in the user's store is what a hit returns: hits come from it.
    (key,) = engine.data
    engine.data[key] = "planted"
    assert tenfold(1) == "planted"
    info = tenfold.cache_info()
    assert (info.hits, info.misses, info.currsize) == (2, 1, 1)
    assert tenfold.cache_parameters()["engine"] == "mine"
    assert tenfold.cache_delete(1) is True
    assert engine.data == {}
    tenfold(2)
    tenfold.cache_clear()
    assert engine.data == {}
    assert tenfold.cache_info().misses == 0


def test_user_engine_serves_async_functions(mine: type[DictEngine]) -> None:
    calls: list[int] = []

    @mcache(cache_engine="dict-engine")
    async def tenfold(x: int) -> int:
        calls.append(x)
        return 10 * x

    async def main() -> list[int]:
        return [await tenfold(1), await tenfold(1), *await asyncio.gather(tenfold(2), tenfold(2))]

    assert asyncio.run(main()) == [10, 10, 20, 20]
    assert calls == [1, 2]
    assert len(tenfold.cache_engine.data) == 2


def test_user_engine_refusing_a_config_falls_back(registered_globally: Any) -> None:
    class NoExpiry(DictEngine):
        name = "no-expiry"

        @classmethod
        def unsupported(cls, config: CacheConfig) -> str | None:
            return "no-expiry cannot expire entries" if config.ttl is not None else None

    registered_globally("no-expiry", NoExpiry)
    with pytest.warns(CacheWarning, match="no-expiry cannot expire entries"):

        @mcache(cache_engine="no-expiry", ttl=60)
        def f(x: int) -> int:
            return x

    assert f.cache_engine.name == first_serving(CacheConfig(ttl=60))

    @mcache(cache_engine="no-expiry")
    def g(x: int) -> int:
        return x

    assert type(g.cache_engine) is NoExpiry


def test_available_with_a_user_engine(mine: type[DictEngine]) -> None:
    assert get_manager().available()["mine"] is None


# --- fallback when backend libraries are missing (subprocesses) ---------------------------


def run_python(code: str) -> Any:
    """Run `code` in a fresh interpreter (warnings are errors there too); return the JSON it
    prints on its last line."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_loads_no_backend_library() -> None:
    imported = run_python(
        f"""
        import json, sys
        import twat_cache
        import twat_cache.engines.manager
        print(json.dumps([m for m in {BACKENDS!r} if m in sys.modules]))
        """
    )
    assert imported == []


def test_memory_cache_loads_only_the_engine_it_uses() -> None:
    name, imported = run_python(
        f"""
        import json, sys
        from twat_cache import mcache

        @mcache
        def f(x):
            return x

        f(1)
        print(json.dumps([f.cache_engine.name, [m for m in {BACKENDS!r} if m in sys.modules]]))
        """
    )
    assert name == first_serving()
    assert imported == ([] if name == "functools" else [name])


def test_without_cachebox_mcache_is_served_by_cachetools() -> None:
    outcome = run_python(
        """
        import sys
        sys.modules["cachebox"] = None  # import cachebox now raises ImportError
        import asyncio, json
        from twat_cache import acache, mcache
        from twat_cache.engines.manager import get_manager

        @mcache(maxsize=8)
        def f(x):
            return [x]

        @acache
        async def g(x):
            return [x]

        assert f(1) == f(1) == [1] and f.cache_info().hits == 1
        asyncio.run(g(1))
        reason = get_manager().available()["cachebox"]
        print(json.dumps([f.cache_engine.name, g.cache_engine.name, reason]))
        """
    )
    assert outcome[:2] == ["cachetools", "cachetools"]
    assert "not importable" in outcome[2]


def test_without_cachebox_and_cachetools_mcache_is_served_by_functools() -> None:
    outcome = run_python(
        """
        import sys
        sys.modules["cachebox"] = None
        sys.modules["cachetools"] = None
        import json
        from twat_cache import mcache

        @mcache(ttl=60)
        def f(x):
            return [x]

        assert f(1) == f(1) == [1] and f.cache_info().hits == 1
        print(json.dumps(f.cache_engine.name))
        """
    )
    assert outcome == "functools"


def test_blocked_preferred_engine_falls_back_with_one_warning() -> None:
    outcome = run_python(
        """
        import sys
        sys.modules["cachebox"] = None
        import json, warnings
        from twat_cache import mcache
        from twat_cache.exceptions import CacheWarning

        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")

            @mcache(cache_engine="cachebox")
            def f(x):
                return x

        messages = [str(w.message) for w in record if issubclass(w.category, CacheWarning)]
        print(json.dumps([f.cache_engine.name, len(record), messages]))
        """
    )
    name, total, messages = outcome
    assert name == "cachetools"
    assert total == 1
    assert "'cachebox'" in messages[0]
    assert "not importable" in messages[0]


# --- an unbounded cache without expiry is a plain dict ------------------------------------


def test_unbounded_cache_without_expiry_is_served_by_a_plain_dict() -> None:
    # Nothing is ever evicted or expires, so the fastest store is a dict (functools.cache's).
    engine = get_manager().select("memory", CacheConfig(maxsize=None))
    assert engine.name == "functools"
    assert type(engine._plain) is dict
    assert engine.get is not FunctoolsEngine.get  # the dict's own get serves hits


@pytest.mark.parametrize(
    "options",
    [{}, {"maxsize": 10}, {"maxsize": None, "ttl": 60}, {"maxsize": None, "policy": "lfu"}],
)
def test_the_dict_rule_applies_only_when_nothing_is_evicted(options: dict[str, Any]) -> None:
    config = CacheConfig(**options)
    expected = next(name for name in get_manager().chain("memory") if _serves(name, config))
    assert get_manager().select("memory", config).name == expected


def test_a_named_engine_still_serves_an_unbounded_cache() -> None:
    if get_manager().available()["cachebox"] is not None:
        pytest.skip("cachebox is unavailable here")

    @mcache(maxsize=None, cache_engine="cachebox")
    def f(x: int) -> int:
        return x

    assert f.cache_engine.name == "cachebox"
    assert f(1) == f(1) == 1
    assert f.cache_info().hits == 1


def test_the_dict_rule_never_touches_the_disk_chain() -> None:
    manager = CacheEngineManager()
    manager.register("diskcache", PersistentDictEngine, replace=True)
    assert manager.select("disk", CacheConfig(maxsize=None)).name == "persistent-dict"


class PersistentDictEngine(DictEngine):
    name = "persistent-dict"
    capabilities = Capabilities(persistent=True)


def _serves(name: str, config: CacheConfig) -> bool:
    cls = get_manager().load(name)
    return cls.unsupported(config) is None
