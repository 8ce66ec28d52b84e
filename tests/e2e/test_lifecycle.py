"""The service process: restarts, graceful drain, health, reflection."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Mapping

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.support.engine_server import running_engine
from tests.support.grpc_client import bearer, rich_error, text_request
from tests.support.net import free_port
from tests.support.service import ServiceProcess

CHAT = "chatbot.chat.v1.ChatService"


async def test_data_survives_a_restart(fresh_service: ServiceProcess) -> None:
    fresh_service.start()
    auth = bearer(fresh_service.token("acme"))
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        sent = await stub.SendMessage(
            text_request("remember me", message_id="keep-1"), metadata=auth
        )

    fresh_service.restart()

    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        listed = await stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=sent.conversation_id), metadata=auth
        )
        assert listed.messages[0].content.text == "remember me"
        assert len(listed.messages) == 2
        # The idempotency record survived too: same answer, nothing new.
        again = await stub.SendMessage(
            text_request("remember me", message_id="keep-1"), metadata=auth
        )
        assert again == sent
        more = await stub.SendMessage(
            text_request("and continue", conversation_id=sent.conversation_id), metadata=auth
        )
        assert more.processing_metadata.sequence == 3


async def test_health_and_reflection_need_no_token(
    service: ServiceProcess, channel: grpc.aio.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", CHAT):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def list_services() -> list[str]:
        with grpc.insecure_channel(service.address) as sync_channel:
            database = ProtoReflectionDescriptorDatabase(sync_channel)
            return list(database.get_services())

    services = await asyncio.to_thread(list_services)
    assert CHAT in services
    assert "grpc.health.v1.Health" in services


def _call_by_reflection(
    address: str, token: str, method: str, body: Mapping[str, object]
) -> dict[str, object]:
    """What grpcurl does: no generated code, only the server's reflection."""
    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName(CHAT)
        descriptor = service.FindMethodByName(method)
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        response_class = message_factory.GetMessageClass(descriptor.output_type)
        call = channel.unary_unary(
            f"/{CHAT}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        request = json_format.Parse(json.dumps(body), request_class())
        response = call(request, metadata=bearer(token), timeout=10)
        return json_format.MessageToDict(response, preserving_proto_field_name=True)


async def test_a_client_with_only_reflection_can_send(service: ServiceProcess) -> None:
    token = service.token("reflection-tenant")
    body = {
        "user_id": "grpcurl-user",
        "channel": "CHANNEL_WEB",
        "content": {"type": "MESSAGE_TYPE_TEXT", "text": "hello from reflection"},
    }

    reply = await asyncio.to_thread(
        _call_by_reflection, service.address, token, "SendMessage", body
    )

    assert reply["conversation_id"]
    assert reply["processing_metadata"]["engine"] == "builtin"  # type: ignore[index]
    assert reply["response"]["text"].startswith("Hello")  # type: ignore[index]


async def test_sigterm_drains_in_flight_calls(fresh_service: ServiceProcess) -> None:
    engine_port = free_port()
    async with running_engine(engine_port) as engine:
        engine.delay = 1.0
        fresh_service.extra_env.update(
            {
                "MCP_ENGINE_URL": f"127.0.0.1:{engine_port}",
                "MCP_ENGINE_TIMEOUT_MS": "5000",
                "SHUTDOWN_DELAY_SECONDS": "0.5",
            }
        )
        fresh_service.start()
        auth = bearer(fresh_service.token("acme"))
        async with grpc.aio.insecure_channel(fresh_service.address) as channel:
            stub = chat_service_pb2_grpc.ChatServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            in_flight = asyncio.ensure_future(
                stub.SendMessage(text_request("slow one"), metadata=auth)
            )
            await engine.called.wait()  # the call is inside the engine now

            os.kill(fresh_service.pid, signal.SIGTERM)
            # During SHUTDOWN_DELAY_SECONDS the server still answers, saying
            # NOT_SERVING, so that load balancers stop routing to it.
            statuses = set()
            deadline = time.monotonic() + 2
            while (
                time.monotonic() < deadline
                and health_pb2.HealthCheckResponse.NOT_SERVING not in statuses
            ):
                statuses.add((await health.Check(health_pb2.HealthCheckRequest())).status)
            assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses

            reply = await in_flight
            assert reply.processing_metadata.engine == "mcp"
            assert not reply.processing_metadata.fallback_used
    assert fresh_service.stop() == 0
    assert "stopped" in fresh_service.logs()


async def test_unfinished_rpcs_answer_unimplemented(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.HandleWebhook(pb.HandleWebhookRequest(tenant_id="acme", platform="slack"))

    assert rich_error(caught.value).code is grpc.StatusCode.UNIMPLEMENTED
