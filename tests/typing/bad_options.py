"""Deliberately wrong decorator options: `mypy --strict` MUST report each, with the codes in
its `# error:` comment and nothing else (tests/test_typing.py checks the lines). A rejected
option also leaves the function untyped, which strict mode reports as `untyped-decorator`.

Not part of `make lint`'s clean set: every error below is intended.
"""

from __future__ import annotations

from datetime import timedelta

from twat_cache import CacheConfig, acache, bcache, fcache, mcache, ucache


# Unknown options (a typo names the option it meant).
@ucache(maxsise=3)  # error: call-overload, untyped-decorator
def typo(x: int) -> int:
    return x


@mcache(ttl=60, expire=10)  # error: call-overload, untyped-decorator
def unknown(x: int) -> int:
    return x


@bcache("folder", compresion=True)  # error: call-overload, untyped-decorator
def unknown_b(x: int) -> int:
    return x


# Options of the wrong type.
@mcache(ttl=[1])  # error: call-overload, untyped-decorator
def bad_ttl(x: int) -> int:
    return x


@acache(maxsize=1.5)  # error: call-overload, untyped-decorator
async def bad_maxsize(x: int) -> int:
    return x


@fcache(mmap_mode="w")  # error: call-overload, untyped-decorator
def bad_mmap(n: int) -> bytes:
    return bytes(n)


@bcache(policy="mru")  # error: call-overload, untyped-decorator
def bad_policy(x: int) -> int:
    return x


@ucache(serializer="yaml")  # error: call-overload, untyped-decorator
def bad_serializer(x: int) -> int:
    return x


@mcache(config={"maxsize": 3})  # error: call-overload, untyped-decorator
def bad_config(x: int) -> int:
    return x


# Positional options where the decorator takes none, or of the wrong type.
@mcache("folder")  # error: call-overload, untyped-decorator
def positional(x: int) -> int:
    return x


@bcache(3)  # error: call-overload, untyped-decorator
def folder_as_int(x: int) -> int:
    return x


@fcache("folder", "1GB", timedelta(days=1), "lru")  # error: call-overload, untyped-decorator
def too_many(n: int) -> bytes:
    return bytes(n)


@ucache(None, None, None, "lru", 3)  # error: call-overload, untyped-decorator
def engine_as_int(x: int) -> int:
    return x


# A config is not an option set; an option set is not a decorator.
cfg = CacheConfig(maxsize=3)
mcache(cfg)  # error: call-overload
ucache(maxsize=3)(3)  # error: call-overload
