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
