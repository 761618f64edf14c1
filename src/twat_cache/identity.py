"""Function identity: what makes two decorated callables the same function for a shared store.

A persistent or remote cache outlives the process and is shared with other processes, so
a function's entries must be found again by the same function, and never by another that
happens to share its name (two lambdas of a module, two closures of one factory, two
partials, two scripts' `__main__.load`). A callable's identity is:

- its module's real name: for `__main__`, the module run with ``-m``, else the script's
  path (a notebook has no stable name: its cells' file names change with every kernel);
- its qualified name;
- a digest of what it computes: its code (instructions, constants, names and nested code,
  but not line numbers, comments or docstrings), the values its closure captured (a
  function, class or module by its own identity, a function's own cell by name), a
  partial's function and bound arguments, an instance's class, `__call__` and state, and
  whatever a `functools.wraps` wrapper wraps.

`version=` replaces the code in that digest: the user names the function's version, and
edits to its code keep its entries. A captured value with no stable encoding is a
`ConfigurationError` when the function is decorated, unless `version=` is given (the
value is then identified by its type alone); locks, events, semaphores, conditions,
barriers and queues always are, since their state is not what a function computes.
Globals a function reads are not part of its identity (as with joblib): a value that
changes what it computes belongs in its arguments.
"""

from __future__ import annotations

import bisect
import dis
import functools
import hashlib
import os
import sys
import threading
import types
import weakref
from typing import Any

from twat_cache._report import WRAPPER_FILENAME_PREFIX
from twat_cache._stable import MAX_DEPTH, atom, encode, encode_reduced, qualified
from twat_cache.exceptions import ConfigurationError, KeyBuildError

__all__ = ["describe", "encode_local", "folder_names", "namespace"]

# Code flags that change what a call does; the others (CO_NESTED, CO_NOFREE...) say where
# the function was written.
_FLAGS = 0x04 | 0x08 | 0x20 | 0x80 | 0x100 | 0x200  # varargs, varkw, (async) generator...
_JUMPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs) | frozenset(getattr(dis, "hasjump", ()))
#: Instructions that do nothing (line-number placeholders): left out, so that a function
#: reformatted without changing what it does keeps its identity.
_SKIPPED_OPS = frozenset({"NOP", "CACHE", "EXTENDED_ARG"})
_CURRENT = threading.local()  # the identifier at work, for local functions met inside values


def _target(func: Any) -> Any:
    """The object whose module and name describe `func`: the function under partials and
    methods, the class of an instance."""
    while isinstance(func, functools.partial):
        func = func.func
    if isinstance(func, types.MethodType):
        func = func.__func__
    if isinstance(getattr(func, "__qualname__", None), str) or isinstance(func, type):
        return func
    return type(func)


def _main_names(code_file: str | None) -> tuple[str, str]:
    # (readable, unique) names of the module run as __main__.
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None) not in (None, "__main__"):
        return spec.name, spec.name  # python -m package.tool: its real name
    code_file = code_file or getattr(main, "__file__", None)
    if code_file and not code_file.startswith("<"):
        path = os.path.abspath(code_file)
        if not os.path.basename(os.path.dirname(path)).startswith("ipykernel_"):
            return os.path.splitext(os.path.basename(path))[0], f"__main__:{path}"
    return "__main__", "__main__"


def _module_names(obj: Any) -> tuple[str, str]:
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        return "?", "?"
    if module != "__main__":
        return module, module
    code = getattr(obj, "__code__", None)
    return _main_names(getattr(code, "co_filename", None))


def _qualname(func: Any) -> str:
    if isinstance(func, functools.partial):
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
    every process, with the script's path for a function of `__main__`."""
    readable, unique = _module_names(_target(func))
    qualname = _qualname(func)
    return f"{readable}.{qualname}", f"{unique}:{qualname}"


#: Namespaces already computed, per callable and version: a callable decorated again in
#: this process keeps the identity it had the first time, though a value it captured (a
#: list it appends to) has changed since.
_BY_IDENTITY = (types.FunctionType, functools.partial)
_KNOWN: weakref.WeakKeyDictionary[Any, dict[str | int | None, str]] = weakref.WeakKeyDictionary()


def namespace(func: Any, version: str | int | None) -> str:
    """The key namespace of `func` in a persistent or shared store: its readable name and
    a 128-bit digest of its identity, as it was when `func` was first decorated in this
    process. Raises `ConfigurationError` when a value it captured has no stable encoding
    and no `version` names it."""
    # Functions and partials hash by identity; another callable may call an equal one the
    # same, though its state differs: computed every time.
    known = _KNOWN.setdefault(func, {}) if isinstance(func, _BY_IDENTITY) else {}
    if version not in known:
        known[version] = _namespace(func, version)
    return known[version]


def _namespace(func: Any, version: str | int | None) -> str:
    out: list[bytes] = []
    readable, unique = _module_names(_target(func))
    atom(b"s", unique.encode(), out)
    if version is not None:
        atom(b"\x01v", f"{type(version).__name__}:{version}".encode(), out)
    identifier = _Identifier(code=version is None)
    try:
        identifier.callable(func, out, describe(func), 0)
    except _Unidentifiable as exc:
        raise ConfigurationError(
            f"cannot identify {describe(func)} for a persistent or shared cache: {exc}. "
            "Pass version='1' (and change it whenever what the function computes changes) "
            "to identify it yourself"
        ) from exc.__cause__
    digest = hashlib.blake2b(b"".join(out), digest_size=16).hexdigest()
    return f"{readable}.{_qualname(func)}@{digest}"


def encode_local(value: Any, out: list[bytes], where: str, depth: int) -> None:
    """The stable encoding of a local function or class (a lambda, a closure) met inside an
    argument or a captured value: its identity, as a decorated function's would be."""
    identifier = getattr(_CURRENT, "identifier", None) or _Identifier(code=True)
    try:
        identifier.callable(value, out, where, depth)
    except _Unidentifiable as exc:
        raise KeyBuildError(str(exc)) from exc.__cause__


def _coordinates(value: Any) -> bool:
    """Whether `value` only coordinates threads or tasks (a lock, an event, a semaphore, a
    condition, a barrier, a queue): a function capturing one is identified by its type."""
    cls = type(value)
    module = cls.__module__
    if module in ("_thread", "threading", "queue", "_queue"):
        return True
    return module.startswith("asyncio.") and cls.__name__ in _ASYNCIO_COORDINATION


_ASYNCIO_COORDINATION = frozenset(
    {"Lock", "Event", "Condition", "Semaphore", "BoundedSemaphore", "Barrier", "Queue"}
)


class _Unidentifiable(Exception):
    """A value inside a callable's identity has no stable encoding."""


def _is_cached_wrapper(func: Any) -> bool:
    # A wrapper twat-cache generated: identified by the function it wraps (its own code is
    # the same for every function of one signature, and its cells hold its counters).
    code = getattr(func, "__code__", None)
    return code is not None and code.co_filename.startswith(WRAPPER_FILENAME_PREFIX)


class _Identifier:
    """Writes a callable's identity into an encoding stream."""

    def __init__(self, *, code: bool) -> None:
        self.code = code  # False when a version= stands for the code (then values may fail)
        self.active: set[int] = set()  # functions and classes being written: cycles

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
        if isinstance(func, functools.partial):
            out.append(b"\x01p")
            self.callable(func.func, out, f"{where}'s function", depth + 1)
            self.value(func.args, out, f"{where}'s bound arguments", depth)
            self.value(func.keywords, out, f"{where}'s bound keywords", depth)
            return
        if isinstance(func, types.MethodType):
            out.append(b"\x01m")
            self.callable(func.__func__, out, where, depth + 1)
            self.value(func.__self__, out, f"{where}'s instance", depth)
            return
        if _is_cached_wrapper(func):
            self.callable(func.__wrapped__, out, where, depth + 1)
            return
        if isinstance(func, types.FunctionType):
            self.function(func, out, where, depth)
        elif isinstance(func, type):
            self.cls(func, out, where, depth)
        elif isinstance(func, types.BuiltinFunctionType):
            encode(func, out, where, depth)  # by name (and the object it is bound to)
        else:  # an instance: its class, the code of its __call__, its state
            out.append(b"\x01i")
            self.cls(type(func), out, where, depth)
            call = type(func).__call__
            if isinstance(call, types.FunctionType):
                self.function(call, out, f"{where}.__call__", depth + 1)
            self.checked(encode_reduced, func, out, f"{where}'s state", depth)
        wrapped = getattr(func, "__wrapped__", None)
        if wrapped is not None and not isinstance(func, type):
            out.append(b"\x01w")
            self.callable(wrapped, out, f"{where}.__wrapped__", depth + 1)

    def function(self, func: types.FunctionType, out: list[bytes], where: str, depth: int) -> None:
        out.append(b"\x01F")
        atom(b"s", _module_names(func)[1].encode(), out)
        atom(b"s", func.__qualname__.encode(), out)
        if self.code:
            self.code_of(func.__code__, out, depth)
        if depth:  # the decorated function's own defaults are in its keys already
            self.value(func.__defaults__, out, f"the defaults of {where}", depth)
            self.value(func.__kwdefaults__, out, f"the defaults of {where}", depth)
        cells = func.__closure__ or ()
        out.append(len(cells).to_bytes(4, "big"))
        for name, cell in zip(func.__code__.co_freevars, cells, strict=True):
            atom(b"s", name.encode(), out)
            try:
                captured = cell.cell_contents
            except ValueError:  # not bound yet (a decorated function's own name)
                out.append(b"\x01e")
                continue
            self.value(captured, out, f"the closure variable {name!r} of {where}", depth + 1)

    def cls(self, cls: type, out: list[bytes], where: str, depth: int) -> None:
        atom(b"\x01K", f"{_module_names(cls)[1]}:{cls.__qualname__}".encode(), out)
        if "<locals>" not in cls.__qualname__ or id(cls) in self.active:
            return  # a module-level class is its name, as in pickle
        # A class made by a function: two calls may make two different classes of one
        # name, so its methods and attributes are part of it.
        self.active.add(id(cls))
        try:
            for base in cls.__bases__:
                self.cls(base, out, where, depth + 1)
            for name, attribute in sorted(vars(cls).items()):
                if name.startswith("__") and name != "__call__":
                    continue
                if isinstance(attribute, staticmethod | classmethod):
                    attribute = attribute.__func__
                atom(b"\x01a", name.encode(), out)
                if isinstance(attribute, property):
                    attribute = (attribute.fget, attribute.fset, attribute.fdel)
                self.value(attribute, out, f"{cls.__qualname__}.{name}", depth + 1)
        finally:
            self.active.discard(id(cls))

    def value(self, value: Any, out: list[bytes], where: str, depth: int) -> None:
        if isinstance(value, types.ModuleType):
            atom(b"\x01D", value.__name__.encode(), out)
        elif isinstance(value, tuple) and any(callable(item) for item in value):
            out.append(b"\x01T" + len(value).to_bytes(4, "big"))
            for i, item in enumerate(value):
                self.value(item, out, f"{where}[{i}]", depth + 1)
        elif callable(value) and not isinstance(value, type):
            self.callable(value, out, where, depth + 1)
        elif isinstance(value, type):
            self.cls(value, out, where, depth + 1)
        else:
            self.checked(encode, value, out, where, depth)

    def checked(self, write: Any, value: Any, out: list[bytes], where: str, depth: int) -> None:
        if _coordinates(value):  # a lock's state is not what a function computes
            qualified(type(value), out)
            return
        part: list[bytes] = []
        try:
            write(value, part, where, depth + 1)
        except KeyBuildError as exc:
            if self.code:  # no version= names the function: never guess
                raise _Unidentifiable(
                    f"{where} is a {type(value).__qualname__}, which has no stable encoding"
                ) from exc
            qualified(type(value), out)  # version= given: the value counts by its type
            return
        out.extend(part)

    def code_of(self, code: types.CodeType, out: list[bytes], depth: int) -> None:
        out.append(b"\x01C")
        encode(
            (
                code.co_argcount,
                code.co_posonlyargcount,
                code.co_kwonlyargcount,
                code.co_flags & _FLAGS,
                code.co_varnames,
                code.co_freevars,
                code.co_cellvars,
            ),
            out,
            "code",
        )
        kept = [i for i in dis.get_instructions(code) if i.opname not in _SKIPPED_OPS]
        offsets = [i.offset for i in kept]
        out.append(len(kept).to_bytes(4, "big"))
        for instruction in kept:
            atom(b"\x01o", instruction.opname.encode(), out)
            argument = instruction.argval
            if instruction.opcode in _JUMPS and isinstance(argument, int):
                # Jump targets by instruction index: offsets move when placeholders do.
                encode(bisect.bisect_left(offsets, argument), out, "code")
            elif isinstance(argument, types.CodeType):
                self.code_of(argument, out, depth + 1)
            else:
                try:
                    encode(argument, out, "code", depth + 1)
                except KeyBuildError:
                    atom(b"s", instruction.argrepr.encode(), out)
        for entry in getattr(dis.Bytecode(code), "exception_entries", ()):
            where = [bisect.bisect_left(offsets, o) for o in (entry.start, entry.end, entry.target)]
            encode((*where, entry.depth, entry.lasti), out, "code")
