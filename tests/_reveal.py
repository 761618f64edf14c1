"""The user types the differential tests pass, and `reveal`: what a function sees of a value."""

from __future__ import annotations

import math
import re
import uuid
from collections import Counter, OrderedDict, defaultdict, namedtuple
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from enum import Enum, IntEnum
from fractions import Fraction
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ASYNC",
    "SYNC",
    "Caseless",
    "Color",
    "Level",
    "Other",
    "Pair",
    "Point",
    "Tone",
    "arevealed_pair",
    "arevealed_star",
    "reveal",
    "revealed_pair",
    "revealed_star",
]


# --- user types: module level, so that every process can pickle and name them ---------------


class Color(Enum):
    RED = 1
    GREEN = 2


class Level(IntEnum):
    LOW = 0
    HIGH = 1


class Tone(str, Enum):
    A = "a"
    B = "b"


Pair = namedtuple("Pair", "a b")
Other = namedtuple("Other", "a b")


@dataclass(frozen=True)
class Point:
    """A frozen dataclass: keyed by its equality (its fields, compared as a tuple)."""

    x: int
    label: str


class Caseless:
    """Text compared and hashed without regard to case: `Caseless("Ab") == Caseless("aB")`."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Caseless) and other.text.lower() == self.text.lower()

    def __hash__(self) -> int:
        return hash(self.text.lower())

    def __repr__(self) -> str:
        return f"Caseless({self.text!r})"

    def __reduce__(self) -> tuple[type[Caseless], tuple[str]]:
        return (Caseless, (self.text,))


# --- reveal: everything a function can observe of a value under the key rule ---------------


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _float(value: float) -> str:
    return "nan" if math.isnan(value) else float.hex(value)


def _zone(zone: tzinfo | None, offset: timedelta | None, tzname: str | None) -> Any:
    if zone is None:
        return "naive"
    return (_name(type(zone)), str(zone), str(offset), str(tzname))


def _unordered(parts: Iterator[Any]) -> tuple[Any, ...]:
    return tuple(sorted(parts, key=repr))


def _items(mapping: Any) -> Iterator[tuple[Any, Any]]:
    return ((reveal(k), reveal(v)) for k, v in mapping.items())


def _array(value: np.ndarray[Any, Any]) -> Any:
    head = (_name(type(value)), value.dtype.str, tuple(int(n) for n in value.shape))
    if value.dtype.kind == "O":
        return (*head, tuple(reveal(item) for item in value.reshape(-1)))
    return (*head, value.tobytes())


def reveal(value: Any) -> Any:
    """A canonical, picklable description of `value` (nested tuples of str, bytes and small
    ints): equal for two values exactly when the key rule says they may share an entry.

    The exact type at every node; floats by their bits (every NaN one token) and so the sign
    of zero; Decimal by its digits; order where the type's equality depends on it, none for
    dicts, sets and Counters; tzinfo (offset and name) and fold; a defaultdict's factory; a
    NumPy value's dtype, shape and bytes; a pandas object's values, index, columns, dtypes
    and names; a user class through its own equality, and no more.
    """
    cls = type(value)
    name = _name(cls)
    if cls is Caseless:
        return (name, value.text.lower())
    if cls is Point:
        return (name, reveal(value.x), reveal(value.label))
    if isinstance(value, Enum):
        return (name, value.name)
    if isinstance(value, np.ndarray):
        return _array(value)
    if isinstance(value, np.generic):
        return (name, value.dtype.str, value.tobytes())
    if isinstance(value, pd.DataFrame):
        columns = tuple(
            (str(value.dtypes.iloc[i]), reveal(value.iloc[:, i].to_numpy()))
            for i in range(value.shape[1])
        )
        return (name, reveal(value.columns), reveal(value.index), columns)
    if isinstance(value, pd.Series):
        return (
            name,
            str(value.dtype),
            reveal(value.name),
            reveal(value.index),
            reveal(value.to_numpy()),
        )
    if isinstance(value, pd.Index):
        return (name, str(value.dtype), reveal(value.name), reveal(value.to_numpy()))
    if cls in (bool, int, str, bytes, type(None)):
        return (name, value if cls in (str, bytes) else repr(value))
    if cls is bytearray:
        return (name, bytes(value))
    if cls is float:
        return (name, _float(value))
    if cls is complex:
        return (name, _float(value.real), _float(value.imag))
    if cls is Decimal:
        return (name, str(value))
    if cls is Fraction:
        return (name, str(value.numerator), str(value.denominator))
    if cls is datetime:
        naive = value.replace(tzinfo=None).isoformat()
        return (name, naive, value.fold, _zone(value.tzinfo, value.utcoffset(), value.tzname()))
    if cls is time:
        naive = value.replace(tzinfo=None).isoformat()
        return (name, naive, value.fold, _zone(value.tzinfo, value.utcoffset(), value.tzname()))
    if cls is date:
        return (name, value.isoformat())
    if cls is timedelta:
        return (name, value.days, value.seconds, value.microseconds)
    if cls is uuid.UUID:
        return (name, str(value))
    if isinstance(value, PurePath):
        return (name, str(value))
    if cls is re.Pattern:
        return (name, repr(value.pattern), value.flags)
    if cls is OrderedDict:
        return (name, tuple(_items(value)))
    if cls is defaultdict:
        factory = value.default_factory
        return (name, _name(factory) if factory else "None", _unordered(_items(value)))
    if cls in (dict, Counter):
        return (name, _unordered(_items(value)))
    if cls in (Pair, Other):
        return (name, value._fields, tuple(map(reveal, value)))
    if cls in (tuple, list):
        return (name, tuple(map(reveal, value)))
    if cls in (set, frozenset):
        return (name, _unordered(map(reveal, value)))
    raise TypeError(f"reveal() does not know {name}: add it, or do not generate it")


# The functions under test: what they return shows everything they saw of their arguments.


def revealed_star(*args: Any, **kwargs: Any) -> Any:
    return reveal((args, tuple(sorted(kwargs.items()))))


def revealed_pair(a: Any, b: Any = None) -> Any:
    return reveal((a, b))


async def arevealed_star(*args: Any, **kwargs: Any) -> Any:
    return revealed_star(*args, **kwargs)


async def arevealed_pair(a: Any, b: Any = None) -> Any:
    return revealed_pair(a, b)


SYNC: dict[str, Callable[..., Any]] = {"star": revealed_star, "pair": revealed_pair}
ASYNC: dict[str, Callable[..., Awaitable[Any]]] = {"star": arevealed_star, "pair": arevealed_pair}
