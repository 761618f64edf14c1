"""Cache keys: fast typed in-process keys, and stable digests shared across processes."""

from __future__ import annotations

import hashlib
import math
import pickle
import struct
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from decimal import Decimal
from types import MethodType, ModuleType
from typing import Any

from twat_cache.exceptions import KeyBuildError

__all__ = [
    "FAST_TYPES",
    "IDENTITY_CLASSES",
    "KEY_VERSION",
    "Ident",
    "make_normalizer",
    "self_key",
    "stable_digest",
    "stable_key_builder",
]

#: Types whose values are their own key: they are hashable, and no value of one of these
#: types ever compares equal to a value of another (unlike 1 == 1.0 == True).
FAST_TYPES: frozenset[type] = frozenset({int, str, bytes, type(None)})
_UNTYPED_FAST: frozenset[type] = FAST_TYPES | {float, bool}

#: Bumped whenever the stable encoding changes, so old persistent entries become misses.
KEY_VERSION = "k1"


class _Tag:
    """A private marker heading a converted value; no user value can equal it."""

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"<{self.label}>"


_PICKLED = _Tag("pickled")
_TUPLE = _Tag("tuple")
_LIST = _Tag("list")
_MAP = _Tag("map")
_SET = _Tag("set")
_COUNTED = _Tag("counted")


class Ident:
    """Keys an object by identity and keeps it alive, so its id cannot be reused while keyed."""

    __slots__ = ("_hash", "obj")

    def __init__(self, obj: object) -> None:
        self.obj = obj
        self._hash = id(obj)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return type(other) is Ident and other.obj is self.obj

    def __repr__(self) -> str:
        return f"Ident({type(self.obj).__name__} at {self._hash:#x})"


_object_eq = object.__eq__
_object_hash = object.__hash__
#: Classes whose instances hash and compare by identity; filled as they are met, so the
#: hit path pays one set lookup. Holds the classes strongly, as their methods' code does.
IDENTITY_CLASSES: set[type] = set()


def self_key(obj: object) -> object:
    """The key part for a method's instance: the instance itself when its class hashes and
    compares by identity (the common case, and the fastest), else an `Ident`, so that two
    instances that compare equal never share an entry and unhashable ones still work."""
    cls = type(obj)
    if cls.__eq__ is _object_eq and cls.__hash__ is _object_hash:
        IDENTITY_CLASSES.add(cls)
        return obj
    return Ident(obj)


def make_normalizer(typed: bool = True) -> Callable[[Any], Hashable]:
    """Build the function turning one argument into a hashable, collision-free key part.

    Typed (the default): `1`, `1.0`, `True`, `"1"` and `b"1"` give five different parts,
    `-0.0` differs from `0.0` (in NumPy scalars too), `Decimal("1")` from `Decimal("1.00")`,
    and containers are converted recursively (lists, dicts and
    sets work; dicts and sets ignore order). Untyped: values equal by `==` share a part.

    >>> norm = make_normalizer()
    >>> norm(1) != norm(1.0) != norm(True)
    True
    >>> norm({"b": [2], "a": 1}) == norm({"a": 1, "b": [2]})
    True
    """
    fast = FAST_TYPES if typed else _UNTYPED_FAST
    seq_tag: Any = tuple if typed else _TUPLE
    list_tag: Any = list if typed else _LIST
    map_tag: Any = dict if typed else _MAP

    # Exact-type tests come first and parts of fast types are inlined: this runs on every
    # call with a container argument, and each Python call it saves is measurable.
    # A tuple of fast values is its own part: it cannot equal a converted value, which
    # is a (tag, payload) pair whose tag is a type or a private marker.

    def items(value: Any) -> tuple[Hashable, ...]:
        for item in value:
            if type(item) not in fast:
                return tuple([i if type(i) in fast else norm(i) for i in value])
        return tuple(value)

    def pairs(value: Mapping[Any, Any]) -> Hashable:
        # A loop, not a comprehension: before Python 3.12 a comprehension is a frame.
        parts = []
        for k, v in value.items():
            parts.append((k if type(k) in fast else norm(k), v if type(v) in fast else norm(v)))
        unique = frozenset(parts)
        return unique if len(unique) == len(parts) else counted(parts)

    def members(value: Any) -> Hashable:
        parts = list(map(norm, value))
        unique = frozenset(parts)
        return unique if len(unique) == len(parts) else counted(parts)

    def counted(parts: list[Any]) -> Hashable:
        # Distinct members that normalize alike (NaN objects, which are unequal to each
        # other): keep how many there were, so {nan_a, nan_b} is not {nan_a}.
        return (_COUNTED, frozenset(Counter(parts).items()))

    def norm(value: Any) -> Hashable:
        cls = type(value)
        if cls in fast:
            return value  # type: ignore[no-any-return]  # a fast type is hashable
        if cls is tuple:
            for item in value:
                if type(item) not in fast:
                    return (seq_tag, items(value))
            return value  # type: ignore[no-any-return]  # a tuple of fast values
        if cls is list:
            for item in value:
                if type(item) not in fast:
                    return (list_tag, items(value))
            return (list_tag, tuple(value))
        if cls is dict:
            return (map_tag, pairs(value))
        if cls is float:  # typed only: hex() tells -0.0 from 0.0 and makes every NaN one key
            return (float, value.hex())
        if cls is bool:
            return (bool, value)
        if cls is complex and typed:
            return (complex, (value.real.hex(), value.imag.hex()))
        if isinstance(value, tuple):
            return (cls if typed else _TUPLE, items(value))
        if isinstance(value, list):
            return (cls if typed else _LIST, items(value))
        if isinstance(value, dict):
            return (cls if typed else _MAP, pairs(value))
        if isinstance(value, set | frozenset):
            return (cls if typed else _SET, members(value))
        if typed:
            # Values that compare equal although a function can tell them apart:
            # float subclasses (numpy.float64) -0.0 and 0.0, Decimal('1') and
            # Decimal('1.00'), and NumPy scalars of any kind.
            if isinstance(value, float):
                return (cls, float.hex(value))
            if cls is Decimal:
                return (cls, value.as_tuple())
            if cls.__module__ == "numpy" and getattr(value, "dtype", None) is not None:
                dtype = value.dtype
                if dtype.kind != "O":  # object arrays hold pointers: pickled below
                    return (cls, str(dtype), value.shape, value.tobytes())
        try:
            hash(value)
        except TypeError:
            # The Mapping ABC check is slow, so it runs only for unhashable values.
            if isinstance(value, Mapping):
                return (cls if typed else _MAP, pairs(value))
            return _pickled(value)
        return (cls, value) if typed else value

    return norm


def _pickled(value: Any) -> Hashable:
    # An unhashable object outside the known containers: its pickle is a faithful,
    # content-based key (two arrays equal in summary but not in content differ).
    try:
        return (_PICKLED, type(value), pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        raise KeyBuildError(
            f"cannot build a cache key from an unhashable, unpicklable "
            f"{type(value).__name__} argument: pass key= or ignore= for it ({exc})"
        ) from exc


# --- stable keys -----------------------------------------------------------------------
#
# A canonical, injective byte encoding: every value is written as a one-byte tag followed
# by a length-prefixed payload, containers as a count followed by their items; the items
# of sets and mappings are encoded separately and sorted by their bytes, so the result
# does not depend on insertion order or PYTHONHASHSEED.

_LEN = struct.Struct(">Q")
_ATOMS: dict[type, bytes] = {type(None): b"N", bool: b"?", int: b"i", str: b"s", bytes: b"b"}


def _atom(tag: bytes, payload: bytes, out: list[bytes]) -> None:
    out.append(tag)
    out.append(_LEN.pack(len(payload)))
    out.append(payload)


def _encode(value: Any, out: list[bytes], where: str, depth: int) -> None:
    if depth > 200:
        raise KeyBuildError(f"argument {where} is nested too deeply (or refers to itself)")
    cls = type(value)
    tag = _ATOMS.get(cls)
    if tag is not None:
        if cls is str:
            payload = value.encode("utf-8", "surrogatepass")
        elif cls is bytes:
            payload = value
        elif cls is int:  # bytes, not repr: repr refuses ints past 4300 digits
            payload = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
        else:
            payload = repr(value).encode()
        _atom(tag, payload, out)
        return
    if cls is float:
        _atom(b"f", (value.hex() if not math.isnan(value) else "nan").encode(), out)
        return
    if cls is complex:
        _atom(b"c", f"{value.real.hex()},{value.imag.hex()}".encode(), out)
        return
    if cls is bytearray:
        _atom(b"B", bytes(value), out)
        return
    if isinstance(value, tuple | list):
        out.append(b"T" if isinstance(value, tuple) else b"L")
        _qualname(cls, out)
        out.append(_LEN.pack(len(value)))
        for i, item in enumerate(value):
            _encode(item, out, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        items = sorted(
            _encode_bytes(k, f"{where} key", depth) + _encode_bytes(v, f"{where}[{k!r}]", depth)
            for k, v in value.items()
        )
        out.append(b"M")
        _qualname(cls, out)
        out.append(_LEN.pack(len(items)))
        out.extend(items)
        return
    if isinstance(value, set | frozenset):
        members = sorted(_encode_bytes(v, f"{where} member", depth) for v in value)
        out.append(b"S")
        _qualname(cls, out)
        out.append(_LEN.pack(len(members)))
        out.extend(members)
        return
    if isinstance(value, MethodType):  # a bound method: its instance is part of its identity
        out.append(b"m")
        _encode(value.__func__, out, where, depth + 1)
        _encode(value.__self__, out, where, depth + 1)
        return
    bound_to = getattr(value, "__self__", None)
    if bound_to is not None and callable(value) and not isinstance(bound_to, ModuleType):
        # A builtin bound method ("a".upper, {}.get): its object is part of its identity.
        out.append(b"n")
        _atom(b"s", f"{type(bound_to).__qualname__}.{value.__name__}".encode(), out)
        _encode(bound_to, out, where, depth + 1)
        return
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        name = _global_name(value, where)
        _atom(b"G", name.encode(), out)
        return
    _encode_reduced(value, out, where, depth)


def _encode_bytes(value: Any, where: str, depth: int) -> bytes:
    part: list[bytes] = []
    _encode(value, part, where, depth + 1)
    return b"".join(part)


def _qualname(cls: type, out: list[bytes]) -> None:
    _atom(b"t", f"{cls.__module__}.{cls.__qualname__}".encode(), out)


def _global_name(value: Any, where: str) -> str:
    module = getattr(value, "__module__", None) or "?"
    qualname = value.__qualname__
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise KeyBuildError(
            f"argument {where} is {qualname}, which has no name stable across processes: "
            "pass key= or ignore= for it"
        )
    return f"{module}.{qualname}"


def _encode_reduced(value: Any, out: list[bytes], where: str, depth: int) -> None:
    # Any other object is encoded through its pickle reduction (constructor and state),
    # canonically, so an object whose repr is `<X object at 0x...>` still gets a key that is
    # the same in every process, and a set inside its state is ordered canonically.
    try:
        reduced = value.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise KeyBuildError(
            f"argument {where} ({type(value).__name__}) cannot be pickled, so it has no key "
            f"stable across processes: pass key= or ignore= for it ({exc})"
        ) from exc
    if isinstance(reduced, str):  # a global singleton, pickled by name
        _atom(b"G", f"{type(value).__module__}.{reduced}".encode(), out)
        return
    out.append(b"R")
    _qualname(type(value), out)
    parts = list(reduced[:5]) + [None] * (5 - len(reduced[:5]))
    constructor, args, state, list_items, dict_items = parts
    _encode(constructor, out, f"{where} constructor", depth + 1)
    _encode(args, out, where, depth + 1)
    _encode(state, out, where, depth + 1)
    _encode(list(list_items) if list_items is not None else None, out, where, depth + 1)
    _encode(dict(dict_items) if dict_items is not None else None, out, where, depth + 1)


def stable_key_builder(
    namespace: str, names: tuple[str, ...] = ()
) -> Callable[[tuple[Any, ...], Mapping[str, Any] | None], str]:
    """The stable-key function of one cached function: `stable_digest` with the namespace
    encoded once, and str and int arguments (the common case) encoded inline.

    >>> build = stable_key_builder("mod.f", ("x",))
    >>> build((1,), None) == stable_digest("mod.f", (1,))
    True
    """
    head = b"".join((namespace.encode(), b"\0", KEY_VERSION.encode(), b"\0"))
    prefix = f"{namespace}:{KEY_VERSION}:"
    pack = _LEN.pack
    blake2b = hashlib.blake2b

    def build(args: tuple[Any, ...], kwargs: Mapping[str, Any] | None) -> str:
        out = [head, pack(len(args))]
        for i, value in enumerate(args):
            cls = type(value)
            if cls is str:
                data = value.encode("utf-8", "surrogatepass")
                out += (b"s", pack(len(data)), data)
            elif cls is int:
                data = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
                out += (b"i", pack(len(data)), data)
            else:
                _encode(value, out, names[i] if i < len(names) else f"#{i}", 0)
        if kwargs:
            _encode(dict(kwargs), out, "**kwargs", 0)
        return prefix + blake2b(b"".join(out), digest_size=20).hexdigest()

    return build


def stable_digest(
    namespace: str,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None = None,
    *,
    names: tuple[str, ...] = (),
) -> str:
    """A key identical in every process: ``namespace:version:digest`` (160-bit BLAKE2b).

    `names` labels the positional values in error messages (the parameter names).

    >>> stable_digest("mod.f", (1, {"b", "a"})) == stable_digest("mod.f", (1, {"a", "b"}))
    True
    """
    return stable_key_builder(namespace, names)(args, kwargs)
