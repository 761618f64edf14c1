"""Stable keys: a canonical, injective byte encoding of arguments, the same in every process.

Every value is written as a one-byte tag and a self-delimiting payload: atoms carry a
length prefix, containers their type's name and a count before their items, so no two
different values (or argument tuples) give the same bytes. Members of sets and of mappings
whose equality ignores order are encoded one by one and sorted by their bytes, so the result
does not depend on insertion order or PYTHONHASHSEED; an OrderedDict keeps its order. Large
buffers (arrays, long bytes) enter the stream as their BLAKE3 digest, so keying a 100 MB
array reads it once at BLAKE3's speed. The rules themselves are stated in docs/keys.md.
"""

from __future__ import annotations

import copyreg
import hashlib
import math
import pickle
import struct
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping
from types import MappingProxyType, MethodType, ModuleType
from typing import Any

from twat_cache._report import shorten
from twat_cache.exceptions import KeyBuildError

__all__ = [
    "KEY_VERSION",
    "MAX_DEPTH",
    "NestingError",
    "atom",
    "buffer",
    "content_digest",
    "encode",
    "encode_reduced",
    "kind",
    "qualified",
    "stable_digest",
    "stable_key_builder",
]

#: Bumped whenever the stable encoding or a function's identity changes, so that older
#: persistent entries become misses (they age out under the cache's bound).
KEY_VERSION = "k2"

_LEN = struct.Struct(">Q")
_ATOMS: dict[type, bytes] = {type(None): b"N", bool: b"?", int: b"i", str: b"s", bytes: b"b"}
#: Buffers at least this long are written as their BLAKE3 digest rather than their bytes:
#: BLAKE3 reads about 3 GB/s on one core, the stream's BLAKE2b about 0.8 GB/s.
BIG = 1 << 16
#: Nesting deeper than this is refused (it is almost always a value that contains itself).
MAX_DEPTH = 200
#: Mappings whose equality ignores order; any other mapping is encoded in its order.
_UNORDERED_EQ = {dict.__eq__, Mapping.__eq__}
_SEQUENCE_TAGS = {tuple: b"T", list: b"L"}
_EXACT = {tuple, list, dict, set, frozenset, MappingProxyType}


def atom(tag: bytes, payload: bytes, out: list[bytes]) -> None:
    """Append one atom: its tag, its length and its payload."""
    out.append(tag)
    out.append(_LEN.pack(len(payload)))
    out.append(payload)


def buffer(tag: bytes, data: Any, out: list[bytes]) -> None:
    """Append a contiguous buffer (bytes, a memoryview, an array's bytes): raw when short,
    as its 256-bit BLAKE3 digest under the tag ``#`` + `tag` when long."""
    size = memoryview(data).nbytes
    if size < BIG:
        atom(tag, bytes(data), out)
        return
    from blake3 import blake3  # on first use: most programs never key a large buffer

    out.append(b"#" + tag)
    out.append(_LEN.pack(size))
    out.append(blake3(data).digest())


def qualified(cls: type, out: list[bytes]) -> None:
    """Append a class's full name (module and qualified name)."""
    atom(b"t", f"{cls.__module__}.{cls.__qualname__}".encode(), out)


#: Classes found by their global name, with their encoding: the common case (a namedtuple,
#: a dataclass of a module) is a dictionary lookup. Only global classes are kept, and they
#: live as long as their module anyway.
_GLOBAL_KINDS: dict[type, bytes] = {}


def kind(cls: type, out: list[bytes], where: str, depth: int) -> None:
    """Append the class of a value: by its name when its module holds it, else (a class made
    at run time: a NamedTuple or a dict subclass written in a function) by its identity,
    so that two such classes of one name never key alike."""
    known = _GLOBAL_KINDS.get(cls)
    if known is None:
        part: list[bytes] = []
        _identity().encode_callable(cls, part, f"the class of {where}", depth + 1)
        known = b"".join(part)
        if part[0] == b"G" and len(_GLOBAL_KINDS) < 4096:  # by its name: remembered
            _GLOBAL_KINDS[cls] = known
    out.append(known)


def _path(where: str) -> str:
    """An argument's path as an error message shows it: bounded, however deep it lies."""
    return shorten(where, 100)


class NestingError(KeyBuildError):
    """A value nested deeper than `MAX_DEPTH` (almost always one that contains itself)."""


def encode(value: Any, out: list[bytes], where: str, depth: int = 0) -> None:
    """Append the canonical bytes of `value`; `where` names it in error messages."""
    if depth > MAX_DEPTH:
        raise NestingError(f"argument {_path(where)} is nested too deeply (or refers to itself)")
    cls = type(value)
    tag = _ATOMS.get(cls)
    if tag is not None:
        if cls is str:
            payload = value.encode("utf-8", "surrogatepass")
        elif cls is bytes:
            buffer(b"b", value, out)
            return
        elif cls is int:  # bytes, not repr: repr refuses ints past 4300 digits
            payload = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
        else:
            payload = repr(value).encode()
        atom(tag, payload, out)
        return
    if cls is float:  # hex tells -0.0 from 0.0; every NaN is one key
        atom(b"f", (value.hex() if not math.isnan(value) else "nan").encode(), out)
        return
    if cls is complex:
        atom(b"c", f"{value.real.hex()},{value.imag.hex()}".encode(), out)
        return
    if cls is bytearray:
        buffer(b"B", value, out)
        return
    if isinstance(value, tuple | list):
        _sequence(value, out, where, depth)
    elif isinstance(value, Mapping):
        _mapping(value, out, where, depth)
    elif isinstance(value, set | frozenset):
        members = sorted(_encoded(v, f"{where} member", depth) for v in value)
        out.append(b"S")
        kind(cls, out, where, depth)
        out.append(_LEN.pack(len(members)))
        out.extend(members)
        _subclass_state(value, out, where, depth)
    elif cls.__module__.partition(".")[0] in ("numpy", "pandas") and _arrays().encode_array(
        value, out, where, depth
    ):
        return
    elif isinstance(value, MethodType):  # a bound method: its instance is part of its identity
        out.append(b"m")
        encode(value.__func__, out, where, depth + 1)
        encode(value.__self__, out, where, depth + 1)
    elif isinstance(value, pickle.PickleBuffer):  # out-of-band data of a reduction
        try:
            raw = value.raw()
        except BufferError as exc:
            raise KeyBuildError(f"argument {_path(where)} holds a non-contiguous buffer") from exc
        buffer(b"P", raw, out)
    else:
        _callable_or_object(value, out, where, depth)


def _encoded(value: Any, where: str, depth: int) -> bytes:
    part: list[bytes] = []
    encode(value, part, where, depth + 1)
    return b"".join(part)


def _sequence(value: Any, out: list[bytes], where: str, depth: int) -> None:
    cls = type(value)
    out.append(_SEQUENCE_TAGS[tuple if isinstance(value, tuple) else list])
    kind(cls, out, where, depth)
    out.append(_LEN.pack(len(value)))
    for i, item in enumerate(value):
        encode(item, out, f"{where}[{i}]", depth + 1)
    _subclass_state(value, out, where, depth)


def _mapping(value: Mapping[Any, Any], out: list[bytes], where: str, depth: int) -> None:
    cls = type(value)
    if isinstance(value, MappingProxyType):  # read-only view: keyed as the mapping it shows
        out.append(b"V")
        encode(value.copy(), out, where, depth + 1)
        return
    items = [
        _encoded(k, f"{where} key", depth) + _encoded(v, f"{where}[{k!r}]", depth)
        for k, v in value.items()
    ]
    if cls.__eq__ in _UNORDERED_EQ or (
        # Counter's own equality ignores order too (and treats a missing count as 0, which
        # the exact items here do not: stricter, so never a wrong value).
        cls.__module__ == "collections" and cls.__qualname__ == "Counter"
    ):
        items.sort()
        out.append(b"M")
    else:  # OrderedDict and any mapping with an equality of its own: in its order
        out.append(b"O")
    kind(cls, out, where, depth)
    out.append(_LEN.pack(len(items)))
    out.extend(items)
    if isinstance(value, defaultdict):  # the factory decides what a missing key reads
        encode(value.default_factory, out, f"{where}.default_factory", depth + 1)
    _subclass_state(value, out, where, depth)


def _subclass_state(value: Any, out: list[bytes], where: str, depth: int) -> None:
    # A subclass of a built-in container may carry attributes (and an equality reading
    # them): its pickled state goes into the key too. Exact built-ins have none.
    cls = type(value)
    if cls in _EXACT or cls is OrderedDict or cls is defaultdict:
        return
    reduced = _reduction(value, where)
    state = reduced[2] if isinstance(reduced, tuple) and len(reduced) > 2 else None
    encode(state, out, f"{where} state", depth + 1)


def _callable_or_object(value: Any, out: list[bytes], where: str, depth: int) -> None:
    bound_to = getattr(value, "__self__", None)
    if bound_to is not None and callable(value) and not isinstance(bound_to, ModuleType):
        # A builtin bound method ("a".upper, {}.get): its object is part of its identity.
        out.append(b"n")
        atom(b"s", f"{type(bound_to).__qualname__}.{value.__name__}".encode(), out)
        encode(bound_to, out, where, depth + 1)
        return
    if isinstance(value, ModuleType):
        atom(b"D", value.__name__.encode(), out)
        return
    if isinstance(value, type) or (
        callable(value) and isinstance(getattr(value, "__qualname__", None), str)
    ):
        # By its global name, or (a lambda, a closure, a class a function made) by what it
        # is: its code and captured values, the same in every process that builds it alike.
        _identity().encode_callable(value, out, where, depth)
        return
    encode_reduced(value, out, where, depth)


def _reduction(value: Any, where: str) -> Any:
    """`value`'s pickle reduction, found as pickle finds it (copyreg's table first:
    re.Pattern lives there); an object pickle refuses has no stable key."""
    try:
        reducer = copyreg.dispatch_table.get(type(value))
        if reducer is not None:
            return reducer(value)
        return value.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise KeyBuildError(
            f"argument {_path(where)} ({shorten(type(value).__name__, 60)}) cannot be pickled, "
            f"so it has no key stable across processes: pass key= or ignore= for it "
            f"({shorten(str(exc), 120)})"
        ) from exc


def encode_reduced(value: Any, out: list[bytes], where: str, depth: int) -> None:
    """Append `value` as its pickle reduction: its class, constructor and state."""
    # Any other object is encoded through its pickle reduction (constructor and state), as
    # pickle itself finds it (copyreg's table first: re.Pattern lives there), so an object
    # whose repr is `<X object at 0x...>` still gets a key that is the same in every process.
    cls = type(value)
    reduced = _reduction(value, where)
    if isinstance(reduced, str):  # a global singleton, pickled by name
        atom(b"G", f"{cls.__module__}.{reduced}".encode(), out)
        return
    out.append(b"R")
    kind(cls, out, where, depth)
    parts = list(reduced[:5]) + [None] * (5 - len(reduced[:5]))
    constructor, args, state, list_items, dict_items = parts
    encode(constructor, out, f"{where} constructor", depth + 1)
    encode(args, out, where, depth + 1)
    encode(state, out, where, depth + 1)
    encode(list(list_items) if list_items is not None else None, out, where, depth + 1)
    encode(dict(dict_items) if dict_items is not None else None, out, where, depth + 1)


def _arrays() -> Any:
    # Imported on first use: NumPy and pandas are met only when the user passes them.
    from twat_cache import _arrays as module

    return module


def _identity() -> Any:
    from twat_cache import identity as module  # identity encodes its values through here

    return module


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
                encode(value, out, names[i] if i < len(names) else f"#{i}", 0)
        if kwargs:
            encode(dict(kwargs), out, "**kwargs", 0)
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


def content_digest(value: Any, where: str = "argument") -> bytes:
    """A 256-bit digest of `value`'s canonical encoding: the in-process key of values whose
    content is large (arrays, data frames)."""
    from blake3 import blake3

    out: list[bytes] = []
    encode(value, out, where, 0)
    return blake3(b"".join(out)).digest()
