"""What a type checker sees of cached methods: each decorator on methods (bound through an
instance: the parameters after `self`), async methods, staticmethods (nothing bound, through
the class and an instance) and classmethods (the class bound, through the class and an
instance), with the decorator above or below `@staticmethod`/`@classmethod`. Checked by
`mypy --strict` (`make lint`, tests/test_typing.py); never run.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from typing_extensions import assert_type

from twat_cache import CacheInfo, acache, bcache, fcache, mcache, ucache
from twat_cache._types import BoundCachedFunction
from twat_cache.engines.base import CacheEngineProtocol

T = TypeVar("T")


class Service:
    # --- methods ---
    @mcache
    def m(self, key: str) -> int:
        return len(key)

    @mcache(maxsize=10)
    def m_called(self, key: str, *, scale: int = 1) -> int:
        return len(key) * scale

    @acache
    async def a(self, key: str) -> int:
        return len(key)

    @acache(ttl=60)
    async def a_called(self, key: str) -> int:
        return len(key)

    @bcache
    def b(self, key: str) -> int:
        return len(key)

    @bcache("methods_b", ttl="1h")
    def b_called(self, key: str) -> int:
        return len(key)

    @fcache
    def f(self, n: int) -> bytes:
        return bytes(n)

    @fcache("methods_f")
    def f_called(self, n: int) -> bytes:
        return bytes(n)

    @ucache
    def u(self, key: str) -> int:
        return len(key)

    @ucache(maxsize=5)
    async def u_async(self, key: str) -> int:
        return len(key)

    # --- staticmethods: the decorator above or below, bare or called ---
    @mcache
    @staticmethod
    def s_above(x: int) -> str:
        return str(x)

    @staticmethod
    @mcache
    def s_below(x: int) -> str:
        return str(x)

    @mcache(maxsize=3)
    @staticmethod
    def s_called(x: int) -> str:
        return str(x)

    @acache
    @staticmethod
    async def s_async(x: int) -> str:
        return str(x)

    @bcache
    @staticmethod
    def s_bcache(x: int) -> str:
        return str(x)

    @staticmethod
    @fcache("methods_static")
    def s_fcache(x: int) -> bytes:
        return bytes(x)

    @ucache
    @staticmethod
    def s_ucache(x: int) -> str:
        return str(x)

    @mcache
    @staticmethod
    def s_none() -> str:
        return ""

    # --- classmethods: the decorator above or below, bare or called ---
    @mcache
    @classmethod
    def c_above(cls, x: int) -> str:
        return f"{cls.__name__}{x}"

    @classmethod
    @mcache
    def c_below(cls, x: int) -> str:
        return f"{cls.__name__}{x}"

    @mcache(maxsize=3)
    @classmethod
    def c_called(cls, x: int) -> str:
        return f"{cls.__name__}{x}"

    @acache(ttl=5)
    @classmethod
    async def c_async(cls, x: int) -> str:
        return f"{cls.__name__}{x}"

    @bcache("methods_classmethod")
    @classmethod
    def c_bcache(cls, x: int) -> str:
        return f"{cls.__name__}{x}"

    @classmethod
    @fcache
    def c_fcache(cls, x: int) -> bytes:
        return bytes(x)

    @ucache
    @classmethod
    def c_ucache(cls) -> str:
        return cls.__name__


class SubService(Service):
    pass


class Box(Generic[T]):
    def __init__(self, value: T) -> None:
        self.value = value

    @mcache
    def get(self, times: int) -> list[T]:
        return [self.value] * times


def method_checks() -> None:
    service = Service()
    # Read from an instance: `self` is bound, the other parameters stay.
    assert_type(service.m("k"), int)
    assert_type(service.m(key="k"), int)
    assert_type(service.m_called("k", scale=2), int)
    assert_type(service.b("k"), int)
    assert_type(service.b_called(key="k"), int)
    assert_type(service.f(3), bytes)
    assert_type(service.f_called(n=3), bytes)
    assert_type(service.u("k"), int)
    assert_type(SubService().m("k"), int)
    assert_type(Box("v").get(2), list[str])
    assert_type(Box(1.5).get(times=2), list[float])

    # Read from the class: the function itself, `self` first.
    assert_type(Service.m(service, "k"), int)
    assert_type(Service.b_called(service, key="k"), int)
    assert_type(SubService.m(SubService(), "k"), int)

    # The cache attributes, shared by every instance, through an instance...
    # (assert_type would compare parameter names too: `[key: str]` is not `[str]`.)
    bound: BoundCachedFunction[[str], int] = service.m
    assert_type(bound.cache_info(), CacheInfo)
    assert_type(bound.cache_clear(), None)
    assert_type(bound.cache_parameters(), dict[str, Any])
    assert_type(bound.cache_engine, CacheEngineProtocol)
    assert_type(bound.cache_name, str)
    assert_type(bound.__wrapped__, Callable[..., Any])
    assert_type(service.f_called.cache_info().currsize, int)
    # ... and through the class, where the per-call helpers take `self` first.
    assert_type(Service.m.cache_info(), CacheInfo)
    assert_type(Service.m.cache_delete(service, "k"), bool)
    assert_type(Service.m.cache_key(service, key="k"), Hashable)
    assert_type(Service.m.cache_refresh(service, "k"), int)
    assert_type(Service.m.__wrapped__(service, "k"), int)
    assert_type(Service.b.cache_delete(service, "k"), bool)


async def async_method_checks() -> None:
    service = Service()
    assert_type(await service.a("k"), int)
    assert_type(await service.a_called(key="k"), int)
    assert_type(await service.u_async("k"), int)
    assert_type(await Service.a(service, "k"), int)
    assert_type(await service.a.acache_clear(), None)
    assert_type(await Service.a.acache_delete(service, "k"), bool)
    assert_type(await Service.a.cache_refresh(service, "k"), int)


def staticmethod_checks() -> None:
    service = Service()
    # Through the class and through an instance: nothing is bound.
    assert_type(Service.s_above(3), str)
    assert_type(service.s_above(3), str)
    assert_type(Service.s_below(x=3), str)
    assert_type(service.s_below(x=3), str)
    assert_type(Service.s_called(3), str)
    assert_type(service.s_called(3), str)
    assert_type(Service.s_bcache(3), str)
    assert_type(service.s_bcache(3), str)
    assert_type(Service.s_fcache(3), bytes)
    assert_type(service.s_fcache(3), bytes)
    assert_type(Service.s_ucache(3), str)
    assert_type(service.s_ucache(3), str)
    assert_type(Service.s_none(), str)
    assert_type(service.s_none(), str)
    assert_type(SubService().s_above(3), str)
    # Every attribute, with the full parameters.
    assert_type(Service.s_above.cache_info(), CacheInfo)
    assert_type(service.s_above.cache_delete(3), bool)
    assert_type(service.s_called.cache_refresh(x=3), str)
    assert_type(service.s_bcache.cache_key(3), Hashable)


async def async_staticmethod_checks() -> None:
    assert_type(await Service.s_async(3), str)
    assert_type(await Service().s_async(x=3), str)
    assert_type(await Service().s_async.acache_delete(3), bool)


def classmethod_checks() -> None:
    service = Service()
    # Through the class and through an instance: the class is bound.
    assert_type(Service.c_above(1), str)
    assert_type(service.c_above(1), str)
    assert_type(Service.c_below(x=1), str)
    assert_type(service.c_below(x=1), str)
    assert_type(Service.c_called(1), str)
    assert_type(service.c_called(x=1), str)
    assert_type(Service.c_bcache(1), str)
    assert_type(service.c_bcache(1), str)
    assert_type(Service.c_fcache(1), bytes)
    assert_type(service.c_fcache(1), bytes)
    assert_type(Service.c_ucache(), str)
    assert_type(service.c_ucache(), str)
    assert_type(SubService.c_above(1), str)
    assert_type(SubService().c_called(1), str)
    bound: BoundCachedFunction[[int], str] = Service.c_above
    assert_type(bound(1), str)
    assert_type(Service.c_above.cache_info(), CacheInfo)
    assert_type(service.c_called.cache_parameters(), dict[str, Any])


async def async_classmethod_checks() -> None:
    assert_type(await Service.c_async(1), str)
    assert_type(await Service().c_async(x=1), str)
    assert_type(await Service.c_async.acache_clear(), None)
