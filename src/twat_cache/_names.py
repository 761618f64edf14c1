"""Names of functions and classes: where each was written, and whether its name finds it."""

from __future__ import annotations

import functools
import os
import sys
import types
from typing import Any

__all__ = ["MAIN", "is_global", "module_names", "qualname_of", "target_of"]

MAIN = ("__main__", "__mp_main__")  # a script, and the same script in a spawned worker
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made at run time (every Python class)


def _defining_function(obj: Any) -> types.FunctionType | None:
    # A function whose code and globals tell where `obj` was written: the function, or a
    # method written in the class's own body (an Enum's inherited helpers are not).
    if type(obj) is types.FunctionType:
        return obj
    if isinstance(obj, type):
        prefix = f"{obj.__qualname__}."
        for attribute in vars(obj).values():
            attribute = getattr(attribute, "__func__", attribute)  # static/class methods
            if type(attribute) is types.FunctionType and attribute.__qualname__.startswith(prefix):
                return attribute
    return None


def module_names(obj: Any) -> tuple[str, str]:
    """(readable, unique) names of the module `obj` was written in: its `__module__` when
    that module is registered under that name and holds it; else the file it was written
    in (a script, whatever runs it; a file loaded under a borrowed name), or for
    ``python -m`` the module's own name."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        return "?", "?"
    home = sys.modules.get(module)
    registered = getattr(getattr(home, "__spec__", None), "name", None) == module
    if (module not in MAIN and registered) and (
        type(obj) is not types.FunctionType or obj.__globals__ is vars(home)
    ):
        return module, module
    function = _defining_function(obj)
    namespace = function.__globals__ if function is not None else vars(home) if home else {}
    name = getattr(namespace.get("__spec__"), "name", None)
    if module in MAIN and isinstance(name, str) and name not in MAIN:
        return name, name  # python -m package.tool
    path = function.__code__.co_filename if function is not None else ""
    if path.startswith("<") or not path:
        path = namespace.get("__file__") or ""
    if isinstance(path, str) and path and not path.startswith("<"):
        path = os.path.realpath(path)
        if not os.path.basename(os.path.dirname(path)).startswith("ipykernel_"):
            # A file is the same module whatever ran it (python, runpy, a loader naming it)
            return os.path.splitext(os.path.basename(path))[0], f"__main__:{path}"
    return module, module


def target_of(func: Any) -> Any:
    """The object whose module and name describe `func`: the function under partials and
    methods, the class of an instance."""
    while issubclass(type(func), functools.partial):
        func = func.func
    if type(func) is types.MethodType:
        func = func.__func__
    if isinstance(getattr(func, "__qualname__", None), str) or isinstance(func, type):
        return func
    return type(func)


def qualname_of(func: Any) -> str:
    """`func`'s qualified name; a partial's and an instance's are made of their parts."""
    if issubclass(type(func), functools.partial):
        return f"partial({qualname_of(func.func)})"
    qualname = getattr(func, "__qualname__", None)
    if isinstance(qualname, str):
        return qualname
    return f"{type(func).__qualname__}.__call__"  # an instance, called through its class


def is_global(obj: Any) -> bool:
    """Whether `obj` is found by its name (its module's attribute of its qualified name),
    as pickle finds it, so that every process means the same object by that name. A
    function or class made at run time (a closure, `type()`, `namedtuple()` in a function,
    a module's lazy `__getattr__` result) is not; a builtin is."""
    qualname = getattr(obj, "__qualname__", None)
    module_name = getattr(obj, "__module__", None)
    if not isinstance(qualname, str) or "<" in qualname:
        return False
    if not isinstance(module_name, str):
        return True  # a proxy's class: nothing better than its name
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = vars(found).get(part) if hasattr(found, "__dict__") else None
        if found is None:
            break
        found = getattr(found, "__func__", found)  # a staticmethod or classmethod
    if found is obj:
        return True
    # Not found by its name: made at run time, unless it is a builtin (a C function or a
    # static C type, which no Python code makes: a lazily loaded module's, say).
    if type(obj) is types.FunctionType:
        return False
    return isinstance(obj, type) and not obj.__flags__ & _HEAP_TYPE
