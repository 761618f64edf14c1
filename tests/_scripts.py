"""Call scripts for the differential tests: twins of a value, and pools of calls to make."""

from __future__ import annotations

import math
import uuid
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import strategies as st

from _arguments import FACTORIES, KEY_PLACES, PAIRS, PLACES, PLUS3, PLUS3_NAMED, VALUES, ZONES
from _reveal import Caseless, Level, Other, Pair, Point, reveal

__all__ = [
    "FORMS",
    "Call",
    "Script",
    "pairs_script",
    "scripts",
    "show",
    "variants",
]


# --- twins: values equal to (or easily confused with) a given one -------------------------------


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _number_twins(value: Any) -> list[Any]:
    cls = type(value)
    if cls is bool:
        return [int(value), float(value), Decimal(int(value)), np.bool_(value), Level(int(value))]
    if cls is int:
        small = -128 <= value <= 127
        return [
            float(value),
            Decimal(value),
            Fraction(value),
            complex(value),
            np.int64(value),
            *([np.int8(value)] if small else []),
            *([bool(value), Level(value)] if value in (0, 1) else []),
        ]
    if cls is float:
        if math.isnan(value):
            return [float("nan"), -value, np.float64(value), Decimal("NaN"), complex(value, 0)]
        twins = [-value if value == 0 else value, np.float64(value), complex(value, 0)]
        if math.isfinite(value):
            twins += [Decimal(value), Fraction(value)]
            if value.is_integer():
                twins.append(int(value))
        return twins
    if cls is Decimal:
        twins = [Decimal(str(value)), -value if value.is_zero() else value]
        if value.is_finite():
            twins += [value.quantize(Decimal("0.01")), value.normalize(), float(value)]
            if value == value.to_integral_value():
                twins.append(int(value))
        return twins
    if cls is Fraction:
        return [float(value), *([int(value)] if value.denominator == 1 else [])]
    if cls is complex:
        return [complex(value.real, -value.imag if value.imag == 0 else value.imag), value.real]
    return []


def _time_twins(value: Any) -> list[Any]:
    twins: list[Any] = []
    if type(value) is datetime:
        twins.append(value.replace(fold=1 - value.fold))
        if value.tzinfo is not None:
            twins += [value.astimezone(zone) for zone in ZONES[1:]]
        return twins
    if type(value) is time:
        twins.append(value.replace(fold=1 - value.fold))
        if value.tzinfo in (PLUS3, PLUS3_NAMED):
            twins.append(value.replace(tzinfo=PLUS3_NAMED if value.tzinfo is PLUS3 else PLUS3))
        return twins
    return []


def _numpy_twins(value: Any) -> list[Any]:
    if isinstance(value, np.generic):
        twins = [value.copy()]
        if value.dtype.kind in "biuf":
            twins.append(value.item())
        if value.dtype.kind in "iu":
            twins.append(np.float64(value))
        return twins
    twins = [value.copy(), np.asfortranarray(value)]
    kind = value.dtype.kind
    if kind in "iufc" and value.dtype.itemsize > 1:
        twins.append(value.astype(value.dtype.newbyteorder()))
    if kind in "biu":
        twins.append(value.astype(np.float64))
    if kind == "f":
        negated = value.copy()
        negated[negated == 0] = -0.0
        twins.append(negated)
    if value.ndim != 1:
        twins.append(value.reshape(-1))
    if value.ndim == 1:
        twins.append(value.reshape(1, -1))
    return twins


def _pandas_twins(value: Any) -> list[Any]:
    if isinstance(value, pd.Index):
        twins = [value.copy(), value.rename("other")]
        if isinstance(value, pd.RangeIndex):
            twins.append(pd.Index(list(value), dtype="int64"))
        elif value.dtype.kind == "i" and list(value) == list(range(len(value))):
            twins.append(pd.RangeIndex(len(value)))
        return twins
    twins = [value.copy(), value.set_axis(list(value.index))]
    if isinstance(value, pd.Series):
        twins.append(value.rename("other"))
        if value.dtype.kind in "iub":
            twins.append(value.astype("float64"))
    else:
        twins.append(value.set_axis(list(value.columns), axis=1))
        if all(dtype.kind in "iu" for dtype in value.dtypes):
            twins.append(value.astype("float64"))
    return twins


def _remap(value: Any, items: list[tuple[Any, Any]]) -> Any:
    """A mapping of `value`'s own type (and default factory) holding `items`."""
    if type(value) is defaultdict:
        return defaultdict(value.default_factory, items)
    return type(value)(dict(items)) if type(value) is Counter else type(value)(items)


def _container_twins(value: Any) -> list[Any]:
    """Containers with the same items in another container or order, or with one item
    replaced by a twin of it."""
    cls = type(value)
    twins: list[Any] = []
    if cls in (dict, OrderedDict, defaultdict, Counter):
        items = list(value.items())
        twins += [dict(items), dict(items[::-1]), OrderedDict(items), OrderedDict(items[::-1])]
        twins += [defaultdict(factory, items) for factory in FACTORIES]
        if all(type(v) is int for _, v in items):
            twins += [Counter(dict(items)), Counter({**dict(items), "zero": 0})]
        for i, (k, v) in enumerate(items):
            replaced = [(k, t) for t in variants(v)]
            replaced += [(t, v) for t in variants(k) if _hashable(t)]
            if replaced:
                twins += [_remap(value, [*items[:i], new, *items[i + 1 :]]) for new in replaced[:4]]
                break
    elif cls in (set, frozenset):
        twins += [set(value), frozenset(value)]
        # In a canonical order: the iteration order of a set holding NaNs varies by run, and
        # hypothesis needs the same choices each time it rebuilds a value.
        for item in sorted(value, key=lambda item: repr(reveal(item))):
            alike = [t for t in variants(item) if _hashable(t)]
            if alike:
                rest = [other for other in value if other is not item]
                twins += [cls([*rest, t]) for t in alike[:4]]
                break
    elif cls in (tuple, list, Pair, Other):
        items = list(value)
        twins += [tuple(items), list(items)]
        if len(items) == 2:
            twins += [Pair(*items), Other(*items)]
        for i, item in enumerate(items):
            alike = variants(item)
            if alike:
                make = cls._make if cls in (Pair, Other) else cls
                twins += [make([*items[:i], t, *items[i + 1 :]]) for t in alike[:4]]
                break
    return twins


def variants(value: Any) -> list[Any]:
    """Values a cache could confuse with `value`: equal to it yet told apart by a function
    (0.0 and -0.0, OrderedDicts in another order, one instant in two time zones...), equal
    and not told apart (a copy: a hit), or close to it in form (a tuple and a list)."""
    cls = type(value)
    if isinstance(value, Enum):
        return [value.value]
    if isinstance(value, np.ndarray | np.generic):
        return _numpy_twins(value)
    if isinstance(value, pd.Series | pd.DataFrame | pd.Index):
        return _pandas_twins(value)
    if cls in (bool, int, float, Decimal, Fraction, complex):
        return _number_twins(value)
    if cls in (datetime, time):
        return _time_twins(value)
    if cls is str:
        return [np.str_(value), value.swapcase(), Caseless(value)]
    if cls in (bytes, bytearray):
        return [bytes(value), bytearray(value)]
    if cls is Caseless:
        return [Caseless(value.text.swapcase()), Caseless(value.text)]
    if cls is Point:
        return [Point(value.x, value.label), Point(value.x, value.label.swapcase())]
    if isinstance(value, PurePath):
        text = str(value)
        return [PurePosixPath(text), Path(text), PureWindowsPath(text.swapcase())]
    if cls is uuid.UUID:
        return [uuid.UUID(str(value))]
    return _container_twins(value)


# --- scripts: a pool of calls and an order to make them in -----------------------------------

Call = tuple[str, tuple[Any, ...], dict[str, Any]]  # (function, args, kwargs)

#: How a pair of values (x, y) is passed: to `star(*args, **kwargs)` or `pair(a, b=None)`.
FORMS: list[Callable[[Any, Any], Call]] = [
    lambda x, y: ("star", (x,), {}),
    lambda x, y: ("star", (x, y), {}),
    lambda x, y: ("star", (x,), {"k": y}),
    lambda x, y: ("star", (), {"k": x, "j": y}),
    lambda x, y: ("star", (), {"j": y, "k": x}),
    lambda x, y: ("pair", (x, y), {}),
    lambda x, y: ("pair", (x,), {"b": y}),
    lambda x, y: ("pair", (), {"b": y, "a": x}),
    lambda x, y: ("pair", (x,), {}),
]


@dataclass
class Script:
    """Calls to make: `calls[i]` for each `i` of `order` (each call at least once, in order,
    then repeats)."""

    calls: list[Call]
    order: list[int]

    def __repr__(self) -> str:
        lines = [f"  #{i}: {show(call)}" for i, call in enumerate(self.calls)]
        return "Script(order=" + repr(self.order) + ", calls=\n" + "\n".join(lines) + ")"


@st.composite
def _twin(draw: st.DrawFn, value: Any) -> Any:
    alike = variants(value)
    return draw(st.sampled_from(alike)) if alike else value


@st.composite
def scripts(draw: st.DrawFn, entries: int = 5) -> Script:
    """A pool of calls, then the pool called in a random order, with repeats.

    The pool: calls with random arguments, each followed by one to three near twins of it
    (an argument replaced by a twin of it, or the same arguments passed another way), and
    calls with one of `PAIRS` in place, one value after the other."""
    calls: list[Call] = []
    for _ in range(draw(st.integers(1, entries))):
        y, form = draw(VALUES), draw(st.integers(0, len(FORMS) - 1))
        if draw(st.integers(0, 2)) == 0:  # one of the pairs, in place in an argument
            first, second = draw(st.sampled_from(PAIRS))
            hashable = _hashable(first) and _hashable(second)
            place = draw(st.sampled_from(PLACES + KEY_PLACES if hashable else PLACES))
            calls.append(FORMS[form](place(first), y))
            calls.append(FORMS[form](place(second), y))
            continue
        x = draw(VALUES)
        calls.append(FORMS[form](x, y))
        for _ in range(draw(st.integers(1, 3))):
            which = draw(st.integers(0, 3))
            if which <= 1:
                calls.append(FORMS[form](draw(_twin(x)), y))
            elif which == 2:
                calls.append(FORMS[form](x, draw(_twin(y))))
            else:
                calls.append(FORMS[draw(st.integers(0, len(FORMS) - 1))](x, y))
    count = len(calls)
    repeats = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=2 * count))
    return Script(calls, list(range(count)) + repeats)


def pairs_script() -> Script:
    """Every one of `PAIRS`, each value alone and in a place in an argument, passed in
    another way for each pair, then all the calls again (hits): run before the generated
    scripts, so that every pair is checked on every engine whatever hypothesis draws."""
    calls: list[Call] = []
    for i, (first, second) in enumerate(PAIRS):
        alone, placed = FORMS[i % len(FORMS)], FORMS[(i + 1) % len(FORMS)]
        places = PLACES + KEY_PLACES if _hashable(first) and _hashable(second) else PLACES
        place = places[i % len(places)]
        calls += [alone(first, i), alone(second, i), placed(place(first), i)]
        calls.append(placed(place(second), i))
    order = list(range(len(calls)))
    return Script(calls, order + order)


def show(call: Call, width: int = 240) -> str:
    function, args, kwargs = call
    text = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    text = " ".join(text.split())
    return f"{function}({text if len(text) <= width else text[: width - 3] + '...'})"
