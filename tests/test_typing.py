"""What a type checker sees of the public API, checked by running `mypy --strict`.

tests/typing/check_*.py must be clean (they assert types with `assert_type`); every
tests/typing/bad_*.py line marked `# error: code[, code...]` must be reported with exactly
those codes, and no other line at all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parent.parent
TYPING_DIR = Path(__file__).resolve().parent / "typing"
CHECKS = sorted(TYPING_DIR.glob("check_*.py"))
BAD = sorted(TYPING_DIR.glob("bad_*.py"))
_ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<text>.*)  \[(?P<code>[\w-]+)\]$")
_MARKER = re.compile(r"# error: ([\w-]+(?:, [\w-]+)*)\s*$")


def _mypy(path: Path) -> subprocess.CompletedProcess[str]:
    # Run from the repository root so that pyproject.toml's [tool.mypy] settings apply.
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-pretty", "--show-error-codes", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _errors(output: str) -> set[tuple[int, str]]:
    found = set()
    for line in output.splitlines():
        match = _ERROR.match(line)
        if match:
            found.add((int(match["line"]), match["code"]))
    return found


def _expected(path: Path) -> set[tuple[int, str]]:
    expected = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        marker = _MARKER.search(line)
        if marker:
            expected.update((number, code) for code in marker[1].split(", "))
    return expected


def test_the_typing_files_are_found() -> None:
    names = {path.name for path in CHECKS + BAD}
    assert {"check_decorators.py", "check_methods.py", "check_context.py"} <= names
    assert {"bad_call.py", "bad_options.py", "bad_methods.py"} <= names


@pytest.mark.parametrize("path", CHECKS, ids=lambda path: path.name)
def test_check_file_is_clean_under_mypy_strict(path: Path) -> None:
    proc = _mypy(path)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


@pytest.mark.parametrize("path", BAD, ids=lambda path: path.name)
def test_bad_file_reports_exactly_the_marked_errors(path: Path) -> None:
    expected = _expected(path)
    assert len(expected) >= 10, "a bad_*.py file lists its intended errors"
    proc = _mypy(path)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = _errors(proc.stdout)
    assert sorted(found - expected) == [], f"unexpected errors:\n{proc.stdout}"
    assert sorted(expected - found) == [], f"errors not reported:\n{proc.stdout}"


def test_a_misspelt_option_names_the_right_one() -> None:
    proc = _mypy(TYPING_DIR / "bad_options.py")
    assert 'Unexpected keyword argument "maxsise"' in proc.stdout
    assert 'did you mean "maxsize"?' in proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lint_runs_mypy_on_the_check_files_only() -> None:
    proc = subprocess.run(
        ["make", "--dry-run", "lint"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    commands = [line.split() for line in proc.stdout.splitlines() if "mypy" in line]
    typing_files = {
        Path(word).name for words in commands for word in words if word.startswith("tests/typing/")
    }
    assert typing_files == {path.name for path in CHECKS}, proc.stdout


# --- options: the TypedDicts the decorators' keywords are typed with ------------------------


def test_decorator_options_cover_every_config_field() -> None:
    from twat_cache.config import CacheConfig
    from twat_cache.decorators import CacheOptions, CommonOptions, UniversalOptions

    accepted = {"config"}
    for name, field in CacheConfig.model_fields.items():
        accepted.add(name)
        choices = getattr(field.validation_alias, "choices", None) or ()
        accepted.update(choice for choice in choices if isinstance(choice, str))
    assert set(typing.get_type_hints(CacheOptions)) == accepted
    assert not CacheOptions.__required_keys__
    # bcache/fcache take folder_name, maxsize, ttl (and bcache policy) positionally as well;
    # ucache also takes preferred_engine positionally.
    positional = {"folder_name", "maxsize", "ttl", "policy"}
    assert set(typing.get_type_hints(CommonOptions)) == accepted - positional
    assert set(typing.get_type_hints(UniversalOptions)) == accepted - positional - {
        "preferred_engine"
    }


# --- the two cases mypy got wrong before: fixed in CachedFunction.__get__ -------------------

_HEADER = """
from __future__ import annotations

from typing_extensions import assert_type

from twat_cache import mcache


class Service:
    @mcache
    @staticmethod
    def static_above(x: int) -> str:
        return str(x)

    @staticmethod
    @mcache
    def static_below(x: int) -> str:
        return str(x)

    @mcache
    @classmethod
    def cls_above(cls, x: int) -> str:
        return str(x)

    @classmethod
    @mcache
    def cls_below(cls, x: int) -> str:
        return str(x)

    @mcache(maxsize=3)
    @classmethod
    def cls_called(cls, x: int) -> str:
        return str(x)
"""

_STATIC_THROUGH_INSTANCE = """
service = Service()
assert_type(service.static_above(3), str)
assert_type(service.static_below(x=3), str)
assert_type(service.static_above.cache_delete(3), bool)
"""

_CLASSMETHOD_THROUGH_CLASS = """
assert_type(Service.cls_above(1), str)
assert_type(Service.cls_below(1), str)
assert_type(Service.cls_called(x=1), str)
"""


def _check_snippet(tmp_path: Path, body: str) -> None:
    snippet = tmp_path / "check_snippet.py"
    snippet.write_text(body)
    proc = _mypy(snippet)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cached_staticmethod_through_an_instance(tmp_path: Path) -> None:
    _check_snippet(tmp_path, _HEADER + _STATIC_THROUGH_INSTANCE)


def test_cached_classmethod_through_the_class(tmp_path: Path) -> None:
    _check_snippet(tmp_path, _HEADER + _CLASSMETHOD_THROUGH_CLASS)


def test_cacheconfig_accepts_the_documented_inputs(tmp_path: Path) -> None:
    _check_snippet(
        tmp_path,
        "from datetime import timedelta\n"
        "from twat_cache import CacheConfig\n"
        "CacheConfig(maxsize=256, ttl='5m')\n"
        "CacheConfig(maxsize='10MB', ttl=timedelta(hours=1))\n"
        "CacheConfig(timeout='500ms', cooldown=30, lease='2m', l1_ttl='2s')\n",
    )
