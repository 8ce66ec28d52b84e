"""Redis failures as the ports' CoordinationUnavailable, through the breaker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapters.redis.breaker import CircuitBreaker, Permit
from chat_service.ports import CoordinationUnavailable


@contextmanager
def coordination_errors(
    what: str, breaker: CircuitBreaker | None = None, *, gated: bool = True
) -> Iterator[None]:
    """Re-raise any Redis or socket failure inside as CoordinationUnavailable.

    Every RedisError counts, not only connection errors: a READONLY replica
    after a failover, OOM or a busy script all mean that coordination cannot
    be had right now, and the caller's answer is the same (retry later).

    With a `breaker`: a `gated` call fails at once while the breaker is open
    (breaker.py), and every call reports whether it reached Redis. Calls
    that must be tried anyway (a lock's renewal or release) pass
    gated=False.
    """
    permit: Permit | None = Permit.CALL
    if breaker is not None and gated:
        permit = breaker.allow()
        if permit is None:
            raise CoordinationUnavailable(
                f"redis: {what}: skipped, Redis failed to answer just now"
                f" (next try in {breaker.retry_in:.1f}s)"
            )
    try:
        yield
    except (RedisError, OSError) as error:
        if breaker is not None:
            if pool_exhausted(error):
                breaker.abandoned(permit)
            elif isinstance(error, RedisConnectionError | RedisTimeoutError | OSError):
                breaker.failed()
            else:
                breaker.succeeded()  # Redis answered, with an error
        raise CoordinationUnavailable(f"redis: {what}: {error}") from error
    except BaseException:
        if breaker is not None:
            breaker.abandoned(permit)
        raise
    else:
        if breaker is not None:
            breaker.succeeded()


def pool_exhausted(error: BaseException) -> bool:
    """Whether the error is redis-py's BlockingConnectionPool giving up on a
    free connection (every one busy for pool_timeout): our load, not Redis's
    health."""
    return (
        isinstance(error, RedisConnectionError)
        and isinstance(error.__cause__, TimeoutError)
        and "No connection available" in str(error)
    )
