"""Deliberately wrong calls: `mypy --strict` MUST report each (tests/test_typing.py checks the
lines), proving type checkers see the decorated functions' own parameters.

Not part of `make lint`'s clean set: every error below is intended.
"""

from __future__ import annotations

from twat_cache import acache, mcache


@mcache
def f(x: int) -> str:
    return str(x)


@mcache(maxsize=10)
def g(x: int, *, y: str = "") -> list[int]:
    return [x]


@acache
async def h(x: int) -> int:
    return x


class Service:
    @mcache
    def lookup(self, key: str) -> int:
        return len(key)


f("x")  # error: arg-type
g(1, "y")  # error: call-arg (too many positional arguments)
g(1, z=2)  # error: call-arg (unexpected keyword)
result: int = f(1)  # error: assignment (str, not int)
f.cache_delete("x")  # error: arg-type
Service().lookup(1)  # error: arg-type
Service().lookup()  # error: call-arg (self is bound, key is missing)


async def main() -> str:
    value: str = await h(1)  # error: assignment (int, not str)
    return value
