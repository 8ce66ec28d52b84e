"""The Redis client the adapters share, and the key layout they follow.

Timeouts are short on purpose: when Redis is down a call fails within about
a second (CoordinationUnavailable -> UNAVAILABLE) instead of holding the
caller until its deadline. A command is retried once, after a reconnect, so
a connection that died with a Redis restart costs no error; every lock
script is written so that running it twice does no harm (the rate limit's
may spend a token twice). A call that still fails opens the circuit
breaker (breaker.py), so that the calls after it do not pay the same
seconds.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

DEFAULT_PREFIX = "chat-service:"


def connect_redis(
    url: str,
    *,
    max_connections: int,
    socket_timeout: float = 1.0,
    connect_timeout: float = 1.0,
    pool_timeout: float = 1.0,
) -> Redis:
    """A client on REDIS_URL with at most `max_connections` connections
    (MAX_CONNECTIONS_REDIS). No I/O happens until the first command.

    The pool blocks for up to `pool_timeout` when every connection is busy,
    rather than failing at once as redis-py's default pool does: a burst of
    lock polls should queue for a moment, not turn into UNAVAILABLE.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.05), retries=1),
    )
    return Redis.from_pool(pool)


def hash_tagged(prefix: str, namespace: str, name: str) -> str:
    """`<prefix><namespace>:{<name>}`: the keys built from it share a Redis
    Cluster hash slot, so one script may touch all of them."""
    return f"{prefix}{namespace}:{{{name}}}"
