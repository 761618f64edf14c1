"""The cache attributes of a cached function (`cache_info`, `cache_clear`, `cache_key`,
`cache_delete`, `cache_refresh`, `cache_parameters`...), attached by `wrap`."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twat_cache._callables import own_signature
from twat_cache._flight import CallState
from twat_cache._types import CacheInfo
from twat_cache.config import CacheConfig
from twat_cache.engines.base import MISS, capabilities_of, engine_name
from twat_cache.exceptions import CacheError, EngineError

__all__ = ["attach", "publish"]


def attach(
    wrapper: Any,
    key_of: Callable[..., Any],
    counts: Callable[[bool], tuple[int, int]],
    state: CallState,
    engine: Any,
    config: CacheConfig,
    name: str,
    is_async: bool,
) -> None:
    async_engine = capabilities_of(engine).async_native
    # A user engine may not declare a bound: then cache_info reports None, as unbounded.
    maxsize = getattr(engine, "maxsize", None)

    def cache_info() -> CacheInfo:
        """Hits, misses, maxsize and current size, like functools' `cache_info()`."""
        hits, misses = counts(False)
        try:
            size = len(engine)
        except Exception:  # a server out of reach, a folder deleted: the size is unknown
            size = -1
        return CacheInfo(hits + state.shared_hits, misses + state.misses, maxsize, size)

    def cache_clear() -> None:
        """Remove every entry of this cache and reset its statistics."""
        with _as_cache_error("clear", name):
            engine.clear()
        counts(True)
        state.reset()

    async def acache_clear() -> None:
        """`cache_clear` for async engines: awaits the engine's own clear."""
        with _as_cache_error("clear", name):
            if async_engine:
                await engine.aclear()
            else:
                engine.clear()
        counts(True)
        state.reset()

    check_self = _self_checker(state.func)

    def cache_key(*args: Any, **kwargs: Any) -> Any:
        """The key these arguments would use."""
        check_self("cache_key", args, kwargs)
        return key_of(*args, **kwargs)

    def cache_delete(*args: Any, **kwargs: Any) -> bool:
        """Delete the entry these arguments would use; True if there was one."""
        check_self("cache_delete", args, kwargs)
        key = key_of(*args, **kwargs)
        with _as_cache_error("delete", name):
            return bool(engine.delete(key))

    async def acache_delete(*args: Any, **kwargs: Any) -> bool:
        """`cache_delete` for async engines."""
        check_self("acache_delete", args, kwargs)
        key = key_of(*args, **kwargs)
        with _as_cache_error("delete", name):
            return bool(await engine.adelete(key) if async_engine else engine.delete(key))

    def cache_refresh(*args: Any, **kwargs: Any) -> Any:
        """Call the function again with these arguments and store the new result (for an
        async function: a coroutine to await)."""
        check_self("cache_refresh", args, kwargs)
        if is_async:
            return state.arefresh(key_of, args, kwargs)
        return state.refresh(key_of, args, kwargs)

    def cache_parameters() -> dict[str, Any]:
        """The resolved configuration, plus the engine serving it and the registry name."""
        return {
            **config.model_dump(),
            "maxsize": maxsize,
            "engine": engine_name(engine),
            "name": name,
        }

    publish(
        wrapper,
        cache_info=cache_info,
        cache_clear=cache_clear,
        acache_clear=acache_clear,
        cache_delete=cache_delete,
        acache_delete=acache_delete,
        cache_key=cache_key if check_self is not _no_check else key_of,
        cache_refresh=cache_refresh,
        cache_parameters=cache_parameters,
        cache_engine=engine,
        cache_name=name,
    )


@contextmanager
def _as_cache_error(operation: str, name: str) -> Iterator[None]:
    """A backend's own exception (an `OSError` of a folder replaced by a file, a database
    driver's error) reaches the caller as an `EngineError` naming the cache; twat-cache's
    own errors pass as they are."""
    try:
        yield
    except CacheError:
        raise
    except Exception as exc:
        raise EngineError(f"cache {name!r} could not {operation}: {exc!r}") from exc


def _no_check(attribute: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    return None


def _self_checker(
    func: Callable[..., Any],
) -> Callable[[str, tuple[Any, ...], dict[str, Any]], None]:
    """For a method (a function of a class body taking `self` first): a check that the
    cache attributes got an instance of that class as `self`.

    `obj.method.cache_refresh(x)` reaches the function's own attribute: a bound method
    forwards attribute lookups to its function, which cannot learn the instance. Called so,
    `x` would silently become `self`; it is refused, naming the spelling that works,
    `type(obj).method.cache_refresh(obj, x)`.
    """
    qualname = getattr(func, "__qualname__", None)
    owner, dot, method = qualname.rpartition(".") if isinstance(qualname, str) else ("", "", "")
    signature = own_signature(func)
    first = next(iter(signature.parameters.values()), None) if signature is not None else None
    if (
        not dot
        or owner.endswith("<locals>")
        or first is None
        or first.name != "self"
        or first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD)
    ):
        return _no_check

    def check(attribute: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        instance = args[0] if args else kwargs.get("self", MISS)
        if instance is MISS:
            return  # no self at all: the call itself reports the missing argument
        if _serves(type(instance), method, func):
            return  # its class has this method (assigned from another class, too)
        for cls in type(instance).__mro__:
            # by qualname alone: libraries reset `__module__` to their public package
            if getattr(cls, "__qualname__", None) == owner:
                return
        if _static_in_owner(func, owner, method):
            return  # a staticmethod whose first parameter happens to be named self
        raise TypeError(
            f"{owner}.{method}.{attribute}() takes the instance first, and got "
            f"{type(instance).__name__} as self: a bound method cannot pass its instance to "
            f"{attribute}, so call it through the class: "
            f"type(obj).{method}.{attribute}(obj, ...)"
        )

    return check


def _serves(cls: type, method: str, func: Callable[..., Any]) -> bool:
    """Whether `cls.<method>` is `func` or a wrapper of it (a few `__wrapped__` deep)."""
    found = inspect.getattr_static(cls, method, None)
    for _ in range(8):
        if found is None:
            return False
        found = getattr(found, "__func__", found)  # staticmethod, classmethod
        if found is func:
            return True
        found = getattr(found, "__wrapped__", None)
    return False


def _static_in_owner(func: Callable[..., Any], owner: str, method: str) -> bool:
    """Whether the class named `owner` in `func`'s module holds `method` as a staticmethod."""
    scope: Any = sys.modules.get(getattr(func, "__module__", None) or "")
    for part in owner.split("."):
        scope = getattr(scope, part, None)
    return isinstance(inspect.getattr_static(scope, method, None), staticmethod)


def publish(wrapper: Any, **attributes: Any) -> None:
    """Set the cache attributes of a cached function (`CachedFunction` lists them)."""
    for attribute, value in attributes.items():
        setattr(wrapper, attribute, value)
