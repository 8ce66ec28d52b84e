"""Authentication and tenant isolation over real gRPC."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from chat_service.auth import SCOPE_READ, load_or_create_dev_key
from tests.support.grpc_client import Metadata, bearer, rich_error, text_request
from tests.support.net import free_port
from tests.support.service import ROOT, ServiceProcess

# Refused or decided before the store is touched: the MongoDB pass of
# `make test` leaves this module out (see the marker in pyproject.toml).
pytestmark = pytest.mark.store_independent


def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


async def _expect(call: Awaitable[object], code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (code, reason)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "TOKEN_MISSING"),
        ((("authorization", "Bearer not-a-jwt"),), "TOKEN_INVALID"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "TOKEN_INVALID"),
    ],
)
async def test_missing_or_malformed_token(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, metadata: Metadata, reason: str
) -> None:
    await _expect(
        stub.SendMessage(text_request(), metadata=metadata), grpc.StatusCode.UNAUTHENTICATED, reason
    )


async def test_expired_token(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    token = service.token(tenant(), ttl=-120)  # past the 30 s leeway

    await _expect(
        stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_EXPIRED",
    )


async def test_token_signed_with_another_key(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, tmp_path: Path
) -> None:
    forged = load_or_create_dev_key(tmp_path).mint(tenant())

    await _expect(
        stub.SendMessage(text_request(), metadata=bearer(forged)),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_INVALID",
    )


@pytest.mark.parametrize(
    "claimed",
    ["acme\x00", "acme\n", "ac\x1bme", "a" * 129, "acme/other", "-acme"],
    ids=["nul", "newline", "escape", "too-long", "slash", "leading-dash"],
)
async def test_a_tenant_claim_unfit_for_keys_is_unauthenticated(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub, claimed: str
) -> None:
    # Signed with the key the server trusts: only the claim itself is wrong.
    # Tenant ids go into store and Redis keys as they are.
    auth = bearer(service.token(claimed))

    await _expect(
        stub.SendMessage(text_request(), metadata=auth),
        grpc.StatusCode.UNAUTHENTICATED,
        "TENANT_CLAIM_INVALID",
    )


async def test_tenant_header_must_match_the_token(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token("acme"), ("x-tenant-id", "globex"))

    await _expect(
        stub.ListConversations(pb.ListConversationsRequest(), metadata=auth),
        grpc.StatusCode.PERMISSION_DENIED,
        "TENANT_MISMATCH",
    )


async def test_read_scope_cannot_write(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant(), scopes=[SCOPE_READ]))

    await stub.ListConversations(pb.ListConversationsRequest(), metadata=auth)
    await _expect(
        stub.SendMessage(text_request(), metadata=auth),
        grpc.StatusCode.PERMISSION_DENIED,
        "INSUFFICIENT_SCOPE",
    )


async def test_another_tenants_conversation_does_not_exist_for_you(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    owner = bearer(service.token(tenant()))
    intruder = bearer(service.token(tenant()))
    sent = await stub.SendMessage(text_request("secret"), metadata=owner)
    conversation_id = sent.conversation_id

    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: stub.GetConversation(
            pb.GetConversationRequest(conversation_id=conversation_id), metadata=intruder
        ),
        lambda: stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=conversation_id), metadata=intruder
        ),
        lambda: stub.SendMessage(
            text_request("let me in", conversation_id=conversation_id), metadata=intruder
        ),
        lambda: stub.UpdateConversationStatus(
            pb.UpdateConversationStatusRequest(
                conversation_id=conversation_id,
                status=resources_pb2.CONVERSATION_STATUS_COMPLETED,
            ),
            metadata=intruder,
        ),
    ]
    for attempt in attempts:
        await _expect(attempt(), grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")

    listed = await stub.ListConversations(pb.ListConversationsRequest(), metadata=intruder)
    assert list(listed.conversations) == []
    # The owner's conversation is untouched by all of that.
    mine = await stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id), metadata=owner
    )
    assert mine.messages[0].content.text == "secret"
    assert len(mine.messages) == 2
    got = await stub.GetConversation(
        pb.GetConversationRequest(conversation_id=conversation_id), metadata=owner
    )
    assert got.conversation.status == resources_pb2.CONVERSATION_STATUS_ACTIVE


# ------------------------------------------------ tokens nobody should send


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _signed(service: ServiceProcess, payload: str, header: str = '{"alg":"EdDSA"}') -> str:
    """A token over exactly this JSON, signed with the key the service trusts."""
    key = load_or_create_dev_key(service.data_dir).private_key
    signing_input = f"{_b64(header.encode())}.{_b64(payload.encode())}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode()))}"


def _claims_with(**raw: str) -> str:
    now = int(time.time())
    claims = {
        "iss": '"chat-service-dev"',
        "tenant_id": f'"{tenant()}"',
        "scope": '"chat:read chat:write"',
        "exp": str(now + 300),
        **raw,
    }
    return "{" + ",".join(f'"{name}":{value}' for name, value in claims.items()) + "}"


ODD_TOKENS: dict[str, Callable[[ServiceProcess], str]] = {
    # exp of 10**400 raised OverflowError: INTERNAL.
    "exp-10e400": lambda s: _signed(s, _claims_with(exp="1" + "0" * 400)),
    "nbf-minus-10e400": lambda s: _signed(s, _claims_with(nbf="-1" + "0" * 400)),
    "iat-1e400": lambda s: _signed(s, _claims_with(iat="1e400")),
    "exp-nan": lambda s: _signed(s, _claims_with(exp="NaN")),
    "exp-string": lambda s: _signed(s, _claims_with(exp='"99999999999"')),
    "exp-true": lambda s: _signed(s, _claims_with(exp="true")),
    "tenant-number": lambda s: _signed(s, _claims_with(tenant_id="42")),
    "tenant-list": lambda s: _signed(s, _claims_with(tenant_id='["acme"]')),
    "nested-payload": lambda s: _signed(s, "[" * 1500 + "]" * 1500),
    "alg-none": lambda s: _b64(b'{"alg":"none"}') + "." + _b64(_claims_with().encode()) + ".",
    "alg-es256-with-eddsa-signature": lambda s: _signed(s, _claims_with(), '{"alg":"ES256"}'),
    "alg-hs256-keyed-with-the-public-key": lambda s: _hs256_with_public_key(s),
}


def _hs256_with_public_key(service: ServiceProcess) -> str:
    public = load_or_create_dev_key(service.data_dir).public_key_pem()
    signing_input = _b64(b'{"alg":"HS256"}') + "." + _b64(_claims_with().encode())
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


@pytest.mark.parametrize("make", ODD_TOKENS.values(), ids=ODD_TOKENS.keys())
async def test_a_token_the_verifier_cannot_digest_is_unauthenticated(
    service: ServiceProcess,
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    make: Callable[[ServiceProcess], str],
) -> None:
    token = make(service)
    for call in (
        stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token)),
        stub.SendMessage(text_request(), metadata=bearer(token)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value.details()
    # The same token twice (the verifier remembers good tokens only).
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token))
    assert again.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await stub.ListConversations(
        pb.ListConversationsRequest(), metadata=bearer(service.token(tenant()))
    )  # and the server is still fine


async def test_a_token_past_the_metadata_limit_is_refused_not_internal(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    token = _signed(service, _claims_with(pad='"' + "x" * 100_000 + '"'))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token))

    # gRPC itself refuses headers past 8 KB (the verifier's own bound, for
    # tokens that come another way), before the service sees them.
    assert caught.value.code() in {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }, caught.value.details()


# ------------------------------------------- the development key in production


def _start(data_dir: Path, **env: str) -> subprocess.Popen[str]:
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JWT_", "MONGODB_", "REDIS_", "KAFKA_", "MCP_"))
    }
    return subprocess.Popen(
        [sys.executable, "-m", "chat_service"],
        cwd=ROOT,
        env={
            **base,
            "SERVICE_HOST": "127.0.0.1",
            "SERVICE_PORT": str(free_port()),
            "DATA_DIR": str(data_dir),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("production", ["REDIS_URL", "MONGODB_URI"])
def test_a_production_shape_refuses_to_start_on_the_development_key(
    tmp_path: Path, production: str
) -> None:
    # Nothing listens there: the refusal comes before any connection.
    uri = {"REDIS_URL": "redis://127.0.0.1:9/0", "MONGODB_URI": "mongodb://127.0.0.1:9/chat"}
    process = _start(tmp_path, **{production: uri[production]})
    try:
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()

    assert process.returncode == 2, output
    assert "JWT_DEV_KEY=allow" in output
    assert "JWT_PUBLIC_KEY" in output
    assert not (tmp_path / "dev-jwt-ed25519.pem").exists()  # no key made either
