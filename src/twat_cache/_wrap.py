"""The one wrapper: sync and async factories shared by every decorator and engine.

The hit path lives here alone. Like dataclasses and attrs, the wrapper is generated
source with the decorated function's own parameters, so a call binds its arguments
natively (no `*args, **kwargs` packing, no `inspect` at call time), positional and
keyword passing give the same key, and the key expression is chosen once.
"""

from __future__ import annotations

import functools
import inspect
import keyword
import typing
from _thread import get_ident
from collections.abc import Callable
from typing import Any

from twat_cache._bypass import track
from twat_cache._callables import own_signature, wrapped_parameters
from twat_cache._flight import CallState, in_thread
from twat_cache._methods import attach, publish
from twat_cache._report import WRAPPER_FILENAME_PREFIX
from twat_cache._results import PLAIN_RESULTS
from twat_cache.config import CacheConfig
from twat_cache.engines.base import (
    MISS,
    Capabilities,
    NullEngine,
    capabilities_of,
    put_of,
)
from twat_cache.exceptions import ConfigurationError
from twat_cache.identity import describe, key_builder
from twat_cache.keys import (
    FAST_TYPES,
    make_normalizer,
    self_key,
)

__all__ = ["publish", "wrap"]

_P = "__twat_"  # prefix of every name the generated code uses besides the parameters

_SYNC_BODY = """
    try:
        __twat_k = {key}
    except __twat_Exception as __twat_e:
        return __twat_state.fault(__twat_e, {args}, {kwargs})
    try:
        __twat_v = __twat_get(__twat_k, __twat_MISS)
    except __twat_Exception as __twat_e:
        return __twat_state.degraded(__twat_e, __twat_k, {args}, {kwargs})
    if __twat_v is not __twat_MISS:
        __twat_hits += 1
        return __twat_v
{miss}"""

# The miss path is inlined too (as lru_cache's C code does): every Python frame here
# would be paid on every miss. Waiting for another thread's flight is the slow path,
# out of line in `CallState.follow`; see `_flight.py` for the protocol.
_COMPUTE_AND_STORE = """
__twat_misses += 1
__twat_v = __twat_func({call})
try:
    if __twat_type(__twat_v) in __twat_PLAIN:
        __twat_put(__twat_k, __twat_v)
    else:  # out of line: a coroutine or an iterator (consumed once) is never stored
        __twat_state.store(__twat_k, __twat_v)
except __twat_Exception as __twat_e:
    __twat_state.write_fault(__twat_e)"""

# With an engine offering leases, the leader of this process also takes the engine's
# computation lease, so that one process computes (out of line: it may wait for another).
_COMPUTE_LEASED = """
__twat_v = __twat_state.leased(__twat_k, {args}, {kwargs})"""

_SYNC_MISS_LOCKED = """
    __twat_t = (__twat_ident(),)
    if __twat_flights.setdefault(__twat_k, __twat_t) is not __twat_t:
        return __twat_state.follow(__twat_k, __twat_t, {args}, {kwargs})
    try:
        try:
            # A flight that ended between our read and our registration stored its value.
            __twat_v = __twat_get(__twat_k, __twat_MISS)
        except __twat_Exception as __twat_e:
            __twat_v = __twat_state.read_fault(__twat_e)
        if __twat_v is __twat_MISS:{compute_and_store_12}
        else:
            __twat_hits += 1
    except __twat_BaseException as __twat_e:
        __twat_state.abandon(__twat_k, __twat_e)
        raise
    del __twat_flights[__twat_k]
    if __twat_waiting:
        __twat_state.hand_over(__twat_k, __twat_v, None)
    return __twat_v
"""

_SYNC_MISS_UNLOCKED = """{compute_and_store_4}
    return __twat_v
"""

_ASYNC_BODY = """
    try:
        __twat_k = {key}
    except __twat_Exception as __twat_e:
        return await __twat_state.afault(__twat_e, {args}, {kwargs})
    try:
        __twat_v = {await_}__twat_get(__twat_k, __twat_MISS)
    except __twat_Exception as __twat_e:
        return await __twat_state.adegraded(__twat_e, __twat_k, {args}, {kwargs})
    if __twat_v is not __twat_MISS:
        __twat_hits += 1
        return __twat_v
    return await __twat_state.amiss(__twat_k, {args}, {kwargs})
"""

# Constants are globals of the generated module, not closure cells: a call then copies no
# free variables, and the specializing interpreter caches the global lookups. Only the
# two counters are cells, so that each wrapper has its own.
_FACTORY = """
def __twat_factory():
    __twat_hits = 0
    __twat_misses = 0

    {async_}def {name}({params}):
        nonlocal __twat_hits, __twat_misses
{body}
    def __twat_key({params}):
        return {key}

    def __twat_count(reset):
        nonlocal __twat_hits, __twat_misses
        counts = (__twat_hits, __twat_misses)
        if reset:
            __twat_hits = __twat_misses = 0
        return counts

    return {name}, __twat_key, __twat_count
"""


class _Plan:
    """The pieces of generated source for one function: parameters, call, key."""

    def __init__(self) -> None:
        self.params: list[str] = []
        self.call: list[str] = []
        # The arguments as a tuple and a dict, built on the miss path only: a lambda
        # would turn every parameter into a closure cell, paid on every hit.
        self.args: list[str] = []
        self.kwargs: list[str] = []
        self.key_parts: list[str] = []
        self.key_values: list[str] = []  # plain values, for stable digests
        self.key_names: list[str] = []
        self.varargs: str | None = None
        self.varkw: str | None = None
        self.single = False  # the key is one fixed parameter's part, not a tuple
        self.self_first = False  # *args of a method's wrapper: args[0] is the instance
        self.namespace: dict[str, Any] = {}


def _part(name: str, *, is_self: bool) -> str:
    if is_self:
        # Instances are keyed by identity: two instances never share an entry.
        return f"({name} if __twat_type({name}).__hash__ is __twat_ohash else __twat_self({name}))"
    return f"({name} if __twat_type({name}) in __twat_FAST else __twat_n({name}))"


def _plan(func: Callable[..., Any], config: CacheConfig) -> _Plan:
    plan = _Plan()
    ignore = set(config.ignore)
    signature = own_signature(func)
    params = list(signature.parameters.values()) if signature is not None else []
    usable = signature is not None and all(
        p.name.isidentifier() and not keyword.iskeyword(p.name) and not p.name.startswith(_P)
        for p in params
    )
    if not usable:
        if ignore:
            raise ConfigurationError(
                f"ignore={config.ignore} needs the signature of {describe(func)}, "
                "which is unavailable"
            )
        params = [
            inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
        ]
    names = {p.name for p in params}
    unknown = ignore - names
    has_varkw = any(p.kind is p.VAR_KEYWORD for p in params)
    # Behind a wrapper taking *args/**kwargs, the wrapped function's parameters name what
    # the wrapper receives: `ignore=` is checked against them, and a first `self` there
    # makes the first positional argument an instance, keyed by identity.
    inner = wrapped_parameters(func)
    if unknown and (
        not has_varkw or (inner is not None and not inner.varkw and unknown - inner.names)
    ):
        raise ConfigurationError(
            f"ignore names {sorted(unknown)}, which are not parameters of "
            f"{describe(func)}{signature}"
        )
    plan.namespace["__twat_kwignore"] = frozenset(unknown)
    plan.self_first = inner is not None and inner.self_first

    star_written = False
    for index, p in enumerate(params):
        name = p.name
        default = ""
        if p.default is not p.empty:
            default_name = f"{_P}d{index}"
            plan.namespace[default_name] = p.default
            default = f"={default_name}"
        if p.kind is p.VAR_POSITIONAL:
            plan.params.append(f"*{name}")
            plan.call.append(f"*{name}")
            plan.args.append(f"*{name}")
            star_written = True
            if name not in ignore:
                plan.varargs = name
                plan.self_first = plan.self_first and index == 0
        elif p.kind is p.VAR_KEYWORD:
            plan.params.append(f"**{name}")
            plan.call.append(f"**{name}")
            plan.kwargs.append(f"**{name}")
            if name not in ignore:
                plan.varkw = name
        else:
            if p.kind is p.KEYWORD_ONLY and not star_written:
                plan.params.append("*")
                star_written = True
            plan.params.append(name + default)
            if p.kind is p.KEYWORD_ONLY:
                plan.call.append(f"{name}={name}")
                plan.kwargs.append(f"{name!r}: {name}")
            else:
                plan.call.append(name)
                plan.args.append(name)
            if p.kind is p.POSITIONAL_ONLY and (
                index + 1 == len(params) or params[index + 1].kind is not p.POSITIONAL_ONLY
            ):
                plan.params.append("/")
            if name not in ignore:
                is_self = index == 0 and name == "self" and p.kind is not p.KEYWORD_ONLY
                plan.key_parts.append(_part(name, is_self=is_self))
                plan.key_values.append(name)
                plan.key_names.append(name)
    plan.single = len(plan.key_parts) == 1 and plan.varargs is None and plan.varkw is None
    return plan


def _key_source(plan: _Plan, config: CacheConfig, stable: bool) -> str:
    call = ", ".join(plan.call)
    if config.key is not None:
        return f"__twat_userkey({call})"
    if stable:
        values = [*plan.key_values]
        if plan.varargs:
            values.append(f"*{plan.varargs}")
        kwargs = f"__twat_kwfilter({plan.varkw})" if plan.varkw else "None"
        return f"__twat_stable(({', '.join(values)}{',' if values else ''}), {kwargs})"
    if plan.single:
        return plan.key_parts[0]
    parts = [*plan.key_parts]
    if plan.varargs:
        if plan.self_first:
            parts.append(f"*__twat_selfargs({plan.varargs})")
        else:
            parts.append(f"*__twat_map(__twat_n, {plan.varargs})")
    if plan.varkw:
        parts.append(f"__twat_kwkey({plan.varkw})")
    if not parts:
        return "()"
    return f"({', '.join(parts)},)"


def wrap(
    func: Callable[..., Any], engine: Any, config: CacheConfig, *, name: str, is_async: bool
) -> Any:
    """Return the cached version of `func` storing into `engine` (sync or async wrapper)."""
    if config.key is not None and config.ignore:
        raise ConfigurationError("ignore= has no effect with key=: build the key without them")
    plan = _plan(func, config)
    capabilities = capabilities_of(engine)
    stable = capabilities.stable_keys
    # Stampede protection shares one computation among concurrent callers; a store that
    # keeps nothing (maxsize=0) promises that every call runs the function, so none waits.
    lock = config.lock and not isinstance(engine, NullEngine)
    state = CallState(
        func,
        engine,
        name=name,
        lock=lock,
        fallback=config.fallback,
        lease=config.lease if lock and capabilities.leases else None,
    )
    norm = make_normalizer(config.typed)
    fast = FAST_TYPES if config.typed else FAST_TYPES | {float, bool}
    kwignore = plan.namespace["__twat_kwignore"]

    def kwfilter(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in kwargs.items() if k not in kwignore}

    def kwkey(kwargs: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(sorted((k, norm(v)) for k, v in kwargs.items() if k not in kwignore))

    def selfargs(args: tuple[Any, ...]) -> tuple[Any, ...]:
        if not args:
            return ()
        return (self_key(args[0]), *map(norm, args[1:]))

    # What tells this function's entries apart in a store shared with other functions and
    # processes (identity.py); an in-process engine serves this function alone.
    stable_key = key_builder(func, config.version, tuple(plan.key_names)) if stable else None

    user_key = config.key

    def userkey(*args: Any, **kwargs: Any) -> Any:
        key = user_key(*args, **kwargs)  # type: ignore[misc]  # checked not None above
        if stable_key is not None:
            return stable_key((key,), None)
        return key if type(key) in fast else norm(key)

    def readers() -> tuple[Any, Any]:
        # The engine's read and write, taken again if it replaces its store (`_bypass.rebind`).
        return _reader(engine, capabilities, is_async), put_of(engine)

    get, put = readers()
    plan.namespace.update(
        # The builtins the generated code uses, under private names: a parameter named
        # `type` or `map` must not change what the key code calls.
        __twat_type=type,
        __twat_map=map,
        __twat_PLAIN=PLAIN_RESULTS,
        __twat_Exception=Exception,
        __twat_BaseException=BaseException,
        __twat_func=func,
        __twat_get=get,
        __twat_put=put,
        __twat_readers=readers,
        __twat_ident=get_ident,
        __twat_flights=state.flights,
        __twat_waiting=state.waiting,
        __twat_MISS=MISS,
        __twat_state=state,
        __twat_FAST=fast,
        __twat_n=norm,
        __twat_ohash=object.__hash__,
        __twat_self=self_key,
        __twat_kwkey=kwkey,
        __twat_kwfilter=kwfilter,
        __twat_selfargs=selfargs,
        __twat_stable=stable_key,
        __twat_userkey=userkey,
    )
    key = _key_source(plan, config, stable)
    args = f"({', '.join(plan.args)},)" if plan.args else "()"
    kwargs = f"{{{', '.join(plan.kwargs)}}}"
    call = ", ".join(plan.call)
    compute_and_store = _COMPUTE_AND_STORE.format(call=call)
    locked_compute = (
        _COMPUTE_LEASED.format(args=args, kwargs=kwargs)
        if state.lease is not None
        else compute_and_store
    )
    miss = (_SYNC_MISS_LOCKED if lock else _SYNC_MISS_UNLOCKED).format(
        args=args,
        kwargs=kwargs,
        compute_and_store_4=compute_and_store.replace("\n", "\n" + " " * 4),
        compute_and_store_12=locked_compute.replace("\n", "\n" + " " * 12),
    )
    body = (_ASYNC_BODY if is_async else _SYNC_BODY).format(
        key=key,
        miss=miss,
        args=args,
        kwargs=kwargs,
        await_="await "
        if is_async and (capabilities.async_native or capabilities.blocking)
        else "",
    )
    func_name = getattr(func, "__name__", "")
    if (
        not isinstance(func_name, str)
        or not func_name.isidentifier()
        or keyword.iskeyword(func_name)
        or func_name.startswith(_P)
    ):
        func_name = "cached"
    if any(p.lstrip("*").split("=")[0] == func_name for p in plan.params):
        func_name = f"{_P}wrapper"
    source = _FACTORY.format(
        async_="async " if is_async else "",
        name=func_name,
        params=", ".join(plan.params),
        body=body.replace("\n    ", "\n        "),
        key=key,
    )
    scope: dict[str, Any] = dict(plan.namespace)
    filename = f"{WRAPPER_FILENAME_PREFIX}{describe(func)}>"
    exec(compile(source, filename, "exec"), scope)  # source built above from parameter names only
    wrapper, key_of, counts = scope["__twat_factory"]()
    try:
        functools.update_wrapper(wrapper, func)
    except TypeError:  # a callable answering every attribute, `__name__` with a number
        wrapper.__wrapped__ = func
    signature = _resolved_signature(func)
    if signature is not None:
        wrapper.__signature__ = signature
    attach(wrapper, key_of, counts, state, engine, config, name, is_async)
    track(wrapper)
    return wrapper


def _resolved_signature(func: Callable[..., Any]) -> inspect.Signature | None:
    """`func`'s signature with its string annotations (`from __future__ import annotations`)
    evaluated in `func`'s module, or None when there are none or they cannot be evaluated
    yet. The generated wrapper's globals are not the user's module, so a tool that reads
    annotations through the wrapper's `__globals__` (FastAPI's dependency injection does)
    would otherwise fail to resolve the user's own types."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    annotations = [p.annotation for p in signature.parameters.values()]
    if not any(isinstance(a, str) for a in [*annotations, signature.return_annotation]):
        return None
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # a forward reference defined later in the module: leave the strings
        return None
    parameters = [
        p.replace(annotation=hints[p.name]) if p.name in hints else p
        for p in signature.parameters.values()
    ]
    return signature.replace(
        parameters=parameters, return_annotation=hints.get("return", signature.return_annotation)
    )


def _reader(engine: Any, capabilities: Capabilities, is_async: bool) -> Any:
    """The `get` the wrapper calls: awaited for async engines, and run in a worker thread
    for blocking ones when the function is async."""
    if not is_async:
        return engine.get
    if capabilities.async_native:
        return engine.aget
    if capabilities.blocking:
        return in_thread(engine.get)
    return engine.get
