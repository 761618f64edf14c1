"""Helpers shared by test modules (importable: pytest puts tests/ on sys.path for conftest)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest


def _memory_engines() -> list[Any]:
    # cachebox (and in principle cachetools) is an optional dependency: skip, don't fall back.
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                name != "functools" and importlib.util.find_spec(name) is None,
                reason=f"{name} is not installed",
            ),
        )
        for name in ("cachebox", "cachetools", "functools")
    ]


#: The memory engines as pytest params, each skipped when its library is missing.
MEMORY_ENGINES = _memory_engines()
