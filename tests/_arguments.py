"""The argument values of the differential tests: constants, hypothesis strategies, pairs."""

from __future__ import annotations

import math
import re
import uuid
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from fractions import Fraction
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from _reveal import Caseless, Color, Level, Other, Pair, Point, Tone

__all__ = [
    "ARRAYS",
    "ATOMS",
    "BERLIN",
    "COMPLEX",
    "DECIMALS",
    "DTYPES",
    "FACTORIES",
    "FLOATS",
    "HASHABLES",
    "KEY_PLACES",
    "NEW_YORK",
    "NUMBERS",
    "NUMPY_SCALARS",
    "PAIRS",
    "PANDAS",
    "PATH_TEXTS",
    "PATH_TYPES",
    "PATTERNS",
    "PLACES",
    "PLUS3",
    "PLUS3_NAMED",
    "SHAPES",
    "TEXTS",
    "UUIDS",
    "VALUES",
    "WALL_TIMES",
    "ZONES",
]


# --- values ------------------------------------------------------------------------------------

PLUS3 = timezone(timedelta(hours=3))
PLUS3_NAMED = timezone(timedelta(hours=3), "Moscow")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
ZONES: list[tzinfo | None] = [None, timezone.utc, PLUS3, PLUS3_NAMED, BERLIN, NEW_YORK]
#: Wall times: ordinary ones, one repeated in New York (fold matters) and one skipped in Berlin.
WALL_TIMES = [
    datetime(2021, 11, 7, 1, 30),
    datetime(2024, 3, 31, 2, 30),
    datetime(2000, 1, 1),
    datetime(2024, 6, 1, 12, 0, 0, 250),
]
DECIMALS = ["0", "-0", "0.0", "1", "1.0", "1.00", "-1", "2.5", "1E+2", "100", "NaN", "-NaN", "Inf"]
FLOATS = [0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, 1.0, 0.5, -2.0, 5e-324, 1e300]
COMPLEX = [
    0j,
    complex(0, -0.0),
    complex(-0.0, 0),
    1 + 0j,
    1j,
    complex(math.nan, 0),
    complex(math.inf, 1),
]
TEXTS = st.text(alphabet="aAbß\x00é\U0001f600\ud800 ", max_size=3)
PATH_TEXTS = ["a", "A", "a/b", "A/B", "/tmp/x", ""]
PATH_TYPES: list[type[PurePath]] = [PurePosixPath, Path, PureWindowsPath]
PATTERNS = [re.compile("a"), re.compile("a", re.IGNORECASE), re.compile("A"), re.compile(b"a")]
UUIDS = [uuid.UUID(int=0), uuid.UUID(int=1), uuid.UUID("12345678-1234-5678-1234-567812345678")]
DTYPES = [
    "?",
    "i1",
    "u1",
    "<i4",
    ">i4",
    "i8",
    "<f4",
    "<f8",
    ">f8",
    "c16",
    "<M8[D]",
    "<M8[s]",
    "<m8[s]",
    "<U2",
]
FACTORIES: list[Callable[[], Any] | None] = [int, list, None]


def _datetime(wall: datetime, zone: tzinfo | None, fold: int) -> datetime:
    return wall.replace(tzinfo=zone, fold=fold)


def _time(wall: datetime, zone: tzinfo | None, fold: int) -> time:
    return wall.time().replace(tzinfo=zone, fold=fold)


def _options(*strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of `strategies`, each as likely as the others (`st.one_of` would flatten nested
    choices and weight them by their number of branches)."""
    return st.integers(0, len(strategies) - 1).flatmap(strategies.__getitem__)


def _arrays_of(dtype: str, shape: Any) -> st.SearchStrategy[Any]:
    return hnp.arrays(np.dtype(dtype), shape)


SHAPES = hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3)
NUMBERS = st.one_of(
    st.integers(-2, 2),
    st.booleans(),
    st.sampled_from(FLOATS),
    st.floats(width=64),
    st.sampled_from(DECIMALS).map(Decimal),
    st.fractions(min_value=-2, max_value=2, max_denominator=4),
    st.sampled_from(COMPLEX),
    st.sampled_from([*Color, *Level, *Tone]),
)
#: NumPy scalars of every dtype (taken from 0-d arrays).
NUMPY_SCALARS = st.one_of([_arrays_of(dtype, ()) for dtype in DTYPES]).map(lambda a: a[()])
#: Values that can be dict keys and set members.
HASHABLES = _options(
    NUMBERS,
    st.one_of(TEXTS, st.binary(max_size=2), st.none()),
    st.one_of(
        st.builds(
            _datetime, st.sampled_from(WALL_TIMES), st.sampled_from(ZONES), st.integers(0, 1)
        ),
        st.builds(
            _time, st.sampled_from(WALL_TIMES), st.sampled_from(ZONES[:4]), st.integers(0, 1)
        ),
        st.dates(min_value=date(1999, 12, 31), max_value=date(2000, 1, 2)),
        st.timedeltas(min_value=timedelta(days=-1), max_value=timedelta(days=1)),
    ),
    st.one_of(
        st.sampled_from(UUIDS),
        st.builds(lambda t, p: t(p), st.sampled_from(PATH_TYPES), st.sampled_from(PATH_TEXTS)),
        st.sampled_from(PATTERNS),
        st.builds(Point, st.integers(-1, 1), st.sampled_from(["a", "b", "A"])),
        st.builds(Caseless, st.sampled_from(["ab", "AB", "Ab", "c"])),
    ),
    NUMPY_SCALARS,
)
ARRAYS = st.one_of(
    *[_arrays_of(dtype, SHAPES) for dtype in DTYPES],
    hnp.arrays(
        np.dtype(object),
        SHAPES,
        elements=st.one_of(st.integers(-1, 1), st.sampled_from(FLOATS), st.none(), TEXTS),
    ),
)
_COLUMNS = st.sampled_from(
    [
        [1, 2, 3],
        [0.0, -0.0, math.nan],
        ["a", "b", "a"],
        [True, False, True],
        [np.datetime64("2020-01-01", "ns")] * 3,
    ]
)
_INDEX = st.sampled_from([None, [0, 1, 2], ["x", "y", "z"], [2, 1, 0]])
_NAMES = st.sampled_from([None, "s", 0])
PANDAS = st.one_of(
    st.builds(lambda v, i, n: pd.Series(v, index=i, name=n), _COLUMNS, _INDEX, _NAMES),
    st.builds(
        lambda a, b, i, labels: pd.DataFrame(dict(zip(labels, (a, b), strict=True)), index=i),
        _COLUMNS,
        _COLUMNS,
        _INDEX,
        st.sampled_from([("a", "b"), (0, 1), ("b", "a")]),
    ),
    st.integers(0, 3).map(pd.RangeIndex),
    st.builds(pd.Index, st.sampled_from([[0, 1], [0.0, 1.0], ["a", "b"], []]), name=_NAMES),
)
ATOMS = _options(
    HASHABLES, st.one_of(ARRAYS, st.binary(max_size=2).map(bytearray)), HASHABLES, PANDAS
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = HASHABLES
    return _options(
        st.lists(children, max_size=3).map(tuple),
        st.lists(children, max_size=3),
        st.dictionaries(keys, children, max_size=3),
        st.dictionaries(keys, children, max_size=3).map(OrderedDict),
        st.builds(
            defaultdict, st.sampled_from(FACTORIES), st.dictionaries(keys, children, max_size=3)
        ),
        st.dictionaries(keys, st.integers(-1, 2), max_size=3).map(Counter),
        st.sets(keys, max_size=3),
        st.frozensets(keys, max_size=3),
        st.builds(Pair, children, children),
        st.builds(Other, children, children),
    )


#: Items of containers: mostly hashable atoms, so that a persistent cache keys more of them.
_ITEMS = _options(HASHABLES, HASHABLES, ATOMS)
#: One argument: an atom of any kind the key rule covers, or containers of them up to two
#: levels deep.
VALUES = _options(ATOMS, ATOMS, _containers(_ITEMS), _containers(_containers(_ITEMS)))


def _pairs() -> list[tuple[Any, Any]]:
    """Pairs of values a cache is most likely to confuse: equal, yet a function tells them
    apart (or equal and indistinguishable: those may share an entry)."""
    utc = datetime(2024, 6, 1, 12, tzinfo=timezone.utc)
    ambiguous = datetime(2021, 11, 7, 1, 30, tzinfo=NEW_YORK)
    ab = {"a": 1, "b": 2}
    return [
        (0.0, -0.0),
        (1, 1.0),
        (1, True),
        (0, False),
        (math.nan, float("nan")),
        (Decimal("1"), Decimal("1.00")),
        (Decimal("0"), Decimal("-0")),
        (Fraction(1, 2), 0.5),
        (complex(0, 0.0), complex(0, -0.0)),
        (1, np.int64(1)),
        (np.float64(0.0), np.float64(-0.0)),
        (0.0, np.float64(0.0)),
        ("a", np.str_("a")),
        (b"a", bytearray(b"a")),
        (OrderedDict(ab), OrderedDict(reversed(ab.items()))),
        (ab, OrderedDict(ab)),
        (ab, dict(reversed(ab.items()))),
        (defaultdict(int, ab), defaultdict(list, ab)),
        (defaultdict(int, ab), ab),
        (Counter(a=1), Counter(a=1, b=0)),
        (Counter(ab), ab),
        ({1, 2}, frozenset({1, 2})),
        ((1, 2), Pair(1, 2)),
        (Pair(1, 2), Other(1, 2)),
        ((1, 2), [1, 2]),
        (utc, utc.astimezone(PLUS3)),
        (utc, utc.astimezone(BERLIN)),
        (utc, utc.replace(tzinfo=ZoneInfo("UTC"))),
        (utc.astimezone(PLUS3), utc.astimezone(PLUS3_NAMED)),
        (ambiguous, ambiguous.replace(fold=1)),
        (ambiguous.replace(tzinfo=None), ambiguous.replace(tzinfo=None, fold=1)),
        (time(1, 30), time(1, 30, fold=1)),
        (time(1, 30, tzinfo=PLUS3), time(1, 30, tzinfo=PLUS3_NAMED)),
        (PurePosixPath("a"), Path("a")),
        (PureWindowsPath("A"), PureWindowsPath("a")),
        (Level.HIGH, 1),
        (Tone.A, "a"),
        (Color.RED, 1),
        (re.compile("a"), re.compile("a", re.IGNORECASE)),
        (Caseless("Ab"), Caseless("aB")),
        (Point(1, "a"), Point(1, "a")),
        (uuid.UUID(int=1), uuid.UUID(int=1)),
        (np.array([1], "<i4"), np.array([1], ">i4")),
        (np.array([0.0]), np.array([-0.0])),
        (np.array(7), np.array([7])),
        (np.zeros(3, np.int32), np.zeros(3, np.int64)),
        (np.array([1, 2]), np.array([1.0, 2.0])),
        (np.array([1, "a"], dtype=object), np.array([1.0, "a"], dtype=object)),
        (np.array(["2020-01-01"], "M8[D]"), np.array(["2020-01-01"], "M8[s]")),
        (pd.Series([1, 2]), pd.Series([1, 2], name="s")),
        (pd.Series([1, 2]), pd.Series([1.0, 2.0])),
        (pd.Series([1, 2]), pd.Series([1, 2], index=[0, 1])),
        (pd.DataFrame({"a": [1]}), pd.DataFrame({"b": [1]})),
        (pd.DataFrame(ab, index=[0]), pd.DataFrame(dict(reversed(ab.items())), index=[0])),
        (pd.Index([1, 2]), pd.Index([1, 2], name="x")),
        (pd.RangeIndex(2), pd.Index([0, 1])),
    ]


PAIRS = _pairs()
#: Places a value of a pair takes in an argument.
PLACES: list[Callable[[Any], Any]] = [
    lambda v: v,
    lambda v: (v,),
    lambda v: [0, v],
    lambda v: {"k": v},
    lambda v: Pair(v, None),
    lambda v: ((v, 1),),
]
#: The same, for a hashable value only.
KEY_PLACES: list[Callable[[Any], Any]] = [lambda v: {v: 1}, lambda v: frozenset([v])]
