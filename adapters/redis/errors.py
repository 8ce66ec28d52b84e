"""Redis failures as the ports' CoordinationUnavailable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from chat_service.ports import CoordinationUnavailable


@contextmanager
def coordination_errors(what: str) -> Iterator[None]:
    """Re-raise any Redis or socket failure inside as CoordinationUnavailable.

    Every RedisError counts, not only connection errors: a READONLY replica
    after a failover, OOM or a busy script all mean that coordination cannot
    be had right now, and the caller's answer is the same (retry later).
    """
    try:
        yield
    except (RedisError, OSError) as error:
        raise CoordinationUnavailable(f"redis: {what}: {error}") from error
