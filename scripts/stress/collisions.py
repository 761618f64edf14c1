"""Scenario 5, key collisions: pairs of calls that are different inputs but easy to confuse
(1/1.0/True/"1"/b"1"/Decimal, strings holding separators, tuple vs list, kwargs, positional
vs keyword, default-repr objects whose ids are reused, NumPy arrays equal in summary, NaN
and -0.0, nested containers). Each pair goes through a real cached function: the first
call computes, and the second must compute too; if it is served the first one's result,
that pair collided. In-process keys (mcache) and stable keys (bcache on diskcache, the keys
every persistent and remote engine uses) are checked alike.

Every pair is checked to be two different inputs by a strict comparison of the bound
arguments (exact types, float bits, Decimal digits, array bytes, object identity), so
only pairs a cache must tell apart are counted.
"""

from __future__ import annotations

import inspect
import itertools
import math
import random
import time
from collections import Counter, namedtuple
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

from stress.common import PROFILES, ZERO, Rows, progress

NAME = "collisions"

Call = tuple[str, tuple[Any, ...], dict[str, Any]]  # (function, args, kwargs)
Pair = tuple[str, Call, Call]  # (category, first call, second call)

Point = namedtuple("Point", "x y")


class Plain:
    """An object with the default repr, eq and hash (identity)."""

    def __init__(self, value: Any) -> None:
        self.value = value


# The signatures the pairs are called through.
def one(x: Any) -> Any: ...
def two(x: Any, y: Any = None) -> Any: ...
def star(*args: Any, **kwargs: Any) -> Any: ...


SIGNATURES = {f.__name__: inspect.signature(f) for f in (one, two, star)}


# --- pairs -----------------------------------------------------------------------------------


def _numbers() -> list[Any]:
    import numpy as np

    return [
        1,
        1.0,
        True,
        "1",
        b"1",
        Decimal(1),
        Decimal("1.0"),
        Decimal("1.00"),
        Fraction(1),
        complex(1, 0),
        np.int64(1),
        np.float64(1.0),
        np.bool_(True),
        np.int8(1),
        bytearray(b"1"),
        "1.0",
        1.0000000000000002,
        (1,),
        [1],
        "True",
    ]


def _zeros() -> list[Any]:
    import numpy as np

    return [
        0,
        0.0,
        -0.0,
        False,
        None,
        "",
        b"",
        "0",
        Decimal(0),
        Decimal("-0"),
        Decimal("0.0"),
        complex(0, 0),
        complex(0, -0.0),
        complex(-0.0, 0),
        np.float64(0.0),
        np.float64(-0.0),
        np.int64(0),
        (),
        [],
        {},
        set(),
        frozenset(),
        math.nan,
        math.inf,
        -math.inf,
    ]


def _contexts(value: Any) -> list[Call]:
    """The places one value can take in a call."""
    calls: list[Call] = [
        ("one", (value,), {}),
        ("one", ((value,),), {}),
        ("one", ([value],), {}),
        ("one", ({"k": value},), {}),
        ("one", ([[value], 1],), {}),
        ("two", (0, value), {}),
        ("star", (), {"k": value}),
        ("star", (1, value, 2), {}),
    ]
    try:
        hash(value)
    except TypeError:
        return calls
    calls += [("one", ({value: 1},), {}), ("one", (frozenset({value, "z"}),), {})]
    return calls


def numbers(rng: random.Random) -> Iterator[Pair]:
    """1/1.0/True/"1"/b"1"/Decimal(1) and friends, in every place a value can take."""
    families = [_numbers(), _zeros()]
    pairs = [(a, b) for family in families for a, b in itertools.combinations(family, 2)]
    rng.shuffle(pairs)
    for a, b in itertools.cycle(pairs):
        place = rng.randrange(10)
        ca, cb = _contexts(a), _contexts(b)
        if place < min(len(ca), len(cb)):
            yield "numbers 1/1.0/True/'1'/b'1'/Decimal", ca[place], cb[place]


_SEPARATORS = [
    ",",
    ":",
    ";",
    "|",
    "\0",
    "'",
    '"',
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    " ",
    "\\",
    "=",
    "\n",
    "s",
    "i",
    "1",
    "a",
    "b",
    "\x01",
    "é",
    "\ud800",
]


def separators(rng: random.Random) -> Iterator[Pair]:
    """Strings holding separator characters, split or joined differently."""
    while True:
        text = "".join(rng.choice(_SEPARATORS) for _ in range(rng.randrange(2, 9)))
        cut, other = sorted(rng.sample(range(len(text) + 1), 2))
        form = rng.randrange(6)
        tag = "strings containing separators"
        if form == 0:
            yield (
                tag,
                ("two", (text[:cut], text[cut:]), {}),
                ("two", (text[:other], text[other:]), {}),
            )
        elif form == 1:
            yield tag, ("star", (text[:cut], text[cut:]), {}), ("star", (text,), {})
        elif form == 2:
            yield (
                tag,
                ("one", ({text[:cut]: text[cut:]},), {}),
                ("one", ({text[:other]: text[other:]},), {}),
            )
        elif form == 3:
            yield tag, ("one", (text,), {}), ("one", (text.encode("utf-8", "surrogatepass"),), {})
        elif form == 4:
            yield tag, ("one", (text,), {}), ("one", (repr(text),), {})
        else:
            parts = (text[:cut], text[cut:])
            yield tag, ("one", (parts,), {}), ("one", (repr(parts),), {})


def tuples_lists(rng: random.Random) -> Iterator[Pair]:
    """A tuple and a list (or a namedtuple) with the same items, anywhere in a call."""
    while True:
        items = [rng.choice([1, "a", 2.5, None, b"x", (1,), [2]]) for _ in range(rng.randrange(4))]
        tag = "tuple vs list"
        form = rng.randrange(5)
        if form == 0:
            yield tag, ("one", (tuple(items),), {}), ("one", (list(items),), {})
        elif form == 1:
            yield tag, ("one", ({"k": tuple(items)},), {}), ("one", ({"k": list(items)},), {})
        elif form == 2:
            yield tag, ("star", tuple(items), {}), ("star", (list(items),), {})
        elif form == 3:
            yield tag, ("one", ([tuple(items)],), {}), ("one", ([list(items)],), {})
        else:
            x, y = rng.randrange(3), rng.randrange(3)
            yield tag, ("one", (Point(x, y),), {}), ("one", ((x, y),), {})


def kwargs_order(rng: random.Random) -> Iterator[Pair]:
    """The same keyword names with their values moved between them (or names and values
    exchanged); in any insertion order."""
    names = ["a", "b", "c", "ab", "bc", "x", "y"]
    tag = "kwargs order"
    while True:
        chosen = rng.sample(names, rng.randrange(2, 5))
        values = [rng.choice([1, 2, "a", "b", 1.0, None, (1, 2)]) for _ in chosen]
        first = dict(zip(chosen, values, strict=True))
        moved = values[1:] + values[:1]
        second = dict(zip(reversed(chosen), reversed(moved), strict=True))
        if rng.randrange(3) == 0:
            key, value = chosen[0], "v"
            first, second = {key: value}, {value: key}
        if rng.randrange(2):
            yield tag, ("star", (), first), ("star", (), second)
        else:
            x, y = rng.choice(values), rng.choice(values)
            yield tag, ("two", (), {"x": x, "y": y}), ("two", (), {"y": x, "x": y})


def positional_keyword(rng: random.Random) -> Iterator[Pair]:
    """An argument passed by position against one passed by name (where that is another
    call), and arguments moved between the two."""
    tag = "positional vs keyword"
    while True:
        value = rng.choice([1, "x", None, (1,), "k", 2.0])
        name = rng.choice(["x", "k", "args", "kwargs", "y"])
        form = rng.randrange(5)
        if form == 0:
            yield tag, ("star", (value,), {}), ("star", (), {name: value})
        elif form == 1:
            yield tag, ("star", (name, value), {}), ("star", (), {name: value})
        elif form == 2:
            yield tag, ("star", ((name, value),), {}), ("star", (), {name: value})
        elif form == 3:
            yield tag, ("star", ({name: value},), {}), ("star", (), {name: value})
        else:
            yield tag, ("two", (value,), {}), ("two", (None,), {"y": value})


def default_repr_objects(rng: random.Random) -> Iterator[Pair]:
    """Objects with the default repr, each made after the previous one was dropped, so
    that ids are reused; the pair is checked with the objects made then."""
    tag = "default-repr objects, ids reused"
    while True:
        first = rng.randrange(1000)
        yield tag, ("one", (Plain(first),), {}), ("one", (Plain(first + 1),), {})


def arrays(rng: random.Random) -> Iterator[Pair]:
    """NumPy arrays equal in their summary (repr) but not in content, or in content but
    not in dtype or shape."""
    import numpy as np

    tag = "NumPy arrays equal in summary"
    while True:
        size = rng.choice([1001, 2000, 5000])
        base = np.arange(size, dtype=np.float64)
        other = base.copy()
        form = rng.randrange(6)
        if form == 0:
            other[rng.randrange(3, size - 3)] += 1  # hidden by the "..." of the repr
        elif form == 1:
            other = base.astype(np.float32)
        elif form == 2:
            other = base.reshape(-1, 1) if size % 2 else base.reshape(2, -1)
        elif form == 3:
            other[size // 2] = -0.0
            base[size // 2] = 0.0
        elif form == 4:
            base, other = np.array(7), np.array([7])
        else:
            base, other = np.zeros(3, dtype=np.int32), np.zeros(3, dtype=np.int64)
        yield tag, ("one", (base,), {}), ("one", (other,), {})


def nan_zero(rng: random.Random) -> Iterator[Pair]:
    """NaN and -0.0, bare and inside containers, as floats, complex, NumPy, Decimal."""
    import numpy as np

    tag = "NaN and -0.0"
    pairs = [
        (0.0, -0.0),
        (math.nan, 0.0),
        (math.nan, math.inf),
        (-0.0, 0),
        (math.nan, None),
        (complex(0, 0.0), complex(0, -0.0)),
        (complex(0.0, 0), complex(-0.0, 0)),
        (np.float64(0.0), np.float64(-0.0)),
        (Decimal("0"), Decimal("-0")),
        (np.array([0.0]), np.array([-0.0])),
        (math.nan, "nan"),
        (-0.0, "-0.0"),
    ]
    while True:
        a, b = rng.choice(pairs)
        place = rng.randrange(6)
        yield tag, _contexts(a)[place], _contexts(b)[place]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    if depth > 3 or rng.random() < 0.35:
        return rng.choice([0, 1, -1, 2, 1.5, -0.0, "a", "", b"a", None, True, False])
    kind = rng.randrange(5)
    items = [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 0:
        return tuple(items)
    if kind == 1:
        return items
    if kind == 2:
        return {f"k{i}": item for i, item in enumerate(items)}
    hashable = [i for i in items if _hashable(i)]
    return frozenset(hashable) if kind == 3 else set(hashable)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _mutate(value: Any, rng: random.Random) -> Any:
    """`value` with one small change deep inside: another type of container or scalar, a
    level of nesting added or removed."""
    if isinstance(value, tuple | list) and value and rng.random() < 0.6:
        at = rng.randrange(len(value))
        items = list(value)
        items[at] = _mutate(items[at], rng)
        return type(value)(items)
    if isinstance(value, dict) and value and rng.random() < 0.6:
        key = rng.choice(list(value))
        return {**value, key: _mutate(value[key], rng)}
    swaps: dict[type, Callable[[Any], Any]] = {
        tuple: list,
        list: tuple,
        set: frozenset,
        frozenset: set,
        int: float,
        float: str,
        str: lambda s: s.encode(),
        bytes: lambda b: b.decode(),
        bool: int,
        type(None): lambda _: (),
        dict: lambda d: list(d.items()),
    }
    form = rng.randrange(3)
    if form == 0 and type(value) in swaps:
        return swaps[type(value)](value)
    if form == 1:
        return (value,) if rng.random() < 0.5 else [value]
    if isinstance(value, tuple | list) and len(value) >= 2:
        return type(value)([type(value)(value[:2]), *value[2:]])
    return [value, value]


def nested(rng: random.Random) -> Iterator[Pair]:
    """Random nested containers and a near miss of each."""
    tag = "nested containers"
    while True:
        value = _random_value(rng)
        yield tag, ("one", (value,), {}), ("one", (_mutate(value, rng),), {})


CATEGORIES = [
    numbers,
    separators,
    tuples_lists,
    kwargs_order,
    positional_keyword,
    default_repr_objects,
    arrays,
    nan_zero,
    nested,
]


# --- are two calls different inputs? ----------------------------------------------------------


def _bound(call: Call) -> dict[str, Any]:
    function, args, kwargs = call
    bound = SIGNATURES[function].bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def identical(a: Any, b: Any) -> bool:
    """Strict sameness: the same types all the way down, the same float bits (any NaN is
    NaN), the same Decimal digits, the same array bytes, the same objects."""
    import numpy as np

    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a.hex() == b.hex()
    if isinstance(a, complex):
        return identical(a.real, b.real) and identical(a.imag, b.imag)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, np.ndarray | np.generic):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            any(identical(k, j) and identical(v, w) for j, w in b.items()) for k, v in a.items()
        )
    if isinstance(a, set | frozenset):
        return len(a) == len(b) and all(any(identical(x, y) for y in b) for x in a)
    if isinstance(a, Plain):
        return a is b
    return bool(a == b) and repr(a) == repr(b)


def different(first: Call, second: Call) -> bool:
    if first[0] != second[0]:
        return True
    a, b = _bound(first), _bound(second)
    return a.keys() != b.keys() or not all(identical(a[k], b[k]) for k in a)


def pairs(count: int, seed: int) -> list[Pair]:
    """`count` pairs (at least), the same share from every category."""
    rng = random.Random(seed)
    share = math.ceil(count / len(CATEGORIES))
    chosen: list[Pair] = []
    for category in CATEGORIES:
        source = category(rng)
        taken = 0
        while taken < share:
            pair = next(source)
            if different(pair[1], pair[2]):
                chosen.append(pair)
                taken += 1
    return chosen


# --- the check -------------------------------------------------------------------------------


def check(decorate: Callable[[Callable[..., Any]], Any], chosen: list[Pair]) -> dict[str, Any]:
    """Run every pair through a cached function built by `decorate`; count the pairs whose
    second call was served the first call's result."""
    executions = itertools.count()
    functions = {}
    for name in SIGNATURES:

        def body(*args: Any, **kwargs: Any) -> Any:
            return ("computed", next(executions))

        body.__signature__ = SIGNATURES[name]  # type: ignore[attr-defined]
        body.__name__ = body.__qualname__ = f"collide_{name}"
        functions[name] = decorate(body)
    collided: Counter[str] = Counter()
    raised: Counter[str] = Counter()
    samples: list[str] = []
    reused = 0
    for category, first, second in chosen:
        f = functions[first[0]]
        f.cache_clear()
        try:
            if category.startswith("default-repr"):
                # Made one after the other, the second after the first was dropped (the
                # cache may hold it: then its id cannot be reused, which is the point).
                values = first[1][0].value, second[1][0].value
                made = Plain(values[0])
                seen = id(made)
                a = f(made)
                del made  # nothing else holds it (unless the cache does): its id is free
                made = Plain(values[1])
                reused += id(made) == seen
                b = f(made)
            else:
                a = f(*first[1], **first[2])
                b = f(*second[1], **second[2])
            again = f(*first[1], **first[2]) if not category.startswith("default") else a
        except Exception as exc:
            raised[f"{category}: {type(exc).__name__}"] += 1
            continue
        if b == a or again == b:
            collided[category] += 1
            if len(samples) < 12:
                samples.append(f"{category}: {_show(first)} vs {_show(second)}")
    return {"collided": collided, "raised": raised, "samples": samples, "reused": reused}


def _show(call: Call) -> str:
    function, args, kwargs = call
    text = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    text = text if len(text) < 90 else text[:87] + "..."
    return f"{function}({text})"


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    from twat_cache import bcache, mcache

    p = PROFILES[profile]
    rows = Rows(NAME)
    chosen = pairs(p.pairs, seed)
    per_category = Counter(category for category, _, _ in chosen)
    kinds = []
    if "memory" in engines:
        kinds.append(("mcache (in-process keys)", mcache))
    if "diskcache" in engines:
        kinds.append(("bcache (stable keys)", bcache(folder_name="collisions")))
    for label, decorate in kinds:
        progress(f"{NAME}: {label}, {len(chosen):,} pairs")
        started = time.monotonic()
        outcome = check(decorate, chosen)
        collided = sum(outcome["collided"].values())
        rows.judge(
            label,
            "pairs where one input got the other's result",
            collided,
            ZERO,
            shown=f"{collided} of {len(chosen):,} pairs",
            by_category=dict(outcome["collided"]),
            samples=outcome["samples"],
            pairs_by_category=dict(per_category),
            seconds=time.monotonic() - started,
            ids_reused=outcome["reused"],
        )
        raised = sum(outcome["raised"].values())
        rows.info(
            label,
            "pairs that raised instead of computing",
            raised,
            by_category=dict(outcome["raised"]),
        )
    return rows.as_dicts()
