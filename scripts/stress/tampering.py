"""Scenario 4, tampering: forged entries planted where real ones lie, as an attacker who can
write to the store (but does not know the signing secret) would: a pickle whose
`__reduce__` writes a marker file (signed with a wrong key, or in the store's native
format), entries swapped between keys, truncated signatures, unsigned pickles.

Every call on a forged key must return that key's own correct result (recomputed), and no
unverified byte may ever be deserialized: the gadget's marker file never appears, and no
pickle global is resolved while the forged entries are read (an audit hook on
`pickle.find_class` watches; the real values hold no globals).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import random
import sqlite3
import struct
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from stress.common import (
    PROFILES,
    ZERO,
    Rows,
    cached,
    per_engine,
    progress,
    redis_key,
    root,
    selected,
)
from stress.corruption import _listing, expected

NAME = "tampering"
KINDS = ("reduce", "swap", "truncated-signature", "unsigned")

# The payload layout of serializers.py: MAGIC | flags | MAC (32) | body; default flags are
# pickle (0x01) + signed (0x80).
MAGIC = b"TWC\x01"
SIGNED_PICKLE = bytes([0x81])
UNSIGNED_PICKLE = bytes([0x01])
# joblib's entry records: MAGIC | MAC (32) | JSON (_joblib_files.py).
JOBLIB_MAGIC = b"TWJ\x01"
# klepto's signed body starts with its expiry and the key (klepto.py).
KLEPTO_HEAD = struct.Struct("!dI")


class Gadget:
    """Unpickling it calls `open(marker, "w")`: the marker file appears."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (self.marker, "w"))


# --- what the forgeries are made of ------------------------------------------------------


class Watch:
    """Counts the pickle globals resolved (audit event `pickle.find_class`) while armed."""

    def __init__(self) -> None:
        self.armed = False
        self.resolved: Counter[str] = Counter()
        self._lock = threading.Lock()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.armed and event == "pickle.find_class":
            with self._lock:
                self.resolved[f"{args[0]}.{args[1]}"] += 1


def wrong_mac(data: bytes) -> bytes:
    return hashlib.blake2b(data, key=os.urandom(32), digest_size=32).digest()


def frame(body: bytes, *, flags: bytes = SIGNED_PICKLE, mac: bytes | None = None) -> bytes:
    """A payload in the library's layout; by default signed with a key nobody has."""
    if mac is None:
        mac = wrong_mac(flags + body)
    return MAGIC + flags + mac + body


class Forger:
    """Where one engine keeps each entry, and how to plant a forgery there."""

    def __init__(self, engine: str, folder: str, url: str | None, marker: str) -> None:
        self.engine = engine
        self.folder = folder
        self.directory = root() / folder
        self.url = url
        self.marker = marker
        self.files: dict[str, list[str]] = {}

    # The gadget, pickled: what any unverified deserialization would run.
    def gadget(self) -> bytes:
        return pickle.dumps(Gadget(self.marker), protocol=pickle.HIGHEST_PROTOCOL)

    def store(self, key: str, call: Any) -> None:
        before = _listing(self.directory) if self.engine in ("joblib", "klepto") else set()
        call()
        if self.engine in ("joblib", "klepto"):
            self.files[key] = sorted(
                f for f in _listing(self.directory) - before if not Path(f).name.startswith(".")
            )

    def body(self, key: str) -> bytes:
        """A body carrying the gadget, laid out as this engine's signed bodies are."""
        if self.engine == "klepto":
            raw = key.encode()
            return KLEPTO_HEAD.pack(0.0, len(raw)) + raw + self.gadget()
        return self.gadget()

    def forge(self, key: str, kind: str, variant: int, rng: random.Random) -> str:
        """Plant a forgery of `kind` for `key`; returns a description of it."""
        if self.engine == "joblib":
            return self._forge_joblib(key, kind, variant)
        body = self.body(key)
        if kind == "reduce":
            if variant % 2 == 0:
                return self._put(key, frame(body), "gadget signed with a wrong key")
            return self._put_native(key)
        if kind == "truncated-signature":
            cut = rng.randrange(0, 32)
            payload = MAGIC + SIGNED_PICKLE + wrong_mac(SIGNED_PICKLE + body)[:cut] + body
            if variant % 2:  # a valid payload of this very key, its signature cut short
                real = self._get(key)
                payload = real[:5] + real[5 : 5 + cut] + real[37:]
            return self._put(key, payload, "signature cut short")
        if kind == "unsigned":
            if variant % 2 == 0:
                payload = frame(body, flags=UNSIGNED_PICKLE, mac=bytes(32))
                return self._put(key, payload, "gadget framed unsigned")
            return self._put(key, self.gadget(), "bare gadget pickle")
        raise ValueError(kind)

    def swap(self, one: str, two: str) -> str:
        """Exchange the stored entries of two keys."""
        if self.engine == "joblib":
            a, b = (self.directory / self._record(k) for k in (one, two))
            data_a, data_b = a.read_bytes(), b.read_bytes()
            a.write_bytes(data_b)
            b.write_bytes(data_a)
            return "records swapped"
        if self.engine == "diskcache":
            with self._db() as db:
                rows = [
                    db.execute(
                        "SELECT mode, filename, value, size FROM Cache WHERE key = ? AND raw = 1",
                        (k,),
                    ).fetchone()
                    for k in (one, two)
                ]
                for k, row in zip((one, two), reversed(rows), strict=True):
                    db.execute(
                        "UPDATE Cache SET mode = ?, filename = ?, value = ?, size = ? "
                        "WHERE key = ? AND raw = 1",
                        (*row, k),
                    )
            return "rows swapped"
        first, second = self._get(one), self._get(two)
        self._put(one, second, "")
        self._put(two, first, "")
        return "payloads swapped"

    # --- per engine ------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.directory / "cache.db", timeout=30)

    def _get(self, key: str) -> bytes:
        if self.engine == "diskcache":
            with self._db() as db:
                filename, value = db.execute(
                    "SELECT filename, value FROM Cache WHERE key = ? AND raw = 1", (key,)
                ).fetchone()
            return (self.directory / filename).read_bytes() if filename else bytes(value)
        if self.engine == "klepto":
            path = self.directory / self.files[key][0]
            return base64.b64decode(json.loads(path.read_text())[1])
        import redis

        with redis.Redis.from_url(self.url) as client:
            value: bytes = client.get(redis_key(self.folder, key))
        return value

    def _put(self, key: str, payload: bytes, what: str) -> str:
        if self.engine == "diskcache":
            with self._db() as db:
                (filename,) = db.execute(
                    "SELECT filename FROM Cache WHERE key = ? AND raw = 1", (key,)
                ).fetchone()
                if filename:  # a large value: its own file
                    (self.directory / filename).write_bytes(payload)
                    db.execute(
                        "UPDATE Cache SET size = ? WHERE key = ? AND raw = 1", (len(payload), key)
                    )
                else:
                    db.execute(
                        "UPDATE Cache SET mode = 1, value = ? WHERE key = ? AND raw = 1",
                        (payload, key),
                    )
        elif self.engine == "klepto":
            path = self.directory / self.files[key][0]
            record = json.loads(path.read_text())
            record[1] = base64.b64encode(payload).decode("ascii")
            path.write_text(json.dumps(record))
        else:
            import redis

            with redis.Redis.from_url(self.url) as client:
                client.set(redis_key(self.folder, key), payload, keepttl=True)
        return what

    def _put_native(self, key: str) -> str:
        """The gadget in the store's own format, as the library under it would keep it."""
        if self.engine == "diskcache":
            with self._db() as db:  # diskcache's MODE_PICKLE row: what diskcache unpickles
                db.execute(
                    "UPDATE Cache SET mode = 4, filename = NULL, value = ? "
                    "WHERE key = ? AND raw = 1",
                    (self.gadget(), key),
                )
            return "diskcache pickle row"
        if self.engine == "klepto":  # the entry file holding a pickle instead of JSON
            (self.directory / self.files[key][0]).write_bytes(self.gadget())
            return "pickle as the klepto entry file"
        return self._put(key, self.gadget(), "bare gadget pickle")

    def _record(self, key: str) -> str:
        return next(f for f in self.files[key] if f.endswith(".sig"))

    def _forge_joblib(self, key: str, kind: str, variant: int) -> str:
        record_path = self.directory / self._record(key)
        real = record_path.read_bytes()
        fields = json.loads(real[36:])
        data_path = self.directory / fields["d"]
        import joblib

        if kind == "reduce" and variant % 2:
            # The real, validly signed record; the data file swapped for the gadget, padded
            # to the recorded size, so only the data file's own signature can stop it.
            gadget = self.gadget()
            size = int(fields["n"])
            data_path.write_bytes(gadget + bytes(max(0, size - len(gadget))))
            return "data file replaced by a gadget (record intact)"
        with open(data_path, "wb") as handle:
            joblib.dump(Gadget(self.marker), handle)
        data = data_path.read_bytes()
        fields.update(n=len(data), h=wrong_mac(data).hex())
        body = json.dumps(fields, separators=(",", ":")).encode()
        if kind == "reduce":
            record = JOBLIB_MAGIC + wrong_mac(JOBLIB_MAGIC + body) + body
            what = "gadget with a record signed with a wrong key"
        elif kind == "truncated-signature":
            record = JOBLIB_MAGIC + wrong_mac(JOBLIB_MAGIC + body)[:16] + body
            what = "record signature cut to 16 bytes"
        else:
            record = JOBLIB_MAGIC + bytes(32) + body
            what = "unsigned record, gadget data"
        record_path.write_bytes(record)
        return what


# --- the scenario --------------------------------------------------------------------------


def main(
    profile: str, engines: list[str], redis_url: str | None, seed: int
) -> list[dict[str, Any]]:
    p = PROFILES[profile]
    watch = Watch()
    marker_dir = root().parent / "tampering-markers"
    marker_dir.mkdir(exist_ok=True)

    # The detector itself: the gadget, unpickled directly, must be seen both ways.
    probe = str(marker_dir / "probe")
    watch.armed = True
    try:
        pickle.loads(pickle.dumps(Gadget(probe))).close()
    finally:
        watch.armed = False
    if not (os.path.exists(probe) and watch.resolved):
        raise RuntimeError("the gadget detector does not work: the results would mean nothing")
    os.unlink(probe)
    watch.resolved.clear()

    def work(engine: str, rows: Rows) -> None:
        figure = "unverified bytes deserialized"
        if engine == "redis" and redis_url is None:
            rows.skip(engine, figure, "skipped: no redis-server")
            return
        progress(f"{NAME}: {engine}, {p.forged} forged entries")
        rng = random.Random(f"{seed}-{engine}")
        marker = str(marker_dir / f"fired-{engine}")

        def compute(i: int) -> dict[str, Any]:
            return expected(i)

        folder = f"tampering-{engine}"
        f = cached(engine, folder, compute, redis_url)
        forger = Forger(engine, folder, redis_url, marker)
        for i in range(p.forged):
            forger.store(f.cache_key(i), lambda i=i: f(i))
        kinds: dict[int, str] = {}
        described: Counter[str] = Counter()
        i = 0
        while i < p.forged:
            kind = KINDS[(i // 2) % len(KINDS)]
            if kind == "swap" and i + 1 < p.forged:
                what = forger.swap(f.cache_key(i), f.cache_key(i + 1))
                kinds[i] = kinds[i + 1] = kind
                described[f"swap: {what}"] += 2
                i += 2
                continue
            kind = "reduce" if kind == "swap" else kind
            what = forger.forge(f.cache_key(i), kind, i, rng)
            kinds[i] = kind
            described[f"{kind}: {what}"] += 1
            i += 1
        fired = swapped = 0
        served: Counter[str] = Counter()
        raised: Counter[str] = Counter()
        resolved_before = sum(watch.resolved.values())
        for i in range(p.forged):
            watch.armed = True
            try:
                result = f(i)
            except Exception as exc:
                raised[type(exc).__name__] += 1
                continue
            finally:
                watch.armed = False
                if os.path.exists(marker):
                    fired += 1
                    os.unlink(marker)
            if result != expected(i):
                served[kinds[i]] += 1
                partner = i + 1 if i % 2 == 0 else i - 1
                if kinds[i] == "swap" and result == expected(partner):
                    swapped += 1
        resolved = sum(watch.resolved.values()) - resolved_before
        rows.judge(
            engine,
            figure,
            fired + resolved,
            ZERO,
            shown=f"{fired + resolved} (gadget fired {fired}, pickle globals resolved {resolved})",
            forged=dict(described),
            globals=dict(watch.resolved),
        )
        wrong = sum(served.values()) + sum(raised.values())
        rows.judge(
            engine,
            "calls on forged keys not returning their own result",
            wrong,
            ZERO,
            shown=f"{wrong} of {p.forged:,}",
            served_by_kind=dict(served),
            served_the_swapped_partners_value=swapped,
            raised=dict(raised),
        )

    # Sequential: the audit hook watches the whole process, one engine at a time.
    return per_engine(NAME, selected(engines), work, parallel=False).as_dicts()
