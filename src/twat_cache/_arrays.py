"""Content keys of NumPy arrays and scalars and of pandas objects: dtype, shape, contents.

Neither library is imported here: a value of theirs can only reach a key once the user has
imported it, so `sys.modules` has it. Contents are read once, as one buffer, and hashed
with BLAKE3 when large (see `_stable.buffer`); object arrays and object columns are keyed
element by element.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from typing import Any

from blake3 import blake3

from twat_cache._stable import BIG, atom, buffer, content_digest, encode, qualified
from twat_cache.exceptions import KeyBuildError

__all__ = ["encode_array", "memory_part"]


def _dtype_text(dtype: Any) -> str:
    # `dtype.str` tells byte order and units ('>i4', '<M8[ns]'); a structured or sub-array
    # dtype needs its whole layout (field names, offsets, shapes).
    if dtype.fields is None and dtype.subdtype is None:
        return str(dtype.str)
    return str(dtype.descr)


def _bytes_of(np: Any, array: Any) -> Any:
    # C order whatever the layout (no copy when already C-contiguous), as bytes.
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    used = _significant_bytes(np, array.dtype)
    if used is None:
        return data
    # x87 long doubles fill 10 bytes of 16: the rest is whatever memory held before, so
    # equal arrays would key apart. Only the bytes the value uses are read.
    part = array.dtype.itemsize // (2 if array.dtype.kind == "c" else 1)
    return np.ascontiguousarray(data.reshape(-1, part)[:, :used]).reshape(-1)


def _significant_bytes(np: Any, dtype: Any) -> int | None:
    """How many bytes of each (real or imaginary) part a long double fills, when fewer
    than it takes (little-endian x87 extended precision); None for every other dtype."""
    if dtype.kind not in "fc" or dtype.itemsize <= 8 or dtype.byteorder == ">":
        return None
    part = dtype.itemsize // (2 if dtype.kind == "c" else 1)
    info = np.finfo(dtype)
    bits = info.nmant + info.nexp + 1 + (1 if info.nmant == 63 else 0)  # x87: explicit bit
    used = -(-bits // 8)
    return used if used < part else None


def _ndarray(np: Any, value: Any, out: list[bytes], where: str, depth: int) -> None:
    out.append(b"A")
    qualified(type(value), out)
    atom(b"s", _dtype_text(value.dtype).encode(), out)
    encode(tuple(value.shape), out, where, depth + 1)
    if value.dtype.hasobject:  # pointers: key the objects themselves
        _objects(np, np.asarray(value).ravel().tolist(), out, where, depth)
    elif value.dtype.names is not None:  # field by field: padding between them is noise
        for name in value.dtype.names:
            _ndarray(np, np.asarray(value[name]), out, where, depth)
    else:
        buffer(b"a", _bytes_of(np, value), out)


def _objects(np: Any, items: list[Any], out: list[bytes], where: str, depth: int) -> None:
    # Python objects one by one; a column of str only (the common object column) as its
    # lengths and its UTF-8 text, two buffers, which is several times faster.
    if items and all(type(item) is str for item in items):
        texts = [item.encode("utf-8", "surrogatepass") for item in items]
        out.append(b"U")
        lengths = np.fromiter(map(len, texts), dtype=np.uint64, count=len(texts))
        buffer(b"a", lengths.view(np.uint8), out)
        buffer(b"b", b"".join(texts), out)
    else:
        encode(items, out, where, depth + 1)


def _values(np: Any, obj: Any, out: list[bytes], where: str, depth: int) -> None:
    # The values of a Series or an Index, with their dtype: numeric ones as one buffer,
    # dates, periods, categories and nullable numbers through their integer or numeric
    # arrays (the dtype's repr holds the unit and the timezone), other objects one by one.
    dtype = obj.dtype
    atom(b"s", repr(dtype).encode(), out)
    if isinstance(dtype, np.dtype) and not dtype.hasobject:
        _ndarray(np, obj.to_numpy(), out, where, depth)
        return
    array = obj.array
    categories = getattr(dtype, "categories", None)
    if categories is not None:  # repr may abridge the categories; the key must not
        _index(np, categories, out, where, depth)
        encode(bool(dtype.ordered), out, where, depth + 1)
        _ndarray(np, np.asarray(array.codes), out, where, depth)
    elif hasattr(array, "asi8"):  # datetimes (with a timezone), timedeltas, periods
        # The timezone itself: two zones may print alike (a fixed "CET" and the CET zone).
        encode(getattr(dtype, "tz", None), out, f"{where}.dtype.tz", depth + 1)
        _ndarray(np, np.asarray(array.asi8), out, where, depth)
    elif getattr(dtype, "numpy_dtype", None) is not None and hasattr(array, "isna"):
        # nullable numbers and booleans: the values with NA as zero, and where NA is
        zero = dtype.numpy_dtype.type(0)
        _ndarray(np, array.to_numpy(dtype=dtype.numpy_dtype, na_value=zero), out, where, depth)
        _ndarray(np, np.asarray(array.isna()), out, where, depth)
    else:
        _objects(np, obj.to_numpy(dtype=object).tolist(), out, where, depth)


def _index(np: Any, index: Any, out: list[bytes], where: str, depth: int) -> None:
    out.append(b"X")
    qualified(type(index), out)
    encode(list(index.names), out, f"{where}.index names", depth + 1)
    encode(getattr(index, "freqstr", None), out, f"{where}.freq", depth + 1)  # it prints
    if getattr(index, "levels", None) is not None:
        # A MultiIndex: the values of each level, row by row (not its levels and codes,
        # which differ between equal indexes: unused levels, levels in another order).
        for level in range(index.nlevels):
            _values(np, index.get_level_values(level), out, where, depth)
        return
    _values(np, index, out, where, depth)


def encode_array(value: Any, out: list[bytes], where: str, depth: int) -> bool:
    """Append the stable encoding of a NumPy or pandas value; False for any other value
    (an ndarray subclass such as a masked array goes through its pickle reduction)."""
    np = sys.modules.get("numpy")
    if np is None:
        return False
    if type(value) in (np.ndarray, np.memmap) or isinstance(value, np.generic):
        _ndarray(np, value, out, where, depth)
        return True
    pd = sys.modules.get("pandas")
    if pd is None:
        return False
    if isinstance(value, pd.DataFrame):
        dtypes = set(value.dtypes)
        # Columns of one NumPy dtype (its one block): one buffer, however many columns.
        single = len(dtypes) == 1 and isinstance(next(iter(dtypes)), np.dtype)
        single = single and not next(iter(dtypes)).hasobject
        out.append(b"W" if single else b"F")
        qualified(type(value), out)
        _index(np, value.columns, out, f"{where}.columns", depth)
        _index(np, value.index, out, f"{where}.index", depth)
        if single:  # the transpose is the block itself: C-contiguous, no copy
            _ndarray(np, value.to_numpy().T, out, where, depth)
        else:
            for position in range(value.shape[1]):
                _values(np, value.iloc[:, position], out, f"{where} column {position}", depth)
        encode(dict(value.attrs), out, f"{where}.attrs", depth + 1)
        return True
    if isinstance(value, pd.Series):
        out.append(b"Q")
        qualified(type(value), out)
        encode(value.name, out, f"{where}.name", depth + 1)
        _index(np, value.index, out, f"{where}.index", depth)
        _values(np, value, out, where, depth)
        encode(dict(value.attrs), out, f"{where}.attrs", depth + 1)
        return True
    if isinstance(value, pd.Index):
        _index(np, value, out, where, depth)
        return True
    return False


def memory_part(value: Any, norm: Callable[[Any], Hashable]) -> Hashable | None:
    """The in-process key part of a NumPy or pandas value, or None for any other value.

    Arrays are keyed by type, dtype, shape and contents: their bytes when small, a BLAKE3
    digest when large (no copy of a contiguous array), their elements through `norm` when
    they hold objects. pandas objects by the digest of their stable encoding."""
    np = sys.modules.get("numpy")
    if np is None:
        return None
    cls = type(value)
    if cls is np.ndarray or cls is np.memmap or isinstance(value, np.generic):
        dtype = value.dtype
        if dtype.hasobject:
            items = tuple(norm(item) for item in np.asarray(value).ravel().tolist())
            return (cls, _dtype_text(dtype), value.shape, items)
        if dtype.names is not None:  # field by field: padding between them is noise
            fields = tuple(memory_part(np.asarray(value[name]), norm) for name in dtype.names)
            return (cls, _dtype_text(dtype), value.shape, fields)
        data = _bytes_of(np, value)
        contents = data.tobytes() if data.nbytes < BIG else blake3(data).digest()
        return (cls, _dtype_text(dtype), value.shape, contents)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.DataFrame | pd.Series | pd.Index):
        try:
            return (cls, content_digest(value))
        except KeyBuildError:  # an object column holding an unpicklable value
            return None
    return None
