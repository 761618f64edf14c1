"""The identity digest of a callable: its code, captured values, wrapped functions, state.

`identity.py` states the rule; this module writes it into an encoding stream. Values are
written through the stable encoding (`_stable`), which hands every function or class it
meets back here (`current()`), so a callback inside a captured list counts with its code as
one captured directly does.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import threading
import types
from typing import Any

from twat_cache._names import is_global, module_names, qualname_of
from twat_cache._report import WRAPPER_FILENAME_PREFIX
from twat_cache._stable import (
    MAX_DEPTH,
    NestingError,
    atom,
    encode,
    encode_reduced,
    qualified,
)
from twat_cache.exceptions import KeyBuildError

__all__ = ["Identifier", "Unidentifiable", "current"]

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
    | {"asyncio.queues", "multiprocessing.synchronize", "multiprocessing.queues", "_abc"}
)
#: Class attributes that say nothing of what a class's instances compute (annotations and
#: dataclass fields are written in a form of their own, below).
_CLASS_NOISE = frozenset(
    {"__dict__", "__weakref__", "__module__", "__qualname__", "__doc__", "__firstlineno__"}
    | {"__static_attributes__", "__slots__", "__dataclass_params__", "__match_args__"}
    | {"__hash__", "__orig_bases__", "__parameters__", "_abc_impl"}
)
_CURRENT = threading.local()  # the identifier at work, for callables met inside values


class Unidentifiable(Exception):
    """A value inside a callable's identity has no stable encoding."""


def current() -> Identifier | None:
    """The identifier writing an identity in this thread, if any."""
    return getattr(_CURRENT, "identifier", None)


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


def _field(field: dataclasses.Field[Any]) -> tuple[Any, ...]:
    # What a dataclass field holds; serializers and validators read its metadata too.
    options = (field.init, field.repr, field.hash, field.compare, field.kw_only)
    return (repr(field.type), field.default, field.default_factory, options, field.metadata)


class Identifier:
    """Writes a callable's identity into an encoding stream."""

    def __init__(self, func: Any, version: str | int | None) -> None:
        self.version = version  # when given: the code of `own` and unencodable values drop
        self.own = _own_functions(func) if version is not None else set()
        self.active: set[int] = set()  # callables being written: cycles
        self.classes: set[int] = set()  # classes whose contents are being written
        self.unbound = False  # met a closure cell not bound yet (a helper defined below)

    def callable(self, func: Any, out: list[bytes], where: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise Unidentifiable(f"{where} is nested too deeply (or refers to itself)")
        if id(func) in self.active:  # a callable reaching itself (its own cell): by name
            atom(b"\x01r", qualname_of(func).encode(), out)
            return
        previous = current()
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
        elif kind is types.BuiltinFunctionType:  # by name, and the object it is bound to
            atom(b"G", f"{module_names(func)[1]}.{qualname_of(func)}".encode(), out)
            bound_to = func.__self__
            if bound_to is not None and not isinstance(bound_to, types.ModuleType):
                self.value(bound_to, out, f"the object of {where}", depth + 1)
        else:  # an instance: its class, the code of its __call__, its state
            out.append(b"\x01i")
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
        atom(b"s", module_names(func)[1].encode(), out)
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
                self.unbound = True
                continue
            where = f"the closure variable {name!r} of {func.__qualname__}"
            self.value(captured, out, where, depth + 1)

    def cls(self, cls: type, out: list[bytes], depth: int) -> None:
        if is_global(cls):  # a class its module holds is its name, as in pickle (and as an
            # argument's class is written: `_stable.kind` remembers those bytes)
            atom(b"G", f"{module_names(cls)[1]}.{cls.__qualname__}".encode(), out)
            return
        atom(b"\x01K", f"{module_names(cls)[1]}:{cls.__qualname__}".encode(), out)
        if id(cls) in self.classes:
            return
        # A class made at run time (a class statement in a function, type(), namedtuple()):
        # two calls may make two different classes of one name, so what it holds counts:
        # its metaclass, bases, methods and attributes, annotations and dataclass fields.
        self.classes.add(id(cls))
        try:
            for base in (type(cls), *cls.__bases__):
                self.cls(base, out, depth + 1)
            for name, attribute in sorted(vars(cls).items()):
                if name in _CLASS_NOISE:
                    continue
                if name == "__annotations__":
                    attribute = {key: repr(value) for key, value in attribute.items()}
                elif name == "__dataclass_fields__":
                    attribute = {key: _field(field) for key, field in attribute.items()}
                elif isinstance(attribute, staticmethod | classmethod):
                    attribute = attribute.__func__
                elif isinstance(attribute, property):
                    attribute = (attribute.fget, attribute.fset, attribute.fdel)
                elif isinstance(attribute, functools.cached_property):
                    attribute = attribute.func
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
        elif isinstance(value, type):
            self.cls(value, out, depth + 1)
        elif callable(value):
            self.callable(value, out, where, depth + 1)
        else:  # through the stable encoding, which hands callables inside it back here
            self.checked(encode, value, out, where, depth)

    def checked(self, write: Any, value: Any, out: list[bytes], where: str, depth: int) -> None:
        part: list[bytes] = []
        previous = current()
        _CURRENT.identifier = self
        try:
            write(value, part, where, depth + 1)
        except NestingError as exc:
            raise Unidentifiable(f"{where} is nested too deeply (or refers to itself)") from exc
        except KeyBuildError as exc:
            if self.version is None:  # no version= names the function: never guess
                raise Unidentifiable(
                    f"{where} is a {type(value).__qualname__}, which has no stable encoding"
                ) from exc
            qualified(type(value), out)  # version= given: the value counts by its type
            return
        finally:
            _CURRENT.identifier = previous
        out.extend(part)
