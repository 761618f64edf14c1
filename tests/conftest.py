"""Shared fixtures: a private cache root for every test, and one factory per registered engine.

Extension point for engines added later: registering an engine in
`twat_cache.engines.manager` is enough for it to join `tests/test_contract.py`. An engine
that needs more than a `CacheConfig` to work gets it here:

- `ENGINE_OPTIONS[name]`: config options merged under every config the factory builds
  (a test's own options win), e.g. ``{"diskcache": {"folder_name": "contract"}}``;
- `ENGINE_SETUP[name]`: a function of the pytest `request` returning more such options,
  run once per test, e.g. to start a server and return its URL:
  ``{"redis": lambda request: {"url": request.getfixturevalue("redis_url")}}``;
- `ENGINE_VARIANTS[id]`: one more run of the suite on a registered engine built another
  way, as ``(engine name, setup)``, e.g. aiocache on a real Redis server by URL.

Async-only engines (``capabilities.sync_api`` False) skip the sync tests and run the
async ones (`EngineFactory.aengine`, and `EngineFactory.mcache` on `async def` functions).

The `redis_server`/`redis_url` fixtures (a real private redis-server) come from _redis.py.
"""

from __future__ import annotations

import inspect
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from _redis import redis_server, redis_url  # noqa: F401  # fixtures, registered here
from _user_engine import register_user_engine
from twat_cache import MISS, CacheConfig, bcache, fcache, mcache, ucache
from twat_cache.config import DEFAULT_MAXSIZE
from twat_cache.engines.manager import get_manager
from twat_cache.exceptions import EngineUnavailableError

#: Config options an engine needs in every test (merged under the test's own options).
ENGINE_OPTIONS: dict[str, dict[str, Any]] = {
    # A folder, and an entry bound: unset, a persistent engine's bound is 1 GiB of bytes.
    "klepto": {"folder_name": "contract", "maxsize": DEFAULT_MAXSIZE},
    "diskcache": {"folder_name": "contract", "maxsize": DEFAULT_MAXSIZE},
    "joblib": {"folder_name": "contract", "maxsize": DEFAULT_MAXSIZE},
    # Unset, a cache on a server keeps DEFAULT_REMOTE_MAXSIZE entries.
    "redis": {"maxsize": DEFAULT_MAXSIZE},
}

#: Per-engine setup run once per test (server, folder...): returns more config options.
ENGINE_SETUP: dict[str, Callable[[pytest.FixtureRequest], dict[str, Any]]] = {}

# A user engine written in the tests ("mine"): the contract holds for engines users register.
register_user_engine()

#: Every engine registered on the process-wide manager, read at collection time, so an
#: engine registered later (diskcache, joblib, klepto, aiocache, redis) joins automatically.
ENGINE_NAMES: list[str] = get_manager().registered()


def _on_redis(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"url": request.getfixturevalue("redis_url"), "folder_name": "contract"}


ENGINE_SETUP["redis"] = _on_redis

#: More runs of the suite, by id: (registered engine, setup returning its config options).
ENGINE_VARIANTS: dict[str, tuple[str, Callable[[pytest.FixtureRequest], dict[str, Any]]]] = {
    "aiocache-redis": ("aiocache", _on_redis),
}

#: Runs that need the real redis-server (marked `redis`).
_ON_SERVER = {"redis", *ENGINE_VARIANTS}


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every cache (and every subprocess a test starts) at a fresh temporary root."""
    root = tmp_path / "twat_cache_root"
    root.mkdir(mode=0o700)  # private whatever the umask: the cache refuses group-writable roots
    monkeypatch.setenv("TWAT_CACHE_DIR", str(root))


class EngineFactory:
    """Builds engines of one registered kind, directly or behind `mcache`.

    Calling it, ``make(**options)``, returns ``manager.load(name)(CacheConfig(**options))``
    (with the engine's `ENGINE_OPTIONS`/`ENGINE_SETUP` options merged in), skipping the test
    with the reason when the engine is unavailable or cannot serve those options. Every
    engine it builds, and every engine behind a function it decorates, is closed at teardown.
    """

    def __init__(self, name: str, base_options: dict[str, Any], variant: str | None = None) -> None:
        self.name = name
        self.variant = variant or name  # the test id: the engine, or a variant of it
        self.base_options = base_options
        self._opened: list[Any] = []
        try:
            self.cls = get_manager().load(name)
        except EngineUnavailableError as exc:
            pytest.skip(f"engine {name!r} is unavailable: {exc}")

    @property
    def capabilities(self) -> Any:
        return self.cls.capabilities

    def options(self, **options: Any) -> dict[str, Any]:
        """The engine's base options with `options` on top."""
        return {**self.base_options, **options}

    def config(self, **options: Any) -> CacheConfig:
        return CacheConfig(**self.options(**options))

    def unsupported(self, **options: Any) -> str | None:
        """Why this engine cannot serve `options` (None when it can)."""
        return self.cls.unsupported(self.config(**options))

    def require(self, **options: Any) -> CacheConfig:
        """The config for `options`, or skip the test when this engine cannot serve it."""
        config = self.config(**options)
        reason = self.cls.unsupported(config)
        if reason:
            pytest.skip(f"{self.name} cannot serve {options}: {reason}")
        return config

    def __call__(self, **options: Any) -> Any:
        """An engine for the sync tests (skipped for an async-only engine)."""
        if not self.capabilities.sync_api:
            pytest.skip(f"{self.name} is async-only: its async twin test covers this")
        return self._build(**options)

    def aengine(self, **options: Any) -> Any:
        """An engine for the async tests (skipped for an engine that is not async-native)."""
        if not self.capabilities.async_native:
            pytest.skip(f"{self.name} is not async-native (no aget/aset)")
        return self._build(**options)

    def _build(self, **options: Any) -> Any:
        config = self.require(**options)
        try:
            engine = self.cls(config)
        except Exception as exc:
            pytest.skip(f"engine {self.name!r} could not be built: {type(exc).__name__}: {exc}")
        self._opened.append(engine)
        return engine

    def mcache(self, **options: Any) -> Callable[[Any], Any]:
        """`mcache(cache_engine=<this engine>, **options)`, checked to really use this engine."""
        self.require(**options)

        def decorate(func: Any) -> Any:
            is_async = inspect.iscoroutinefunction(func)
            if not is_async and not self.capabilities.sync_api:
                pytest.skip(f"{self.name} is async-only: it serves async def functions only")
            merged = self.options(**options)
            # mcache is a local cache and refuses url=: an engine on a server uses ucache.
            decorator = ucache if merged.get("url") else mcache
            cached = decorator(cache_engine=self.name, **merged)(func)
            assert cached.cache_engine.name == self.name, "the manager fell back silently"
            self._opened.append(cached.cache_engine)
            return cached

        return decorate

    def close_all(self) -> None:
        for engine in reversed(self._opened):
            close = getattr(engine, "close", None)
            if close is not None:
                close()
        self._opened.clear()


@pytest.fixture(
    params=[
        pytest.param(run, marks=[pytest.mark.redis] if run in _ON_SERVER else [])
        for run in [*ENGINE_NAMES, *ENGINE_VARIANTS]
    ]
)
def engine_factory(request: pytest.FixtureRequest) -> Iterator[EngineFactory]:
    """A factory `make(**config_options) -> engine` for each registered engine (and each
    variant of one) in turn."""
    variant: str = request.param
    name, setup = ENGINE_VARIANTS.get(variant, (variant, ENGINE_SETUP.get(variant)))
    base = dict(ENGINE_OPTIONS.get(name, {}))
    if setup is not None:
        base.update(setup(request))
    factory = EngineFactory(name, base, variant)
    yield factory
    factory.close_all()


def _hammer(engine: Any, *, threads: int = 8, seconds: float = 0.5, keys: int = 64) -> int:
    """Let `threads` threads get/set/delete random keys of `engine` for `seconds`, then
    check integrity: no thread raised, and every value read belongs to its key.

    Returns the number of operations done (so a caller can check the threads really ran).
    """
    errors: list[BaseException] = []
    counts = [0] * threads
    barrier = threading.Barrier(threads)

    def worker(index: int) -> None:
        rng = random.Random(index)
        barrier.wait()
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                key = rng.randrange(keys)
                roll = rng.random()
                if roll < 0.5:
                    value = engine.get(key, MISS)
                    if value is not MISS and value != ("value", key):
                        raise AssertionError(f"key {key} read {value!r}")
                elif roll < 0.95:
                    engine.set(key, ("value", key))
                else:
                    engine.delete(key)
                counts[index] += 1
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=seconds + 10)
    assert not any(thread.is_alive() for thread in workers), "a hammering thread is stuck"
    assert errors == [], errors
    assert all(counts), counts
    return sum(counts)


@pytest.fixture
def hammer() -> Callable[..., int]:
    """`hammer(engine, threads=8, seconds=0.5, keys=64)`: a thread-safety smoke test."""
    return _hammer


@pytest.fixture
def umask022() -> Iterator[None]:
    """Run the test under umask 022 (the common default), whatever the caller's umask."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


#: Every persistent or remote engine, reached through its public decorator.
PERSISTENT = ["diskcache", "klepto", "joblib", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=PERSISTENT)
def persist(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """`persist(folder_name=None, **options)`: the decorator of one persistent engine
    (bcache on diskcache or klepto, fcache on joblib, ucache(url=...) on Redis), checked
    to really run on that engine; engines are closed at teardown."""
    engine: str = request.param
    url = request.getfixturevalue("redis_url") if engine == "redis" else None
    opened: list[Any] = []

    def decorator(folder_name: str | None = None, **options: Any) -> Callable[[Any], Any]:
        if engine == "redis":
            base = ucache(folder_name, url=url, **options)
        elif engine == "joblib":
            base = fcache(folder_name, cache_engine="joblib", **options)
        else:
            base = bcache(folder_name, cache_engine=engine, **options)

        def apply(func: Any) -> Any:
            cached = base(func)
            assert cached.cache_engine.name == engine, "the manager fell back silently"
            opened.append(cached.cache_engine)
            return cached

        return apply

    yield decorator
    for store in reversed(opened):
        store.close()
