"""Bounds on long-lived calls, over real gRPC: per-tenant caps, the first-frame
deadline, token expiry, and typing that never ends a slow peer's stream.

One service for the module, with small limits (cheap to reach) and no JWT
leeway (a token's expiry is exact)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import jwt
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc

from chat_service.auth import DEV_ISSUER, DEV_SCOPES, load_or_create_dev_key
from tests.support.grpc_client import bearer, rich_error, text_request
from tests.support.service import ServiceProcess, ServiceStore
from tests.support.streams import StreamClient

# Refused or decided before the store is touched: the MongoDB pass of
# `make test` leaves this module out (see the marker in pyproject.toml).
pytestmark = pytest.mark.store_independent

MAX_STREAMS = 12
MAX_WATCHES = 2
FIRST_FRAME_TIMEOUT = 0.5
# A client channel that takes in next to nothing it has not read.
TINY_WINDOW = [("grpc.http2.lookahead_bytes", 1), ("grpc.http2.bdp_probe", 0)]


@pytest.fixture(scope="module")
def limited(
    service_store: ServiceStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        tmp_path_factory.mktemp("limited"),
        {
            "MAX_STREAMS_PER_TENANT": str(MAX_STREAMS),
            "MAX_WATCHES_PER_TENANT": str(MAX_WATCHES),
            "STREAM_FIRST_FRAME_TIMEOUT_SECONDS": str(FIRST_FRAME_TIMEOUT),
            "STREAM_BUFFER_SIZE": "4",
            "JWT_LEEWAY_SECONDS": "0",
        },
        store=service_store,
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def stub(
    limited: ServiceProcess,
) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    async with grpc.aio.insecure_channel(limited.address) as channel:
        yield chat_service_pb2_grpc.ChatServiceStub(channel)


def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


async def _watch_error(call: Any) -> grpc.aio.AioRpcError:
    """The error a watch ends with, within 10 s."""

    async def drain() -> None:
        async for _ in call:
            pass

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(drain(), 10)
    return caught.value


async def test_streams_and_watches_are_capped_per_tenant(
    limited: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(limited.token(tenant()))
    streams = [StreamClient(stub, auth) for _ in range(MAX_STREAMS)]
    await asyncio.gather(*(s.open(user_id=f"u-{n}") for n, s in enumerate(streams)))
    watches = [
        stub.WatchConversations(pb.WatchConversationsRequest(), metadata=auth)
        for _ in range(MAX_WATCHES)
    ]
    await asyncio.gather(*(w.initial_metadata() for w in watches))

    one_too_many = StreamClient(stub, auth)
    one_too_many.send(open=pb.StreamOpen(user_id="u", channel=1))  # type: ignore[arg-type]
    _, refused = await one_too_many.until_error()
    watch_refused = await _watch_error(
        stub.WatchConversations(pb.WatchConversationsRequest(), metadata=auth)
    )

    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rich_error(refused).reason == "TOO_MANY_STREAMS"
    assert rich_error(refused).metadata["limit"] == str(MAX_STREAMS)
    assert watch_refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rich_error(watch_refused).reason == "TOO_MANY_WATCHES"
    # Another tenant is not held back by this one.
    other = StreamClient(stub, bearer(limited.token(tenant())))
    await other.open()
    for call in (*streams, other):
        call.cancel()
    for watch in watches:
        watch.cancel()


async def test_a_stream_without_a_first_frame_ends_in_time(
    limited: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    silent = StreamClient(stub, bearer(limited.token(tenant())))
    started = time.monotonic()

    _, ended = await silent.until_error(timeout=5)

    error = rich_error(ended)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.fields) == ("FIRST_FRAME_TIMEOUT", ["open"])
    assert time.monotonic() - started < FIRST_FRAME_TIMEOUT + 2


def _token_expiring_soon(service: ServiceProcess, tenant_id: str) -> tuple[str, float]:
    """A token that expires within 1 to 2 seconds (`exp` is whole seconds)."""
    expires = math.ceil(time.time()) + 1
    claims = {
        "iss": DEV_ISSUER,
        "sub": "tester",
        "tenant_id": tenant_id,
        "scope": " ".join(sorted(DEV_SCOPES)),
        "exp": expires,
    }
    key = load_or_create_dev_key(service.data_dir).private_key
    return jwt.encode(claims, key, algorithm="EdDSA"), expires


async def test_streams_and_watches_end_when_their_token_expires(
    limited: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    # Waits for a real token to expire: one to two seconds.
    tenant_id = tenant()
    token, expires = _token_expiring_soon(limited, tenant_id)
    auth = bearer(token)
    stream = StreamClient(stub, auth)
    conversation_id = (await stream.open()).conversation.conversation_id
    stream.say("hello", "x-1")
    await stream.messages_through(2)
    watch = stub.WatchConversations(pb.WatchConversationsRequest(), metadata=auth)
    await watch.initial_metadata()

    _, stream_ended = await stream.until_error(timeout=5)
    watch_ended = await _watch_error(watch)

    assert time.time() < expires + 1.5  # ended at expiry, not at some later check
    for ended in (stream_ended, watch_ended):
        error = rich_error(ended)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    assert rich_error(stream_ended).metadata["resume_after_sequence"] == "2"
    assert rich_error(watch_ended).metadata["resume_token"]
    # With a fresh token the client resumes where it was.
    resumed = StreamClient(stub, bearer(limited.token(tenant_id)))
    opened = await resumed.open(conversation_id=conversation_id, resume_after=2)
    assert opened.replay_through_sequence == 2
    resumed.cancel()


async def test_typing_from_many_streams_never_ends_a_slow_peers_stream(
    limited: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(limited.token(tenant()))
    # A receive window of a few bytes: what the slow peer does not read
    # stays in the server's buffer, not in the transport's.
    slow_channel = grpc.aio.insecure_channel(limited.address, options=TINY_WINDOW)
    slow = StreamClient(chat_service_pb2_grpc.ChatServiceStub(slow_channel), auth)
    conversation_id = (await slow.open()).conversation.conversation_id
    typists = [StreamClient(stub, auth) for _ in range(10)]
    await asyncio.gather(*(t.open(conversation_id=conversation_id) for t in typists))

    # Each typist's indicator, then a frame the server refuses: its answer
    # means the indicator before it was handled (frames are taken in order).
    for typist in typists:
        typist.send(typing=pb.TypingIndicator(typing=True))
        typist.say("no id", "")
    await asyncio.gather(*(t.next_of("error") for t in typists))
    # Ten indicators for a buffer of 4, the slow peer reading nothing; then
    # a message, which it must still get.
    sent = await stub.SendMessage(
        text_request("still there?", conversation_id=conversation_id), metadata=auth
    )

    received = [await slow.next() for _ in range(3)]
    kinds = sorted(str(r.WhichOneof("event")) for r in received)
    assert kinds == ["message", "message", "typing"]
    assert [r.message.message_id for r in received if r.HasField("message")] == [
        sent.message_id,
        sent.replies[0].message_id,
    ]
    for client in (slow, *typists):
        client.cancel()
    await slow_channel.close(None)
