"""The check that `cache_refresh`, `cache_delete` and `cache_key` of a method get an
instance of its class first (a bound method cannot pass its instance: `obj.m.cache_refresh(x)`
would run the method with `x` as self): it refuses that mistake and never a call that works
(hostile review of issue 13, item 10)."""

from __future__ import annotations

from typing import Any

import pytest

from twat_cache import mcache


class Public:
    @mcache
    def m(self, x: int) -> tuple[int, int]:
        return (id(self), x)


Public.__module__ = "somepkg"  # the public package, as numpy's set_module does


class Source:
    @mcache
    def m(self, x: int) -> int:
        return x


class Borrower:
    pass


Borrower.m = Source.m  # type: ignore[attr-defined]


class Static:
    @staticmethod
    @mcache
    def s(self: Any, x: int) -> Any:  # a staticmethod: its first parameter is just "self"
        return (self, x)


def test_a_class_whose_module_was_reset_is_still_its_methods_class() -> None:
    obj = Public()
    assert obj.m(1) == (id(obj), 1)
    assert Public.m.cache_refresh(obj, 1) == (id(obj), 1)
    assert Public.m.cache_key(obj, 1) is not None
    assert Public.m.cache_delete(obj, 1) is True


def test_a_method_assigned_to_another_class_takes_that_class_instance() -> None:
    obj = Borrower()
    assert obj.m(1) == 1
    assert Borrower.m.cache_refresh(obj, 1) == 1


def test_a_staticmethod_with_a_parameter_named_self_is_not_checked() -> None:
    assert Static.s(5, 1) == (5, 1)
    assert Static.s.cache_refresh(5, 1) == (5, 1)


def test_the_mistake_itself_is_still_refused() -> None:
    obj = Public()
    with pytest.raises(TypeError, match=r"type\(obj\)\.m\.cache_refresh"):
        obj.m.cache_refresh(1)
