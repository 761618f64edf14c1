"""What a type checker sees of decorated functions; `mypy --strict` via tests/test_typing.py."""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

from twat_cache import CacheInfo, acache, mcache


@mcache
def f(x: int) -> str:
    return str(x)


@mcache(maxsize=10)
def g(x: int, *, y: str = "") -> list[int]:
    return [x, len(y)]


@acache
async def h(x: int) -> int:
    return x


@acache(ttl="10m")
async def h2(x: int, scale: float = 1.0) -> float:
    return x * scale


@mcache
async def m(x: int) -> bytes:
    return bytes(x)


class Service:
    @mcache
    def lookup(self, key: str) -> int:
        return len(key)

    @acache
    async def alookup(self, key: str) -> int:
        return len(key)

    @mcache
    @classmethod
    def make(cls, x: int) -> str:
        return str(x)

    @classmethod
    @mcache
    def make_below(cls, x: int) -> str:
        return str(x)

    @mcache
    @staticmethod
    def static(x: int) -> str:
        return str(x)


def sync_checks() -> None:
    assert_type(f(1), str)
    assert_type(f(x=1), str)
    assert_type(f.cache_info(), CacheInfo)
    assert_type(f.cache_info().hits, int)
    assert_type(f.cache_info().maxsize, int | None)
    assert_type(f.cache_clear(), None)
    assert_type(f.cache_delete(1), bool)
    assert_type(f.cache_key(1), Any)
    assert_type(f.cache_parameters(), dict[str, Any])
    assert_type(f.cache_name, str)
    assert_type(f.__wrapped__(1), str)

    assert_type(g(1), list[int])
    assert_type(g(1, y="abc"), list[int])
    assert_type(g.cache_info(), CacheInfo)
    assert_type(g.cache_delete(1, y="a"), bool)

    service = Service()
    assert_type(service.lookup("k"), int)
    assert_type(service.lookup(key="k"), int)
    assert_type(Service.lookup(service, "k"), int)
    assert_type(Service.lookup.cache_info(), CacheInfo)
    assert_type(service.lookup.cache_info(), CacheInfo)
    assert_type(service.make(1), str)
    assert_type(service.make_below(x=1), str)
    assert_type(Service.static(3), str)
    assert_type(Service.static.cache_info(), CacheInfo)


async def async_checks() -> None:
    assert_type(await h(1), int)
    assert_type(await h2(1), float)
    assert_type(await h2(1, scale=2.0), float)
    assert_type(await m(1), bytes)
    assert_type(h.cache_info(), CacheInfo)
    assert_type(await h.acache_clear(), None)
    assert_type(await h.acache_delete(1), bool)
    assert_type(await m.acache_delete(1), bool)
    assert_type(await Service().alookup("k"), int)
