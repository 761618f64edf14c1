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
helper defined below the decorated function is bound by then). Globals a function reads
are not part of its identity (as with joblib): a value that changes what it computes
belongs in its arguments.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import os
import sys
import threading
import types
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from twat_cache._report import WRAPPER_FILENAME_PREFIX
from twat_cache._stable import (
    MAX_DEPTH,
    NestingError,
    atom,
    encode,
    encode_reduced,
    qualified,
    stable_key_builder,
)
from twat_cache.exceptions import ConfigurationError, KeyBuildError

__all__ = ["describe", "encode_callable", "folder_names", "key_builder", "namespace"]

_MAIN = ("__main__", "__mp_main__")  # a script, and the same script in a spawned worker
# Code flags that change what a call does; the others (CO_NESTED, CO_NOFREE...) say where
# the function was written.
_FLAGS = 0x04 | 0x08 | 0x20 | 0x80 | 0x100 | 0x200  # varargs, varkw, (async) generator...
#: Instructions that do nothing (line-number placeholders): left out, so that a function
#: reformatted without changing what it does keeps its identity.
_SKIPPED_OPS = frozenset({"NOP", "CACHE", "EXTENDED_ARG"})
#: Modules whose objects coordinate threads, tasks or processes, or hold weak references:
#: their state is not what a function computes, so a captured one counts by its type.
_BY_TYPE_MODULES = frozenset(
    {"_thread", "threading", "queue", "_queue", "_weakrefset", "weakref", "asyncio.locks"}
    | {"asyncio.queues", "multiprocessing.synchronize", "multiprocessing.queues"}
)
#: Class attributes that say nothing of what a class's instances compute.
_CLASS_NOISE = frozenset(
    {"__dict__", "__weakref__", "__module__", "__qualname__", "__doc__", "__annotations__"}
    | {"__firstlineno__", "__static_attributes__", "__slots__", "__dataclass_params__"}
    | {"__dataclass_fields__", "__match_args__", "__hash__", "__orig_bases__", "__parameters__"}
)
_CURRENT = threading.local()  # the identifier at work, for local functions met inside values


def _defining_function(obj: Any) -> types.FunctionType | None:
    # A function whose code and globals tell where `obj` was written.
    if type(obj) is types.FunctionType:
        return obj
    if isinstance(obj, type):
        for attribute in vars(obj).values():
            attribute = getattr(attribute, "__func__", attribute)  # static/class methods
            if type(attribute) is types.FunctionType:
                return attribute
    return None


def _module_names(obj: Any) -> tuple[str, str]:
    """(readable, unique) names of the module `obj` was written in: its `__module__` when
    that module is where it was written, else (a script, code a runner or exec ran) the
    file it was written in."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        return "?", "?"
    function = _defining_function(obj)
    home = sys.modules.get(module)
    if module not in _MAIN and (
        function is None
        or (
            getattr(home, "__dict__", None) is function.__globals__
            and getattr(getattr(home, "__spec__", None), "name", None) == module
        )
    ):
        return module, module
    # The function's own globals and code say which script it is: `sys.modules["__main__"]`
    # is the profiler or runner when one runs the script, runpy names it "<run_path>".
    namespace = function.__globals__ if function is not None else vars(home) if home else {}
    name = getattr(namespace.get("__spec__"), "name", None)
    if isinstance(name, str) and name not in _MAIN:
        return name, name  # python -m package.tool
    path = function.__code__.co_filename if function is not None else ""
    if path.startswith("<") or not path:
        path = namespace.get("__file__") or ""
    if isinstance(path, str) and path and not path.startswith("<"):
        path = os.path.realpath(path)
        if not os.path.basename(os.path.dirname(path)).startswith("ipykernel_"):
            return os.path.splitext(os.path.basename(path))[0], f"__main__:{path}"
    return module, module


def _target(func: Any) -> Any:
    """The object whose module and name describe `func`: the function under partials and
    methods, the class of an instance."""
    while issubclass(type(func), functools.partial):
        func = func.func
    if type(func) is types.MethodType:
        func = func.__func__
    if isinstance(getattr(func, "__qualname__", None), str) or isinstance(func, type):
        return func
    return type(func)


def _qualname(func: Any) -> str:
    if issubclass(type(func), functools.partial):
        return f"partial({_qualname(func.func)})"
    qualname = getattr(func, "__qualname__", None)
    if isinstance(qualname, str):
        return qualname
    return f"{type(func).__qualname__}.__call__"  # an instance, called through its class


def describe(func: Any) -> str:
    """A readable name of `func` for messages and the registry (``module.qualname``); it
    never holds a memory address.

    >>> import functools
    >>> describe(functools.partial(pow, 2))
    'builtins.partial(pow)'
    """
    module = getattr(_target(func), "__module__", None)
    return f"{module if isinstance(module, str) else '?'}.{_qualname(func)}"


def folder_names(func: Any) -> tuple[str, str]:
    """The readable name and the unique name a default folder is built from: the same in
    every process, with the script's path for a function of a script."""
    readable, unique = _module_names(_target(func))
    qualname = _qualname(func)
    return f"{readable}.{qualname}", f"{unique}:{qualname}"


_BY_IDENTITY = (types.FunctionType, functools.partial)
#: Settled namespaces, per callable and version: a callable decorated again in this process
#: keeps the identity it had, though a value it captured (a list it appends to) changed.
_SETTLED: weakref.WeakKeyDictionary[Any, dict[str | int | None, str]] = weakref.WeakKeyDictionary()


def namespace(func: Any, version: str | int | None) -> tuple[str, bool]:
    """The key namespace of `func` in a persistent or shared store (its readable name and a
    128-bit digest of its identity), and whether it is settled. It is not when it read an
    unbound closure cell or an instance's state: the caller computes it again when `func`
    is first called, once the factory that made it has bound everything and `__init__` has
    set its attributes. Raises `ConfigurationError` when a captured value has no stable
    encoding and no `version` names the function."""
    # Functions and partials hash by identity; another callable may call an equal one the
    # same, though its state differs.
    settled = _SETTLED.setdefault(func, {}) if type(func) in _BY_IDENTITY else {}
    if version in settled:
        return settled[version], True
    identifier = _Identifier(func, version)
    out: list[bytes] = []
    readable, unique = _module_names(_target(func))
    atom(b"s", unique.encode(), out)
    if version is not None:
        atom(b"\x01v", f"{type(version).__name__}:{version}".encode(), out)
    try:
        identifier.callable(func, out, describe(func), 0)
    except _Unidentifiable as exc:
        raise ConfigurationError(
            f"cannot identify {describe(func)} for a persistent or shared cache: {exc}. "
            "Pass version='1' (and change it whenever what the function computes changes) "
            "to identify it yourself"
        ) from exc.__cause__
    digest = hashlib.blake2b(b"".join(out), digest_size=16).hexdigest()
    result = f"{readable}.{_qualname(func)}@{digest}"
    if not identifier.provisional:
        settled[version] = result
    return result, not identifier.provisional


def key_builder(
    func: Any, version: str | int | None, names: tuple[str, ...]
) -> Callable[[tuple[Any, ...], Mapping[str, Any] | None], str]:
    """The stable-key function of `func` (see `_stable.stable_key_builder`) under its
    namespace. An unsettled namespace is computed again at the first key, once; until then
    a `ConfigurationError` would already have been raised at decoration."""
    first, settled = namespace(func, version)
    build = stable_key_builder(first, names)
    if settled:
        return build
    builders: list[Callable[[tuple[Any, ...], Mapping[str, Any] | None], str]] = []

    def settle(args: tuple[Any, ...], kwargs: Mapping[str, Any] | None) -> str:
        if not builders:
            try:
                final, _ = namespace(func, version)
            except ConfigurationError as exc:  # a value set since cannot be encoded
                raise KeyBuildError(str(exc)) from exc
            builders.append(stable_key_builder(final, names))
        return builders[0](args, kwargs)

    return settle


def encode_callable(value: Any, out: list[bytes], where: str, depth: int) -> None:
    """The stable encoding of a function or class passed as an argument (or met inside a
    captured value): by its global name when its module names it (a script's by its path),
    else by its identity (a lambda, a closure, a class made by a function)."""
    if _is_global(value):
        atom(b"G", f"{_module_names(value)[1]}.{value.__qualname__}".encode(), out)
        return
    identifier = getattr(_CURRENT, "identifier", None) or _Identifier(None, None)
    try:
        identifier.callable(value, out, where, depth)
    except _Unidentifiable as exc:
        raise KeyBuildError(f"argument {where} has no stable key: {exc}") from exc.__cause__


def _is_global(obj: Any) -> bool:
    """Whether `obj` is found by its name (its module's attribute of its qualified name),
    as pickle finds it, so that every process means the same object by that name. A
    function or class made by a function (a closure, `type()`, `namedtuple()`) is not."""
    qualname = getattr(obj, "__qualname__", None)
    module_name = getattr(obj, "__module__", None)
    if not isinstance(qualname, str) or "<" in qualname:
        return False
    if not isinstance(module_name, str):
        return True  # a proxy's class: nothing better than its name
    module = sys.modules.get(module_name)
    if module is None:  # code a runner ran from a file: local if it was written in Python
        return _defining_function(obj) is None
    if "__getattr__" in vars(module):
        return True  # a module loading its attributes lazily: they are what their names say
    found: Any = module
    for part in qualname.split("."):
        found = vars(found).get(part) if hasattr(found, "__dict__") else None
        if found is None:
            return False
        found = getattr(found, "__func__", found)  # a staticmethod or classmethod
    return found is obj


class _Unidentifiable(Exception):
    """A value inside a callable's identity has no stable encoding."""


def _by_type(value: Any) -> bool:
    """Whether a captured `value` counts by its type alone (a lock, an event, a queue...)."""
    return type(value).__module__ in _BY_TYPE_MODULES


def _is_cached_wrapper(func: Any) -> bool:
    # A wrapper twat-cache generated: identified by the function it wraps (its own code is
    # the same for every function of one signature, and its cells hold its counters).
    return type(func) is types.FunctionType and func.__code__.co_filename.startswith(
        WRAPPER_FILENAME_PREFIX
    )


def _own_functions(func: Any) -> set[int]:
    """The functions that are `func` itself through its wrappers (partials, methods,
    instances' `__call__`, `__wrapped__` chains): the code a `version=` stands for."""
    own: set[int] = set()
    pending = [func]
    while pending and len(own) < 64:
        item = pending.pop()
        if id(item) in own or not callable(item):
            continue
        own.add(id(item))
        if issubclass(type(item), functools.partial):
            pending.append(item.func)
        elif type(item) is types.MethodType:
            pending.append(item.__func__)
        elif type(item) is not types.FunctionType and not isinstance(item, type):
            pending.append(type(item).__call__)
        wrapped = getattr(item, "__wrapped__", None)
        if wrapped is not None:
            pending.append(wrapped)
    return own


@functools.lru_cache(maxsize=4096)
def _code_bytes(code: types.CodeType) -> bytes:
    """The canonical bytes of a code object: what it does, not where it was written. Code
    objects are immutable, so a function met again (a lambda passed on every call) is
    disassembled once."""
    out: list[bytes] = [b"\x01C"]
    header = (
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags & _FLAGS,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
    )
    encode(header, out, "code")
    import dis  # on first use: only persistent caches identify functions

    jumps = {*dis.hasjrel, *dis.hasjabs, *getattr(dis, "hasjump", ())}
    kept = [i for i in dis.get_instructions(code) if i.opname not in _SKIPPED_OPS]
    offsets = [i.offset for i in kept]
    out.append(len(kept).to_bytes(4, "big"))
    for instruction in kept:
        atom(b"\x01o", instruction.opname.encode(), out)
        argument = instruction.argval
        if instruction.opcode in jumps and isinstance(argument, int):
            # Jump targets by instruction index: offsets move when placeholders do.
            encode(bisect.bisect_left(offsets, argument), out, "code")
        elif isinstance(argument, types.CodeType):
            out.append(_code_bytes(argument))
        else:
            try:
                encode(argument, out, "code")
            except KeyBuildError:
                atom(b"s", instruction.argrepr.encode(), out)
    for entry in getattr(dis.Bytecode(code), "exception_entries", ()):
        where = [bisect.bisect_left(offsets, o) for o in (entry.start, entry.end, entry.target)]
        encode((*where, entry.depth, entry.lasti), out, "code")
    return b"".join(out)


class _Identifier:
    """Writes a callable's identity into an encoding stream."""

    def __init__(self, func: Any, version: str | int | None) -> None:
        self.version = version  # when given: the code of `own` and unencodable values drop
        self.own = _own_functions(func) if version is not None else set()
        self.active: set[int] = set()  # callables being written: cycles
        self.classes: set[int] = set()  # classes whose contents are being written
        self.provisional = False  # read something that may change before the first call

    def callable(self, func: Any, out: list[bytes], where: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _Unidentifiable(f"{where} is nested too deeply (or refers to itself)")
        if id(func) in self.active:  # a callable reaching itself (its own cell): by name
            atom(b"\x01r", _qualname(func).encode(), out)
            return
        previous = getattr(_CURRENT, "identifier", None)
        _CURRENT.identifier = self
        self.active.add(id(func))
        try:
            self._callable(func, out, where, depth)
        finally:
            self.active.discard(id(func))
            _CURRENT.identifier = previous

    def _callable(self, func: Any, out: list[bytes], where: str, depth: int) -> None:
        kind = type(func)
        if issubclass(kind, functools.partial):
            out.append(b"\x01p")
            self.callable(func.func, out, f"the function of {where}", depth + 1)
            self.value(func.args, out, f"the bound arguments of {where}", depth)
            self.value(func.keywords, out, f"the bound keywords of {where}", depth)
            return
        if kind is types.MethodType:
            out.append(b"\x01m")
            self.provisional = True  # its instance may be set up after it is decorated
            self.callable(func.__func__, out, where, depth + 1)
            self.value(func.__self__, out, f"the instance of {where}", depth)
            return
        if _is_cached_wrapper(func):
            self.callable(func.__wrapped__, out, where, depth + 1)
            return
        if kind is types.FunctionType:
            self.function(func, out, depth)
        elif isinstance(func, type):
            self.cls(func, out, depth)
        elif kind is types.BuiltinFunctionType:
            encode(func, out, where, depth)  # by name (and the object it is bound to)
        else:  # an instance: its class, the code of its __call__, its state
            out.append(b"\x01i")
            self.provisional = True
            self.cls(kind, out, depth)
            call = getattr(kind, "__call__", None)  # noqa: B004  # the class's, not callable()
            if type(call) is types.FunctionType:
                self.function(call, out, depth + 1)
            self.checked(encode_reduced, func, out, f"the state of {where}", depth)
        wrapped = getattr(func, "__wrapped__", None)
        if wrapped is not None and callable(wrapped) and not isinstance(func, type):
            out.append(b"\x01w")
            self.callable(wrapped, out, f"what {where} wraps", depth + 1)

    def function(self, func: types.FunctionType, out: list[bytes], depth: int) -> None:
        out.append(b"\x01F")
        atom(b"s", _module_names(func)[1].encode(), out)
        atom(b"s", func.__qualname__.encode(), out)
        if id(func) not in self.own:  # a version= stands for the function's own code
            out.append(_code_bytes(func.__code__))
        if depth:  # the decorated function's own defaults are in its keys already
            self.value(func.__defaults__, out, f"the defaults of {func.__qualname__}", depth)
            self.value(func.__kwdefaults__, out, f"the defaults of {func.__qualname__}", depth)
        cells = func.__closure__ or ()
        out.append(len(cells).to_bytes(4, "big"))
        for name, cell in zip(func.__code__.co_freevars, cells, strict=True):
            atom(b"s", name.encode(), out)
            try:
                captured = cell.cell_contents
            except ValueError:  # bound later (a helper defined below, its own name)
                out.append(b"\x01e")
                self.provisional = True
                continue
            where = f"the closure variable {name!r} of {func.__qualname__}"
            self.value(captured, out, where, depth + 1)

    def cls(self, cls: type, out: list[bytes], depth: int) -> None:
        atom(b"\x01K", f"{_module_names(cls)[1]}:{cls.__qualname__}".encode(), out)
        if _is_global(cls) or id(cls) in self.classes:
            return  # a class its module names is its name, as in pickle
        # A class made by a function (a class statement, type(), namedtuple()...): two
        # calls may make two different classes of one name, so its contents are part of it.
        self.classes.add(id(cls))
        try:
            for base in cls.__bases__:
                self.cls(base, out, depth + 1)
            for name, attribute in sorted(vars(cls).items()):
                if name in _CLASS_NOISE:
                    continue
                if isinstance(attribute, staticmethod | classmethod):
                    attribute = attribute.__func__
                elif isinstance(attribute, property):
                    attribute = (attribute.fget, attribute.fset, attribute.fdel)
                elif type(attribute).__name__ in ("member_descriptor", "getset_descriptor"):
                    attribute = type(attribute).__name__  # a slot: its name is the key above
                atom(b"\x01a", name.encode(), out)
                self.value(attribute, out, f"{cls.__qualname__}.{name}", depth + 1)
        finally:
            self.classes.discard(id(cls))

    def value(self, value: Any, out: list[bytes], where: str, depth: int) -> None:
        if isinstance(value, types.ModuleType):
            atom(b"\x01D", value.__name__.encode(), out)
        elif _by_type(value):
            qualified(type(value), out)
        elif isinstance(value, tuple) and any(callable(item) for item in value):
            out.append(b"\x01T" + len(value).to_bytes(4, "big"))
            for i, item in enumerate(value):
                self.value(item, out, f"{where}[{i}]", depth + 1)
        elif isinstance(value, type):
            self.cls(value, out, depth + 1)
        elif callable(value):
            self.callable(value, out, where, depth + 1)
        else:
            self.checked(encode, value, out, where, depth)

    def checked(self, write: Any, value: Any, out: list[bytes], where: str, depth: int) -> None:
        part: list[bytes] = []
        try:
            write(value, part, where, depth + 1)
        except NestingError as exc:
            raise _Unidentifiable(f"{where} is nested too deeply (or refers to itself)") from exc
        except KeyBuildError as exc:
            if self.version is None:  # no version= names the function: never guess
                raise _Unidentifiable(
                    f"{where} is a {type(value).__qualname__}, which has no stable encoding"
                ) from exc
            qualified(type(value), out)  # version= given: the value counts by its type
            return
        out.extend(part)
