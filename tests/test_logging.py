"""The twat_cache logger: silent by default, enabled on request, never touching app handlers.

Import-time behaviour is checked in fresh interpreters (subprocesses), since this process
has imported twat_cache long ago.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

# One script, several scenarios (argv[1]); it prints one JSON line as its last output.
_SCRIPT = r"""
import json
import sys
import warnings

from loguru import logger

mode = sys.argv[1]
records = []
app_handler = logger.add(lambda m: records.append(m.record), level=0)
before = sorted(logger._core.handlers)

import twat_cache  # noqa: E402
import twat_cache.logging  # noqa: E402
from twat_cache import mcache  # noqa: E402
from twat_cache.engines.base import ALL_POLICIES, BaseEngine, Capabilities  # noqa: E402
from twat_cache.engines.manager import get_manager  # noqa: E402

after = sorted(logger._core.handlers)
if mode == "runtime":
    logger.enable("twat_cache")


class Faulty(BaseEngine):
    name = "faulty"
    capabilities = Capabilities(policies=ALL_POLICIES, ttl=True)

    def get(self, key, default=None):
        raise OSError("read failed")

    def set(self, key, value, ttl=None):
        raise OSError("write failed")

    def delete(self, key):
        return False

    def clear(self):
        pass

    def __len__(self):
        return 0


get_manager().register("faulty", Faulty)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")

    @mcache(cache_engine="faulty")
    def f(x):
        return x + 1

    # A preferred engine that cannot serve the policy: a fallback warning, logged too.
    @mcache(cache_engine="functools", policy="lfu")
    def g(x):
        return x

    values = [f(1) for _ in range(5)] + [g(2), g(2)]

logger.info("app message")
if mode == "runtime":
    logger.disable("twat_cache")
    cut = len(records)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        f(2)
    after_disable = [r["message"] for r in records[cut:] if r["name"].startswith("twat_cache")]
else:
    after_disable = []

print(json.dumps({
    "before": before,
    "after": after,
    "app_handler": app_handler,
    "values": values,
    "warnings": sorted({w.category.__name__ for w in caught}),
    "twat_records": [r["message"] for r in records if r["name"].startswith("twat_cache")],
    "app_records": [r["message"] for r in records if r["name"] == "__main__"],
    "after_disable": after_disable,
}))
"""


def _run(mode: str, debug: str | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("TWAT_CACHE_DEBUG", None)
    if debug is not None:
        env["TWAT_CACHE_DEBUG"] = debug
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    # The calls themselves always succeed, whatever the logging.
    assert result["values"] == [2, 2, 2, 2, 2, 2, 2]
    assert result["warnings"] == ["CacheFaultWarning", "CacheWarning"]
    assert result["app_records"] == ["app message"]
    return result


def test_import_adds_and_removes_no_handler() -> None:
    result = _run("default")
    assert result["after"] == result["before"]
    assert result["app_handler"] in result["after"]


def test_import_before_any_app_handler_adds_none() -> None:
    code = (
        "from loguru import logger\n"
        "before = sorted(logger._core.handlers)\n"
        "import twat_cache, twat_cache.engines.manager\n"
        "print(sorted(logger._core.handlers) == before, before)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "True", proc.stdout


@pytest.mark.parametrize("debug", [None, "0"])
def test_nothing_is_logged_by_default(debug: str | None) -> None:
    result = _run("default", debug)
    assert result["twat_records"] == []


@pytest.mark.parametrize("debug", ["1", "TRUE"])
def test_debug_env_enables_records(debug: str) -> None:
    messages = _run("default", debug)["twat_records"]
    assert any("__main__.f failed to read: OSError('read failed')" in m for m in messages)
    assert any("functools" in m and "unavailable" in m for m in messages), messages
    assert sum("failed to read" in m for m in messages) == 1  # reported once, not per call


def test_logger_enable_at_runtime() -> None:
    result = _run("runtime")
    messages = result["twat_records"]
    assert sum("failed to read" in m for m in messages) == 1, messages
    assert any("functools" in m and "unavailable" in m for m in messages), messages
    assert result["after_disable"] == []


@pytest.mark.skipif(
    os.environ.get("TWAT_CACHE_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"},
    reason="the suite runs with TWAT_CACHE_DEBUG set",
)
def test_logger_is_loguru_and_disabled_in_this_process() -> None:
    from loguru import logger as loguru_logger

    from twat_cache import _report
    from twat_cache.exceptions import CacheWarning
    from twat_cache.logging import logger

    assert logger is loguru_logger
    records: list[Any] = []
    handler = logger.add(lambda m: records.append(m.record), level=0)
    try:
        with pytest.warns(CacheWarning, match="probe"):
            _report.warn("probe")  # logs from inside twat_cache, then warns
        assert [r["message"] for r in records if r["name"].startswith("twat_cache")] == []
        logger.enable("twat_cache")
        with pytest.warns(CacheWarning, match="probe"):
            _report.warn("probe")
        assert [r["message"] for r in records if r["name"].startswith("twat_cache")] == ["probe"]
    finally:
        logger.disable("twat_cache")
        logger.remove(handler)
