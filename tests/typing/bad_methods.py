"""Deliberately wrong uses of cached methods: `mypy --strict` MUST report each, with the code
in its `# error:` comment and nothing else (tests/test_typing.py checks the lines), proving
that what is bound (self, cls, or nothing for a staticmethod) is what Python binds.

Not part of `make lint`'s clean set: every error below is intended.
"""

from __future__ import annotations

from twat_cache import acache, bcache, mcache, ucache


class Service:
    @mcache
    def lookup(self, key: str) -> int:
        return len(key)

    @acache
    async def alookup(self, key: str) -> int:
        return len(key)

    @bcache("bad_methods")
    @staticmethod
    def static(x: int) -> str:
        return str(x)

    @ucache
    @classmethod
    def make(cls, x: int) -> str:
        return f"{cls.__name__}{x}"


service = Service()
# A method read from an instance has `self` bound; from the class it does not.
service.lookup(1)  # error: arg-type
service.lookup()  # error: call-arg
service.lookup(service, "k")  # error: call-arg, arg-type
Service.lookup("k")  # error: call-arg, arg-type
# A staticmethod binds nothing, through the class or an instance.
Service.static()  # error: call-arg
service.static(service, 1)  # error: call-arg, arg-type
service.static("1")  # error: arg-type
# A classmethod binds the class, through the class or an instance.
Service.make(Service, 1)  # error: call-arg, arg-type
service.make()  # error: call-arg
Service.make("1")  # error: arg-type
# Through an instance, the per-call helpers (which would need `self`) are not offered:
# they are read from the class, `Service.lookup.cache_delete(service, "k")`.
service.lookup.cache_delete("k")  # error: attr-defined
Service.lookup.cache_delete("k")  # error: call-arg, arg-type
result: str = service.lookup("k")  # error: assignment


async def main() -> int:
    value: str = await service.alookup("k")  # error: assignment
    return await service.alookup(1)  # error: arg-type
