"""Boundary values of every duration and size option: refused when the cache is created, with
an error naming the option, or served by every engine without a crash, a raising cache
method, a wrong value or a silent change of engine.

The matrix (every option x value x engine) is the boundaries stress scenario's
(scripts/stress/boundaries.py); its cases run in worker processes, since a bad value used to
abort the interpreter inside cachebox. The tests before it pin each rule on its own.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from pydantic import ByteSize, ValidationError

from twat_cache import CacheConfig, CacheContext, ConfigurationError, bcache, mcache, ucache
from twat_cache.config import DURATION_FLOOR, DURATION_HORIZON, SIZE_HORIZON, check_duration

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from stress import boundaries  # the scenario's matrix, from scripts/

DURATION_OPTIONS = ("ttl", "l1_ttl", "timeout", "cooldown", "lease")
NUMBER_OPTIONS = (*DURATION_OPTIONS, "maxsize", "l1_maxsize", "version")


def refused(option: str, value: Any) -> str:
    """`CacheConfig(option=value)` is refused, on that option; its message."""
    with pytest.raises(ValidationError) as info:
        CacheConfig(**{option: value})
    assert info.value.errors()[0]["loc"] == (option,)
    return str(info.value)


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize("option", DURATION_OPTIONS)
@pytest.mark.parametrize(
    "value",
    [
        sys.maxsize,
        2**64,
        10**400,  # past float's range
        1e300,
        DURATION_HORIZON + 1,
        "1000000000d",
        "1e400",  # a finite number, past float's range
        "9" * 400 + "d",
        timedelta.max,
        Fraction(10**400),
    ],
    ids=repr,
)
def test_a_duration_past_the_horizon_is_the_horizon(option: str, value: Any) -> None:
    assert getattr(CacheConfig(**{option: value}), option) == DURATION_HORIZON


@pytest.mark.parametrize("option", DURATION_OPTIONS)
def test_durations_up_to_the_horizon_are_kept(option: str) -> None:
    for seconds in (DURATION_FLOOR, 1.0, 86400.0, DURATION_HORIZON):
        assert getattr(CacheConfig(**{option: seconds}), option) == seconds


@pytest.mark.parametrize("option", DURATION_OPTIONS)
@pytest.mark.parametrize("value", [1e-9, 0.0009, "0.5ms", timedelta(microseconds=1)], ids=repr)
def test_a_duration_shorter_than_1ms_is_refused(option: str, value: Any) -> None:
    assert "at least 0.001 s" in refused(option, value)


@pytest.mark.parametrize("option", DURATION_OPTIONS)
@pytest.mark.parametrize(
    "value", [math.inf, math.nan, -math.inf, "inf", "nan", "-Infinity"], ids=repr
)
def test_a_duration_that_is_not_finite_is_refused_saying_what_is_taken(
    option: str, value: Any
) -> None:
    message = refused(option, value)
    assert "finite" in message
    assert "beyond 100 years is taken as 100 years" in message


@pytest.mark.parametrize("option", DURATION_OPTIONS)
@pytest.mark.parametrize("value", [0, -1, -(10**400), "-1e400", b"10", [1], "abc"], ids=repr)
def test_a_duration_that_is_not_positive_seconds_is_refused(option: str, value: Any) -> None:
    assert option in refused(option, value)


def test_the_horizon_fits_every_engine() -> None:
    # What bounds it (config.py says why): socket timeouts and thread waits stop at 2**63 ns,
    # cachebox at 2**63 s after the epoch, Redis PX through a script at about 1e17 ms.
    assert DURATION_HORIZON <= threading.TIMEOUT_MAX
    assert DURATION_HORIZON * 1e9 < 2**63
    assert DURATION_HORIZON * 1000 < 1e17
    assert DURATION_HORIZON >= 100 * 365 * 86400


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [sys.maxsize, 2**63, 2**64, 10**400])
def test_a_size_past_the_horizon_is_the_horizon(value: int) -> None:
    assert CacheConfig(maxsize=value).maxsize == SIZE_HORIZON
    assert CacheConfig(l1_maxsize=value).l1_maxsize == SIZE_HORIZON


@pytest.mark.parametrize("value", ["99999999999TB", "1" + "0" * 400 + "TB"])
def test_a_byte_size_past_the_horizon_is_the_horizon(value: str) -> None:
    size = CacheConfig(maxsize=value).maxsize
    assert isinstance(size, ByteSize)
    assert size == SIZE_HORIZON


@pytest.mark.parametrize("value", [0, -1, -(2**64)])
def test_l1_maxsize_below_one_is_refused(value: int) -> None:
    assert "l1_maxsize must be a number of entries (int >= 1)" in refused("l1_maxsize", value)


@pytest.mark.parametrize("value", [1.5, 100.0, math.inf, math.nan, "2MB", "10", [1]], ids=repr)
def test_l1_maxsize_counts_entries(value: Any) -> None:
    assert "l1_maxsize" in refused("l1_maxsize", value)


@pytest.mark.parametrize("value", [math.inf, math.nan, 1e300, -1, -(10**400)], ids=repr)
def test_maxsize_refuses_what_is_no_size(value: Any) -> None:
    assert "maxsize" in refused("maxsize", value)


# --- booleans and version --------------------------------------------------------------------


@pytest.mark.parametrize("option", NUMBER_OPTIONS)
@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_refused_by_every_number_option(option: str, value: bool) -> None:
    message = refused(option, value)
    assert option in message
    assert "bool" in message


@pytest.mark.parametrize("value", [True, 2.0, 1.5, b"v1", ["v1"]], ids=repr)
def test_version_takes_a_str_or_an_int_only(value: Any) -> None:
    assert "version must be a str or an int" in refused("version", value)


def test_version_true_is_not_taken_as_1() -> None:
    refused("version", True)
    assert CacheConfig(version=1).version == 1
    assert CacheConfig(version=2**64).version == 2**64


# --- a URL's own durations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "socket_timeout=1e10",
        "socket_connect_timeout=1e300",
        "timeout=inf",
        "socket_timeout=nan",
        "socket_timeout=0",
        "socket_timeout=-1",
        "socket_timeout=0.0000001",
        "socket_timeout=soon",
    ],
)
def test_a_url_duration_every_socket_cannot_take_is_refused(query: str) -> None:
    message = refused("url", f"redis://localhost:6379/0?{query}")
    assert f"url's {query.split('=')[0]}" in message


def test_a_url_with_usual_durations_is_kept() -> None:
    url = "redis://localhost:6379/0?socket_timeout=2.5&socket_connect_timeout=1&db=1"
    assert CacheConfig(url=url).url == url


# --- the per-entry ttl of an engine's set ------------------------------------------------------


# The pure-Python engines only: in this process, cachebox aborted the interpreter (the matrix
# below runs it, per-entry ttl included, in worker processes).
@pytest.mark.parametrize("engine", ["cachetools", "functools"])
def test_a_per_entry_ttl_is_bounded_as_the_option_is(engine: str) -> None:
    with CacheContext(engine_name=engine, ttl=60) as cache:
        cache.set("forever", 1, ttl=sys.maxsize)
        cache.set("spelled", 2, ttl="1h")
        assert (cache.get("forever"), cache.get("spelled")) == (1, 2)
        for bad in (math.nan, math.inf, 0, 1e-9, "abc", [1]):
            with pytest.raises(ConfigurationError, match="ttl"):
                cache.set("bad", 3, ttl=bad)
        assert cache.get("bad") is None
        assert len(cache) == 2


def test_check_duration_is_the_one_bound() -> None:
    assert check_duration(sys.maxsize) == DURATION_HORIZON
    assert check_duration("90s") == 90.0
    with pytest.raises(ValueError, match="lease must be at least"):
        check_duration(1e-6, "lease")


# --- the reported failures, on real engines ---------------------------------------------------


def run_python(source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "TWAT_CACHE_DIR": str(tmp_path / "root")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "decoration",
    [
        "mcache(ttl=sys.maxsize)",
        "mcache(ttl=2**64)",
        "mcache(ttl=1e300)",
        "mcache(cache_engine='cachebox', ttl=sys.maxsize)",
        "bcache(folder_name='b', l1_ttl=sys.maxsize)",
        "mcache(maxsize=2**64)",
    ],
)
def test_never_expiring_idioms_do_not_abort_the_interpreter(
    decoration: str, tmp_path: Path
) -> None:
    # In a child: before the fix, cachebox aborted the interpreter (SIGABRT) on the first call.
    run = run_python(
        f"""
        import sys
        from twat_cache import mcache, bcache
        runs = []
        @{decoration}
        def f(x):
            runs.append(x)
            return 2 * x
        assert (f(1), f(1)) == (2, 2)
        assert f.cache_engine.name in ("cachebox", "diskcache"), f.cache_engine.name
        print(len(runs), f.cache_info().hits)
        """,
        tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["1", "1"]


@pytest.mark.redis
def test_a_redis_ttl_of_sys_maxsize_caches(redis_url: str) -> None:
    import redis

    runs: list[int] = []

    @ucache(url=redis_url, name="forever", ttl=sys.maxsize)
    def f(x: int) -> int:
        runs.append(x)
        return 2 * x

    assert (f(1), f(1)) == (2, 2)
    assert runs == [1]  # before the fix, Redis refused the expiry: nothing was ever stored
    client = redis.Redis.from_url(redis_url)
    [key] = [k for k in client.scan_iter(b"twat_cache:{forever}:*") if b"#" not in k]
    assert client.pttl(key) > (DURATION_HORIZON - 60) * 1000
    client.close()


@pytest.mark.redis
@pytest.mark.parametrize("timeout", [1e10, sys.maxsize, "1000000000d"], ids=repr)
def test_a_huge_server_timeout_leaves_every_method_working(redis_url: str, timeout: Any) -> None:
    runs: list[int] = []

    @ucache(url=redis_url, name="patient", timeout=timeout, lease=timeout, cooldown=timeout)
    def f(x: int) -> int:
        runs.append(x)
        return 2 * x

    assert (f(1), f(1)) == (2, 2)
    assert runs == [1]
    assert f.cache_info().currsize == 1  # raised OverflowError before the fix
    assert f.cache_delete(1)
    f.cache_clear()  # raised OverflowError before the fix
    assert f.cache_info().currsize == 0


def test_a_tier_with_a_huge_ttl_serves_hits(tmp_path: Path) -> None:
    runs: list[int] = []

    @bcache(folder_name="tiered", l1_maxsize=2**64, l1_ttl=2**64)
    def f(x: int) -> int:
        runs.append(x)
        return 2 * x

    assert (f(1), f(1), f(1)) == (2, 2, 2)
    assert runs == [1]
    assert f.cache_parameters()["l1_engine"] == "cachebox"


def test_mcache_maxsize_past_every_bound_stays_on_cachebox() -> None:
    # 2**64 made cachebox refuse its bound, and the chain moved on to cachetools.
    @mcache(maxsize=2**64)
    def f(x: int) -> int:
        return x

    assert f(1) == 1
    assert f.cache_engine.name == "cachebox"
    assert f.cache_info().maxsize == SIZE_HORIZON


# --- the whole matrix, in worker processes ------------------------------------------------------

# The named values (the full profile of `make stress` adds seeded random ones).
NAMED = [c for c in boundaries.cases("full") if not c[2].startswith("~")]
LOCAL = [c for c in NAMED if c[0] not in boundaries._SERVER]
REMOTE = [c for c in NAMED if c[0] in boundaries._SERVER]


def _case_id(case: tuple[str, str, str]) -> str:
    return "-".join(case)


@pytest.fixture(scope="module")
def local_results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], Any]:
    root = tmp_path_factory.mktemp("boundaries-root")
    found = boundaries.run_all(LOCAL, None, root=str(root))
    return {case: found[i] for i, case in enumerate(LOCAL)}


@pytest.fixture(scope="module")
def remote_results(
    tmp_path_factory: pytest.TempPathFactory, redis_server: Any
) -> dict[tuple[str, str, str], Any]:
    root = tmp_path_factory.mktemp("boundaries-root")
    redis_server.start()
    found = boundaries.run_all(REMOTE, redis_server.url, root=str(root))
    return {case: found[i] for i, case in enumerate(REMOTE)}


def check_case(case: tuple[str, str, str], result: dict[str, Any]) -> None:
    assert result["outcome"] in ("refused", "works"), result  # not "crash" or "hang"
    if result["outcome"] == "refused":
        assert result["clear"], result["error"]
        return
    assert not result["faults"], result["faults"]
    assert not result["wrong"], result["wrong"]
    assert result["cached"], "a second call ran the function again"
    assert not result["switched"], f"served by {result.get('served')}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", LOCAL, ids=_case_id)
def test_boundary_value_on_a_local_engine(
    case: tuple[str, str, str], local_results: dict[tuple[str, str, str], Any]
) -> None:
    check_case(case, local_results[case])


@pytest.mark.redis
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", REMOTE, ids=_case_id)
def test_boundary_value_on_a_server_engine(
    case: tuple[str, str, str], remote_results: dict[tuple[str, str, str], Any]
) -> None:
    check_case(case, remote_results[case])


def test_a_number_whose_float_conversion_fails_is_refused_naming_the_option() -> None:
    class Stubborn(float):
        def __float__(self) -> float:
            raise RuntimeError("no")

    with pytest.raises(ValidationError, match="ttl must be a number of seconds"):
        CacheConfig(ttl=Stubborn(3))
