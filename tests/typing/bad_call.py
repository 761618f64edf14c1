"""Deliberately wrong calls of decorated functions: `mypy --strict` MUST report each, with the
code in its `# error:` comment and nothing else (tests/test_typing.py checks the lines),
proving type checkers see the decorated functions' own parameters and return types.

Not part of `make lint`'s clean set: every error below is intended.
"""

from __future__ import annotations

from twat_cache import acache, bcache, fcache, mcache, ucache


@mcache
def f(x: int) -> str:
    return str(x)


@mcache(maxsize=10)
def g(x: int, *, y: str = "") -> list[int]:
    return [x]


@acache
async def h(x: int) -> int:
    return x


@bcache("bad_call_b")
def b(width: int, height: int) -> int:
    return width * height


@fcache
def fc(n: int) -> bytes:
    return bytes(n)


@ucache(maxsize=3)
def u(name: str) -> str:
    return name


@ucache
async def ua(name: str) -> str:
    return name


# Wrong argument types.
f("x")  # error: arg-type
b(1, "2")  # error: arg-type
fc(n=b"3")  # error: arg-type
u(3)  # error: arg-type
# Missing, extra and unknown arguments.
g(1, "y")  # error: call-arg
g(1, z=2)  # error: call-arg
b(1)  # error: call-arg
fc()  # error: call-arg
u("a", "b")  # error: call-arg
# The return type is the function's.
result: int = f(1)  # error: assignment
size: str = b(1, 2)  # error: assignment
f(1).append(2)  # error: attr-defined
# The cache attributes take the function's parameters too.
f.cache_delete("x")  # error: arg-type
b.cache_refresh(1)  # error: call-arg
refreshed: int = u.cache_refresh("a")  # error: assignment
fc.cache_key(n="x")  # error: arg-type
f.cache_info().hitz  # error: attr-defined
f.cache_clear(1)  # error: call-arg
f.cache_name = 3  # error: assignment


async def main() -> str:
    value: str = await h(1)  # error: assignment
    await h("1")  # error: arg-type
    await ua.acache_delete(1)  # error: arg-type
    missing: int = h(1)  # error: assignment
    text: str = await ua()  # error: call-arg
    return value + text + str(missing)
