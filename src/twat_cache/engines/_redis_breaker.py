"""The circuit breaker of the redis engine: after `FAILURES_TO_OPEN` consecutive failed
operations on a server, every operation on it fails at once for a cool-down, then one call
probes it again."""

from __future__ import annotations

import hashlib
import re
import threading
import time

from twat_cache._fork import reset_in_child
from twat_cache.exceptions import ServerUnavailableError
from twat_cache.logging import logger

__all__ = ["FAILURES_TO_OPEN", "Breaker", "breaker_for", "server_name"]

#: Consecutive failed operations after which the circuit breaker skips the server.
FAILURES_TO_OPEN = 3


class Breaker:
    """The circuit breaker of one server, credentials and cooldown, shared by the caches of
    the process that connect so: after `FAILURES_TO_OPEN` consecutive failures the
    server is skipped for `cooldown` seconds (each call fails at once), then one call at a
    time probes it again."""

    __slots__ = ("__weakref__", "cooldown", "failures", "lock", "open_until", "server")

    def __init__(self, server: str, cooldown: float) -> None:
        self.server = server
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0.0
        self.lock = threading.Lock()
        reset_in_child(self)

    def after_fork(self) -> None:
        """A forked child learns about the server afresh, with a lock no thread holds."""
        self.lock = threading.Lock()
        self.failures = 0
        self.open_until = 0.0

    def check(self) -> None:
        """Raise `ServerUnavailableError` while the breaker is open."""
        until = self.open_until
        if until:
            now = time.monotonic()
            if now < until:
                raise ServerUnavailableError(
                    f"{self.server} is skipped for {until - now:.1f}s more after "
                    f"{self.failures} failed operations"
                )
            with self.lock:  # half-open: let one call probe, keep the others out
                if self.open_until == until:
                    self.open_until = now + self.cooldown

    def failed(self, exc: BaseException) -> ServerUnavailableError:
        with self.lock:
            self.failures += 1
            opens = self.failures >= FAILURES_TO_OPEN
            if opens:
                self.open_until = time.monotonic() + self.cooldown
        if opens:
            logger.warning(
                "redis {} failed {} times ({!r}): skipped for {}s",
                self.server,
                self.failures,
                exc,
                self.cooldown,
            )
        return ServerUnavailableError(f"{self.server}: {type(exc).__name__}: {exc}")

    def succeeded(self) -> None:
        with self.lock:
            if self.open_until:
                logger.info("redis {} answers again: caching resumes", self.server)
            self.failures = 0
            self.open_until = 0.0


_BREAKERS: dict[tuple[str, bytes, float], Breaker] = {}


def breaker_for(url: str, cooldown: float) -> Breaker:
    """The breaker of the server `url` names, for its credentials and `cooldown`."""
    # One breaker per server, credentials and cooldown: caches connecting alike share what
    # they learn about the server; a cache with other credentials (a wrong password among
    # them) or another cooldown keeps its own. The credentials are kept as a digest.
    server = server_name(url)
    found = re.search(r"//([^@/]*)@", url)
    credentials = hashlib.blake2b((found.group(1) if found else "").encode()).digest()
    key = (server, credentials, cooldown)
    with _LOCK.held:
        breaker = _BREAKERS.get(key)
        if breaker is None:
            breaker = _BREAKERS[key] = Breaker(server, cooldown)
        return breaker


class _Lock:
    """The registry's lock, replaced in a forked child (a fork may copy it held)."""

    __slots__ = ("__weakref__", "held")

    def __init__(self) -> None:
        self.held = threading.Lock()
        reset_in_child(self)

    def after_fork(self) -> None:
        self.held = threading.Lock()


_LOCK = _Lock()


def server_name(url: str) -> str:
    """The URL without credentials, for messages."""
    return re.sub(r"//[^@/]*@", "//", url.split("?", 1)[0])
