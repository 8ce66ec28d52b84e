"""The outbox relay of a real service process: taking its own lease straight
over after a crash, and the retention of the event log as watches see it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc

from chat_service.pipeline.outbox_relay import RelaySettings
from tests.support.grpc_client import Metadata, bearer, rich_error, text_request
from tests.support.kafka import KafkaBroker, read_events
from tests.support.net import free_port
from tests.support.service import ServiceProcess

_T = TypeVar("_T")

LEASE_SECONDS = RelaySettings().lease_seconds


async def _eventually(probe: Callable[[], Awaitable[_T | None]], what: str) -> _T:
    """Polls `probe` (state of another process: nothing to wait on) until it
    gives something, for at most 10 s."""
    deadline = time.monotonic() + 10
    while (found := await probe()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"not within 10 s: {what}")
        await asyncio.sleep(0.05)
    return found


async def _held_by_the_relay(service: ServiceProcess) -> None:
    """Returns once the service's relay holds the head of the outbox: a claim
    by anyone else then gets nothing (a zero lease leaves what it gets free)."""
    store = await service.open_store()

    async def held() -> bool | None:
        return None if await store.claim_outbox("observer", limit=1, lease_seconds=0) else True

    try:
        await _eventually(held, "the relay claimed the events")
    finally:
        await store.close()


async def test_a_service_restarted_after_a_crash_publishes_at_once(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    # Kafka is out of reach, so the relay holds its claim on the events
    # (retrying) when the process is killed. Before, the restarted process
    # had a new owner id and waited out the dead one's 30 s lease; its owner
    # id is now its host and port, so it takes its own lease over.
    prefix = f"t{uuid.uuid4().hex[:8]}"
    service = ServiceProcess(
        tmp_path / "service",
        {"KAFKA_BROKERS": f"127.0.0.1:{free_port()}", "KAFKA_TOPIC_PREFIX": prefix},
    )
    service.start()
    try:
        auth = bearer(service.token("acme"))
        async with grpc.aio.insecure_channel(service.address) as channel:
            sent = await chat_service_pb2_grpc.ChatServiceStub(channel).SendMessage(
                text_request("hello"), metadata=auth
            )
        await _held_by_the_relay(service)
        service.kill()

        service.extra_env["KAFKA_BROKERS"] = kafka_broker.bootstrap_servers
        restarted = time.monotonic()
        service.start()
        records = await read_events(
            kafka_broker.bootstrap_servers,
            f"{prefix}.conversation.events.v1",
            at_least=3,
            timeout=LEASE_SECONDS / 2,
        )
        took = time.monotonic() - restarted
    finally:
        service.kill()

    assert len(records) >= 3
    assert {r.event.conversation_id for r in records} == {sent.conversation_id}
    assert took < LEASE_SECONDS / 2


async def _watch_error(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata, token: str
) -> grpc.aio.AioRpcError | None:
    """The error a watch resuming from `token` ends with, None if it opens."""
    call = stub.WatchConversations(pb.WatchConversationsRequest(resume_token=token), metadata=auth)
    try:
        # The token is checked before the watch sends its headers
        # (grpc_api/streaming.py): a refused watch ends with its status
        # alone, an open one sends headers and waits for events.
        async with asyncio.timeout(10):
            await call.initial_metadata()
        async with asyncio.timeout(0.3):
            async for _ in call:
                pass
    except grpc.aio.AioRpcError as error:
        return error
    except TimeoutError:
        pass  # open, waiting for events
    finally:
        call.cancel()
    return None


async def test_a_watch_resuming_from_before_the_retention_is_refused(tmp_path: Path) -> None:
    service = ServiceProcess(
        tmp_path / "service",
        {"OUTBOX_RETENTION_MAX_ROWS": "3", "OUTBOX_PRUNE_INTERVAL_SECONDS": "0.05"},
    )
    service.start()
    try:
        auth = bearer(service.token(f"tenant-{uuid.uuid4().hex[:8]}"))
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = chat_service_pb2_grpc.ChatServiceStub(channel)
            watch = stub.WatchConversations(pb.WatchConversationsRequest(), metadata=auth)
            await asyncio.wait_for(watch.initial_metadata(), 10)
            sent = await stub.SendMessage(text_request("one"), metadata=auth)
            first = await asyncio.wait_for(watch.read(), 10)
            assert isinstance(first, pb.WatchConversationsResponse)
            for text in ("two", "three", "four"):
                await stub.SendMessage(
                    text_request(text, conversation_id=sent.conversation_id), metadata=auth
                )
            last = first  # until the reply to "four" (sequence 8)
            async with asyncio.timeout(10):
                while last.event.event_type != "message.sent" or last.event.sequence != 8:
                    read = await watch.read()
                    assert isinstance(read, pb.WatchConversationsResponse)
                    last = read
            watch.cancel()

            # The relay prunes all but the newest 3 events within moments.
            expired = await _eventually(
                lambda: _watch_error(stub, auth, first.resume_token), "the first token expired"
            )
            assert await _watch_error(stub, auth, last.resume_token) is None
    finally:
        service.kill()

    error = rich_error(expired)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "RESUME_TOKEN_EXPIRED"
