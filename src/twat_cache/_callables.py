"""What a decorated callable is: its own signature, and whether it is async or a generator.

The answers follow the outermost callable, as a call does: a `functools.wraps` wrapper is
called with what its own parameters take (never the `__wrapped__` function's), a partial
with what it still takes, an instance through its `__call__`.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["Parameters", "is_generator", "own_signature", "returns_coroutine", "wrapped_parameters"]


def _innermost_partial(func: Any) -> Any:
    while isinstance(func, functools.partial):
        func = func.func
    return func


def _call_method(func: Any) -> Any:
    """The function a call of `func` runs: `func` itself for functions and methods, the
    class's `__call__` for an instance (None for a class: calling it builds an object)."""
    func = _innermost_partial(func)
    if isinstance(func, type):
        return None
    # type(), not isinstance(): a proxy (wrapt) claims its wrapped function's __class__.
    if type(func) in (types.FunctionType, types.MethodType, types.BuiltinFunctionType):
        return func
    return type(func).__call__ if callable(func) else None


def returns_coroutine(func: Callable[..., Any]) -> bool:
    """Whether calling `func` returns a coroutine to await: an `async def` function, method
    or partial of one, or an instance whose `__call__` is `async def`."""
    if inspect.iscoroutinefunction(func):
        return True
    call = _call_method(func)
    return call is not None and call is not func and inspect.iscoroutinefunction(call)


def is_generator(func: Callable[..., Any]) -> bool:
    """Whether calling `func` returns a generator (sync or async) instead of a result."""
    call = _call_method(func)
    return any(
        check(target)
        for target in (func, call)
        if target is not None
        for check in (inspect.isgeneratorfunction, inspect.isasyncgenfunction)
    )


def _bare(func: Any) -> Any:
    """`func` rebuilt from what a call of it runs: its code, defaults and bound values,
    without the `__signature__` or `__wrapped__` that `functools.wraps` copies onto it
    (they describe another function, not what this one receives)."""
    if type(func) is types.FunctionType:  # not a proxy claiming to be one
        bare = types.FunctionType(
            func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__
        )
        bare.__kwdefaults__ = func.__kwdefaults__
        return bare
    if issubclass(type(func), functools.partial):
        return functools.partial(_bare(func.func), *func.args, **func.keywords)
    if type(func) is types.MethodType:
        return types.MethodType(_bare(func.__func__), func.__self__)
    call = inspect.getattr_static(type(func), "__call__", None)  # a staticmethod stays one
    if not isinstance(func, type) and type(call) is types.FunctionType:
        return types.MethodType(_bare(call), func)  # an instance, through its class's __call__
    return func


def own_signature(func: Callable[..., Any]) -> inspect.Signature | None:
    """The parameters a call of `func` itself takes, or None when they cannot be known
    (a builtin without a text signature): the caller then passes everything through."""
    try:
        return inspect.signature(_bare(func), follow_wrapped=False)
    except (TypeError, ValueError):
        return None


class Parameters(NamedTuple):
    """What the function under a `functools.wraps` wrapper takes."""

    names: frozenset[str]
    varkw: bool  # it takes **kwargs
    self_first: bool  # its first parameter is a positional `self`: it is a method


def wrapped_parameters(func: Callable[..., Any]) -> Parameters | None:
    """The parameters of the function `func` wraps (`__wrapped__`, followed to its end), or
    None when `func` wraps nothing or they cannot be known."""
    if getattr(func, "__wrapped__", None) is None:
        return None
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    first = parameters[0] if parameters else None
    return Parameters(
        names=frozenset(p.name for p in parameters),
        varkw=any(p.kind is p.VAR_KEYWORD for p in parameters),
        self_first=first is not None
        and first.name == "self"
        and first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD),
    )
