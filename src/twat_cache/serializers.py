"""Payloads of persistent and remote caches: pickle or JSON, compression, and signatures
verified before anything is deserialized."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import lzma
import os
import pickle
import secrets
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from twat_cache.config import CacheConfig
from twat_cache.exceptions import CacheError

__all__ = [
    "ExpiredPayloadError",
    "PayloadError",
    "Serializer",
    "UnserializableError",
    "get_secret",
    "sign",
    "verify",
]

# Layout: MAGIC | flags (1 byte) | MAC (32 bytes, zeros when unsigned) | [expiry] | body.
# The MAC is keyed BLAKE2b-256 over flags + expiry + body, compared in constant time, and
# checked before the body is decompressed or unpickled: unverified bytes never reach pickle.
# An entry with a time to live carries its expiry (flag _EXPIRES; 8 bytes, a big-endian
# double of Unix time) under the MAC: an old entry written back by anyone who can write to
# the store, after it expired, is then a miss, whatever expiry the store itself gives it.
MAGIC = b"TWC\x01"
MAC_SIZE = 32
_MAC_AT = len(MAGIC) + 1
_HEADER = _MAC_AT + MAC_SIZE
_CONTEXT_LEN = struct.Struct(">Q")
_VIEW_FROM = 1 << 16  # bodies from this size on are returned as views, not copies
_PICKLE, _JSON = 0x01, 0x02
_ZLIB, _LZMA = 0x10, 0x20
_SIGNED = 0x80
_EXPIRES = 0x08
_EXPIRY = struct.Struct(">d")
_FORMATS = {"pickle": _PICKLE, "json": _JSON}
_COMPRESSIONS = {None: 0, "zlib": _ZLIB, "lzma": _LZMA}

SECRET_FILE = ".secret"
_SECRET_LOCK = threading.Lock()
_SECRETS: dict[str, bytes] = {}


class PayloadError(CacheError):
    """A stored payload is corrupt, truncated, unsigned or forged: treat it as a miss."""


class ExpiredPayloadError(PayloadError):
    """A payload whose signed expiry has passed (replayed, or read at its last instant): a
    plain miss, not tampering."""


class UnserializableError(CacheError):
    """A value cannot be serialized (unpicklable, or not JSON-able): it is not stored."""


def get_secret(root: Path) -> bytes:
    """The signing key: `TWAT_CACHE_SECRET`, else a random key kept in ``<root>/.secret``
    (created 0600 on first use, atomically, so concurrent processes agree on it)."""
    configured = os.environ.get("TWAT_CACHE_SECRET")
    if configured:
        return hashlib.blake2b(configured.encode(), digest_size=32).digest()
    path = root / SECRET_FILE
    cache_key = str(path)
    with _SECRET_LOCK:
        known = _SECRETS.get(cache_key)
        if known is not None:
            if not path.exists():  # the root was deleted: put this process's key back, so
                with contextlib.suppress(OSError):  # a new process signs as this one does
                    _create_secret(path, known)
            return known
        secret = _read_secret(path) if path.exists() else _create_secret(path)
        _SECRETS[cache_key] = secret
        return secret


def _create_secret(path: Path, secret: bytes | None = None) -> bytes:
    # Written complete under a temporary name, then linked into place: the link fails if
    # another process got there first (then its key is used), and a writer killed midway
    # leaves only a temporary file, never a short `.secret`.
    secret = secret if secret is not None else secrets.token_bytes(32)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".secret.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return _read_secret(path)
        return secret
    finally:
        os.unlink(temp)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _read_secret(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(33)
    except OSError as exc:
        raise CacheError(f"cannot read the cache secret {path}: {exc}") from exc
    if len(data) != 32:
        raise CacheError(f"the cache secret {path} is not 32 bytes: delete it to make a new one")
    return data


def _check_json(value: Any, depth: int = 0) -> None:
    # JSON would turn a tuple into a list and an int key into a string: a cache must never
    # hand back a different value than the one computed, so such values are refused.
    if depth > 500:
        raise TypeError("nested too deeply for JSON")
    cls = type(value)
    if cls in (str, int, float, bool) or value is None:
        return
    if cls is list:
        for item in value:
            _check_json(item, depth + 1)
        return
    if cls is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
            _check_json(item, depth + 1)
        return
    raise TypeError(f"{cls.__name__} does not round-trip through JSON")


def sign(secret: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2b-256 of `data`."""
    return hashlib.blake2b(data, key=secret, digest_size=MAC_SIZE).digest()


def verify(secret: bytes, data: bytes, mac: bytes) -> bool:
    """Whether `mac` signs `data`, compared in constant time (a MAC of any other length,
    empty or cut short, never does)."""
    return len(mac) == MAC_SIZE and hmac.compare_digest(sign(secret, data), mac)


class Serializer:
    """Turns values into signed, optionally compressed payloads and back.

    >>> s = Serializer(CacheConfig(secure=True), secret=b"k" * 32)
    >>> s.loads(s.dumps({"a": [1, 2]}))
    {'a': [1, 2]}
    """

    def __init__(self, config: CacheConfig, secret: bytes | None = None) -> None:
        self.format = config.serializer
        self.compression = config.compress
        self.secure = config.secure
        if self.secure and (secret is None or not 16 <= len(secret) <= 64):
            raise CacheError("a secure serializer needs a secret of 16 to 64 bytes")
        self._secret = secret or b""
        self._flags = (
            _FORMATS[self.format]
            | _COMPRESSIONS[self.compression]
            | (_SIGNED if self.secure else 0)
        )
        self._flag_byte = bytes([self._flags])
        self._prefix = MAGIC + self._flag_byte
        # One keyed hasher that has already absorbed the flags, copied per payload: keying
        # BLAKE2b costs as much as hashing 1 KB.
        self._expiring_flag_byte = bytes([self._flags | _EXPIRES])
        self._expiring_prefix = MAGIC + self._expiring_flag_byte
        self._mac = self._expiring_mac = None
        if self.secure:
            self._mac = hashlib.blake2b(key=self._secret, digest_size=MAC_SIZE)
            self._mac.update(self._flag_byte)
            self._expiring_mac = hashlib.blake2b(key=self._secret, digest_size=MAC_SIZE)
            self._expiring_mac.update(self._expiring_flag_byte)

    def _sign(self, body: bytes | memoryview, context: bytes, expiry: bytes = b"") -> bytes:
        # only called when secure: the hashers are there
        base = self._expiring_mac if expiry else self._mac
        mac = base.copy()  # type: ignore[union-attr]
        if context:
            # Length-prefixed, so that no (context, body) pair signs like another.
            mac.update(_CONTEXT_LEN.pack(len(context)))
            mac.update(context)
        mac.update(expiry)
        mac.update(body)
        return mac.digest()

    def encode(self, value: Any) -> bytes:
        """The body of a payload: serialized and compressed, not yet framed or signed."""
        try:
            if self.format == "json":
                _check_json(value)
                body = json.dumps(value, separators=(",", ":"), allow_nan=True).encode()
            else:
                body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise UnserializableError(
                f"cannot serialize a {type(value).__name__} with {self.format}: {exc}"
            ) from exc
        if self.compression == "zlib":
            body = zlib.compress(body, 6)
        elif self.compression == "lzma":
            body = lzma.compress(body)
        return body

    def frame(self, body: bytes, context: bytes = b"", expires: float | None = None) -> bytes:
        """Wrap a body in the header, signing it when `secure`. A `context` (the key the
        payload is stored under) is signed with it but not stored: the payload then verifies
        only under that key, so entries swapped between keys are rejected. `expires` (Unix
        time) is stored and signed: from then on the payload reads as expired."""
        if expires is None:
            mac = self._sign(body, context) if self.secure else bytes(MAC_SIZE)
            return b"".join((MAGIC, self._flag_byte, mac, body))
        expiry = _EXPIRY.pack(expires)
        mac = self._sign(body, context, expiry) if self.secure else bytes(MAC_SIZE)
        return b"".join((MAGIC, self._expiring_flag_byte, mac, expiry, body))

    def dumps(self, value: Any, context: bytes = b"", expires: float | None = None) -> bytes:
        """A complete payload for `value` (bound to `context`, expiring at `expires`: see
        `frame`)."""
        return self.frame(self.encode(value), context, expires)

    def unframe(self, payload: bytes | memoryview, context: bytes = b"") -> bytes | memoryview:
        """Check a payload's header and signature (under `context`, see `frame`); return its
        body, or raise PayloadError.

        The body is a copy for small payloads (cheaper than a view) and a view of large
        ones (no second copy of megabytes)."""
        data = payload if type(payload) is bytes else bytes(payload)
        start, expiry = _HEADER, b""
        if len(data) < _HEADER or not data.startswith(self._prefix):
            if len(data) < _HEADER or not data.startswith(MAGIC):
                raise PayloadError("not a twat-cache payload (truncated or foreign)")
            if not data.startswith(self._expiring_prefix):
                raise PayloadError(
                    "payload written with other settings (format, compression or signing)"
                )
            start = _HEADER + _EXPIRY.size
            expiry = data[_HEADER:start]
            if len(expiry) < _EXPIRY.size:
                raise PayloadError("not a twat-cache payload (truncated)")
        body = data[start:] if len(data) < _VIEW_FROM else memoryview(data)[start:]
        mac = data[_MAC_AT:_HEADER]
        if self.secure and not hmac.compare_digest(self._sign(body, context, expiry), mac):
            raise PayloadError("payload signature does not verify (tampered or foreign key)")
        if expiry and _EXPIRY.unpack(expiry)[0] <= time.time():
            raise ExpiredPayloadError("payload expired (its signed expiry has passed)")
        return body

    def decode(self, body: bytes | memoryview) -> Any:
        """Decompress and deserialize a verified body."""
        try:
            if self.compression == "zlib":
                body = zlib.decompress(body)
            elif self.compression == "lzma":
                body = lzma.decompress(body)
            if self.format == "json":
                return json.loads(bytes(body))
            return pickle.loads(body)  # verified above when secure
        except Exception as exc:
            raise PayloadError(f"payload does not decode: {type(exc).__name__}: {exc}") from exc

    def loads(self, payload: bytes | memoryview, context: bytes = b"") -> Any:
        """The value of a payload; raises PayloadError for anything that does not verify
        (under `context`, see `frame`)."""
        return self.decode(self.unframe(payload, context))
