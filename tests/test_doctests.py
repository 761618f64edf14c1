"""The examples in the public docstrings run, against a private cache root."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import twat_cache

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(twat_cache.__path__, prefix="twat_cache.")
    if not name.rsplit(".", 1)[-1].startswith("_")
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an engine whose optional library is missing
        pytest.skip(f"{module_name} does not import here: {exc}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"


PRIVATELY_DEFINED = sorted(
    name
    for name in twat_cache.__all__
    if getattr(getattr(twat_cache, name), "__module__", "twat_cache").rsplit(".", 1)[-1][:1] == "_"
)


@pytest.mark.parametrize("name", PRIVATELY_DEFINED)
def test_public_names_defined_in_private_modules_have_running_examples(name: str) -> None:
    """Public names defined in private modules (`disabled`, `CacheInfo`...) are not reached
    by the module walk above: their examples run here."""
    obj = getattr(twat_cache, name)
    finder = doctest.DocTestFinder(recurse=False)
    tests = finder.find(obj, name, globs=dict(vars(importlib.import_module(obj.__module__))))
    assert tests, f"{name} has no docstring"
    assert tests[0].examples, f"{name} has no example in its docstring"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"the example of {name} failed"
