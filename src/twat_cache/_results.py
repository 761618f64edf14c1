"""What a cache may store of a call's result: never what can be consumed only once."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from datetime import time as clock
from decimal import Decimal
from fractions import Fraction
from io import IOBase
from typing import Any

__all__ = ["PLAIN_RESULTS", "consumable"]

#: Result types stored without a look at them; any other result is checked out of line
#: (`consumable`), since what can be consumed once must never be stored. Tuples, lists and
#: dicts are checked too: `return header, reader` holds an iterator.
PLAIN_RESULTS: frozenset[type] = frozenset(
    {int, float, complex, bool, str, bytes, bytearray, type(None), set, frozenset}
    | {Decimal, Fraction, datetime, date, clock, timedelta}
)
#: Containers up to this many items are searched (one level deep) for something consumed
#: once: a miss pays for a look at a record, never for a scan of a large result.
SEARCHED = 64


def consumable(value: Any) -> str | None:
    """Why `value` can be consumed once (a coroutine, a generator or another iterator, an
    open file or cursor), with what to do instead; None for a value that can be stored. A
    small tuple, list or dict is consumable when one of its items is."""
    kind = type(value)
    if hasattr(kind, "__await__"):
        return (
            f"an awaitable {kind.__name__}: decorate the async def itself (an async __call__ "
            "or a partial of an async def are recognized)"
        )
    if (
        hasattr(kind, "__next__")
        or hasattr(kind, "__anext__")
        or isinstance(value, IOBase)
        or (hasattr(kind, "__iter__") and hasattr(kind, "close"))  # a temporary file, a cursor
    ):
        return f"a {kind.__name__}, consumed once: cache a function returning a list instead"
    if kind in (tuple, list, dict) and len(value) <= SEARCHED:
        for item in value.values() if kind is dict else value:
            if type(item) not in PLAIN_RESULTS and type(item) not in _CONTAINERS:
                reason = consumable(item)
                if reason is not None:
                    return reason
    return None


_CONTAINERS = (tuple, list, dict)  # searched at the top level only
