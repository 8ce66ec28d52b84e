"""The service on a Redis that stalls (SIGSTOP): after the one call that finds
out, authenticated calls skip Redis at once (reads are admitted, writes get
UNAVAILABLE), and Redis is used again soon after it answers."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc

from tests.support.grpc_client import bearer, text_request
from tests.support.redis import RedisServer
from tests.support.service import ServiceProcess

# Refused or decided before the store is touched: the MongoDB pass of
# `make test` leaves this module out (see the marker in pyproject.toml).
pytestmark = pytest.mark.store_independent

FAST = 0.2  # without the breaker: ~2 s a call (1 s socket timeout, one retry)


async def test_a_stalled_redis_costs_one_slow_call_not_every_call(
    fresh_service: ServiceProcess, disposable_redis: RedisServer
) -> None:
    # A cooldown well past the 21 fast calls below, also on a loaded
    # machine: were it over before they are, a call would probe the stalled
    # Redis and take the slow path (seen at 0.5 s on a busy 2-core machine).
    # A rate too low for the limiter's reservations (adapters/redis/
    # rate_limit.py): every call asks Redis, so the first one finds out.
    fresh_service.extra_env.update(
        {
            "REDIS_URL": disposable_redis.url,
            "JWT_DEV_KEY": "allow",
            "REDIS_BREAKER_SECONDS": "1.5",
            "RATE_LIMIT_PER_SECOND": "20",
            "RATE_LIMIT_BURST": "200",
        }
    )
    fresh_service.start()
    auth = bearer(fresh_service.token("acme"))
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        reads = pb.ListConversationsRequest()
        await stub.ListConversations(reads, metadata=auth)

        disposable_redis.pause()
        try:
            await stub.ListConversations(reads, metadata=auth, timeout=10)  # finds out
            for _ in range(20):
                started = time.monotonic()
                await stub.ListConversations(reads, metadata=auth, timeout=10)
                assert time.monotonic() - started < FAST
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SendMessage(text_request(), metadata=auth, timeout=10)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < FAST
        finally:
            disposable_redis.resume()

        # Back: after the cooldown a call probes Redis, and writes work again.
        codes = []
        async with asyncio.timeout(10):
            while True:
                try:
                    await stub.SendMessage(text_request(), metadata=auth, timeout=10)
                    break
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
                    await asyncio.sleep(0.1)
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
