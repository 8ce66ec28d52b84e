"""The client's script queue (adapters/redis/script_runner.py) on a real Redis:
calls made while one is in flight go together, in the order they were made,
each with its own answer or error."""

from __future__ import annotations

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapters.redis import script_runner
from tests.support.redis import RedisClients, RedisServer

# Appends ARGV[1] to the list; the list's length after it. An error for "bad".
APPEND = """
if ARGV[1] == 'bad' then
  return redis.error_reply('refused ' .. ARGV[1])
end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


async def test_concurrent_calls_go_as_one_batch_in_call_order(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    client = redis_clients()
    runner = script_runner.for_client(client)
    append = runner.register(APPEND)
    key = f"{redis_prefix}list"

    answers = await asyncio.gather(*(append(keys=[key], args=[str(n)]) for n in range(20)))

    assert answers == list(range(1, 21))  # each caller its own answer
    assert await client.lrange(key, 0, -1) == [str(n).encode() for n in range(20)]
    assert runner.batches >= 1  # not one round trip each


async def test_one_calls_error_is_its_own(redis_clients: RedisClients, redis_prefix: str) -> None:
    append = script_runner.for_client(redis_clients()).register(APPEND)
    key = f"{redis_prefix}list"

    outcomes = await asyncio.gather(
        *(append(keys=[key], args=[value]) for value in ("a", "b", "bad", "c")),
        return_exceptions=True,
    )

    assert outcomes[:2] == [1, 2]
    assert outcomes[3] == 3
    assert isinstance(outcomes[2], ResponseError)
    assert "refused bad" in str(outcomes[2])


async def test_a_cancelled_callers_call_is_still_sent_in_its_place(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    # What the lock relies on: a waiter cancelled with its ACQUIRE queued
    # queues its LEAVE after it, so the LEAVE never reaches Redis first.
    client = redis_clients()
    append = script_runner.for_client(client).register(APPEND)
    key = f"{redis_prefix}list"

    calls = [asyncio.create_task(append(keys=[key], args=[str(n)])) for n in range(3)]
    await asyncio.sleep(0)  # each has queued its call
    calls[1].cancel()
    after = asyncio.create_task(append(keys=[key], args=["after"]))
    results = await asyncio.gather(*calls, after, return_exceptions=True)

    assert isinstance(results[1], asyncio.CancelledError)
    assert await client.lrange(key, 0, -1) == [b"0", b"1", b"2", b"after"]


async def test_scripts_redis_forgot_are_loaded_again(
    disposable_redis: RedisServer, redis_clients: RedisClients
) -> None:
    client = redis_clients(disposable_redis.url)
    append = script_runner.for_client(client).register(APPEND)
    assert await append(keys=["list"], args=["first"]) == 1
    await client.script_flush()  # as a restart without persistence would

    answers = await asyncio.gather(*(append(keys=["list"], args=[str(n)]) for n in range(5)))

    # Still in call order: a batch sends the scripts' text.
    assert answers == [2, 3, 4, 5, 6]
    assert await client.lrange("list", 1, -1) == [str(n).encode() for n in range(5)]


async def test_every_caller_hears_of_a_lost_connection(
    redis_clients: RedisClients, disposable_redis: RedisServer
) -> None:
    client = redis_clients(disposable_redis.url, socket_timeout=0.5)
    append = script_runner.for_client(client).register(APPEND)
    assert await append(keys=["list"], args=["first"]) == 1
    disposable_redis.kill()

    outcomes = await asyncio.gather(
        *(append(keys=["list"], args=[str(n)]) for n in range(4)), return_exceptions=True
    )

    assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes)


async def test_plain_commands_share_the_queue_and_its_order(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    # The live bus's PUBLISHes ride in the scripts' batches.
    client = redis_clients()
    runner = script_runner.for_client(client)
    append = runner.register(APPEND)
    key = f"{redis_prefix}list"

    first = asyncio.ensure_future(append(keys=[key], args=["script"]))
    await asyncio.sleep(0)  # it has queued its call
    plain = runner.submit("RPUSH", key, "plain")
    last = asyncio.ensure_future(append(keys=[key], args=["script again"]))

    assert list(await asyncio.gather(first, plain, last)) == [1, 2, 3]
    assert await client.lrange(key, 0, -1) == [b"script", b"plain", b"script again"]


class SilentRedis:
    """A TCP server that takes connections and never answers: a stalled
    Redis. Counts the connections made to it."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self._held.append(writer)

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._held:
            writer.close()
        assert self._server is not None
        self._server.close()


async def _connections_made(
    redis_clients: RedisClients, queued_behind: int
) -> tuple[int, list[BaseException]]:
    """Connections a stalled Redis saw for one call and `queued_behind` more
    made while it was in flight, and what each call got."""
    silent = SilentRedis()
    async with silent as url:
        append = script_runner.for_client(redis_clients(url, socket_timeout=0.3)).register(APPEND)
        first = asyncio.create_task(append(keys=["k"], args=["first"]))
        await asyncio.sleep(0.05)  # the first is in flight
        queued = [
            asyncio.create_task(append(keys=["k"], args=[str(n)])) for n in range(queued_behind)
        ]
        outcomes = await asyncio.gather(first, *queued, return_exceptions=True)
        return silent.connections, outcomes


async def test_calls_queued_behind_a_call_redis_never_answers_fail_with_it_unsent(
    redis_clients: RedisClients,
) -> None:
    # Each would otherwise be sent to the stalled Redis and wait out its own
    # timeout in turn, after the first one's.
    alone, _ = await _connections_made(redis_clients, queued_behind=0)
    with_queue, outcomes = await _connections_made(redis_clients, queued_behind=5)

    assert len(outcomes) == 6
    assert all(isinstance(outcome, RedisTimeoutError) for outcome in outcomes)
    assert with_queue == alone  # the queued calls never went to it
