"""The public surface: `twat_cache.__all__` is the documented API, every public name shows a
runnable example, modules users do not import are private (`_`-prefixed), and importing
twat_cache loads no backend library."""

from __future__ import annotations

import doctest
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import twat_cache
from twat_cache.engines.manager import CacheEngineManager

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(twat_cache.__file__).resolve().parent

#: The submodules users import by name (DESIGN.md §1 and the issue-6 list); engine modules
#: (`twat_cache.engines.<library>`) are added from the engine registry below.
USER_IMPORTABLE = {
    "twat_cache.cli",
    "twat_cache.config",
    "twat_cache.context",
    "twat_cache.decorators",
    "twat_cache.engines.base",
    "twat_cache.engines.manager",
    "twat_cache.exceptions",
    "twat_cache.identity",  # STYLE.md: the one module deciding what makes two functions the same
    "twat_cache.keys",
    "twat_cache.logging",
    "twat_cache.paths",
    "twat_cache.registry",
    "twat_cache.serializers",
}

#: Backend libraries: engines import them when a cache first asks for them, never before.
BACKENDS = (
    "aiocache",
    "cachebox",
    "cachetools",
    "diskcache",
    "joblib",
    "klepto",
    "numpy",
    "pandas",
    "redis",
)


def _documented_names() -> list[str]:
    """The names in backticks in the first column of docs/index.md's API table."""
    text = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    heading = re.search(r"^#+ Public API at a glance\s*$", text, flags=re.MULTILINE)
    assert heading, "docs/index.md has no 'Public API at a glance' section"
    names: list[str] = []
    rows = 0
    for line in text[heading.end() :].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        rows += 1
        first = line.strip("|").split("|", 1)[0].strip()
        if rows <= 2:  # the header row and the |---| row
            continue
        names += re.findall(r"`([^`]+)`", first)
    assert names, "the API table lists no names"
    return names


def _engine_modules() -> set[str]:
    # The built-in registry, not the process-wide manager other tests register engines in.
    return {f"twat_cache.engines.{name}" for name in CacheEngineManager().registered()}


def _modules() -> list[str]:
    """Every module under src/twat_cache, by file (whatever pkgutil would or would not
    enter), packages by their `__init__`."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append(".".join(("twat_cache", *parts)))
    return found


# --- __all__ is the documented API -------------------------------------------------------


def test_all_has_no_duplicates_and_every_name_exists() -> None:
    assert len(set(twat_cache.__all__)) == len(twat_cache.__all__)
    missing = [name for name in twat_cache.__all__ if not hasattr(twat_cache, name)]
    assert missing == []


def test_all_is_the_documented_api() -> None:
    documented = _documented_names()
    assert len(set(documented)) == len(documented), f"listed twice: {documented}"
    exported = set(twat_cache.__all__)
    assert sorted(exported - set(documented)) == [], "exported but not in docs/index.md"
    assert sorted(set(documented) - exported) == [], "in docs/index.md but not in __all__"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from twat_cache import *", namespace)
    namespace.pop("__builtins__", None)
    assert sorted(namespace) == sorted(twat_cache.__all__)


# --- every public name has a docstring with an example --------------------------------------

#: Names whose docstring has no example yet, each a known gap with where to fix it. These
#: xfail strictly: once the example is written the test passes and the entry must go.
_NO_EXAMPLE_YET: dict[str, str] = {}


def _example_params() -> list[object]:
    params: list[object] = []
    for name in twat_cache.__all__:
        if name == "__version__":
            continue  # a str: it cannot carry a docstring of its own
        marks = []
        if name in _NO_EXAMPLE_YET:
            marks.append(pytest.mark.xfail(strict=True, reason="GAP: " + _NO_EXAMPLE_YET[name]))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.parametrize("name", _example_params())
def test_public_name_has_a_docstring_with_an_example(name: str) -> None:
    # Presence only: tests/test_doctests.py runs the examples.
    doc = inspect.getdoc(getattr(twat_cache, name))
    assert doc, f"{name} has no docstring"
    examples = doctest.DocTestParser().get_examples(doc)
    assert examples, f"{name}'s docstring has no >>> example"


def test_the_gap_list_names_public_names_only() -> None:
    assert set(_NO_EXAMPLE_YET) <= set(twat_cache.__all__)


# --- private modules ---------------------------------------------------------------------


def test_modules_users_do_not_import_are_private() -> None:
    public = _modules()
    public = [name for name in public if not any(p.startswith("_") for p in name.split("."))]
    allowed = USER_IMPORTABLE | _engine_modules()
    packages = {name.rsplit(".", 1)[0] for name in allowed}  # twat_cache, twat_cache.engines
    assert sorted(set(public) - allowed - packages) == [], "public modules not in DESIGN.md's list"


def test_every_user_importable_module_exists() -> None:
    modules = set(_modules())
    expected = USER_IMPORTABLE | _engine_modules()
    assert sorted(expected - modules) == []
    assert len(_engine_modules()) >= 8  # functools ... redis: one module per library


# --- importing twat_cache loads no backend ------------------------------------------------


def _backends_loaded_by(statement: str) -> list[str]:
    code = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {BACKENDS!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return loaded


def test_importing_twat_cache_imports_no_backend() -> None:
    assert _backends_loaded_by("import twat_cache") == []


def test_the_user_importable_modules_besides_engines_import_no_backend() -> None:
    statement = "\n".join(f"import {name}" for name in sorted(USER_IMPORTABLE))
    assert _backends_loaded_by(statement) == []
