"""serializers: formats, compression, signed payloads verified before anything is decoded,
and the signing secret."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import hmac
import itertools
import json
import lzma
import os
import pickle
import random
import stat
import subprocess
import sys
import threading
import time
import types
import zlib
from pathlib import Path
from typing import Any

import pytest

from twat_cache import CacheConfig
from twat_cache import serializers as serializers_module
from twat_cache.exceptions import CacheError
from twat_cache.serializers import (
    MAC_SIZE,
    MAGIC,
    SECRET_FILE,
    PayloadError,
    Serializer,
    UnserializableError,
    get_secret,
    sign,
    verify,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(32, 64))
HEADER = len(MAGIC) + 1 + MAC_SIZE

FORMATS = ["pickle", "json"]
COMPRESSIONS = [None, "zlib", "lzma"]
SETTINGS = list(itertools.product(FORMATS, COMPRESSIONS, [True, False]))


def make(
    fmt: str = "pickle",
    compress: str | bool | None = None,
    secure: bool = True,
    secret: bytes | None = SECRET,
) -> Serializer:
    config = CacheConfig(serializer=fmt, compress=compress, secure=secure)
    return Serializer(config, secret if secure else None)


def settings_id(setting: tuple[str, str | None, bool]) -> str:
    fmt, compress, secure = setting
    return f"{fmt}-{compress or 'raw'}-{'signed' if secure else 'unsigned'}"


@pytest.fixture(autouse=True)
def _isolated_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """No secret from the environment, and no secret remembered from another test."""
    monkeypatch.delenv("TWAT_CACHE_SECRET", raising=False)
    monkeypatch.setattr(serializers_module, "_SECRETS", {})


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every decompression and deserialization the serializers module performs."""
    calls: list[str] = []

    def spy(name: str, real: Any) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        return recorded

    for module, attr in [(pickle, "loads"), (json, "loads"), (zlib, "decompress")]:
        spied = types.SimpleNamespace(**vars(module))
        setattr(spied, attr, spy(f"{module.__name__}.{attr}", getattr(module, attr)))
        monkeypatch.setattr(serializers_module, module.__name__, spied)
    spied_lzma = types.SimpleNamespace(**vars(lzma))
    spied_lzma.decompress = spy("lzma.decompress", lzma.decompress)
    monkeypatch.setattr(serializers_module, "lzma", spied_lzma)
    return calls


# --- round trips ----------------------------------------------------------------------------

LARGE_TEXT = "".join(f"line {i}: {'ab' * (i % 7)}\n" for i in range(20_000))
JSON_VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    3.25,
    float("inf"),
    "",
    "héllo 日本 \0 \U0001f600",
    [],
    {},
    [1, [2, [3, [4, None]]]],
    {"a": {"b": [1, 2.5, None, True, "x"]}, "": {}},
    LARGE_TEXT,
    {"big": [LARGE_TEXT[:1000]] * 50},
]
PICKLE_VALUES: list[Any] = [
    *JSON_VALUES,
    b"",
    b"\x00\xff" * 1000,
    bytearray(b"abc"),
    (1, (2, 3)),
    {1, 2, 3},
    frozenset({"a"}),
    {(1, 2): "tuple key", 3: "int key"},
    datetime.datetime(2024, 1, 2, 3, 4, 5),
    decimal.Decimal("1.10"),
    complex(1, -2),
    range(3, 9),
    os.urandom(100_000),
]


@pytest.mark.parametrize("secure", [True, False])
@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_pickle_round_trips(compress: str | None, secure: bool) -> None:
    serializer = make("pickle", compress, secure)
    for value in PICKLE_VALUES:
        payload = serializer.dumps(value)
        assert isinstance(payload, bytes)
        back = serializer.loads(payload)
        assert back == value
        assert type(back) is type(value)
        assert serializer.loads(memoryview(payload)) == value


@pytest.mark.parametrize("secure", [True, False])
@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_json_round_trips(compress: str | None, secure: bool) -> None:
    serializer = make("json", compress, secure)
    for value in JSON_VALUES:
        assert serializer.loads(serializer.dumps(value)) == value
        assert serializer.loads(memoryview(serializer.dumps(value))) == value


def test_compress_true_means_zlib() -> None:
    assert CacheConfig(compress=True).compress == "zlib"
    assert CacheConfig(compress=False).compress is None
    as_true, as_zlib = make(compress=True), make(compress="zlib")
    payload = as_true.dumps({"a": 1})
    assert payload == as_zlib.dumps({"a": 1})
    assert as_zlib.loads(payload) == {"a": 1}
    assert zlib.decompress(payload[HEADER:]) == pickle.dumps(
        {"a": 1}, protocol=pickle.HIGHEST_PROTOCOL
    )


def test_compression_shrinks_compressible_values() -> None:
    raw = len(make().dumps(LARGE_TEXT))
    assert len(make(compress="zlib").dumps(LARGE_TEXT)) < raw / 3
    assert len(make(compress="lzma").dumps(LARGE_TEXT)) < raw / 3


def test_pickle_uses_the_highest_protocol() -> None:
    body = make(secure=False).dumps([1, 2])[HEADER:]
    assert body == pickle.dumps([1, 2], protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize(
    "value",
    [(1, 2), [1, (2, 3)], {1: "a"}, {"a": {None: "c"}}, {2.5: "b"}],
    ids=["tuple", "nested-tuple", "int-key", "nested-none-key", "float-key"],
)
def test_json_refuses_values_it_would_change(value: Any) -> None:
    # JSON has no tuple and only str keys: it would hand back [1, 2] for (1, 2) and
    # {"1": "a"} for {1: "a"}. A cache never returns a value other than the one computed,
    # so such values are refused (and the wrapper returns them uncached).
    with pytest.raises(UnserializableError, match="with json"):
        make("json").dumps(value)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "value",
    [lambda: 1, threading.Lock(), (i for i in range(3)), {"nested": [lambda: 2]}],
    ids=["lambda", "lock", "generator", "nested-lambda"],
)
def test_unserializable_values(fmt: str, value: Any) -> None:
    with pytest.raises(UnserializableError, match=f"with {fmt}"):
        make(fmt).dumps(value)


@pytest.mark.parametrize(
    "value",
    [{1, 2}, b"bytes", object(), {(1, 2): "tuple key"}, datetime.date(2024, 1, 1)],
    ids=["set", "bytes", "object", "tuple-key", "date"],
)
def test_unserializable_json_values(value: Any) -> None:
    with pytest.raises(UnserializableError, match=type(value).__name__):
        make("json").dumps(value)


def test_unserializable_error_is_a_cache_error() -> None:
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(CacheError):
        make("json").dumps(circular)


def test_secure_serializer_needs_a_secret() -> None:
    with pytest.raises(CacheError, match="secret"):
        Serializer(CacheConfig(secure=True))


# --- layout -------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTINGS, ids=settings_id)
def test_layout(setting: tuple[str, str | None, bool]) -> None:
    fmt, compress, secure = setting
    serializer = make(fmt, compress, secure)
    value = {"k": [1, 2, 3]}
    payload = serializer.dumps(value)
    assert payload.startswith(MAGIC)
    assert payload == serializer.frame(serializer.encode(value))
    assert payload[HEADER:] == serializer.encode(value)
    assert serializer.decode(serializer.unframe(payload)) == value
    mac = payload[len(MAGIC) + 1 : HEADER]
    if secure:
        assert mac == sign(SECRET, payload[len(MAGIC) : len(MAGIC) + 1] + payload[HEADER:])
    else:
        assert mac == bytes(MAC_SIZE)


def test_flags_differ_per_setting() -> None:
    flags = {make(*setting).dumps(1)[len(MAGIC)] for setting in SETTINGS}
    assert len(flags) == len(SETTINGS)


def test_payloads_from_other_settings_are_refused() -> None:
    value = {"k": "v"}
    for written, read in itertools.permutations(SETTINGS, 2):
        payload = make(*written).dumps(value)
        with pytest.raises(PayloadError, match="other settings"):
            make(*read).loads(payload)


@pytest.mark.parametrize("setting", SETTINGS, ids=settings_id)
def test_garbage_only_ever_raises_payload_error(setting: tuple[str, str | None, bool]) -> None:
    # Unsigned payloads cannot detect every change, but whatever the bytes, loads() either
    # returns a value or raises PayloadError: engines treat that as a miss.
    serializer = make(*setting)
    payload = serializer.dumps({"a": [1, 2, "three"]})
    mutants = [payload[:n] for n in range(len(payload))]
    mutants += [flip(payload, i, 0xFF) for i in range(len(payload))]
    mutants += [b"", b"\0" * 100, MAGIC, os.urandom(200), MAGIC + os.urandom(200)]
    for mutant in mutants:
        with contextlib.suppress(PayloadError):
            serializer.loads(mutant)


# --- tampering with signed payloads ---------------------------------------------------------


def flip(payload: bytes, index: int, mask: int) -> bytes:
    return payload[:index] + bytes([payload[index] ^ mask]) + payload[index + 1 :]


def assert_refused(serializer: Serializer, payloads: list[bytes], decoded: list[str]) -> None:
    for payload in payloads:
        with pytest.raises(PayloadError):
            serializer.loads(payload)
    assert decoded == [], "bytes that failed verification reached a decoder"


SIGNED = [s for s in SETTINGS if s[2]]


@pytest.mark.parametrize("setting", SIGNED, ids=settings_id)
def test_every_single_byte_flip_is_caught(
    setting: tuple[str, str | None, bool], decoded: list[str]
) -> None:
    serializer = make(*setting)
    payload = serializer.dumps({"a": [1, 2, "three"]})
    mutants = [flip(payload, i, mask) for i in range(len(payload)) for mask in (0x01, 0x80, 0xFF)]
    assert_refused(serializer, mutants, decoded)


def test_byte_flips_in_a_large_payload_are_caught(decoded: list[str]) -> None:
    serializer = make(compress="zlib")
    payload = serializer.dumps(os.urandom(1 << 20))
    rng = random.Random(7)
    positions = [*range(HEADER + 4), len(payload) - 1, *rng.sample(range(len(payload)), 150)]
    assert_refused(
        serializer, [flip(payload, i, 1 << rng.randrange(8)) for i in positions], decoded
    )


@pytest.mark.parametrize("setting", SIGNED, ids=settings_id)
def test_truncation_at_every_length_is_caught(
    setting: tuple[str, str | None, bool], decoded: list[str]
) -> None:
    serializer = make(*setting)
    payload = serializer.dumps(["some", "value", 123])
    assert_refused(serializer, [payload[:n] for n in range(len(payload))], decoded)


def test_appended_bytes_are_caught(decoded: list[str]) -> None:
    serializer = make()
    payload = serializer.dumps("value")
    tails = [b"\0", b"x", b"\0" * 1000, payload, pickle.dumps("other")]
    assert_refused(serializer, [payload + tail for tail in tails], decoded)


def test_zero_filled_payloads_are_caught(decoded: list[str]) -> None:
    serializer = make()
    payload = serializer.dumps({"a": 1})
    mutants = [
        bytes(len(payload)),
        payload[:HEADER] + bytes(len(payload) - HEADER),  # body zeroed
        payload[: len(MAGIC) + 1] + bytes(MAC_SIZE) + payload[HEADER:],  # MAC zeroed
        bytes(HEADER) + payload[HEADER:],  # header zeroed
        bytes(4096),  # a preallocated block that was never written
    ]
    assert_refused(serializer, mutants, decoded)


def test_swapped_bodies_are_caught(decoded: list[str]) -> None:
    serializer = make()
    first, second = serializer.dumps("first"), serializer.dumps("second")
    mutants = [first[:HEADER] + second[HEADER:], second[:HEADER] + first[HEADER:]]
    assert_refused(serializer, mutants, decoded)


def test_unsigned_and_foreign_payloads_are_caught(decoded: list[str]) -> None:
    serializer = make()
    value = {"a": 1}
    flags = serializer.dumps(value)[len(MAGIC) : len(MAGIC) + 1]
    body = serializer.encode(value)
    mutants = [
        make(secure=False).dumps(value),  # unsigned
        make(secret=OTHER_SECRET).dumps(value),  # signed with another secret
        MAGIC + flags + bytes(MAC_SIZE) + body,  # signed flag, no MAC
        MAGIC + flags + sign(SECRET, body) + body,  # MAC over the body only
        MAGIC + flags + sign(b"", flags + body) + body,  # an unkeyed hash
        MAGIC + flags + sign(SECRET, flags + body)[:-1] + body,  # MAC one byte short
    ]
    assert_refused(serializer, mutants, decoded)


class Canary:
    """A pickle that creates `marker` when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_never_runs_unless_signed(tmp_path: Path, decoded: list[str]) -> None:
    # First prove the canary is live: plain pickle.loads does create its marker.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Canary(control))).close()
    assert control.exists()

    marker = tmp_path / "pwned"
    evil = pickle.dumps(Canary(marker), protocol=pickle.HIGHEST_PROTOCOL)
    reader = make()
    flags = reader.dumps(None)[len(MAGIC) : len(MAGIC) + 1]
    genuine = reader.dumps("genuine")
    zlib_reader = make(compress="zlib")
    zlib_flags = zlib_reader.dumps(None)[len(MAGIC) : len(MAGIC) + 1]
    framings = [
        MAGIC + flags + bytes(MAC_SIZE) + evil,  # absent MAC
        MAGIC + flags + os.urandom(MAC_SIZE) + evil,  # random MAC
        MAGIC + flags + sign(OTHER_SECRET, flags + evil) + evil,  # another key
        MAGIC + flags + sign(SECRET, evil) + evil,  # MAC over the wrong bytes
        genuine[:HEADER] + evil,  # a genuine header spliced on
        MAGIC + bytes([flags[0] & 0x7F]) + bytes(MAC_SIZE) + evil,  # marked unsigned
        make(secure=False).dumps(Canary(marker)),  # a real unsigned payload
        make(secret=OTHER_SECRET).dumps(Canary(marker)),  # a real payload, foreign key
        evil,  # a bare pickle
    ]
    assert_refused(reader, framings, decoded)
    zlib_evil = zlib.compress(evil)
    assert_refused(
        zlib_reader,
        [
            MAGIC + zlib_flags + bytes(MAC_SIZE) + zlib_evil,
            MAGIC + zlib_flags + sign(OTHER_SECRET, zlib_flags + zlib_evil) + zlib_evil,
        ],
        decoded,
    )
    for fmt, compress in itertools.product(FORMATS, COMPRESSIONS):
        assert_refused(make(fmt, compress), framings, decoded)
    assert not marker.exists()


def test_the_decoder_spy_sees_genuine_payloads(decoded: list[str]) -> None:
    # Guards the tests above: if the spy were bypassed, "nothing decoded" would prove nothing.
    for fmt, compress in itertools.product(FORMATS, COMPRESSIONS):
        serializer = make(fmt, compress)
        assert serializer.loads(serializer.dumps([1])) == [1]
    assert decoded.count("pickle.loads") == 3
    assert decoded.count("json.loads") == 3
    assert decoded.count("zlib.decompress") == 2
    assert decoded.count("lzma.decompress") == 2


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes, bool]] = []
    real = hmac.compare_digest

    def recorded(a: bytes, b: bytes) -> bool:
        result = real(a, b)
        calls.append((a, b, result))
        return result

    monkeypatch.setattr(hmac, "compare_digest", recorded)
    serializer = make()
    payload = serializer.dumps("value")
    assert serializer.loads(payload) == "value"
    with pytest.raises(PayloadError, match="signature"):
        serializer.loads(flip(payload, len(payload) - 1, 1))
    assert [result for _, _, result in calls] == [True, False]
    assert all(len(a) == len(b) == MAC_SIZE for a, b, _ in calls)
    assert verify(SECRET, b"data", sign(SECRET, b"data"))
    assert len(calls) == 3


def test_unsigned_serializers_do_not_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(a) or False)
    serializer = make(secure=False)
    assert serializer.loads(serializer.dumps(1)) == 1
    assert calls == []


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(CacheError, match="secret"):
        Serializer(CacheConfig(secure=True), secret=b"")


def test_a_long_secret_is_refused_or_works() -> None:
    try:
        serializer = Serializer(CacheConfig(secure=True), secret=b"k" * 65)
    except CacheError:
        return
    assert serializer.loads(serializer.dumps(1)) == 1


# --- the secret -------------------------------------------------------------------------------


def test_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWAT_CACHE_SECRET", "correct horse battery staple")
    first = get_secret(tmp_path)
    assert len(first) == 32
    assert get_secret(tmp_path) == first
    assert not (tmp_path / SECRET_FILE).exists()
    monkeypatch.setenv("TWAT_CACHE_SECRET", "another one")  # read at call time
    assert get_secret(tmp_path) != first


def test_secret_file_is_created_0600(tmp_path: Path, umask022: None) -> None:
    secret = get_secret(tmp_path)
    path = tmp_path / SECRET_FILE
    assert len(secret) == 32
    assert path.read_bytes() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert get_secret(tmp_path) == secret


def test_secret_file_is_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = get_secret(tmp_path)
    monkeypatch.setattr(serializers_module, "_SECRETS", {})  # as a new process would
    assert get_secret(tmp_path) == secret
    other = tmp_path / "other"
    other.mkdir()
    assert get_secret(other) != secret  # one secret per root


PRINT_SECRET = """
import sys
from pathlib import Path
from twat_cache import CacheConfig
from twat_cache.serializers import Serializer, get_secret
root = Path(sys.argv[1])
secret = get_secret(root)
print(secret.hex())
print(Serializer(CacheConfig(), secret).dumps({"from": "child"}).hex())
"""


def test_secret_is_shared_with_another_process(tmp_path: Path) -> None:
    secret = get_secret(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "TWAT_CACHE_SECRET"}
    done = subprocess.run(
        [sys.executable, "-c", PRINT_SECRET, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    child_secret, child_payload = done.stdout.split()
    assert bytes.fromhex(child_secret) == secret
    payload = bytes.fromhex(child_payload)
    assert Serializer(CacheConfig(), secret).loads(payload) == {"from": "child"}


RACER = """
import sys, time
from pathlib import Path
from twat_cache.serializers import get_secret
root, ready, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:
    pass
print(get_secret(root).hex())
"""


def test_racing_processes_agree_on_the_secret(tmp_path: Path, umask022: None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TWAT_CACHE_SECRET"}
    for attempt in range(2):
        root = tmp_path / f"root{attempt}"
        root.mkdir(mode=0o700)
        go = tmp_path / f"go{attempt}"
        readies = [tmp_path / f"ready{attempt}-{i}" for i in range(4)]
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, str(root), str(ready), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for ready in readies
        ]
        while not all(ready.exists() for ready in readies):
            if any(racer.poll() not in (None, 0) for racer in racers):
                break
            time.sleep(0.005)
        go.touch()
        results = [racer.communicate(timeout=60) for racer in racers]
        assert [racer.returncode for racer in racers] == [0] * 4, results
        secrets = {out.strip() for out, _ in results}
        assert len(secrets) == 1, results
        assert bytes.fromhex(secrets.pop()) == (root / SECRET_FILE).read_bytes()
        assert stat.S_IMODE((root / SECRET_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize("size", [0, 16], ids=["empty", "truncated"])
def test_a_bad_secret_file_is_a_clear_error(tmp_path: Path, size: int) -> None:
    path = tmp_path / SECRET_FILE
    path.write_bytes(b"s" * size)
    with pytest.raises(CacheError, match="not 32 bytes") as info:
        get_secret(tmp_path)
    assert str(path) in str(info.value)
    assert "delete it" in str(info.value)
    assert path.read_bytes() == b"s" * size  # left for the user to inspect


# --- payloads bound to their key -------------------------------------------------------------


def test_a_payload_bound_to_a_key_verifies_under_that_key_only(decoded: list[str]) -> None:
    serializer = Serializer(CacheConfig(secure=True), secret=b"k" * 32)
    payload = serializer.dumps({"user": 1}, b"cache\0key-a")
    assert serializer.loads(payload, b"cache\0key-a") == {"user": 1}
    decoded.clear()
    # Swapped under another key, moved to another cache, or read without its key: rejected,
    # and nothing is deserialized.
    for context in (b"cache\0key-b", b"other\0key-a", b""):
        with pytest.raises(PayloadError, match="does not verify"):
            serializer.loads(payload, context)
    # Length-prefixed: moving bytes between the key and the body cannot forge a match.
    body = serializer.encode("v")
    assert serializer.frame(body, b"ab") != serializer.frame(body, b"a")
    with pytest.raises(PayloadError):
        serializer.unframe(serializer.frame(b"b" + body, b"a"), b"ab")
    assert decoded == []


def test_an_unbound_payload_does_not_verify_under_a_key() -> None:
    serializer = Serializer(CacheConfig(secure=True), secret=b"k" * 32)
    with pytest.raises(PayloadError):
        serializer.loads(serializer.dumps("v"), b"some key")
    assert serializer.loads(serializer.dumps("v", b"")) == "v"  # no key: as before
