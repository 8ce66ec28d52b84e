"""Several service processes on the production coordination: real Redis and
a real Kafka-protocol broker, one shared store.

Every process here is `python -m chat_service` with REDIS_URL and
KAFKA_BROKERS set; the two of a pair share one DATA_DIR (one SQLite file,
one dev key), as replicas share one database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from tests.support.grpc_client import Metadata, bearer, rich_error, text_request
from tests.support.kafka import KafkaBroker, read_events
from tests.support.redis import RedisServer
from tests.support.service import ServiceProcess
from tests.support.streams import StreamClient

Stub = chat_service_pb2_grpc.ChatServiceStub


@dataclass
class Pair:
    a: ServiceProcess
    b: ServiceProcess
    topic: str

    def env(self) -> dict[str, str]:
        return self.a.extra_env


def _pair(data_dir: Path, redis_url: str, kafka: KafkaBroker, **extra: str) -> Pair:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {
        "REDIS_URL": redis_url,
        "KAFKA_BROKERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": prefix,
        **extra,
    }
    return Pair(
        a=ServiceProcess(data_dir, env, name="service-a"),
        b=ServiceProcess(data_dir, env, name="service-b"),
        topic=f"{prefix}.conversation.events.v1",
    )


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, kafka_broker: KafkaBroker
) -> Iterator[Pair]:
    """One pair for the tests that need nothing special (each has a tenant of its own)."""
    started = _pair(tmp_path_factory.mktemp("shared"), redis_server.url, kafka_broker)
    started.a.start()
    started.b.start()
    yield started
    started.a.kill()
    started.b.kill()


@dataclass
class Clients:
    a: chat_service_pb2_grpc.ChatServiceAsyncStub
    b: chat_service_pb2_grpc.ChatServiceAsyncStub
    auth: Metadata


@pytest.fixture
async def clients(pair: Pair) -> AsyncIterator[Clients]:
    async with (
        grpc.aio.insecure_channel(pair.a.address) as channel_a,
        grpc.aio.insecure_channel(pair.b.address) as channel_b,
    ):
        yield Clients(
            a=chat_service_pb2_grpc.ChatServiceStub(channel_a),
            b=chat_service_pb2_grpc.ChatServiceStub(channel_b),
            auth=bearer(pair.a.token(f"tenant-{uuid.uuid4().hex[:8]}")),
        )


async def test_two_processes_serve_one_conversation_in_order(clients: Clients) -> None:
    first = await clients.a.SendMessage(text_request("start"), metadata=clients.auth)
    conversation_id = first.conversation_id

    async def send(n: int) -> pb.SendMessageResponse:
        stub = clients.a if n % 2 else clients.b
        reply: pb.SendMessageResponse = await stub.SendMessage(
            text_request(f"message {n}", conversation_id=conversation_id, message_id=f"m-{n}"),
            metadata=clients.auth,
        )
        return reply

    await asyncio.gather(*(send(n) for n in range(40)))

    listed = await clients.b.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id, page_size=1000),
        metadata=clients.auth,
    )
    messages = list(listed.messages)
    assert [m.sequence for m in messages] == list(range(1, 83))
    assert len({m.message_id for m in messages}) == 82
    # FIFO per conversation: every message is followed directly by its reply.
    for user, bot in zip(messages[::2], messages[1::2], strict=True):
        assert user.role == resources_pb2.MESSAGE_ROLE_USER
        assert bot.reply_to_message_id == user.message_id


async def test_a_stream_on_one_process_hears_replies_made_on_the_other(clients: Clients) -> None:
    stream = StreamClient(clients.a, clients.auth)
    conversation_id = (await stream.open()).conversation.conversation_id

    sent = await clients.b.SendMessage(
        text_request("sent to the other process", conversation_id=conversation_id),
        metadata=clients.auth,
    )
    heard = await stream.messages_through(2)

    assert [m.message_id for m in heard] == [sent.message_id, sent.replies[0].message_id]
    stream.cancel()


async def test_streams_on_both_processes_see_every_message_once_in_order(
    clients: Clients,
) -> None:
    # The guarantee across processes: sequences come from the store under
    # the conversation's Redis lock; each process publishes its own commits
    # to Redis, so live events of A and B may reach a stream out of order or
    # not at all. The stream drops what it already sent and fills a gap from
    # the store, so its client still sees every message once, in order.
    first = await clients.a.SendMessage(text_request("start"), metadata=clients.auth)
    conversation_id = first.conversation_id
    on_b, on_a = StreamClient(clients.b, clients.auth), StreamClient(clients.a, clients.auth)
    await on_b.open(conversation_id=conversation_id)
    await on_a.open(conversation_id=conversation_id)

    async def send(n: int) -> None:
        await (clients.a if n % 2 else clients.b).SendMessage(
            text_request(f"message {n}", conversation_id=conversation_id, message_id=f"m-{n}"),
            metadata=clients.auth,
        )

    await asyncio.gather(*(send(n) for n in range(20)))  # racing for the lock
    last = 2 + 20 * 2
    heard_on_b = await on_b.messages_through(last)
    heard_on_a = await on_a.messages_through(last)

    listed = await clients.b.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id, page_size=1000),
        metadata=clients.auth,
    )
    expected = [(m.sequence, m.message_id) for m in listed.messages[2:]]
    assert [m.sequence for m in listed.messages] == list(range(1, last + 1))
    for heard in (heard_on_b, heard_on_a):
        assert [(m.sequence, m.message_id) for m in heard] == expected
    on_a.cancel()
    on_b.cancel()


async def test_a_retry_on_the_other_process_is_a_replay(clients: Clients) -> None:
    request = text_request("once only", message_id=str(uuid.uuid4()))

    first, again = await asyncio.gather(
        clients.a.SendMessage(request, metadata=clients.auth),
        clients.b.SendMessage(request, metadata=clients.auth),
    )

    assert first == again
    listed = await clients.a.ListMessages(
        pb.ListMessagesRequest(conversation_id=first.conversation_id), metadata=clients.auth
    )
    assert len(listed.messages) == 2


# Admission is decided in Redis before the store is touched (as in
# test_rate_limit.py): the MongoDB pass would repeat it exactly.
@pytest.mark.store_independent
async def test_a_rate_limit_holds_across_processes(
    tmp_path: Path, redis_server: RedisServer, kafka_broker: KafkaBroker
) -> None:
    limited = _pair(
        tmp_path / "limited",
        redis_server.url,
        kafka_broker,
        RATE_LIMIT_PER_SECOND="0.1",
        RATE_LIMIT_BURST="6",
    )
    limited.a.start()
    limited.b.start()
    try:
        auth = bearer(limited.a.token(f"tenant-{uuid.uuid4().hex[:8]}"))
        async with (
            grpc.aio.insecure_channel(limited.a.address) as channel_a,
            grpc.aio.insecure_channel(limited.b.address) as channel_b,
        ):
            stubs = [Stub(channel_a), Stub(channel_b)]
            for n in range(6):  # the burst, spread over both processes
                await stubs[n % 2].ListConversations(pb.ListConversationsRequest(), metadata=auth)
            for stub in stubs:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ListConversations(pb.ListConversationsRequest(), metadata=auth)
                assert rich_error(caught.value).reason == "RATE_LIMITED"
    finally:
        limited.a.kill()
        limited.b.kill()


@pytest.mark.timeout(300)  # 1,000 messages through two processes and an outage
@pytest.mark.heavy_load  # ~90 s on nx-27017; the MongoDB outbox has its own tests
async def test_no_event_is_lost_while_the_broker_is_down(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    broker = KafkaBroker(tmp_path / "kafka")
    await asyncio.to_thread(broker.start)
    pair = _pair(
        tmp_path / "shared",
        redis_server.url,
        broker,
        RATE_LIMIT_PER_SECOND="100000",
        RATE_LIMIT_BURST="100000",
    )
    pair.a.start()
    pair.b.start()
    try:
        auth = bearer(pair.a.token("acme"))
        async with (
            grpc.aio.insecure_channel(pair.a.address) as channel_a,
            grpc.aio.insecure_channel(pair.b.address) as channel_b,
        ):
            stubs = [Stub(channel_a), Stub(channel_b)]
            conversations = [
                (
                    await stubs[0].SendMessage(text_request(f"start {c}"), metadata=auth)
                ).conversation_id
                for c in range(10)
            ]

            async def load(start: int, stop: int) -> None:
                for n in range(start, stop, 20):
                    await asyncio.gather(
                        *(
                            stubs[k % 2].SendMessage(
                                text_request(f"m {k}", conversation_id=conversations[k % 10]),
                                metadata=auth,
                            )
                            for k in range(n, min(n + 20, stop))
                        )
                    )

            await load(10, 300)
            await asyncio.to_thread(broker.stop)  # Kafka goes down mid-load
            await load(300, 700)  # the service keeps serving
            await asyncio.to_thread(broker.start)
            await load(700, 1000)

        # 10 conversations started, 1,000 messages received and answered.
        expected = 10 + 1000 * 2
        consumed = await read_events(
            broker.bootstrap_servers, pair.topic, at_least=expected, timeout=180
        )
    finally:
        pair.a.kill()
        pair.b.kill()
        await asyncio.to_thread(broker.stop)

    unique = {record.event.event_id: record for record in consumed}
    assert len(unique) == expected
    by_conversation: dict[str, list[int]] = {}
    for record in consumed:  # in partition order; a conversation lives on one partition
        assert record.key == record.event.conversation_id.encode()
        if record.event.event_type.startswith("message."):
            by_conversation.setdefault(record.event.conversation_id, []).append(
                record.event.sequence
            )
    for sequences in by_conversation.values():
        deduplicated = list(dict.fromkeys(sequences))
        assert deduplicated == sorted(deduplicated)
        assert deduplicated == list(range(1, len(deduplicated) + 1))


async def test_redis_down_fails_writes_closed_and_corrupts_nothing(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    redis = RedisServer(tmp_path / "redis")
    await asyncio.to_thread(redis.start)
    service = ServiceProcess(
        tmp_path / "service",
        {
            "REDIS_URL": redis.url,
            "KAFKA_BROKERS": kafka_broker.bootstrap_servers,
            # No cooldown of the Redis circuit breaker: the first call after
            # the restart may go (tests/e2e/test_redis_stall.py covers it).
            "REDIS_BREAKER_SECONDS": "0",
        },
    )
    service.start()
    try:
        auth = bearer(service.token("acme"))
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = Stub(channel)
            first = await stub.SendMessage(text_request("before"), metadata=auth)
            conversation_id = first.conversation_id

            await asyncio.to_thread(redis.stop)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SendMessage(
                    text_request("during", conversation_id=conversation_id), metadata=auth
                )
            error = rich_error(caught.value)
            assert error.code is grpc.StatusCode.UNAVAILABLE
            assert error.reason == "COORDINATION_UNAVAILABLE"
            assert error.retry_delay is not None
            # Reads need no lock: they keep working (rate limits are not enforced).
            listed = await stub.ListMessages(
                pb.ListMessagesRequest(conversation_id=conversation_id), metadata=auth
            )
            assert len(listed.messages) == 2

            await asyncio.to_thread(redis.start)
            after = await stub.SendMessage(
                text_request("after", conversation_id=conversation_id), metadata=auth
            )
            listed = await stub.ListMessages(
                pb.ListMessagesRequest(conversation_id=conversation_id), metadata=auth
            )
    finally:
        service.kill()
        await asyncio.to_thread(redis.stop)

    assert after.processing_metadata.sequence == 3
    assert [m.content.text for m in listed.messages][::2] == ["before", "after"]
    assert [m.sequence for m in listed.messages] == [1, 2, 3, 4]
