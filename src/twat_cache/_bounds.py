"""The bounds of every duration and size option, and their parsing: one place that turns
what a user writes (`"1h30m"`, `timedelta`, `"2MB"`, `sys.maxsize`) into a number every
engine of every chain can take, or refuses it naming the option. `config.py` applies it."""

from __future__ import annotations

import math
import numbers
import re
from datetime import timedelta
from typing import cast

from pydantic import ByteSize

__all__ = [
    "DURATION_FLOOR",
    "DURATION_HORIZON",
    "SIZE_HORIZON",
    "check_duration",
    "check_url_durations",
    "parse_size",
    "parse_ttl",
]

#: The longest duration any option holds: 100 years of 365 days, in seconds. A longer finite
#: duration (`sys.maxsize`, 2**64, `"1000000d"`) is taken as this one: never, in practice.
#: Every engine takes it, which is why it is not longer: cachebox aborts the interpreter for
#: an expiry past the year 292,277,026,596 (`SystemTime` overflow); socket timeouts and
#: thread waits raise `OverflowError` past 2**63 ns (292 years); Redis refuses a PX the
#: server cannot add to its clock, or past about 1e17 ms when it comes through a script.
DURATION_HORIZON = 100 * 365 * 86400.0
#: The shortest duration any option holds: 1 ms, the resolution of Redis expiry (PX), below
#: which a socket timeout is 1 ns (every operation then times out). Shorter is refused.
DURATION_FLOOR = 0.001
#: The largest size (entries or bytes): 2**63 - 1, the largest SQLite integer (diskcache
#: stores its byte limit in one) and the largest cachebox bound that is not refused. A
#: larger size is taken as this one: unbounded, in practice.
SIZE_HORIZON = 2**63 - 1
_HORIZON_TEXT = "100 years"

_TTL_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_TTL_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def _seconds(value: object, what: str) -> float:
    """The seconds `value` says, before any bound is checked (inf and nan included)."""
    if isinstance(value, bool):
        raise ValueError(
            f"{what} must be a number of seconds, a timedelta or a string like '90s', "
            f"not a bool ({value!r})"
        )
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, numbers.Real):  # int, float, Fraction, NumPy scalars
        try:
            return float(value)
        except OverflowError:  # an int beyond float's range: a finite duration past any bound
            return 2 * DURATION_HORIZON if cast("float", value) > 0 else -1.0
        except Exception as exc:  # a number type whose __float__ fails
            raise ValueError(
                f"{what} must be a number of seconds, and {type(value).__name__} "
                f"{_shown(value)} cannot be read as one ({type(exc).__name__})"
            ) from None
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _TTL_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"{what} {_shown(value)} is not a duration: use seconds or units ms/s/m/h/d/w "
                    "such as '90s', '1h30m' or '2d'"
                ) from None
            seconds = sum(float(n) * _TTL_UNITS[u] for n, u in parts)
        if math.isinf(seconds) and "inf" not in text:
            # A finite number written out ("1e400", 400 digits) past float's range, as an int
            # past it above: longer than any bound, not infinite.
            return math.copysign(2 * DURATION_HORIZON, seconds)
        return seconds
    raise ValueError(f"{what} must be seconds, a timedelta or a string, not {type(value).__name__}")


def check_duration(value: object, what: str = "ttl") -> float:
    """A duration in seconds that every engine can take: refused (`ValueError` naming `what`)
    when it is not a number of seconds, not finite, not above 0 or shorter than
    `DURATION_FLOOR`; taken as `DURATION_HORIZON` when longer.

    This is the one place where a duration is bounded: options at validation, and a
    per-entry ttl given to an engine's `set`, all come through here.

    >>> import sys
    >>> check_duration(90), check_duration(sys.maxsize) == DURATION_HORIZON
    (90.0, True)
    """
    seconds = _seconds(value, what)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(
            f"{what} must be a finite number of seconds, got {_shown(value)}; any duration beyond "
            f"{_HORIZON_TEXT} is taken as {_HORIZON_TEXT} (never, in practice)"
        )
    if seconds <= 0:
        raise ValueError(f"{what} must be a number of seconds greater than 0, got {_shown(value)}")
    if seconds < DURATION_FLOOR:
        raise ValueError(
            f"{what} must be at least {DURATION_FLOOR} s (1 ms, the finest duration every "
            f"engine keeps), got {_shown(value)}"
        )
    return min(seconds, DURATION_HORIZON)


def parse_ttl(value: object, what: str = "ttl") -> float | None:
    """Seconds from an int/float, a `timedelta` or a string such as ``"90s"`` or ``"1h30m"``
    (None stays None), bounded by `check_duration`.

    >>> parse_ttl("1h30m"), parse_ttl(timedelta(minutes=2)), parse_ttl(None)
    (5400.0, 120.0, None)
    """
    if value is None:
        return None
    return check_duration(value, what)


def parse_size(
    value: object, what: str = "maxsize", *, least: int = 0, units: bool = True
) -> int | ByteSize | None:
    """Entries as an int >= `least`, or bytes (a `ByteSize`) from a string like ``"500MB"``
    (only when `units`); a size past `SIZE_HORIZON` is taken as `SIZE_HORIZON`.

    >>> (
    ...     parse_size(128),
    ...     int(parse_size("2GiB")),
    ...     parse_size(None),
    ...     parse_size(2**64) == SIZE_HORIZON,
    ... )
    (128, 2147483648, None, True)
    """
    if value is None:
        return None
    kinds = f"a number of entries (int >= {least}) or None"
    if units:
        kinds += ", or a byte size such as '500MB'"
    if isinstance(value, bool) or not isinstance(value, int | (str if units else int)):
        raise ValueError(f"{what} must be {kinds}, not {type(value).__name__} ({_shown(value)})")
    if isinstance(value, int):
        if value < least:
            raise ValueError(f"{what} must be {kinds}, not {_shown(value)}")
        return min(value, SIZE_HORIZON)
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError(
            f"{what} {_shown(value)} is not a size: use an int or units like '500MB', '2GiB'"
        )
    number, unit = match.groups()
    size = float(number) * _SIZE_UNITS[unit.lower()]  # inf for an absurdly long number
    return ByteSize(SIZE_HORIZON if size >= SIZE_HORIZON else int(size))


#: The query options of a server URL that redis-py reads as seconds: they win over `timeout`,
#: and they reach the same sockets and waits, so they are held to the same bounds.
_URL_DURATIONS = ("socket_timeout", "socket_connect_timeout", "timeout")


def check_url_durations(url: str) -> None:
    """Refuse (`ValueError`) a server URL whose query gives a duration (``?socket_timeout=``)
    that `check_duration` refuses, or one past `DURATION_HORIZON`: a URL is passed on as it
    is, so a longer one cannot be taken as the horizon.

    >>> check_url_durations("redis://localhost:6379/0?socket_timeout=2.5")
    """
    from urllib.parse import parse_qsl, urlsplit

    for name, text in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name not in _URL_DURATIONS:
            continue
        what = f"url's {name}"
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"{what} must be a number of seconds, got {_shown(text)}") from None
        if check_duration(seconds, what) < seconds:
            raise ValueError(
                f"{what}={_shown(text)} is beyond {_HORIZON_TEXT}, which sockets cannot wait: "
                f"leave it out of the URL and give timeout= (any duration beyond "
                f"{_HORIZON_TEXT} is taken as {_HORIZON_TEXT})"
            )


def _shown(value: object) -> str:
    """`value`'s repr for a message, cut short: a 400-digit int would drown the message."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)} characters)"
