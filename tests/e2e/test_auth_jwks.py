"""JWT_JWKS_URL through the real service: keys fetched from a local JWKS
endpoint, rotated there with no restart here, the refresh rate limit, and
outages of the endpoint."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc

from tests.support.grpc_client import bearer, rich_error, text_request
from tests.support.jwks_server import JwksServer, SigningKey
from tests.support.net import free_port
from tests.support.service import ROOT, ServiceProcess

# Authentication is decided before the store is touched.
pytestmark = pytest.mark.store_independent

KEY_A = SigningKey.new("rotation-a", "RS256")
KEY_B = SigningKey.new("rotation-b", "EdDSA")


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with JwksServer(KEY_A) as server:
        yield server


def _service(tmp_path: Path, jwks: JwksServer, min_refresh: str) -> ServiceProcess:
    return ServiceProcess(
        tmp_path,
        {"JWT_JWKS_URL": jwks.url, "JWT_JWKS_MIN_REFRESH_SECONDS": min_refresh},
    )


@pytest_asyncio.fixture
async def stub_for() -> AsyncIterator[list[grpc.aio.Channel]]:
    channels: list[grpc.aio.Channel] = []
    yield channels
    for channel in channels:
        await channel.close(None)


def _stub(
    process: ServiceProcess, channels: list[grpc.aio.Channel]
) -> chat_service_pb2_grpc.ChatServiceAsyncStub:
    channel = grpc.aio.insecure_channel(process.address)
    channels.append(channel)
    return chat_service_pb2_grpc.ChatServiceStub(channel)


async def _refused(call: Awaitable[object]) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = rich_error(caught.value)
    return error.code, error.reason, error.message


async def _export(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, conversation_id: str, token: str
) -> bytes:
    request = pb.ExportConversationRequest(
        conversation_id=conversation_id, format=pb.EXPORT_FORMAT_JSON_LINES
    )
    chunks = [
        chunk.data async for chunk in stub.ExportConversation(request, metadata=bearer(token))
    ]
    return b"".join(chunks)


async def test_a_key_rotation_takes_effect_without_a_restart(
    tmp_path: Path, jwks: JwksServer, stub_for: list[grpc.aio.Channel]
) -> None:
    process = _service(tmp_path, jwks, min_refresh="1").start()
    try:
        stub = _stub(process, stub_for)
        tenant = f"tenant-{uuid.uuid4().hex[:8]}"
        token_a = KEY_A.mint(tenant)
        sent = await stub.SendMessage(text_request("before"), metadata=bearer(token_a))
        assert b"before" in await _export(stub, sent.conversation_id, token_a)
        fetched = jwks.requests

        # The identity provider rotates: B replaces A.
        jwks.publish(KEY_B)
        await asyncio.sleep(1.2)  # past JWT_JWKS_MIN_REFRESH_SECONDS since the last fetch
        token_b = KEY_B.mint(tenant)
        listed = await stub.ListConversations(
            pb.ListConversationsRequest(), metadata=bearer(token_b)
        )
        assert [c.conversation_id for c in listed.conversations] == [sent.conversation_id]
        assert b"before" in await _export(stub, sent.conversation_id, token_b)  # a stream too
        assert jwks.requests == fetched + 1

        # A was withdrawn: its tokens fail, the one the service verified before too.
        for token in (token_a, KEY_A.mint(tenant)):
            code, reason, message = await _refused(
                stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token))
            )
            assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_KEY_UNKNOWN")
            assert "kid" in message
        code, reason, _ = await _refused(_export(stub, sent.conversation_id, token_a))
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_KEY_UNKNOWN")
    finally:
        process.stop()


async def test_made_up_key_ids_do_not_hammer_the_endpoint_and_outages_keep_the_keys(
    tmp_path: Path, jwks: JwksServer, stub_for: list[grpc.aio.Channel]
) -> None:
    process = _service(tmp_path, jwks, min_refresh="3600").start()
    try:
        stub = _stub(process, stub_for)
        tenant = f"tenant-{uuid.uuid4().hex[:8]}"
        await stub.ListConversations(
            pb.ListConversationsRequest(), metadata=bearer(KEY_A.mint(tenant))
        )
        assert jwks.requests == 1

        flood = [KEY_A.mint(tenant, kid=f"made-up-{n}") for n in range(40)]
        refusals = await asyncio.gather(
            *(
                _refused(stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(t)))
                for t in flood
            )
        )
        assert {(code, reason) for code, reason, _ in refusals} == {
            (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_KEY_UNKNOWN")
        }
        assert jwks.requests == 1

        # The endpoint goes away: the keys fetched before still verify.
        jwks.stop()
        await stub.SendMessage(text_request(), metadata=bearer(KEY_A.mint(tenant)))
    finally:
        process.stop()


async def test_no_keys_at_all_is_unavailable_until_the_endpoint_answers(
    tmp_path: Path, jwks: JwksServer, stub_for: list[grpc.aio.Channel]
) -> None:
    jwks.fail_with(503)
    process = _service(tmp_path, jwks, min_refresh="1").start()
    try:
        stub = _stub(process, stub_for)
        token = KEY_A.mint(f"tenant-{uuid.uuid4().hex[:8]}")
        code, reason, _ = await _refused(
            stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token))
        )
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "JWKS_UNAVAILABLE")

        jwks.fail_with(200)
        await asyncio.sleep(1.2)  # past the rate limit
        await stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token))
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"JWT_JWKS_URL": "ftp://idp.example/jwks"}, ["JWT_JWKS_URL"]),
        (
            {"JWT_JWKS_URL": "https://idp.example/jwks", "JWT_SECRET": "s" * 40},
            ["JWT_JWKS_URL", "JWT_SECRET"],
        ),
        (
            {"SECURITY_HUB_URL": "127.0.0.1:9", "JWT_JWKS_URL": "https://idp.example/jwks"},
            ["SECURITY_HUB_URL", "JWT_JWKS_URL"],
        ),
        ({"SECURITY_HUB_URL": "http://hub.internal:9000"}, ["SECURITY_HUB_URL"]),
        (
            {"JWT_JWKS_URL": "https://idp.example/jwks", "JWT_JWKS_MIN_REFRESH_SECONDS": "0"},
            ["JWT_JWKS_MIN_REFRESH_SECONDS"],
        ),
    ],
    ids=["not-http", "jwks-and-secret", "hub-and-jwks", "hub-as-url", "no-rate-limit"],
)
def test_ambiguous_or_malformed_token_settings_refuse_to_start(
    tmp_path: Path, env: dict[str, str], named: list[str]
) -> None:
    base = {key: value for key, value in os.environ.items() if not key.startswith("JWT_")}
    done = subprocess.run(
        [sys.executable, "-m", "chat_service"],
        cwd=ROOT,
        env={
            **base,
            "SERVICE_HOST": "127.0.0.1",
            "SERVICE_PORT": str(free_port()),
            "DATA_DIR": str(tmp_path),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    for name in named:
        assert name in done.stderr
