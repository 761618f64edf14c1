"""Public types of decorated functions: `CacheInfo` and the `CachedFunction` protocol."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Concatenate, Generic, NamedTuple, ParamSpec, Protocol, TypeVar, overload

from typing_extensions import Self

from twat_cache.engines.base import CacheEngineProtocol

__all__ = [
    "BoundCachedFunction",
    "CacheDecorator",
    "CacheInfo",
    "CachedClassMethod",
    "CachedFunction",
    "CachedStaticMethod",
    "P",
    "R",
]

P = ParamSpec("P")
R = TypeVar("R")
_P2 = ParamSpec("_P2")
_R2 = TypeVar("_R2")
_S = TypeVar("_S")
_R_co = TypeVar("_R_co", covariant=True)


class CacheInfo(NamedTuple):
    """Statistics of one cache, shaped like `functools.lru_cache`'s.

    >>> CacheInfo(hits=3, misses=1, maxsize=128, currsize=1).hits
    3
    """

    hits: int
    misses: int
    maxsize: int | None
    currsize: int


class CachedFunction(Protocol, Generic[P, R]):
    """What a type checker sees of a decorated function: its own parameters and return
    type, plus the cache attributes.

    >>> from twat_cache import mcache
    >>> @mcache
    ... def greet(name: str) -> str:
    ...     return "hello " + name
    >>> greet("ada"), greet.cache_refresh("ada"), greet.cache_info().misses
    ('hello ada', 'hello ada', 2)
    >>> greet.cache_delete("ada"), greet.cache_delete("ada")
    (True, False)
    """

    __wrapped__: Callable[P, R]
    cache_engine: CacheEngineProtocol
    cache_name: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
    def cache_info(self) -> CacheInfo: ...
    def cache_clear(self) -> None: ...
    async def acache_clear(self) -> None: ...
    def cache_delete(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    async def acache_delete(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> Hashable: ...
    def cache_refresh(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
    def cache_parameters(self) -> dict[str, Any]: ...

    # Reading a cached function from a class or an instance binds what Python binds. mypy
    # hands the decorator the plain function wherever @staticmethod/@classmethod stands,
    # then calls this `__get__` on every read, so the first parameter alone tells them apart.
    # `self` is typed `Callable[Concatenate[_S, ...]]`: mypy leaves `_S` unsolved in the
    # Concatenate prefix of a generic self type such as `CachedFunction[Concatenate[...]]`
    # (then `instance: _S` accepts anything and a staticmethod gets bound), not in a
    # callable's first parameter. Beyond types: a staticmethod whose first parameter accepts
    # the instance or its class (`x: object`, an untyped `x`) is seen as bound.
    @overload  # first parameter `type[C]`, read from C or an instance: a classmethod
    def __get__(
        self: Callable[Concatenate[_S, _P2], _R2], instance: object, owner: _S
    ) -> BoundCachedFunction[_P2, _R2]: ...
    @overload  # anything else read from the class: unbound
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...
    @overload  # first parameter taking the instance: a method
    def __get__(
        self: Callable[Concatenate[_S, _P2], _R2], instance: _S, owner: type[Any] | None = None
    ) -> BoundCachedFunction[_P2, _R2]: ...
    @overload  # anything else read from an instance: a staticmethod
    def __get__(self, instance: object, owner: type[Any] | None = None) -> Self: ...
    def __get__(self, instance: Any, owner: Any = None) -> Any: ...


class CachedStaticMethod(Protocol, Generic[P, R]):
    """A cached `staticmethod` object (``mcache(staticmethod(f))``): reading it from the
    class or an instance binds nothing. (mypy never builds this type for a decorated
    staticmethod: it hands the decorator the plain function; other checkers do.)"""

    def __get__(self, instance: object, owner: type[Any] | None = None) -> CachedFunction[P, R]: ...


class CachedClassMethod(Protocol, Generic[P, _R_co]):
    """A cached `classmethod` object (``mcache(classmethod(f))``): reading it binds the
    class (P excludes `cls`). (mypy hands the decorator the plain function instead.)"""

    def __get__(
        self, instance: object, owner: type[Any] | None = None
    ) -> BoundCachedFunction[P, _R_co]: ...


class CacheDecorator(Protocol):
    """What a called decorator (``mcache(maxsize=...)``) returns."""

    @overload
    def __call__(self, func: staticmethod[P, R], /) -> CachedStaticMethod[P, R]: ...  # type: ignore[overload-overlap]  # a staticmethod is also callable; this overload is the precise one
    @overload
    def __call__(self, func: classmethod[Any, P, R], /) -> CachedClassMethod[P, R]: ...
    @overload
    def __call__(self, func: Callable[P, R], /) -> CachedFunction[P, R]: ...


class BoundCachedFunction(Protocol, Generic[P, _R_co]):
    """A cached method bound to its instance (or a cached classmethod bound to its class):
    the parameters after `self`/`cls`, and the cache attributes of the function, shared by
    every instance. The per-call helpers (`cache_delete`, `cache_key`, `cache_refresh`)
    take the full parameters: use them on the function read from the class,
    ``Service.lookup.cache_delete(service, "k")``."""

    __wrapped__: Callable[..., Any]
    cache_engine: CacheEngineProtocol
    cache_name: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> _R_co: ...
    def cache_info(self) -> CacheInfo: ...
    def cache_clear(self) -> None: ...
    async def acache_clear(self) -> None: ...
    def cache_parameters(self) -> dict[str, Any]: ...
