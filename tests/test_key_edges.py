"""Argument keys at their edges: values a function can tell apart never share an entry, and
equal contents keyed through the fast paths (pandas buffers) still meet (issue 12, from a
hostile review). Each pair runs through mcache and bcache unless the case says otherwise."""

from __future__ import annotations

import collections
import datetime
import types
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from twat_cache import bcache, fcache, mcache


def _decorate(decorator: str) -> Callable[[Any], Any]:
    return mcache if decorator == "mcache" else bcache("key-edges")


def _quietly(func: Callable[..., Any], *args: Any) -> Any:
    """Call `func` and require that it warns nothing (a cache fault is a warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func(*args)
    assert [str(w.message) for w in caught] == []
    return result


def assert_told_apart(
    decorator: str, first: Any, second: Any, reveal: Callable[[Any], Any]
) -> None:
    """`first` and `second` are two entries: each call returns what the uncached function
    returns for it (`reveal` tells them apart), twice; the second round hits."""
    expected = (reveal(first), reveal(second))
    assert expected[0] != expected[1], "the pair is not told apart by `reveal`"
    calls: list[Any] = []

    @_decorate(decorator)
    def observe(value: Any) -> Any:
        calls.append(value)
        return reveal(value)

    assert (_quietly(observe, first), _quietly(observe, second)) == expected
    assert (_quietly(observe, first), _quietly(observe, second)) == expected
    assert len(calls) == 2, "the second value was served the first one's entry"
    assert observe.cache_info().hits == 2


def assert_shared(decorator: str, first: Any, second: Any) -> None:
    """`first` and `second` have the same content: the second call hits the first's entry."""
    calls: list[Any] = []

    @_decorate(decorator)
    def observe(value: Any) -> int:
        calls.append(value)
        return len(calls)

    assert _quietly(observe, first) == 1
    assert _quietly(observe, second) == 1, "equal contents missed each other"
    assert observe.cache_info().hits == 1


BOTH = pytest.mark.parametrize("decorator", ["mcache", "bcache"])


# --- 09: pairs a function tells apart -------------------------------------------------------


def test_chainmaps_with_other_maps_are_told_apart() -> None:
    layered = collections.ChainMap({"a": 1}, {"a": 2})
    single = collections.ChainMap({"a": 1})
    assert layered == single
    assert_told_apart("mcache", layered, single, repr)


class Complex(complex):
    pass


@pytest.mark.parametrize("part", ["imag", "real"])
def test_a_complex_subclass_keeps_the_sign_of_zero(part: str) -> None:
    if part == "imag":
        positive, negative = Complex(1.0, 0.0), Complex(1.0, -0.0)
    else:
        positive, negative = Complex(0.0, 1.0), Complex(-0.0, 1.0)
    assert positive == negative
    assert_told_apart("mcache", positive, negative, repr)


@BOTH
@pytest.mark.parametrize("kind", ["index", "series"])
def test_a_datetime_index_with_a_freq_is_not_one_without(decorator: str, kind: str) -> None:
    pd = pytest.importorskip("pandas")
    daily = pd.date_range("2020-01-01", periods=3, freq="D")
    irregular = pd.DatetimeIndex(["2020-01-01", "2020-01-02", "2020-01-03"])
    assert daily.equals(irregular)
    if kind == "index":
        assert_told_apart(decorator, daily, irregular, lambda i: str(i.freq))
    else:
        first, second = pd.Series([1, 2, 3], index=daily), pd.Series([1, 2, 3], index=irregular)
        assert_told_apart(decorator, first, second, lambda s: str(s.index.freq))


# --- 15: MappingProxyType arguments ---------------------------------------------------------


@BOTH
def test_mapping_proxies_are_cached_and_keyed_by_content(decorator: str) -> None:
    proxy = types.MappingProxyType
    assert_shared(decorator, proxy({"a": 1, "b": 2}), proxy({"a": 1, "b": 2}))
    assert_told_apart(decorator, proxy({"a": 1}), proxy({"a": 2}), dict)
    assert_told_apart(decorator, proxy({"a": 1}), {"a": 1}, lambda v: type(v).__name__)


@BOTH
def test_proxies_of_ordered_dicts_in_another_order_are_told_apart(decorator: str) -> None:
    # A proxy compares as the mapping it shows: two OrderedDicts in two orders are unequal.
    first = types.MappingProxyType(collections.OrderedDict(a=1, b=2))
    second = types.MappingProxyType(collections.OrderedDict(b=2, a=1))
    assert first != second
    assert_told_apart(decorator, first, second, lambda p: list(p))


@BOTH
def test_proxies_of_equal_dicts_in_another_insertion_order_meet(decorator: str) -> None:
    first = types.MappingProxyType({"a": 1, "b": 2})
    second = types.MappingProxyType({"b": 2, "a": 1})
    assert first == second
    assert_shared(decorator, first, second)


# --- 15: the pandas fast paths, for correctness ---------------------------------------------


def _pandas_pairs() -> list[Any]:
    """(id, first, second, reveal): pandas values a function tells apart."""
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    instants = pd.date_range("2020-01-01", periods=3, freq="h", tz="UTC")
    naive = pd.Series(pd.date_range("2020-01-01", periods=3, freq="D"))
    letters = ["a", "b", "a"]
    matrix = np.arange(6, dtype=np.int64).reshape(3, 2)
    by_label = pd.DataFrame(matrix, columns=["a", "b"])
    labels = [["a", "b"], [1, 2]]
    codes = [[0, 1], [0, 1]]
    return [
        (
            "tz-aware-columns-in-two-zones",
            pd.DataFrame({"t": instants}),
            pd.DataFrame({"t": instants.tz_convert("Asia/Tokyo")}),
            lambda df: df["t"].astype(str).tolist(),
        ),
        (
            "datetime-units-ns-vs-us",
            naive.astype("datetime64[ns]"),
            naive.astype("datetime64[us]"),
            lambda s: str(s.dtype),
        ),
        (
            "tz-aware-units-ns-vs-us",
            pd.Series(instants).astype("datetime64[ns, UTC]"),
            pd.Series(instants).astype("datetime64[us, UTC]"),
            lambda s: str(s.dtype),
        ),
        (
            "category-order",
            pd.Series(pd.Categorical(letters, categories=["a", "b"])),
            pd.Series(pd.Categorical(letters, categories=["b", "a"])),
            lambda s: list(s.cat.categories),
        ),
        (
            "category-unused",
            pd.Series(pd.Categorical(letters, categories=["a", "b"])),
            pd.Series(pd.Categorical(letters, categories=["a", "b", "c"])),
            lambda s: list(s.cat.categories),
        ),
        (
            "nullable-Int64-NA-vs-0",
            pd.Series([1, None, 3], dtype="Int64"),
            pd.Series([1, 0, 3], dtype="Int64"),
            lambda s: s.isna().tolist(),
        ),
        (
            "MultiIndex-names",
            pd.MultiIndex(levels=labels, codes=codes, names=["x", "y"]),
            pd.MultiIndex(levels=labels, codes=codes, names=["x", "z"]),
            lambda i: list(i.names),
        ),
        (
            "one-block-frame-labels-swapped",
            by_label,
            pd.DataFrame(matrix, columns=["b", "a"]),
            lambda df: df["a"].tolist(),
        ),
        (
            "one-block-frame-columns-reordered",
            by_label,
            by_label[["b", "a"]],
            lambda df: df.to_numpy().tolist(),
        ),
        (
            "object-None-string-vs-None",
            pd.Series(["a", "b", "None"], dtype=object),
            pd.Series(["a", "b", None], dtype=object),
            lambda s: s.tolist(),
        ),
        (
            "object-str-vs-None",
            pd.Series(["a", "b"], dtype=object),
            pd.Series(["a", None], dtype=object),
            lambda s: s.tolist(),
        ),
        (
            "object-str-with-NUL-split-differently",
            pd.Series(["a\x00b", "c"], dtype=object),
            pd.Series(["a", "\x00bc"], dtype=object),
            lambda s: s.tolist(),
        ),
        (
            "str-with-NUL-split-differently",
            pd.Series(["a\x00b", "c"]),
            pd.Series(["a", "\x00bc"]),
            lambda s: s.tolist(),
        ),
    ]


PANDAS_IDS = [
    "tz-aware-columns-in-two-zones",
    "datetime-units-ns-vs-us",
    "tz-aware-units-ns-vs-us",
    "category-order",
    "category-unused",
    "nullable-Int64-NA-vs-0",
    "MultiIndex-names",
    "one-block-frame-labels-swapped",
    "one-block-frame-columns-reordered",
    "object-None-string-vs-None",
    "object-str-vs-None",
    "object-str-with-NUL-split-differently",
    "str-with-NUL-split-differently",
]


@BOTH
@pytest.mark.parametrize("case", PANDAS_IDS)
def test_pandas_values_a_function_tells_apart(decorator: str, case: str) -> None:
    pairs = {name: (first, second, reveal) for name, first, second, reveal in _pandas_pairs()}
    assert list(pairs) == PANDAS_IDS
    first, second, reveal = pairs[case]
    assert_told_apart(decorator, first, second, reveal)


@BOTH
def test_a_frame_built_column_by_column_meets_the_consolidated_frame(decorator: str) -> None:
    pd = pytest.importorskip("pandas")
    built = pd.DataFrame({"a": [1, 2, 3]})
    built["b"] = [4, 5, 6]
    built["c"] = [7, 8, 9]
    consolidated = built.copy()
    blocks = getattr(getattr(built, "_mgr", None), "nblocks", None)
    if blocks is None:
        pytest.skip("pandas no longer exposes its blocks: the case cannot be built")
    assert (blocks, consolidated._mgr.nblocks) == (3, 1)
    assert built.equals(consolidated)
    assert_shared(decorator, built, consolidated)


@BOTH
@pytest.mark.parametrize("how", ["levels-swapped", "unused-level"])
def test_multiindexes_with_the_same_tuples_meet(decorator: str, how: str) -> None:
    pd = pytest.importorskip("pandas")
    if how == "levels-swapped":
        first = pd.MultiIndex(levels=[["a", "b"], [1, 2]], codes=[[0, 1], [0, 1]])
        second = pd.MultiIndex(levels=[["b", "a"], [2, 1]], codes=[[1, 0], [1, 0]])
    else:  # a filtered index keeps the levels it no longer uses
        first = pd.MultiIndex.from_tuples([("a", 1), ("b", 2)])[:1]
        second = pd.MultiIndex.from_tuples([("a", 1)])
    assert list(first) == list(second)
    assert first.equals(second)
    assert repr(first) == repr(second)
    assert_shared(decorator, first, second)


# --- second review 11, 13: datetimes in two zones that print alike; long doubles -------------


@BOTH
def test_tz_aware_columns_in_a_fixed_cet_and_the_cet_zone_are_told_apart(decorator: str) -> None:
    pd = pytest.importorskip("pandas")
    zoneinfo = pytest.importorskip("zoneinfo")
    utc = pd.Series(pd.to_datetime(["2024-07-01 12:00"]).tz_localize("UTC"))
    fixed = utc.dt.tz_convert(datetime.timezone(datetime.timedelta(hours=1), "CET"))
    zoned = utc.dt.tz_convert(zoneinfo.ZoneInfo("CET"))  # summer time in July
    assert str(fixed.dtype) == str(zoned.dtype)  # both print "datetime64[..., CET]"
    assert_told_apart(decorator, fixed, zoned, lambda s: s.dt.hour.tolist())


@BOTH
def test_long_double_arrays_equal_in_value_meet(decorator: str) -> None:
    np = pytest.importorskip("numpy")
    values = np.arange(1000, dtype=np.longdouble)
    again = values * 1  # equal contents in fresh memory (x87: 6 padding bytes of 16 each)
    assert np.array_equal(values, again)
    assert_shared(decorator, values, again)


# --- second review 16: string columns of 8192 rows and more ----------------------------------


def _strings(pd: Any, kind: str, words: list[str]) -> Any:
    if kind == "Series":
        return pd.Series(words)
    if kind == "DataFrame":
        return pd.DataFrame({"name": words, "n": range(len(words))})
    return pd.Index(words)


@pytest.mark.parametrize("decorator", ["bcache", "fcache"])
@pytest.mark.parametrize("kind", ["Series", "DataFrame", "Index"])
def test_ten_thousand_strings_are_cached_and_one_character_misses(
    decorator: str, kind: str
) -> None:
    pd = pytest.importorskip("pandas")
    words = [f"row{i}" for i in range(10_000)]
    edited = words.copy()
    edited[5_000] = "rox5000"  # one character, the same length
    calls: list[int] = []

    @(bcache if decorator == "bcache" else fcache)("strings")
    def count(value: Any) -> int:
        calls.append(len(value))
        return len(calls)

    assert _quietly(count, _strings(pd, kind, words)) == 1
    assert _quietly(count, _strings(pd, kind, words)) == 1, "equal strings missed each other"
    assert _quietly(count, _strings(pd, kind, edited)) == 2, "a one-character change hit"
    assert count.cache_info().hits == 1


# --- third round: padding inside structured records ----------------------------------------


@BOTH
def test_aligned_structured_arrays_equal_in_value_meet(decorator: str) -> None:
    np = pytest.importorskip("numpy")
    dtype = np.dtype([("a", "i1"), ("b", "f8")], align=True)  # 7 padding bytes per record

    def make() -> Any:
        np.full(1000, 7.3)  # leaves non-zero bytes where the next array is allocated
        records = np.empty(3, dtype=dtype)
        records["a"], records["b"] = 1, 2.0
        return records

    first, second = make(), make()
    assert (first == second).all()
    assert_shared(decorator, first, second)
    changed = make()
    changed["b"][1] = 2.5
    assert_told_apart(decorator, first, changed, lambda v: v["b"].tolist())
