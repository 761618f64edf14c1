"""Cache keys: fast typed in-process keys, and stable digests shared across processes.

What a key is, for every engine: two calls share an entry only when their arguments are
equal, of the same types, and print the same, element by element in containers; a user
class is keyed by its own equality (docs/keys.md states the rule). In-process keys are
built here; the stable encoding of persistent and shared keys lives in `_stable`.
"""

from __future__ import annotations

import functools
import pickle
from collections import ChainMap, Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime, time, timezone
from decimal import Decimal
from pathlib import PosixPath, PurePath, PurePosixPath, PureWindowsPath, WindowsPath
from types import MappingProxyType
from typing import Any

from twat_cache._stable import KEY_VERSION, stable_digest, stable_key_builder
from twat_cache.exceptions import KeyBuildError

__all__ = [
    "FAST_TYPES",
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


_object_hash = object.__hash__


def self_key(obj: object) -> object:
    """The key part for a method's instance: the instance itself when its class hashes by
    identity (the common case, and the fastest: distinct live instances never hash alike,
    so they never share an entry, whatever their `__eq__`, even one assigned later), else
    an `Ident`, so that instances hashing alike never share an entry and unhashable ones
    still work. The wrapper inlines the same test (`_wrap._part`); nothing is remembered
    of the classes met, so a class made at run time is free to go."""
    if type(obj).__hash__ is _object_hash:
        return obj
    return Ident(obj)


def _tz_part(tz: Any) -> Hashable:
    # Timezones compare by offset alone (timezone.utc == timezone(timedelta(0), "Z")), yet
    # a function formatting a datetime prints their names: the key holds what prints.
    if tz is None:
        return None
    if type(tz) is timezone:
        return (timezone, tz.__getinitargs__())  # type: ignore[attr-defined]  # in C, untyped
    return (type(tz), tz, repr(tz))


def _moment(value: datetime | time) -> Hashable:
    # Equal instants in two timezones compare equal, and fold never takes part in equality;
    # a function can print both, so both are in the key.
    return (type(value), value, _tz_part(value.tzinfo), value.fold)


def _plain(value: Any) -> Hashable:
    return (type(value), value)


_ORDERED_EQ = OrderedDict.__eq__
_MAPPING_EQ: Any = Mapping.__eq__
#: The container equality a class inherits, when it is a built-in one: how its values are
#: converted. A subclass defining its own __eq__ is keyed by that equality instead.
_CONTAINER_EQ: dict[Any, str] = {
    tuple.__eq__: "sequence",
    list.__eq__: "sequence",
    deque.__eq__: "sequence",
    dict.__eq__: "mapping",
    Counter.__eq__: "mapping",  # exact counts: Counter() and Counter(a=0) print apart
    _ORDERED_EQ: "ordered",
    set.__eq__: "set",
    frozenset.__eq__: "set",
}


def make_normalizer(typed: bool = True) -> Callable[[Any], Hashable]:
    """Build the function turning one argument into a hashable, collision-free key part.

    Typed (the default), two values share a part only when they are equal, of the same
    type, and print the same: `1`, `1.0`, `True`, `"1"` and `b"1"` give five parts, `-0.0`
    differs from `0.0` (in NumPy scalars too), `Decimal("1")` from `Decimal("1.00")`,
    datetimes by timezone and fold, a defaultdict by its factory, an OrderedDict by its
    order, and containers apply the rule to their elements (dicts and sets ignore order).
    Other classes are keyed by their own equality (hashable ones) or their content (the
    others). Untyped: values of different types equal by `==` share a part.

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

    def ordered(value: Mapping[Any, Any]) -> Hashable:
        parts = []
        for k, v in value.items():
            parts.append((k if type(k) in fast else norm(k), v if type(v) in fast else norm(v)))
        return tuple(parts)

    def members(value: Any) -> Hashable:
        parts = list(map(norm, value))
        unique = frozenset(parts)
        return unique if len(unique) == len(parts) else counted(parts)

    def counted(parts: list[Any]) -> Hashable:
        # Distinct members that normalize alike (NaN objects, which are unequal to each
        # other): keep how many there were, so {nan_a, nan_b} is not {nan_a}.
        return (_COUNTED, frozenset(Counter(parts).items()))

    def container(value: Any, cls: type, kind: str) -> Hashable:
        if kind == "sequence":
            tag = cls if typed or cls is deque else (_TUPLE if isinstance(value, tuple) else _LIST)
            if isinstance(value, deque):  # maxlen prints, and decides what appends drop
                return (tag, items(value), value.maxlen)
            return (tag, items(value))
        if kind == "set":
            return (cls if typed else _SET, members(value))
        if kind == "ordered":
            return (cls, ordered(value))
        if isinstance(value, defaultdict):  # the factory decides what a missing key reads
            return (cls, norm(value.default_factory), pairs(value))
        return (cls if typed or cls is Counter else _MAP, pairs(value))

    exact: dict[type, Callable[[Any], Hashable]] = {
        datetime: _moment,
        time: _moment,
        timezone: _tz_part,
        range: lambda v: (range, v.start, v.stop, v.step),
        # Equal to the merged mapping, yet it prints (and writes to) its maps one by one.
        ChainMap: lambda v: (ChainMap, tuple(map(norm, v.maps))),
        MappingProxyType: lambda v: (MappingProxyType, norm(v.copy())),  # as what it shows
        bytearray: lambda v: (bytearray, bytes(v)),
        memoryview: lambda v: (memoryview, v.format, v.shape, v.tobytes()),
        PurePosixPath: lambda v: (type(v), str(v)),  # str, not ==: Windows paths ignore case
        PureWindowsPath: lambda v: (type(v), str(v)),
        PosixPath: lambda v: (type(v), str(v)),
        WindowsPath: lambda v: (type(v), str(v)),
    }
    for cls, kind in (
        (set, "set"),
        (frozenset, "set"),
        (OrderedDict, "ordered"),
        (defaultdict, "mapping"),
        (Counter, "mapping"),
        (deque, "sequence"),
    ):
        exact[cls] = functools.partial(container, cls=cls, kind=kind)
    if typed:
        exact[complex] = lambda v: (complex, (v.real.hex(), v.imag.hex()))
        exact[Decimal] = lambda v: (Decimal, v.as_tuple())

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
        convert = exact.get(cls)
        if convert is not None:
            return convert(value)
        return other(value, cls)

    def other(value: Any, cls: type) -> Hashable:
        # Subclasses, NumPy and pandas values, and user classes (the slow path).
        if typed:
            if isinstance(value, float):  # numpy.float64 -0.0 and 0.0
                return (cls, float.hex(value))
            if isinstance(value, Decimal):
                return (cls, value.as_tuple())
            if cls.__module__.partition(".")[0] in ("numpy", "pandas"):
                part: Hashable = _arrays().memory_part(value, norm)
                if part is not None:
                    return part
        if typed and isinstance(value, complex):
            return (cls, (value.real.hex(), value.imag.hex()))
        if isinstance(value, datetime | time):  # pandas.Timestamp among others
            return _moment(value)
        if isinstance(value, PurePath):
            return (cls, str(value))
        kind = _CONTAINER_EQ.get(cls.__eq__)
        if kind is not None:  # a subclass keeping its base's equality: converted alike
            return container(value, cls, kind)
        try:
            hash(value)
        except TypeError:
            # Unhashable with an equality of its own: keyed by its content (its pickle),
            # which is never looser than its equality. The Mapping ABC check is slow, so
            # it runs only for unhashable values.
            if isinstance(value, Mapping) and cls.__eq__ is _MAPPING_EQ:
                return (cls if typed else _MAP, pairs(value))
            return _pickled(value)
        return (cls, value) if typed else value

    return norm


def _arrays() -> Any:
    # Imported on first use: NumPy and pandas arguments exist only once the user has them.
    from twat_cache import _arrays as module

    return module


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
