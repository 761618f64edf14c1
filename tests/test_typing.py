"""What a type checker sees of decorated functions, checked by running `mypy --strict`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parent.parent
TYPING_DIR = Path(__file__).resolve().parent / "typing"
_ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<text>.*)  \[(?P<code>[\w-]+)\]$")


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


def _errors(output: str) -> list[tuple[int, str]]:
    found = []
    for line in output.splitlines():
        match = _ERROR.match(line)
        if match:
            found.append((int(match["line"]), match["code"]))
    return found


def test_check_decorators_is_clean_under_mypy_strict() -> None:
    proc = _mypy(TYPING_DIR / "check_decorators.py")
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def test_bad_calls_are_reported() -> None:
    path = TYPING_DIR / "bad_call.py"
    expected = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        marker = re.search(r"# error: ([\w-]+)", line)
        if marker:
            expected.append((number, marker[1]))
    assert len(expected) >= 5  # the snippet lists its intended errors
    proc = _mypy(path)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert sorted(set(_errors(proc.stdout))) == expected, proc.stdout


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
"""

_CLASSMETHOD_THROUGH_CLASS = """
assert_type(Service.cls_above(1), str)
assert_type(Service.cls_below(1), str)
assert_type(Service.cls_called(x=1), str)
"""


def _check_snippet(tmp_path: Path, body: str) -> None:
    snippet = tmp_path / "check_snippet.py"
    snippet.write_text(_HEADER + body)
    proc = _mypy(snippet)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.xfail(
    strict=True,
    reason="BUG: a cached staticmethod read from an instance is typed as a bound method "
    "(CachedFunction.__get__ binds the instance): Service().static_above(3) -> "
    "'Too many arguments for __call__ of BoundCachedFunction'",
)
def test_cached_staticmethod_through_an_instance(tmp_path: Path) -> None:
    _check_snippet(tmp_path, _STATIC_THROUGH_INSTANCE)


@pytest.mark.xfail(
    strict=True,
    reason="BUG: a cached classmethod read from the class is not bound to it: "
    "Service.cls_above(1) -> 'Missing positional argument \"x\"... expected type[Service]'",
)
def test_cached_classmethod_through_the_class(tmp_path: Path) -> None:
    _check_snippet(tmp_path, _CLASSMETHOD_THROUGH_CLASS)
