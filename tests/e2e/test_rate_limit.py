"""Per-tenant rate limits over real gRPC."""

from __future__ import annotations

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc

from tests.support.grpc_client import bearer, rich_error
from tests.support.service import ServiceProcess

# Refused or decided before the store is touched: the MongoDB pass of
# `make test` leaves this module out (see the marker in pyproject.toml).
pytestmark = pytest.mark.store_independent


async def test_a_tenant_over_its_limit_is_told_when_to_retry(
    fresh_service: ServiceProcess,
) -> None:
    fresh_service.extra_env.update(
        {
            "RATE_LIMIT_PER_SECOND": "0.5",
            "RATE_LIMIT_BURST": "3",
            "RATE_LIMIT_TENANTS": "big=100:50",
        }
    )
    fresh_service.start()
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        small = bearer(fresh_service.token("small"))
        request = pb.ListConversationsRequest()
        for _ in range(3):
            await stub.ListConversations(request, metadata=small)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListConversations(request, metadata=small)

        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.reason == "RATE_LIMITED"
        assert error.retry_delay is not None
        assert 0 < error.retry_delay <= 2.0
        # Other tenants have their own buckets, and overrides apply.
        big = bearer(fresh_service.token("big"))
        for _ in range(20):
            await stub.ListConversations(request, metadata=big)
        await stub.ListConversations(request, metadata=bearer(fresh_service.token("other")))
