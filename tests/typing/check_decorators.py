"""What a type checker sees of decorated functions: each decorator, bare and called, on sync
and async functions, keeps the parameters and the return type and adds typed cache
attributes. Checked by `mypy --strict` (`make lint`, tests/test_typing.py); never run.

Methods, staticmethods and classmethods: check_methods.py. Calls that must be rejected:
bad_*.py.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

from typing_extensions import assert_type

from twat_cache import (
    CacheConfig,
    CachedFunction,
    CacheInfo,
    acache,
    bcache,
    fcache,
    mcache,
    ucache,
)
from twat_cache._types import CacheDecorator
from twat_cache.engines.base import CacheEngineProtocol

P = ParamSpec("P")
R = TypeVar("R")


async def attributes(f: CachedFunction[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Every cache attribute, for any decorated function: passing one here (with arguments
    its parameters accept) proves it is a `CachedFunction` with those parameters."""
    assert_type(f(*args, **kwargs), R)
    assert_type(f.__wrapped__(*args, **kwargs), R)
    assert_type(f.__wrapped__, Callable[P, R])
    assert_type(f.cache_info(), CacheInfo)
    assert_type(f.cache_info().hits, int)
    assert_type(f.cache_info().misses, int)
    assert_type(f.cache_info().maxsize, int | None)
    assert_type(f.cache_info().currsize, int)
    assert_type(f.cache_clear(), None)
    assert_type(await f.acache_clear(), None)
    assert_type(f.cache_delete(*args, **kwargs), bool)
    assert_type(await f.acache_delete(*args, **kwargs), bool)
    assert_type(f.cache_key(*args, **kwargs), Hashable)
    assert_type(f.cache_refresh(*args, **kwargs), R)
    assert_type(f.cache_parameters(), dict[str, Any])
    assert_type(f.cache_engine, CacheEngineProtocol)
    assert_type(f.cache_engine.name, str)
    assert_type(f.cache_engine.get("key"), Any)
    assert_type(f.cache_name, str)
    return f(*args, **kwargs)


# --- mcache ------------------------------------------------------------------------------


@mcache
def m_bare(x: int, *, y: str = "") -> list[int]:
    return [x, len(y)]


@mcache(maxsize=10, policy="lfu", typed=False, ignore=("y",))
def m_called(x: int, y: str = "") -> str:
    return y * x


@mcache()
def m_empty_call(x: int) -> float:
    return x / 2


@mcache
async def m_async(x: int) -> bytes:
    return bytes(x)


@mcache(ttl=timedelta(seconds=90), key=lambda x: x)
async def m_async_called(x: int) -> bytes:
    return bytes(x)


# --- acache ------------------------------------------------------------------------------


@acache
async def a_bare(user_id: int) -> dict[str, int]:
    return {"id": user_id}


@acache(ttl="10m", maxsize=100, lock=False)
async def a_called(x: int, scale: float = 1.0) -> float:
    return x * scale


@acache(cache_engine="aiocache", url="redis://localhost:6379/0", timeout=0.5)
async def a_remote(key: str) -> str | None:
    return key or None


# --- bcache: folder_name is also its first positional parameter ---------------------------


@bcache
def b_bare(width: int, height: int) -> int:
    return width * height


@bcache("b_positional", "500MB", "1d", "fifo")
def b_positional(name: str) -> tuple[str, int]:
    return name, len(name)


@bcache(folder_name="b_keywords", maxsize=1000, ttl=3600, compress="zlib", secure=False)
def b_keywords(name: str, *, upper: bool = False) -> str:
    return name.upper() if upper else name


@bcache
async def b_async(x: int) -> int:
    return x


@bcache("b_async_called", use_sql=True)
async def b_async_called(x: int) -> int:
    return x


# --- fcache: folder_name is also its first positional parameter ---------------------------


@fcache
def f_bare(n: int) -> list[int]:
    return list(range(n))


@fcache("f_positional", "2GB", timedelta(days=1))
def f_positional(n: int) -> bytes:
    return bytes(n)


@fcache(folder_name="f_keywords", compress=True, mmap_mode="r", serializer="pickle")
def f_keywords(n: int, *args: int, **kwargs: str) -> list[int]:
    return [n, *args, len(kwargs)]


@fcache
async def f_async(n: int) -> bytes:
    return bytes(n)


# --- ucache: folder_name, maxsize, ttl, policy, preferred_engine also positional -----------


@ucache
def u_bare(x: int) -> int:
    return x * x


@ucache("u_positional", 100, "1h", "lru", "diskcache")
def u_positional(x: int) -> int:
    return x**3


@ucache(preferred_engine="cachetools", maxsize=10, config=CacheConfig(ttl=60))
def u_keywords(x: int, /, label: str = "") -> str:
    return f"{label}{x}"


@ucache
async def u_async(x: int) -> str:
    return str(x)


@ucache(url="redis://localhost:6379/0", l1_maxsize=100, l1_ttl="5s", lease="10s")
async def u_remote(x: int) -> str:
    return str(x)


def sync_checks() -> None:
    assert_type(m_bare(1), list[int])
    assert_type(m_bare(x=1, y="a"), list[int])
    assert_type(m_called(2, "ab"), str)
    assert_type(m_called(x=2), str)
    assert_type(m_empty_call(3), float)
    assert_type(b_bare(3, 4), int)
    assert_type(b_bare(width=3, height=4), int)
    assert_type(b_positional("n"), tuple[str, int])
    assert_type(b_keywords("n", upper=True), str)
    assert_type(f_bare(3), list[int])
    assert_type(f_positional(n=3), bytes)
    assert_type(f_keywords(1, 2, 3, a="b"), list[int])
    assert_type(u_bare(3), int)
    assert_type(u_positional(2), int)
    assert_type(u_keywords(2, label="x"), str)


async def attribute_checks() -> None:
    assert_type(await attributes(m_bare, 1, y="a"), list[int])
    assert_type(await attributes(m_called, 2), str)
    assert_type(await attributes(m_empty_call, 3), float)
    assert_type(await attributes(b_bare, 3, height=4), int)
    assert_type(await attributes(b_positional, "n"), tuple[str, int])
    assert_type(await attributes(b_keywords, "n", upper=False), str)
    assert_type(await attributes(f_bare, 3), list[int])
    assert_type(await attributes(f_positional, 3), bytes)
    assert_type(await attributes(f_keywords, 1, 2, a="b"), list[int])
    assert_type(await attributes(u_bare, 3), int)
    assert_type(await attributes(u_positional, 3), int)
    assert_type(await attributes(u_keywords, 3, "x"), str)

    # What the decorators are before they are applied.
    assert_type(mcache(maxsize=3), CacheDecorator)
    assert_type(acache(), CacheDecorator)
    assert_type(bcache("folder"), CacheDecorator)
    assert_type(fcache(maxsize="1GB"), CacheDecorator)
    assert_type(ucache(None, None, 60), CacheDecorator)

    def plain(x: int) -> str:
        return str(x)

    assert_type(mcache(plain)(1), str)
    assert_type(mcache(ttl=5)(plain)(x=1), str)
    assert_type(bcache("folder")(plain).cache_delete(1), bool)
    assert_type(ucache(plain).__wrapped__(1), str)


async def async_checks() -> None:
    # An `async def` keeps its coroutine return type: awaiting gives the value.
    # (`.close()`: mypy reports an unused coroutine, even one passed through assert_type.)
    assert_type(m_async(1), Coroutine[Any, Any, bytes]).close()
    assert_type(await m_async(1), bytes)
    assert_type(await m_async_called(x=1), bytes)
    assert_type(await a_bare(7), dict[str, int])
    assert_type(await a_called(1), float)
    assert_type(await a_called(1, scale=2.0), float)
    assert_type(await a_remote("k"), str | None)
    assert_type(await b_async(1), int)
    assert_type(await b_async_called(x=1), int)
    assert_type(await f_async(1), bytes)
    assert_type(await u_async(1), str)
    assert_type(await u_remote(1), str)

    # Their attributes: R is the coroutine type, so `attributes` hands back a coroutine to
    # await, as cache_refresh and __wrapped__ do; the a-prefixed twins are coroutine functions.
    a_value = await attributes(a_bare, 7)
    assert_type(await a_value, dict[str, int])
    scaled = await attributes(a_called, 1, scale=2.0)
    assert_type(await scaled, float)
    m_value = await attributes(m_async, 1)
    assert_type(await m_value, bytes)
    b_value = await attributes(b_async, 1)
    assert_type(await b_value, int)
    f_value = await attributes(f_async, 1)
    assert_type(await f_value, bytes)
    u_value = await attributes(u_async, 1)
    assert_type(await u_value, str)
    assert_type(a_bare.cache_refresh(7), Coroutine[Any, Any, dict[str, int]]).close()
    assert_type(await a_bare.cache_refresh(7), dict[str, int])
    assert_type(await a_called.acache_clear(), None)
    assert_type(await a_called.acache_delete(1, scale=2.0), bool)
    assert_type(await u_remote.acache_delete(x=1), bool)
    assert_type(a_remote.cache_info(), CacheInfo)
    assert_type(await a_remote.__wrapped__(key="k"), str | None)
