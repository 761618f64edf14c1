"""CacheConfig: parsing, validation, aliases, merging, and errors raised at decoration time."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ByteSize, ValidationError

from twat_cache import CacheConfig, ConfigurationError, create_cache_config, mcache
from twat_cache.config import DEFAULT_MAXSIZE


def never_called(x: int) -> int:
    raise AssertionError("the function must not run")


class Opaque:
    """An object no option accepts (with a stable repr, for test ids)."""

    def __repr__(self) -> str:
        return "Opaque()"


def assert_invalid(field: str, **options: Any) -> ValidationError:
    """`CacheConfig(**options)` fails validation, and the first error is on `field`."""
    with pytest.raises(ValidationError) as info:
        CacheConfig(**options)
    assert info.value.errors()[0]["loc"] == (field,)
    return info.value


# --- ttl ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (30, 30.0),
        (0.25, 0.25),
        (1e-3, 0.001),
        (timedelta(minutes=2), 120.0),
        (timedelta(milliseconds=250), 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("  30s  ", 30.0),
        ("1h 30m", 5400.0),
        ("1H30M", 5400.0),
        ("90", 90.0),
        ("0.5", 0.5),
        (None, None),
    ],
)
def test_ttl_parsing(given: Any, seconds: float | None) -> None:
    config = CacheConfig(ttl=given)
    assert config.ttl == seconds
    assert config.ttl is None or type(config.ttl) is float


@pytest.mark.parametrize(
    "given",
    [
        -1,
        0,
        0.0,
        -0.5,
        math.nan,
        math.inf,
        -math.inf,
        True,
        False,
        "abc",
        "5x",
        "1h30",
        "",
        "  ",
        "-5s",
        "0s",
        "nan",
        "inf",
        "s",
        "1h-30m",
        [30],
        (30,),
        {"seconds": 30},
        timedelta(0),
        timedelta(seconds=-5),
        Opaque(),
    ],
    ids=repr,
)
def test_ttl_rejects_bad_values(given: Any) -> None:
    assert_invalid("ttl", ttl=given)


def test_ttl_error_message_names_the_field_and_the_value() -> None:
    error = assert_invalid("ttl", ttl="5x")
    assert "ttl" in str(error)
    assert "5x" in str(error)


# --- maxsize -----------------------------------------------------------------------------


def test_maxsize_default_and_given() -> None:
    default = CacheConfig()
    assert default.maxsize == DEFAULT_MAXSIZE
    assert not default.maxsize_given
    assert not default.size_in_bytes

    for value in (0, 1, 128, 10**9):
        config = CacheConfig(maxsize=value)
        assert config.maxsize == value
        assert config.maxsize_given
        assert not config.size_in_bytes

    unbounded = CacheConfig(maxsize=None)
    assert unbounded.maxsize is None
    assert unbounded.maxsize_given
    assert not unbounded.size_in_bytes


@pytest.mark.parametrize(
    ("given", "size"),
    [
        ("500MB", 500_000_000),
        ("2GiB", 2**31),
        ("500 MB", 500_000_000),
        ("1.5kb", 1500),
        ("10KiB", 10240),
        ("1TB", 10**12),
        ("64b", 64),
        (" 3mib ", 3 * 2**20),
    ],
)
def test_maxsize_byte_strings_become_byte_sizes(given: str, size: int) -> None:
    config = CacheConfig(maxsize=given)
    assert isinstance(config.maxsize, ByteSize)
    assert config.maxsize == size
    assert config.size_in_bytes
    assert config.maxsize_given


@pytest.mark.parametrize(
    "given",
    [-1, True, False, 1.5, 100.0, "lots", "5 parsecs", "", "MB", "-5MB", [10], Opaque()],
    ids=repr,
)
def test_maxsize_rejects_bad_values(given: Any) -> None:
    assert_invalid("maxsize", maxsize=given)


# --- policy ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "rr"])
def test_policy_literals(policy: str) -> None:
    assert CacheConfig(policy=policy).policy == policy


def test_policy_default_is_lru() -> None:
    assert CacheConfig().policy == "lru"


@pytest.mark.parametrize("given", ["LRU", "lru2", "", "random", None, 1], ids=repr)
def test_policy_rejects_other_values(given: Any) -> None:
    assert_invalid("policy", policy=given)


def test_policy_ttl_needs_a_ttl() -> None:
    with pytest.raises(ConfigurationError, match="ttl"):
        CacheConfig(policy="ttl")
    assert CacheConfig(policy="ttl", ttl=5).policy == "ttl"


def test_ttl_without_policy_selects_the_ttl_policy() -> None:
    config = CacheConfig(ttl="5m")
    assert config.policy == "ttl"
    assert config.ttl == 300.0


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "rr"])
def test_explicit_policy_with_ttl_is_kept(policy: str) -> None:
    config = CacheConfig(policy=policy, ttl=60)
    assert config.policy == policy
    assert config.ttl == 60.0


# --- aliases -----------------------------------------------------------------------------


def test_preferred_engine_is_an_alias_of_cache_engine() -> None:
    assert CacheConfig(preferred_engine="cachetools").cache_engine == "cachetools"
    assert CacheConfig(cache_engine="cachetools").cache_engine == "cachetools"
    assert create_cache_config(preferred_engine="functools").cache_engine == "functools"


@pytest.mark.parametrize(
    ("given", "stored"),
    [(True, "zlib"), (False, None), (None, None), ("zlib", "zlib"), ("lzma", "lzma")],
)
def test_compress_values_and_alias(given: Any, stored: str | None) -> None:
    assert CacheConfig(compress=given).compress == stored
    assert CacheConfig(compression=given).compress == stored


@pytest.mark.parametrize("given", ["gzip", 1, 0, "ZLIB"], ids=repr)
def test_compress_rejects_other_values(given: Any) -> None:
    with pytest.raises(ValidationError, match="compress"):
        CacheConfig(compress=given)


def test_serializer_values() -> None:
    assert CacheConfig().serializer == "pickle"
    assert CacheConfig(serializer="json").serializer == "json"
    assert_invalid("serializer", serializer="yaml")


# --- other fields ------------------------------------------------------------------------


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        CacheConfig(max_size=10)
    assert info.value.errors()[0]["loc"] == ("max_size",)
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_unknown_decorator_option_is_rejected_at_decoration_naming_it() -> None:
    with pytest.raises(ValidationError, match="max_entries") as info:
        mcache(max_entries=10)
    assert info.value.errors()[0]["loc"] == ("max_entries",)


def test_config_is_frozen() -> None:
    config = CacheConfig(maxsize=10)
    with pytest.raises(ValidationError):
        config.maxsize = 20  # type: ignore[misc]  # assigning is what is tested
    with pytest.raises(ValidationError):
        config.policy = "lfu"  # type: ignore[misc]  # assigning is what is tested
    assert config.maxsize == 10
    assert config.policy == "lru"


def test_config_compares_by_value() -> None:
    assert CacheConfig(maxsize=10, ttl="1m") == CacheConfig(maxsize=10, ttl=60)
    assert CacheConfig(maxsize=10) != CacheConfig(maxsize=11)


def test_key_must_be_callable() -> None:
    assert CacheConfig(key=len).key is len
    assert CacheConfig(key=None).key is None
    assert_invalid("key", key=5)
    assert_invalid("key", key="x")


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("a", ("a",)),
        (["a", "b"], ("a", "b")),
        (("a",), ("a",)),
        ([], ()),
        ({"z": 1}.keys(), ("z",)),
    ],
)
def test_ignore_accepts_a_name_or_names(given: Any, stored: tuple[str, ...]) -> None:
    assert CacheConfig(ignore=given).ignore == stored


def test_ignore_rejects_non_names() -> None:
    assert_invalid("ignore", ignore=5)
    with pytest.raises(ValidationError, match="ignore"):
        CacheConfig(ignore=[1, 2])


def test_ignore_duplicates_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="twice"):
        CacheConfig(ignore=["session", "session"])


@pytest.mark.parametrize("field", ["name", "cache_engine"])
@pytest.mark.parametrize("given", ["", "   "])
def test_empty_names_are_rejected(field: str, given: str) -> None:
    assert_invalid(field, **{field: given})


@pytest.mark.parametrize("given", ["", "   ", "a/b", "..", "/abs", "x\0y"])
def test_bad_folder_names_are_configuration_errors(given: str) -> None:
    # A folder name is checked as a path component, before anything touches the disk.
    with pytest.raises(ConfigurationError, match="folder_name"):
        CacheConfig(folder_name=given)


@pytest.mark.parametrize("field", ["typed", "lock", "fallback", "secure"])
def test_boolean_flags(field: str) -> None:
    assert getattr(CacheConfig(), field) is True
    assert getattr(CacheConfig(**{field: False}), field) is False
    assert_invalid(field, **{field: "maybe"})


# --- create_cache_config, merged, config= ------------------------------------------------


def test_create_cache_config_validates_keywords() -> None:
    config = create_cache_config(maxsize=10, ttl="1m", preferred_engine="cachetools")
    assert isinstance(config, CacheConfig)
    assert (config.maxsize, config.ttl, config.policy, config.cache_engine) == (
        10,
        60.0,
        "ttl",
        "cachetools",
    )
    with pytest.raises(ValidationError, match="ttl"):
        create_cache_config(ttl="soon")
    with pytest.raises(ValidationError, match="bogus"):
        create_cache_config(bogus=True)


def test_merged_overrides_and_keeps_the_rest() -> None:
    base = CacheConfig(maxsize=10, ttl=60, name="base")
    merged = base.merged(maxsize=20)
    assert (merged.maxsize, merged.ttl, merged.policy, merged.name) == (20, 60.0, "ttl", "base")
    assert base.maxsize == 10  # the original is untouched
    assert base.merged() == base


def test_merged_derives_the_policy_again() -> None:
    timed = CacheConfig(ttl=60)
    assert timed.policy == "ttl"
    untimed = timed.merged(ttl=None)
    assert untimed.ttl is None
    assert untimed.policy == "lru"
    explicit = CacheConfig(policy="lfu", ttl=60).merged(maxsize=5)
    assert explicit.policy == "lfu"
    with pytest.raises(ConfigurationError):
        CacheConfig(policy="ttl", ttl=60).merged(ttl=None)


def test_merged_validates_overrides() -> None:
    with pytest.raises(ValidationError) as info:
        CacheConfig(maxsize=10).merged(ttl=-1)
    assert info.value.errors()[0]["loc"] == ("ttl",)
    with pytest.raises(ValidationError, match="bogus"):
        CacheConfig().merged(bogus=1)


def test_merged_keeps_a_byte_size_and_the_given_flags() -> None:
    sized = CacheConfig(maxsize="2GiB").merged(ttl=5)
    assert sized.size_in_bytes
    assert sized.maxsize == 2**31
    assert not CacheConfig().merged(ttl=5).maxsize_given


@pytest.mark.parametrize(
    ("base", "override", "field", "expected"),
    [
        (
            {"cache_engine": "cachebox"},
            {"preferred_engine": "cachetools"},
            "cache_engine",
            "cachetools",
        ),
        ({"compress": "lzma"}, {"compression": "zlib"}, "compress", "zlib"),
    ],
)
def test_merged_accepts_an_alias_overriding_a_set_field(
    base: dict[str, Any], override: dict[str, Any], field: str, expected: str
) -> None:
    assert getattr(CacheConfig(**base).merged(**override), field) == expected


def test_decorator_alias_keyword_overrides_the_config() -> None:
    @mcache(config=CacheConfig(cache_engine="cachebox", maxsize=5), preferred_engine="cachetools")
    def g(x: int) -> int:
        return x

    assert g.cache_parameters()["cache_engine"] == "cachetools"
    assert g.cache_engine.name == "cachetools"
    assert g.cache_parameters()["maxsize"] == 5


def test_decorator_config_with_keyword_override() -> None:
    @mcache(config=CacheConfig(maxsize=10, ttl=60), maxsize=20)
    def g(x: int) -> int:
        return x

    params = g.cache_parameters()
    assert params["maxsize"] == 20
    assert params["ttl"] == 60.0
    assert params["policy"] == "ttl"
    assert g.cache_info().maxsize == 20


def test_decorator_config_alone_is_used_as_is() -> None:
    config = CacheConfig(maxsize=7, policy="fifo")

    @mcache(config=config)
    def g(x: int) -> int:
        return x

    assert g.cache_parameters()["maxsize"] == 7
    assert g.cache_parameters()["policy"] == "fifo"


def test_decorator_override_rederives_the_policy() -> None:
    @mcache(config=CacheConfig(ttl=60), ttl=None)
    def g(x: int) -> int:
        return x

    assert g.cache_parameters()["ttl"] is None
    assert g.cache_parameters()["policy"] == "lru"


@pytest.mark.parametrize("given", [{"maxsize": 3}, "lru", 5], ids=repr)
def test_config_must_be_a_cache_config(given: Any) -> None:
    with pytest.raises(ConfigurationError, match="CacheConfig"):
        mcache(config=given)


# --- every bad value raises at decoration time -------------------------------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"ttl": -1}, ValidationError),
        ({"ttl": "soon"}, ValidationError),
        ({"maxsize": -1}, ValidationError),
        ({"maxsize": "lots"}, ValidationError),
        ({"policy": "mru"}, ValidationError),
        ({"key": 5}, ValidationError),
        ({"ignore": 5}, ValidationError),
        ({"compress": "gzip"}, ValidationError),
        ({"serializer": "yaml"}, ValidationError),
        ({"name": ""}, ValidationError),
        ({"typed": "maybe"}, ValidationError),
        ({"bogus": 1}, ValidationError),
        ({"config": CacheConfig(), "ttl": 0}, ValidationError),
        ({"policy": "ttl"}, ConfigurationError),
        ({"ignore": ["x", "x"]}, ConfigurationError),
        ({"config": {"maxsize": 1}}, ConfigurationError),
        ({"cache_engine": "no-such-engine"}, ConfigurationError),
        ({"config": CacheConfig(), "preferred_engine": "no-such-engine"}, ConfigurationError),
    ],
    ids=repr,
)
def test_bad_options_raise_before_any_function_is_decorated(
    options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        mcache(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"ignore": "not_a_parameter"},
        {"key": lambda x: x, "ignore": "x"},
    ],
    ids=["ignore-unknown-name", "key-with-ignore"],
)
def test_bad_combinations_raise_when_decorating_not_when_calling(options: dict[str, Any]) -> None:
    decorate = mcache(**options)  # the options are valid one by one, not for this function
    with pytest.raises(ConfigurationError):
        decorate(never_called)


def test_bare_decorator_with_a_bad_value_never_reaches_the_call() -> None:
    with pytest.raises(ValidationError):

        @mcache(ttl="forever")
        def g(x: int) -> int:
            raise AssertionError("never defined, never called")
