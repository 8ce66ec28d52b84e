"""The service process: restarts, graceful drain, health, reflection."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.e2e.test_watch_and_export import Watcher
from tests.support.engine_server import running_engine
from tests.support.grpc_client import bearer, rich_error, text_request
from tests.support.net import free_port
from tests.support.service import ROOT, TEST_CHANNEL_SECRETS_KEY, ServiceProcess
from tests.support.streams import StreamClient

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


@pytest.mark.parametrize("platform", ["whatsapp", "messenger", "slack", "teams", "sms", "voice"])
async def test_every_platforms_webhook_is_served(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, platform: str
) -> None:
    """The production wiring takes every platform's webhook: an unsigned call
    is refused by the platform's check (401/403), never UNIMPLEMENTED."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.HandleWebhook(pb.HandleWebhookRequest(tenant_id="acme", platform=platform))

    assert rich_error(caught.value).code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_draining_ends_streams_and_watches_with_where_to_resume(tmp_path: Path) -> None:
    # Two replicas on one store (two processes: a couple of seconds to start).
    # The one drained must end its stream and watch at once, telling each
    # client where to resume; they resume on the other and lose nothing.
    data_dir = tmp_path / "service"
    draining = ServiceProcess(data_dir, {"SHUTDOWN_GRACE_SECONDS": "30"}, name="draining")
    staying = ServiceProcess(data_dir, name="staying")
    try:
        draining.start()
        staying.start()
        auth = bearer(draining.token("acme"))
        async with (
            grpc.aio.insecure_channel(draining.address) as to_draining,
            grpc.aio.insecure_channel(staying.address) as to_staying,
        ):
            stub = chat_service_pb2_grpc.ChatServiceStub(to_draining)
            watcher = Watcher(stub, auth)
            await asyncio.wait_for(watcher.call.initial_metadata(), 10)
            stream = StreamClient(stub, auth)
            conversation_id = (await stream.open()).conversation.conversation_id
            stream.say("before the drain", "d-1")
            seen = await stream.messages_through(2)
            await watcher.until(3)  # started, received, sent

            started = time.monotonic()
            stopping = asyncio.get_running_loop().run_in_executor(None, draining.stop)
            _, stream_ended = await stream.until_error(timeout=20)
            watch_ended = await watcher.error(timeout=20)
            assert await stopping == 0
            assert time.monotonic() - started < 10  # not the 30 s grace

            for ended in (stream_ended, watch_ended):
                error = rich_error(ended)
                assert (error.code, error.reason) == (
                    grpc.StatusCode.UNAVAILABLE,
                    "SERVER_DRAINING",
                )
            resume_after = int(rich_error(stream_ended).metadata["resume_after_sequence"])
            resume_token = rich_error(watch_ended).metadata["resume_token"]
            assert resume_after == seen[-1].sequence
            watched = list(watcher.events)

            # The conversation goes on while the clients reconnect.
            other = chat_service_pb2_grpc.ChatServiceStub(to_staying)
            later = await other.SendMessage(
                text_request("while away", conversation_id=conversation_id), metadata=auth
            )
            resumed = StreamClient(other, auth)
            await resumed.open(conversation_id=conversation_id, resume_after=resume_after)
            after = await resumed.messages_through(4)
            rewatch = Watcher(other, auth, resume_token=resume_token)
            rewatched = await rewatch.until(2)

            listed = await other.ListMessages(
                pb.ListMessagesRequest(conversation_id=conversation_id), metadata=auth
            )
            assert [m.message_id for m in seen + after] == [m.message_id for m in listed.messages]
            assert [e.event.message_id for e in rewatched[:2]] == [
                later.message_id,
                later.replies[0].message_id,
            ]
            assert not {e.event.event_id for e in watched} & {e.event.event_id for e in rewatched}
            resumed.cancel()
            await rewatch.stop()
    finally:
        draining.kill()
        staying.kill()


# ------------------------------------------------------------ a failed start

# sysexits.h: EX_UNAVAILABLE (what it needs cannot be reached: try again
# later) and the configuration error of every bad setting.
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 2


def _failed_start(tmp_path: Path, env: Mapping[str, str]) -> tuple[int, str]:
    """Runs `python -m chat_service`, which must exit by itself: its exit
    code and what it wrote."""
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JWT_", "MONGODB_", "REDIS_", "KAFKA_", "MCP_"))
    }
    process = subprocess.run(
        [sys.executable, "-m", "chat_service"],
        cwd=ROOT,
        env={
            **base,
            "SERVICE_HOST": "127.0.0.1",
            "SERVICE_PORT": str(free_port()),
            "DATA_DIR": str(tmp_path),
            "JWT_DEV_KEY": "allow",
            "PAGE_TOKEN_SECRET": "s" * 32,
            "CHANNEL_SECRETS_KEY": TEST_CHANNEL_SECRETS_KEY,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return process.returncode, process.stdout + process.stderr


# The failed starts below make the process's environment themselves (no
# ServiceProcess, so not the store CHAT_TEST_STORE chooses) and the process
# exits before it serves: the MongoDB pass would repeat them exactly.
@pytest.mark.store_independent
@pytest.mark.parametrize(
    ("env", "variable", "code"),
    [
        # Nothing listens on a fresh free port: MongoDB is unreachable.
        (
            {
                "MONGODB_URI": "mongodb://127.0.0.1:{port}/chat",
                "REQUEST_TIMEOUT_MS": "1000",  # how long the store's open waits
                "MCP_ENGINE_TIMEOUT_MS": "1000",
            },
            "MONGODB_URI",
            EXIT_UNAVAILABLE,
        ),
        ({"MONGODB_URI": "http://db:27017/chat"}, "MONGODB_URI", EXIT_CONFIG),
        # The shape is right, but pymongo refuses an option.
        ({"MONGODB_URI": "mongodb://db:27017/chat?authSource="}, "MONGODB_URI", EXIT_CONFIG),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL", EXIT_CONFIG),
        ({"REDIS_URL": "redis://cache:port/0"}, "REDIS_URL", EXIT_CONFIG),
        ({"KAFKA_BROKERS": "kafka:port"}, "KAFKA_BROKERS", EXIT_CONFIG),
    ],
    ids=[
        "mongo-unreachable",
        "mongo-no-uri",
        "mongo-bad-option",
        "redis-scheme",
        "redis-port",
        "kafka-port",
    ],
)
def test_a_start_that_cannot_work_says_why_in_one_line(
    tmp_path: Path, env: dict[str, str], variable: str, code: int
) -> None:
    env = {name: value.format(port=free_port()) for name, value in env.items()}

    exit_code, output = _failed_start(tmp_path, env)

    assert exit_code == code, output
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith(("cannot start: ", "configuration error: ")), output
    assert variable in last


@pytest.mark.store_independent
def test_a_taken_port_is_a_clean_failed_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exit_code, output = _failed_start(tmp_path, {"SERVICE_PORT": str(port)})

    assert exit_code == EXIT_UNAVAILABLE, output
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"cannot start: cannot listen on 127.0.0.1:{port}"), output
    assert "SERVICE_PORT" in last
