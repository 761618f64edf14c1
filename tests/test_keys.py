"""Cache keys: equal calls share a key, different calls never do, in-process and stable."""

from __future__ import annotations

import cmath
import copy
import dataclasses
import importlib
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
import types
from collections import namedtuple
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twat_cache import ConfigurationError, mcache
from twat_cache.exceptions import CacheFaultWarning, KeyBuildError
from twat_cache.keys import make_normalizer, stable_digest

FAST = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NORM = make_normalizer(typed=True)
UNTYPED = make_normalizer(typed=False)


# --- module-level types (stable digests need names that exist in every process) --------

Pair = namedtuple("Pair", ["x", "y"])


class MyStr(str):
    __slots__ = ()


class Plain:
    """A user object with the default `<Plain object at 0x...>` repr."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)

    def method(self) -> int:
        return 1

    def other(self) -> int:
        return 2


class Box:
    """Unhashable (``__eq__`` without ``__hash__``) but picklable: keyed by its pickle."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and other.value == self.value


class LockBox:
    """Unhashable and unpicklable (it holds a lock): no key can be built from it."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.lock = threading.Lock()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LockBox) and other.value == self.value


def module_function(x: int) -> int:
    return x


def other_module_function(x: int) -> int:
    return x


# --- an exact comparator: same type at every node, same float bits, same contents -------


def canon(value: Any) -> Any:
    """A comparable form of `value` equal for two values iff they are type-and-structure
    identical (dicts and sets compared regardless of order, floats by `float.hex`)."""
    cls = type(value)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if cls is float:
        return (name, value.hex())
    if cls in (int, bool, str, bytes, type(None)):
        return (name, value)
    if cls in (tuple, list):
        return (name, tuple(canon(item) for item in value))
    if cls is dict:
        return (name, tuple(sorted(((canon(k), canon(v)) for k, v in value.items()), key=repr)))
    if cls in (set, frozenset):
        return (name, tuple(sorted((canon(item) for item in value), key=repr)))
    raise AssertionError(f"canon() does not know {cls}")


def identical(a: Any, b: Any) -> bool:
    return canon(a) == canon(b)


def rebuild(value: Any) -> Any:
    """A deep copy built from scratch: new float objects, dicts and sets filled in reverse."""
    cls = type(value)
    if cls is float:
        return float.fromhex(value.hex())
    if cls is str:
        return "".join(list(value))
    if cls is bytes:
        return bytes(bytearray(value))
    if cls in (tuple, list):
        return cls(rebuild(item) for item in value)
    if cls is dict:
        return {rebuild(k): rebuild(v) for k, v in reversed(list(value.items()))}
    if cls in (set, frozenset):
        return cls(rebuild(item) for item in reversed(list(value)))
    return value


# --- strategies --------------------------------------------------------------------------


def leaves(nan: bool) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(),
        st.floats(allow_nan=nan),
        st.sampled_from([0.0, -0.0, math.inf, -math.inf, 1.0, 1]),
        st.booleans(),
        st.text(max_size=6),
        st.binary(max_size=6),
        st.none(),
    )


def hashables(nan: bool) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves(nan),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(tuple), st.frozensets(inner, max_size=3)
        ),
        max_leaves=6,
    )


def _values(nan: bool) -> st.SearchStrategy[Any]:
    members = hashables(nan)
    return st.recursive(
        leaves(nan),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.lists(inner, max_size=4).map(tuple),
            st.dictionaries(st.text(max_size=4), inner, max_size=4),
            st.sets(members, max_size=4),
            st.frozensets(members, max_size=4),
        ),
        max_leaves=8,
    )


_STRATEGIES = {nan: _values(nan) for nan in (True, False)}


def values(nan: bool = True) -> st.SearchStrategy[Any]:
    """Recursive data: scalars (floats with NaN, -0.0, inf), lists, tuples, dicts with text
    keys, sets and frozensets of hashable values (which may hold distinct NaN objects)."""
    return _STRATEGIES[nan]


def _variants(value: Any, hashable: bool) -> list[Any]:
    """Near misses of one node; `hashable` when the node sits inside a set (so no list,
    dict or set)."""
    cls = type(value)
    out: list[Any] = [(value,)]
    if not hashable:
        out.append([value])
    if cls is bool:
        out += [int(value), float(value), not value, str(value)]
    elif cls is int:
        out += [value + 1, str(value), -value - 1]
        if abs(value) < 2**53:
            out.append(float(value))
        if value in (0, 1):
            out.append(bool(value))
    elif cls is float:
        out += [-value, value.hex()]
        if math.isfinite(value):
            out += [int(value), math.nextafter(value, math.inf)]
        if value == 0:
            out.append(False)
        if not math.isnan(value):
            out.append(math.nan)
    elif cls is str:
        out += [value + "\0", value.encode("utf-8", "surrogatepass"), value[:-1]]
    elif cls is bytes:
        out += [value + b"\0", value.decode("latin-1"), value[:-1]]
    elif value is None:
        out += [0, False, "", b"", ()]
    elif cls is tuple:
        out += [(*value, None), value[:-1]]
        if not hashable:
            out.append(list(value))
    elif cls is list:
        out += [[*value, None], value[:-1], tuple(value)]
    elif cls is dict:
        out += [{**value, "\0new": None}, dict(list(value.items())[:-1]), list(value.items())]
        out += [{k + "x": v for k, v in value.items()}]
    elif cls in (set, frozenset):
        out += [cls([*value, None]), cls(list(value)[:-1]), tuple(value)]
        if not hashable:
            out.append(set(value) if cls is frozenset else frozenset(value))
    return out


def mutate(data: st.DataObject, value: Any, hashable: bool = False) -> Any:
    """A value one small edit away from `value`, at a node hypothesis picks."""
    cls = type(value)
    if cls in (tuple, list) and value and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        items = list(value)
        items[i] = mutate(data, items[i], hashable)
        return cls(items)
    if cls is dict and value and data.draw(st.booleans()):
        k = data.draw(st.sampled_from(sorted(value)))
        return {**value, k: mutate(data, value[k])}
    if cls in (set, frozenset) and value and data.draw(st.booleans()):
        members = sorted(value, key=lambda m: repr(canon(m)))
        i = data.draw(st.integers(0, len(members) - 1))
        members[i] = mutate(data, members[i], hashable=True)
        return cls(members)
    return data.draw(st.sampled_from(_variants(value, hashable)))


# --- the decorated function of the brief -------------------------------------------------


@mcache
def f(a: Any, b: Any = None, *args: Any, c: Any = None, **kw: Any) -> Any:
    return (a, b, args, c, kw)


@mcache(typed=False)
def f_untyped(a: Any, b: Any = None, *args: Any, c: Any = None, **kw: Any) -> Any:
    return (a, b, args, c, kw)


kw_names = st.text(max_size=5).filter(lambda name: name not in ("a", "b"))


@st.composite
def call_args(draw: Any, nan: bool = True) -> tuple[tuple[Any, ...], dict]:
    """Positional arguments (at least `a`) and keyword arguments of a call to `f`."""
    v = values(nan)
    pos = tuple(draw(st.lists(v, min_size=1, max_size=3)))
    kw = draw(st.dictionaries(kw_names, v, max_size=2))
    return pos, kw


def call_canon(pos: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    """`canon` of what a call binds, defaults filled: f(1) is f(1, None, c=None)."""
    a, b, *rest = (*pos, None) if len(pos) == 1 else pos
    c = kw.get("c")
    others = {k: v for k, v in kw.items() if k != "c"}
    return (canon(a), canon(b), canon(tuple(rest)), canon(c), canon(others))


# === equal calls -> equal keys ============================================================


@FAST
@given(values())
def test_typed_normalizer_equal_for_rebuilt_values(value: Any) -> None:
    key = NORM(value)
    hash(key)
    assert NORM(rebuild(value)) == key
    assert NORM(copy.deepcopy(value)) == key


@FAST
@given(values(nan=False))
def test_untyped_normalizer_equal_for_rebuilt_values(value: Any) -> None:
    # NaN is left out: untyped keys compare values with ==, and NaN != NaN (as in
    # functools.lru_cache); that costs a miss, never a wrong value.
    key = UNTYPED(value)
    hash(key)
    assert UNTYPED(rebuild(value)) == key
    assert UNTYPED(copy.deepcopy(value)) == key


@FAST
@given(values())
def test_stable_digest_equal_for_rebuilt_values(value: Any) -> None:
    digest = stable_digest("t.ns", (value,), {"kw": value})
    assert stable_digest("t.ns", (rebuild(value),), {"kw": rebuild(value)}) == digest


@FAST
@given(call_args())
def test_cache_key_equal_for_rebuilt_calls_and_second_call_hits(call: Any) -> None:
    pos, kw = call
    pos2 = rebuild(pos)
    kw2 = {k: rebuild(v) for k, v in reversed(list(kw.items()))}
    key = f.cache_key(*pos, **kw)
    assert f.cache_key(*pos2, **kw2) == key
    f.cache_clear()
    f(*pos, **kw)
    f(*pos2, **kw2)
    assert f.cache_info()[:2] == (1, 1)


@FAST
@given(call_args(nan=False))
def test_untyped_cache_key_equal_for_rebuilt_calls(call: Any) -> None:
    pos, kw = call
    kw2 = {k: rebuild(v) for k, v in reversed(list(kw.items()))}
    assert f_untyped.cache_key(*rebuild(pos), **kw2) == f_untyped.cache_key(*pos, **kw)


@FAST
@given(values(), values())
def test_keyword_passing_and_defaults_give_the_same_key(a: Any, extra: Any) -> None:
    key = f.cache_key(a)
    assert f.cache_key(a, None) == key
    assert f.cache_key(a, b=None) == key
    assert f.cache_key(a=a) == key
    assert f.cache_key(b=None, a=a, c=None) == key
    assert f.cache_key(a, extra) == f.cache_key(b=extra, a=a)


def test_kwargs_order_and_keyword_passing_share_one_entry() -> None:
    calls = []

    @mcache
    def g(a: int, b: int = 0, **kw: Any) -> int:
        calls.append((a, b, kw))
        return a + b + sum(kw.values())

    key = g.cache_key(1, 2, x=3, y=4)
    assert g.cache_key(1, 2, y=4, x=3) == key
    assert g.cache_key(a=1, b=2, x=3, y=4) == key
    assert g.cache_key(y=4, b=2, x=3, a=1) == key
    assert g(1, 2, x=3, y=4) == 10
    assert g(y=4, b=2, x=3, a=1) == 10
    assert g(1, b=2, y=4, x=3) == 10
    assert g(1) == 1
    assert g(1, 0) == 1  # the default filled in: the same entry
    assert g(a=1, b=0) == 1
    assert len(calls) == 2
    assert g.cache_info()[:2] == (4, 2)


# === different inputs -> different keys ===================================================


@FAST
@given(values(), values())
def test_keys_equal_iff_values_identical(v: Any, w: Any) -> None:
    same = identical(v, w)
    assert (NORM(v) == NORM(w)) == same
    assert (stable_digest("t.ns", (v,)) == stable_digest("t.ns", (w,))) == same


@FAST
@given(values(), st.data())
def test_near_miss_values_get_different_keys(v: Any, data: st.DataObject) -> None:
    w = mutate(data, v)
    same = identical(v, w)
    assert (NORM(v) == NORM(w)) == same
    assert (stable_digest("t.ns", (v,)) == stable_digest("t.ns", (w,))) == same
    assert (f.cache_key(v) == f.cache_key(w)) == same


@FAST
@given(call_args(), call_args())
def test_cache_key_equal_iff_calls_bind_identically(one: Any, two: Any) -> None:
    same = call_canon(*one) == call_canon(*two)
    assert (f.cache_key(*one[0], **one[1]) == f.cache_key(*two[0], **two[1])) == same


@FAST
@given(call_args(), st.data())
def test_near_miss_calls_get_different_cache_keys(call: Any, data: st.DataObject) -> None:
    pos, kw = call
    edit = data.draw(st.sampled_from(["arg", "add", "drop", "kwval", "kwadd", "kwdrop"]))
    pos2, kw2 = pos, dict(kw)
    if edit == "arg":
        i = data.draw(st.integers(0, len(pos) - 1))
        pos2 = (*pos[:i], mutate(data, pos[i]), *pos[i + 1 :])
    elif edit == "add":
        pos2 = (*pos, data.draw(values()))
    elif edit == "drop" and len(pos) > 1:
        pos2 = pos[:-1]
    elif edit == "kwval" and kw:
        k = data.draw(st.sampled_from(sorted(kw)))
        kw2[k] = mutate(data, kw[k])
    elif edit == "kwadd":
        kw2[data.draw(kw_names)] = data.draw(values())
    elif edit == "kwdrop" and kw:
        del kw2[data.draw(st.sampled_from(sorted(kw)))]
    same = call_canon(pos, kw) == call_canon(pos2, kw2)
    assert (f.cache_key(*pos, **kw) == f.cache_key(*pos2, **kw2)) == same
    pos_digest = stable_digest("t.f", pos, kw) == stable_digest("t.f", pos2, kw2)
    assert pos_digest == (identical(pos, pos2) and identical(kw, kw2))


# A corpus of near-miss calls, (args, kwargs): every one must get its own key.
_SINGLE_VALUES: list[Any] = [
    1, 1.0, True, "1", b"1", Decimal(1), Fraction(1), 1 + 0j,
    0, 0.0, -0.0, False, "", b"", None, (), [], {}, set(), frozenset(),
    (1, 2), [1, 2], ((1,),), ([1],), (((1,),),), [[1]], [[[1]]], [1], (1,),
    "a,b", ("a", "b"), ["a", "b"], "a\0b", "a'b", 'a"b', "'a'", '"a"', "(1, 2)", "1,", "a:b",
    "a b", "\0", "None", "()", "[]", "b'1'",
    {"a": 1}, {"a": True}, {"a": 1.0}, {"a": "1"}, {1: "a"}, {"1": "a"}, {"a": [1]},
    {"a": (1,)}, {"a": {"a": 1}}, {("a",): 1}, [("a", 1)], (("a", 1),), frozenset({("a", 1)}),
    {1, 2}, frozenset({1, 2}), {1.0, 2}, {True, 2}, {(1, 2)}, {"1", "2"},
    Pair(1, 2), Pair(2, 1), MyStr("a"), "a", MyStr("1"),
    float("nan"), math.inf, -math.inf, 10**20, float(10**20), 2**63, -1, -1.0,
]  # fmt: skip
NEAR_MISS_CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((value,), {}) for value in _SINGLE_VALUES
] + [
    ((1, 2), {}),  # f(1, 2) vs f((1, 2)), which is in the single values
    ((1, 2, 3), {}),
    ((1,), {"a": 1}),
    ((), {"a": 1}),  # a keyword vs the same value passed positionally
    ((), {"a": 1, "b": 2}),
    ((), {"b": 2, "a": 1.0}),
    ((), {"a\0": 1}),
    ((), {"a,b": 1}),
    (("a", "b"), {}),
    ((("a", 1),), {}),
    ((), {"a": (1,)}),
    ((None, None), {}),
    ((), {}),
]


def _assert_all_distinct(keys: list[Any], labels: list[Any]) -> None:
    seen: dict[Any, Any] = {}
    clashes = []
    for key, label in zip(keys, labels, strict=True):
        if key in seen:
            clashes.append((seen[key], label))
        seen.setdefault(key, label)
    assert not clashes, f"calls sharing a key: {clashes}"


def test_near_miss_corpus_values_have_distinct_typed_keys() -> None:
    _assert_all_distinct([NORM(v) for v in _SINGLE_VALUES], _SINGLE_VALUES)


def test_near_miss_corpus_calls_have_distinct_cache_keys() -> None:
    @mcache
    def g(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    keys = [g.cache_key(*args, **kwargs) for args, kwargs in NEAR_MISS_CALLS]
    _assert_all_distinct(keys, NEAR_MISS_CALLS)
    # and each really is its own entry
    for args, kwargs in NEAR_MISS_CALLS:
        assert g(*args, **kwargs) == (args, kwargs)
    assert g.cache_info().misses == len(NEAR_MISS_CALLS)
    assert g.cache_info().hits == 0


def test_near_miss_corpus_calls_have_distinct_stable_digests() -> None:
    digests = [stable_digest("t.g", args, kwargs) for args, kwargs in NEAR_MISS_CALLS]
    _assert_all_distinct(digests, NEAR_MISS_CALLS)


def test_positional_only_and_keyword_of_the_same_name_differ() -> None:
    @mcache
    def h(a: Any, /, **kw: Any) -> Any:
        return a, kw

    assert h.cache_key(1, a=2) != h.cache_key(2, a=1)
    assert h.cache_key(1) != h.cache_key(1, a=1)
    assert h(1, a=2) == (1, {"a": 2})
    assert h(2, a=1) == (2, {"a": 1})
    assert h.cache_info().misses == 2


def test_untyped_mode_shares_equal_numbers_but_not_strings() -> None:
    assert UNTYPED(1) == UNTYPED(1.0) == UNTYPED(True)
    assert UNTYPED("1") != UNTYPED(1)
    assert UNTYPED(b"1") != UNTYPED(1)
    assert len({NORM(1), NORM(1.0), NORM(True), NORM("1"), NORM(b"1")}) == 5

    calls = []

    @mcache(typed=False)
    def g(x: Any) -> Any:
        calls.append(x)
        return x

    assert g(1) == 1
    assert g(1.0) == 1  # the entry of g(1): documented behaviour of typed=False
    assert g(True) == 1
    assert g("1") == "1"
    assert calls == [1, "1"]
    assert g.cache_info()[:2] == (2, 2)


def test_untyped_mode_keeps_unequal_tuple_and_list_apart() -> None:
    # typed=False shares entries between values equal by ==; a tuple never equals a list.
    assert (1, 2) != [1, 2]
    assert UNTYPED((1, 2)) != UNTYPED([1, 2])
    assert UNTYPED((1, [2])) != UNTYPED([1, [2]])

    @mcache(typed=False)
    def kind(x: Any) -> str:
        return type(x).__name__

    assert kind((1, [2])) == "tuple"
    assert kind([1, [2]]) == "list"


def test_typed_mode_keeps_equal_numbers_apart() -> None:
    @mcache
    def g(x: Any) -> Any:
        return repr(x)

    assert [g(1), g(1.0), g(True), g(-0.0), g(0.0), g(0)] == [
        "1", "1.0", "True", "-0.0", "0.0", "0",
    ]  # fmt: skip
    assert g.cache_info()[:2] == (0, 6)


def test_complex_signed_zero_is_its_own_key() -> None:
    assert NORM(complex(-1, 0.0)) != NORM(complex(-1, -0.0))

    @mcache
    def sqrt(z: complex) -> complex:
        return cmath.sqrt(z)

    assert sqrt(complex(-1, 0.0)) == 1j
    assert sqrt(complex(-1, -0.0)) == -1j  # a wrong value (1j) is returned from the cache


def test_set_of_distinct_nan_objects_differs_from_set_of_one() -> None:
    nan_a, nan_b = float("nan"), float("nan")
    two, one = {nan_a, nan_b}, {nan_a}
    assert len(two) == 2
    assert NORM(two) != NORM(one)

    @mcache
    def size(s: set[float]) -> int:
        return len(s)

    assert size(two) == 2
    assert size(one) == 1


# === unhashable arguments ================================================================


def test_unhashable_containers_work_as_keys_and_hit() -> None:
    calls = []

    @mcache
    def total(prices: list[float], discounts: dict[str, Any], tags: set[str]) -> float:
        calls.append(1)
        return sum(prices) * (1 - discounts.get("member", 0.0))

    args = ([1.0, 2.5], {"member": 0.1, "nested": [{"x": {1, 2}}]}, {"a", "b"})
    assert total(*args) == pytest.approx(3.15)
    again = ([1.0, 2.5], {"nested": [{"x": {2, 1}}], "member": 0.1}, {"b", "a"})
    assert total(*again) == pytest.approx(3.15)
    assert total(prices=[1.0, 2.5], discounts={"member": 0.2}, tags={"a", "b"}) == pytest.approx(
        2.8
    )
    assert len(calls) == 2
    assert total.cache_info()[:2] == (1, 2)


def test_unhashable_object_is_keyed_by_its_pickle() -> None:
    assert NORM(Box(1)) == NORM(Box(1))
    assert NORM(Box(1)) != NORM(Box(2))
    assert NORM(Box([1, 2])) != NORM(Box((1, 2)))
    calls = []

    @mcache
    def unbox(box: Box) -> Any:
        calls.append(box.value)
        return box.value

    assert unbox(Box([1])) == [1]
    assert unbox(Box([1])) == [1]  # a different instance with equal content: a hit
    assert unbox(Box([2])) == [2]
    assert calls == [[1], [2]]
    assert unbox.cache_info()[:2] == (1, 2)


def test_unhashable_unpicklable_object_raises_key_build_error() -> None:
    with pytest.raises(KeyBuildError, match="LockBox"):
        NORM(LockBox(1))
    with pytest.raises(KeyBuildError):
        NORM([1, {"x": LockBox(1)}])


def test_unkeyable_argument_with_fallback_runs_uncached_with_one_warning() -> None:
    calls = []

    @mcache(fallback=True)
    def unbox(box: LockBox, n: int) -> Any:
        calls.append(n)
        return (box.value, n)

    with pytest.warns(CacheFaultWarning, match="key") as record:
        results = [unbox(LockBox(i), i) for i in (1, 2, 1, 3)]
    assert results == [(1, 1), (2, 2), (1, 1), (3, 3)]
    assert calls == [1, 2, 1, 3]
    assert len(record) == 1
    assert unbox.cache_info()[:2] == (0, 4)
    assert unbox(Box(5), 5) == (5, 5)  # keyable arguments are still cached
    assert unbox(Box(5), 5) == (5, 5)
    assert unbox.cache_info()[:2] == (1, 5)


def test_unkeyable_argument_without_fallback_propagates() -> None:
    calls = []

    @mcache(fallback=False)
    def unbox(box: LockBox) -> Any:
        calls.append(1)
        return box.value

    with pytest.raises(KeyBuildError, match="LockBox"):
        unbox(LockBox(1))
    assert calls == []


# === ignore= and key= ====================================================================


def test_ignore_by_name_whether_positional_or_keyword() -> None:
    calls = []

    @mcache(ignore=("session", "verbose"))
    def load(path: str, session: object, verbose: bool = False) -> str:
        calls.append(path)
        return path.upper()

    s1, s2 = object(), object()
    key = load.cache_key("a.txt", s1)
    assert load.cache_key("a.txt", session=s2, verbose=True) == key
    assert load.cache_key(path="a.txt", session=s1) == key
    assert load.cache_key("a.txt", s2, True) == key
    assert load.cache_key("b.txt", s1) != key
    assert load("a.txt", s1) == "A.TXT"
    assert load("a.txt", session=s2, verbose=True) == "A.TXT"
    assert load("a.txt", [], True) == "A.TXT"  # an unhashable ignored argument is fine
    assert load("b.txt", s1) == "B.TXT"
    assert calls == ["a.txt", "b.txt"]
    assert load.cache_info()[:2] == (2, 2)


def test_ignore_a_name_collected_by_var_keyword() -> None:
    @mcache(ignore="trace_id")
    def g(x: int, **options: Any) -> Any:
        return x, options

    assert g.cache_key(1, trace_id="a") == g.cache_key(1, trace_id="b") == g.cache_key(1)
    assert g.cache_key(1, other=1) != g.cache_key(1, other=2)
    assert g.cache_key(1, other=1) != g.cache_key(1)
    assert g(1, trace_id="a") == (1, {"trace_id": "a"})
    assert g(1, trace_id="b") == (1, {"trace_id": "a"})  # the entry of the first call
    assert g.cache_info()[:2] == (1, 1)


def test_ignore_an_unknown_name_is_rejected_at_decoration() -> None:
    decorate = mcache(ignore=("x", "nope"))

    def g(x: int) -> int:
        raise AssertionError("never called")

    with pytest.raises(ConfigurationError, match="nope"):
        decorate(g)


def test_custom_key_function_is_used() -> None:
    calls = []

    @mcache(key=lambda user_id, fresh=False: f"user:{user_id}")
    def profile(user_id: int, fresh: bool = False) -> dict[str, Any]:
        calls.append((user_id, fresh))
        return {"id": user_id, "fresh": fresh}

    assert profile.cache_key(7) == "user:7"
    assert profile.cache_key(7, fresh=True) == "user:7"
    assert profile(7) == {"id": 7, "fresh": False}
    assert profile(7, fresh=True) == {"id": 7, "fresh": False}  # same custom key: shared
    assert profile(8, True) == {"id": 8, "fresh": True}
    assert calls == [(7, False), (8, True)]
    assert profile.cache_info()[:2] == (1, 2)


def test_custom_key_with_ignore_is_rejected() -> None:
    decorate = mcache(key=lambda x, y: x, ignore="y")

    def g(x: int, y: int) -> int:
        raise AssertionError("never called")

    with pytest.raises(ConfigurationError, match="ignore"):
        decorate(g)


# === methods =============================================================================


def test_instances_that_compare_equal_never_share_an_entry() -> None:
    class AlwaysEqual:  # __eq__ without __hash__: unhashable
        def __eq__(self, other: object) -> bool:
            return True

        @mcache
        def tag(self, x: int) -> tuple[int, int]:
            return id(self), x

    a, b = AlwaysEqual(), AlwaysEqual()
    assert a == b
    assert AlwaysEqual.tag.cache_key(a, 1) != AlwaysEqual.tag.cache_key(b, 1)
    assert a.tag(1) == (id(a), 1)
    assert b.tag(1) == (id(b), 1)
    assert a.tag(1) == (id(a), 1)
    assert AlwaysEqual.tag.cache_info()[:2] == (1, 2)


def test_equal_dataclass_instances_never_share_an_entry() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

        @mcache
        def where(self, scale: int) -> tuple[int, int]:
            return id(self), self.x * scale

    p, q = Point(1), Point(1)
    assert p == q
    assert p.where(2) == (id(p), 2)
    assert q.where(2) == (id(q), 2)
    assert p.where(2) == (id(p), 2)
    assert Point.where.cache_info()[:2] == (1, 2)


def test_method_of_unhashable_identity_class_is_cached() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]  # the point of the test

        @mcache
        def tag(self, x: int) -> tuple[int, int]:
            return id(self), x

    u = Unhashable()
    assert u.tag(1) == (id(u), 1)
    assert u.tag(1) == (id(u), 1)
    assert Unhashable.tag.cache_info()[:2] == (1, 1)


# === stable digests ======================================================================

_CORPUS_MODULE = '''
"""Objects for the cross-process digest test."""


class Plain:
    def __init__(self, **attrs):
        self.__dict__.update(attrs)

    def method(self):
        return 1


def helper(x):
    return x


PROBE = {f"member-{i}" for i in range(40)}


def cases():
    return [
        ("ns.atoms", (1, "x", None, b"\\x00", True, 2**70), None),
        ("ns.set", (set(PROBE),), None),
        ("ns.frozenset", (frozenset({"x", "y", "z"}),), {"k": {"b": 1, "a": 2}}),
        ("ns.dict", ({f"k{i}": i for i in range(40)},), None),
        ("ns.nested", ([{"s": {"a", "b", "c"}, "t": (1, [2.5])}],), {"z": 1, "a": 2}),
        ("ns.object", (Plain(a=1, tags={"p", "q", "r", "s"}, inner=Plain(b=[1])),), None),
        ("ns.function", (helper,), None),
        ("ns.class", (Plain,), None),
        ("ns.method", (Plain(a=2).method,), None),
        ("ns.floats", ([0.0, -0.0, float("nan"), float("inf"), 1.5, 1e-300],), None),
        ("ns.misc", ((1 + 2j, bytearray(b"ab"), frozenset({1, 2.0, "3"})),), None),
    ]
'''

_CHILD = """
import json
import keycorpus_ab12
from twat_cache.keys import stable_digest
print(json.dumps({
    "digests": [stable_digest(ns, a, k) for ns, a, k in keycorpus_ab12.cases()],
    "order": list(keycorpus_ab12.PROBE),
}))
"""


def test_stable_digest_is_the_same_in_processes_with_other_hash_seeds(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "keycorpus_ab12.py").write_text(textwrap.dedent(_CORPUS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        corpus = importlib.import_module("keycorpus_ab12")
        mine = [stable_digest(ns, a, k) for ns, a, k in corpus.cases()]
    finally:
        sys.modules.pop("keycorpus_ab12", None)
    assert len(set(mine)) == len(mine)

    orders = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
        done = subprocess.run(
            [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        child = json.loads(done.stdout)
        assert child["digests"] == mine, f"PYTHONHASHSEED={seed}"
        orders.append(child["order"])
    # The seeds really do change the iteration order of the set the digests agree on.
    assert orders[0] != orders[1]


def test_objects_with_default_repr_are_keyed_by_content() -> None:
    assert stable_digest("ns", (Plain(a=1, b=[2]),)) == stable_digest("ns", (Plain(b=[2], a=1),))
    assert stable_digest("ns", (Plain(a=1),)) != stable_digest("ns", (Plain(a=2),))
    assert stable_digest("ns", (Plain(a=1),)) != stable_digest("ns", (Plain(a=1, b=None),))
    assert stable_digest("ns", (Plain(a={"x", "y"}),)) == stable_digest(
        "ns", (Plain(a={"y", "x"}),)
    )
    assert stable_digest("ns", (Plain(a=1),)) != stable_digest("ns", (Box(1),))


def _scaler(k: Any) -> Any:
    def scale(x: int) -> int:
        return x * k

    return scale


def test_lambdas_and_local_functions_are_keyed_by_their_code_and_captured_values() -> None:
    # No global name, so they are keyed by what they compute, the same in every process.
    assert stable_digest("ns", (lambda: 0,)) == stable_digest("ns", (lambda: 0,))
    assert stable_digest("ns", (lambda: 0,)) != stable_digest("ns", (lambda: 1,))
    assert stable_digest("ns", (_scaler(2),)) == stable_digest("ns", (_scaler(2),))
    assert stable_digest("ns", (_scaler(2),)) != stable_digest("ns", (_scaler(3),))
    assert stable_digest("ns", ([module_function, _scaler(2)],)) != stable_digest(
        "ns", ([module_function, _scaler(3)],)
    )


def test_local_functions_capturing_unencodable_values_raise_naming_the_argument() -> None:
    pending = (i for i in range(3))  # a generator: no stable encoding

    def local(x: int) -> int:
        return x + next(pending)

    with pytest.raises(KeyBuildError, match="transform"):
        stable_digest("ns", (local,), names=("transform",))
    with pytest.raises(KeyBuildError, match="on_done"):
        stable_digest("ns", (), {"on_done": local})
    with pytest.raises(KeyBuildError, match="hooks"):
        stable_digest("ns", ([module_function, local],), names=("hooks",))


def test_unpicklable_objects_raise_key_build_error_naming_the_argument() -> None:
    with pytest.raises(KeyBuildError, match="guard"):
        stable_digest("ns", (LockBox(1),), names=("guard",))


def test_module_level_functions_are_keyed_by_qualified_name() -> None:
    digest = stable_digest("ns", (module_function,))
    assert digest != stable_digest("ns", (other_module_function,))
    # A function object its module does not hold under that name (made at run time) is
    # keyed by its code, not by the name it claims: the module's function is another one.
    twin = types.FunctionType(other_module_function.__code__, globals(), "module_function")
    twin.__qualname__ = module_function.__qualname__
    twin.__module__ = module_function.__module__
    assert stable_digest("ns", (twin,)) != digest
    # Keyed by what it is: the same name and the same code (both bodies are `return x`)
    # make the same key in every process; another body another key.
    clone = types.FunctionType(module_function.__code__, globals(), "module_function")
    clone.__qualname__ = module_function.__qualname__
    assert stable_digest("ns", (clone,)) == stable_digest("ns", (twin,))
    other = types.FunctionType((lambda x: x + 1).__code__, globals(), "module_function")
    other.__qualname__ = module_function.__qualname__
    assert stable_digest("ns", (other,)) != stable_digest("ns", (twin,))
    assert stable_digest("ns", (Plain,)) != stable_digest("ns", (Box,))


def test_bound_methods_of_different_instances_differ() -> None:
    one, two = Plain(a=1), Plain(a=2)
    assert stable_digest("ns", (one.method,)) == stable_digest("ns", (one.method,))
    assert stable_digest("ns", (one.method,)) != stable_digest("ns", (two.method,))
    assert stable_digest("ns", (one.method,)) != stable_digest("ns", (one.other,))
    assert stable_digest("ns", (one.method,)) != stable_digest("ns", (Plain.method,))


def test_builtin_bound_methods_of_different_objects_differ() -> None:
    assert stable_digest("ns", ("a".upper,)) != stable_digest("ns", ("b".upper,))
    assert stable_digest("ns", ({}.get,)) != stable_digest("ns", ({1: 2}.get,))


def test_stable_digest_of_a_very_large_int() -> None:
    big = 10**5000
    assert stable_digest("ns", (big,)) != stable_digest("ns", (big + 1,))


def test_digest_format_and_namespaces() -> None:
    digest = stable_digest("pkg.mod.func", (1, "a"), {"k": [1]})
    assert re.fullmatch(r"pkg\.mod\.func:k2:[0-9a-f]{40}", digest)
    assert stable_digest("pkg.mod.other", (1, "a"), {"k": [1]}) != digest
    assert stable_digest("pkg.mod.func", (1, "a"), {"k": [1]}) == digest
    assert stable_digest("pkg.mod.func", (1, "a")) != digest
    assert stable_digest("pkg.mod.func", (1, "a"), {}) == stable_digest("pkg.mod.func", (1, "a"))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (Decimal("1"), Decimal("1.00")),
        (Decimal("0"), Decimal("-0")),
        ([Decimal("1.0")], [Decimal("1.00")]),
        (frozenset({Decimal("1"), "z"}), frozenset({Decimal("1.0"), "z"})),
        ({"k": Decimal("0")}, {"k": Decimal("-0")}),
    ],
)
def test_equal_values_a_function_can_tell_apart_get_different_keys(a: Any, b: Any) -> None:
    # Equal and of one type, yet str() or the sign shows the difference: typed keys keep
    # them apart, so neither call is answered with the other's result.
    assert a == b
    norm = make_normalizer()
    assert norm(a) != norm(b)


def test_numpy_scalars_keep_their_sign_and_type() -> None:
    np = pytest.importorskip("numpy")
    norm = make_normalizer()
    assert norm(np.float64(0.0)) != norm(np.float64(-0.0))
    assert norm([np.float32(-0.0)]) != norm([np.float32(0.0)])
    assert norm(np.float64(1.5)) != norm(1.5)  # another type, as 1 and 1.0 are
    assert norm(np.int64(3)) == norm(np.int64(3))
