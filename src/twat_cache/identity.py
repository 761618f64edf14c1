"""Function identity: what makes two decorated callables the same function for a shared store.

A persistent or remote cache outlives the process and is shared with other processes, so
a function's entries must be found again by the same function, and never by another that
happens to share its name (two lambdas of a module, two closures of one factory, two
partials, two scripts' `__main__.load`). A callable's identity is:

- its module's real name: for a script, its real path (whatever runs it: python, a
  profiler, runpy, a spawned worker), for ``python -m`` the module's name (a notebook
  has no stable name: its cells' file names change with every kernel);
- its qualified name;
- a digest of what it computes: its code (instructions, constants, names and nested code,
  but not line numbers, comments or docstrings), the values its closure captured (a
  function, class or module by its own identity, a callable's own cell by name), a
  partial's function and bound arguments, an instance's class, `__call__` and state, and
  whatever a `functools.wraps` wrapper wraps.

`version=` replaces the code of the function itself (and of what its wrappers wrap): edits
to it keep its entries; functions it captured still count with their code. A captured
value with no stable encoding is a `ConfigurationError` when the function is decorated,
unless `version=` is given (the value then counts by its type); locks, events, queues and
weak containers always count by their type, since their state is not what a function
computes. Captured values are read when the function is first called in the process (a
helper defined below the decorated function is bound by then, a dict the factory fills
after decorating is filled). Globals a function reads
are not part of its identity (as with joblib): a value that changes what it computes
belongs in its arguments.
"""

from __future__ import annotations

import functools
import hashlib
import types
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from twat_cache._identifier import Identifier, Unidentifiable, current
from twat_cache._names import is_global, module_names, qualname_of, target_of
from twat_cache._stable import atom, stable_key_builder
from twat_cache.exceptions import ConfigurationError, KeyBuildError

__all__ = ["describe", "encode_callable", "folder_names", "key_builder", "namespace"]

_KeyBuilder = Callable[[tuple[Any, ...], Mapping[str, Any] | None], str]


def describe(func: Any) -> str:
    """A readable name of `func` for messages and the registry (``module.qualname``); it
    never holds a memory address.

    >>> import functools
    >>> describe(functools.partial(pow, 2))
    'builtins.partial(pow)'
    """
    module = getattr(target_of(func), "__module__", None)
    return f"{module if isinstance(module, str) else '?'}.{qualname_of(func)}"


def folder_names(func: Any) -> tuple[str, str]:
    """The readable name and the unique name a default folder is built from: the same in
    every process, with the script's path for a function of a script."""
    readable, unique = module_names(target_of(func))
    qualname = qualname_of(func)
    return f"{readable}.{qualname}", f"{unique}:{qualname}"


def namespace(func: Any, version: str | int | None) -> tuple[str, bool]:
    """The key namespace of `func` in a persistent or shared store (its readable name and a
    128-bit digest of its identity, as it is now), and whether it read a closure cell not
    bound yet. Raises `ConfigurationError` when a captured value has no stable encoding and
    no `version` names the function."""
    identifier = Identifier(func, version)
    out: list[bytes] = []
    readable, unique = module_names(target_of(func))
    atom(b"s", unique.encode(), out)
    if version is not None:
        atom(b"\x01v", f"{type(version).__name__}:{version}".encode(), out)
    try:
        identifier.callable(func, out, describe(func), 0)
    except Unidentifiable as exc:
        raise ConfigurationError(
            f"cannot identify {describe(func)} for a persistent or shared cache: {exc}. "
            "Pass version='1' (and change it whenever what the function computes changes) "
            "to identify it yourself"
        ) from exc.__cause__
    digest = hashlib.blake2b(b"".join(out), digest_size=16).hexdigest()
    return f"{readable}.{qualname_of(func)}@{digest}", identifier.unbound


#: Namespaces settled at a first call, per function (or partial) and version: a function
#: decorated again in this process keeps its identity, though a value it captured (a list
#: it appends to) has changed since. Other callables (instances) may compare equal to
#: another whose state differs, so they are not remembered.
_SETTLED: weakref.WeakKeyDictionary[Any, dict[str | int | None, str]] = weakref.WeakKeyDictionary()


def _settled(func: Any) -> dict[str | int | None, str]:
    if type(func) is types.FunctionType or issubclass(type(func), functools.partial):
        return _SETTLED.setdefault(func, {})
    return {}


def key_builder(func: Any, version: str | int | None, names: tuple[str, ...]) -> _KeyBuilder:
    """The stable-key function of `func` (see `_stable.stable_key_builder`).

    The identity is checked when the function is decorated (a `ConfigurationError` then)
    and settled at its first call, when the factory that made it has bound every captured
    value and `__init__` has set the attributes a bound method reads; while a closure cell
    is still unbound, each call reads it again. A captured object that by then holds what
    cannot be encoded counts as it was when the function was decorated."""
    settled = _settled(func)
    if version in settled:
        return stable_key_builder(settled[version], names)
    decorated, _ = namespace(func, version)
    builders: list[_KeyBuilder] = []

    def settle(args: tuple[Any, ...], kwargs: Mapping[str, Any] | None) -> str:
        if not builders and version in settled:  # another wrapper of it settled first
            builders.append(stable_key_builder(settled[version], names))
        if not builders:
            try:
                name, unbound = namespace(func, version)
            except ConfigurationError:
                # A captured object has since come to hold what cannot be encoded (the
                # cached function itself, a lock): its state when decorated stands.
                name, unbound = decorated, False
            build = stable_key_builder(name, names)
            if unbound:
                return build(args, kwargs)
            settled[version] = name
            builders.append(build)
        return builders[0](args, kwargs)

    return settle


def encode_callable(value: Any, out: list[bytes], where: str, depth: int) -> None:
    """The stable encoding of a function or class met in an argument: by its global name
    when its module holds it under that name (a script's by its path), else (a lambda, a
    closure, a class made at run time) by its identity. Met inside a captured value, it
    is part of that identity, code included."""
    identifier = current()
    if identifier is not None:
        identifier.callable(value, out, where, depth)
        return
    if is_global(value):
        atom(b"G", f"{module_names(value)[1]}.{value.__qualname__}".encode(), out)
        return
    try:
        Identifier(None, None).callable(value, out, where, depth)
    except Unidentifiable as exc:
        raise KeyBuildError(f"argument {where} has no stable key: {exc}") from exc.__cause__
