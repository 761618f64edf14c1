"""The circuit breaker of the redis engine: after `FAILURES_TO_OPEN` consecutive failed
operations on a server, every operation on it fails at once for a cool-down, then one call
probes it again."""

from __future__ import annotations

import re
import threading
import time

from twat_cache.exceptions import ServerUnavailableError
from twat_cache.logging import logger

__all__ = ["FAILURES_TO_OPEN", "Breaker", "breaker_for", "server_name"]

#: Consecutive failed operations after which the circuit breaker skips the server.
FAILURES_TO_OPEN = 3


class Breaker:
    """The circuit breaker of one server and cooldown, shared by the caches of the process
    on that server with that cooldown: after `FAILURES_TO_OPEN` consecutive failures the
    server is skipped for `cooldown` seconds (each call fails at once), then one call at a
    time probes it again."""

    __slots__ = ("cooldown", "failures", "lock", "open_until", "server")

    def __init__(self, server: str, cooldown: float) -> None:
        self.server = server
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0.0
        self.lock = threading.Lock()

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


_BREAKERS: dict[tuple[str, float], Breaker] = {}
_BREAKERS_LOCK = threading.Lock()


def breaker_for(server: str, cooldown: float) -> Breaker:
    # One breaker per server and cooldown: caches asking for the same cooldown share what
    # they learn about the server; a cache asking for another one keeps its own.
    with _BREAKERS_LOCK:
        breaker = _BREAKERS.get((server, cooldown))
        if breaker is None:
            breaker = _BREAKERS[(server, cooldown)] = Breaker(server, cooldown)
        return breaker


def server_name(url: str) -> str:
    """The URL without credentials, for messages and the breaker registry."""
    return re.sub(r"//[^@/]*@", "//", url.split("?", 1)[0])
