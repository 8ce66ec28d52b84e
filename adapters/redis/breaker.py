"""A circuit breaker in front of Redis.

Why: a stalled Redis (a hung server, a network black hole) costs each call
its socket timeout and a retry, about two seconds, before it fails. The rate
limiter alone sits in front of every authenticated call, so without a
breaker a stall adds those seconds to every call of the service, and the
calls' connections pile up in the pool.

How: the first call that fails to reach Redis (connection refused, reset,
timed out) opens the breaker. While open, calls fail at once with
CoordinationUnavailable, without touching Redis or the pool, so every caller
takes its Redis-down path (admission lets the call in, the caches miss,
locks answer UNAVAILABLE) in no time. After `cooldown` seconds the breaker
is half-open: the next call is let through as the one probe (the other
callers still fail fast while it is under way); if it reaches Redis the
breaker closes, if not it opens for another cooldown.

What counts: only failures to reach Redis. An error Redis answered with
(READONLY, OOM, a script error) came back quickly and says Redis is there;
a wait for a free connection of our own pool says nothing about Redis.
Calls that are not gated (lock renewals and releases, which must be tried
whatever the breaker thinks) still report what they saw.

One breaker per Redis, shared by every adapter that talks to it (bootstrap
makes it): what one caller learns, all of them use.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class Permit(enum.Enum):
    """What `allow` granted: a normal call, or the half-open probe."""

    CALL = "call"
    PROBE = "probe"


class CircuitBreaker:
    def __init__(
        self, *, cooldown: float = 3.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if cooldown < 0:
            raise ValueError("cooldown must not be negative")
        self._cooldown = cooldown
        self._clock = clock
        self._open_until: float | None = None  # None: closed
        self._probing = False

    @property
    def state(self) -> str:
        """ "closed", "open" (skipping Redis) or "half-open" (a probe may go)."""
        if self._open_until is None:
            return "closed"
        if self._clock() < self._open_until:
            return "open"
        return "half-open"

    @property
    def retry_in(self) -> float:
        """Seconds until the next probe may go (0 when one may go now)."""
        if self._open_until is None:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def allow(self) -> Permit | None:
        """May a call go to Redis now? None: fail it fast."""
        if self._open_until is None:
            return Permit.CALL
        if self._probing or self._clock() < self._open_until:
            return None
        self._probing = True
        return Permit.PROBE

    def succeeded(self) -> None:
        """Redis answered (any call, gated or not)."""
        self._open_until = None
        self._probing = False

    def failed(self) -> None:
        """A call could not reach Redis."""
        self._open_until = self._clock() + self._cooldown
        self._probing = False

    def abandoned(self, permit: Permit | None) -> None:
        """A call ended without telling either way (cancelled, or it never
        got a connection): a probe's turn passes to the next caller."""
        if permit is Permit.PROBE:
            self._probing = False
