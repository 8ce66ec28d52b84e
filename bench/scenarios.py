"""The named scenarios: each starts its servers, runs the load, and stops them.

A scenario that names a `baseline` is reported as ratios against that
scenario's figures from the same bench run; a scenario without one is a
baseline. To add one, write its
coroutine and list it in SCENARIOS: start what it needs (bench.servers
starts the service and the production parts), hand the running service to
a load function, return the LoadResult. On a stream scenario a
"call" is one round trip on a caller's stream (bench.stream_load).

Every scenario, the baselines included, spreads its callers over
`settings.channels` connections (bench.channels) and has its server's probe
read at the edges of the measured window, so that the per-call figures of a
scenario and of its baseline are taken the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc
from chatbot.chat.v1 import chat_service_pb2, chat_service_pb2_grpc, content_pb2, resources_pb2

from bench.channels import open_channels
from bench.echo_server import BIDI_METHOD, UNARY_METHOD
from bench.load import Call, LoadResult, LoadSettings, run_load
from bench.servers import (
    RunningService,
    running_chat_service,
    running_echo_server,
    running_kafka,
    running_mongo,
    running_redis,
)
from bench.stream_load import run_stream_load

PAYLOAD_BYTES = 100
ECHO_PAYLOAD = b"x" * PAYLOAD_BYTES
# Plain text the built-in engine answers by echoing it back: no greeting,
# help or handoff word, so every call takes the same path through the bot.
MESSAGE_TEXT = (
    "Could you tell me where my parcel is? It was ordered last week and I am still waiting for it."
)
BENCH_TENANT = "bench"
# A deadline on every call, so that a stuck server fails the run instead of hanging it.
CALL_TIMEOUT_SECONDS = 10.0


class UnexpectedReply(RuntimeError):
    """The server answered, but not with what the call asked for."""


class StreamRefused(RuntimeError):
    """StreamConversation answered a message with an `error` event."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    run: Callable[[LoadSettings], Awaitable[LoadResult]]
    baseline: str | None = None  # the scenario this one is compared against
    by_default: bool = True  # run when no --scenario is given


# ------------------------------------------------------------------- echo


async def echo_unary(settings: LoadSettings) -> LoadResult:
    async with (
        running_echo_server() as server,
        open_channels(server.address, settings.channels) as channels,
    ):

        def caller_for(index: int) -> Call:
            # None, None: raw bytes both ways.
            echo = channels.for_caller(index).unary_unary(UNARY_METHOD, None, None)

            async def call() -> None:
                reply = await echo(ECHO_PAYLOAD, timeout=CALL_TIMEOUT_SECONDS)
                if reply != ECHO_PAYLOAD:
                    raise UnexpectedReply(f"the echo returned {len(reply)} other bytes")

            return call

        return await run_load(caller_for, settings, server.probe)


async def echo_bidi(settings: LoadSettings) -> LoadResult:
    async with (
        running_echo_server() as server,
        open_channels(server.address, settings.channels) as channels,
    ):

        def new_session(index: int) -> EchoStream:
            echo = channels.for_caller(index).stream_stream(BIDI_METHOD, None, None)
            return EchoStream(echo(None))

        return await run_stream_load(new_session, settings, server.probe)


class EchoStream:
    """Ping-pong on the bare echo's bidirectional method."""

    def __init__(self, call: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
        self._call = call

    async def open(self) -> None:
        pass  # the echo needs no greeting

    async def round_trip(self) -> None:
        async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
            await self._call.write(ECHO_PAYLOAD)
            reply = await self._call.read()
        if not isinstance(reply, bytes):  # grpc.aio.EOF
            raise UnexpectedReply("the echo ended the stream")
        if reply != ECHO_PAYLOAD:
            raise UnexpectedReply(f"the echo returned {len(reply)} other bytes")

    def cancel(self) -> None:
        self._call.cancel()


# ------------------------------------------------------------- SendMessage


async def send_message_sqlite(settings: LoadSettings) -> LoadResult:
    async with running_chat_service(counters=settings.counters) as service:
        return await send_messages(service, settings)


async def send_message_redis_kafka_sqlite(settings: LoadSettings) -> LoadResult:
    async with (
        running_redis() as redis_url,
        running_kafka() as kafka_brokers,
        running_chat_service(
            {"REDIS_URL": redis_url, "KAFKA_BROKERS": kafka_brokers}, counters=settings.counters
        ) as service,
    ):
        return await send_messages(service, settings)


async def send_message_redis_sqlite(settings: LoadSettings) -> LoadResult:
    """send-message-2-workers-redis on one process: what the second worker is measured against."""
    async with (
        running_redis() as redis_url,
        running_chat_service({"REDIS_URL": redis_url}, counters=settings.counters) as service,
    ):
        return await send_messages(service, settings)


async def send_message_2_workers_redis(settings: LoadSettings) -> LoadResult:
    """Two worker processes on one port (`serve --workers 2`), sharing Redis
    and the SQLite file: what a second core buys. SQLite, as in the other
    SQLite scenarios, so that the figures compare with them; the callers'
    connections (settings.channels) are spread over the workers by the kernel."""
    async with (
        running_redis() as redis_url,
        running_chat_service(
            {"REDIS_URL": redis_url}, counters=settings.counters, workers=2
        ) as service,
    ):
        return await send_messages(service, settings)


async def send_message_mongo(settings: LoadSettings) -> LoadResult:
    async with (
        running_mongo() as mongodb_uri,
        running_chat_service({"MONGODB_URI": mongodb_uri}, counters=settings.counters) as service,
    ):
        return await send_messages(service, settings)


async def send_message_production(settings: LoadSettings) -> LoadResult:
    async with (
        running_mongo() as mongodb_uri,
        running_redis() as redis_url,
        running_kafka() as kafka_brokers,
        running_chat_service(
            {"MONGODB_URI": mongodb_uri, "REDIS_URL": redis_url, "KAFKA_BROKERS": kafka_brokers},
            counters=settings.counters,
        ) as service,
    ):
        return await send_messages(service, settings)


async def send_message_grpc_layer(settings: LoadSettings) -> LoadResult:
    # No pipeline behind the RPC: its work counters would all read zero.
    async with running_chat_service(module="bench.grpc_layer_service") as service:
        return await send_messages(service, settings)


async def send_messages(service: RunningService, settings: LoadSettings) -> LoadResult:
    """SendMessage load: each caller writes into a conversation of its own.

    A caller's first call starts its conversation; later calls continue it,
    so every call after the first takes the lock, loads and extends an
    existing conversation, as a chatting user does. Message ids are unique
    per call (a repeated id would be an idempotent replay, a different path).
    """
    metadata = (("authorization", f"Bearer {await service.token(BENCH_TENANT)}"),)
    content = content_pb2.MessageContent(type=content_pb2.MESSAGE_TYPE_TEXT, text=MESSAGE_TEXT)
    run_id = uuid.uuid4().hex[:12]
    async with open_channels(service.address, settings.channels) as channels:

        def caller_for(index: int) -> Call:
            stub = chat_service_pb2_grpc.ChatServiceStub(channels.for_caller(index))
            conversation_id = ""
            numbers = itertools.count(1)

            async def call() -> None:
                nonlocal conversation_id
                request = chat_service_pb2.SendMessageRequest(
                    message_id=f"bench-{run_id}-{index}-{next(numbers)}",
                    conversation_id=conversation_id,
                    user_id=f"bench-user-{index}",
                    channel=resources_pb2.CHANNEL_WEB,
                    content=content,
                )
                reply = await stub.SendMessage(
                    request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
                )
                if not reply.replies:
                    raise UnexpectedReply("SendMessage returned without the bot's reply")
                conversation_id = reply.conversation_id

            return call

        return await run_load(caller_for, settings, service.probe)


# ------------------------------------------------------ StreamConversation


async def stream_conversation_sqlite(settings: LoadSettings) -> LoadResult:
    async with running_chat_service(counters=settings.counters) as service:
        return await stream_conversations(service, settings)


async def stream_conversations(
    service: RunningService, settings: LoadSettings, *, text: str = MESSAGE_TEXT
) -> LoadResult:
    """StreamConversation load: each caller chats on a stream of its own.

    A caller's stream opens a new conversation, then each round trip sends
    one message of `text` and waits for its ack and the bot's reply, so
    every round trip extends an existing conversation, as SendMessage's
    callers do.
    """
    metadata = (("authorization", f"Bearer {await service.token(BENCH_TENANT)}"),)
    content = content_pb2.MessageContent(type=content_pb2.MESSAGE_TYPE_TEXT, text=text)
    run_id = uuid.uuid4().hex[:12]
    message_ids = (f"bench-{run_id}-{number}" for number in itertools.count(1))
    async with open_channels(service.address, settings.channels) as channels:

        def new_session(index: int) -> ConversationStream:
            stub = chat_service_pb2_grpc.ChatServiceStub(channels.for_caller(index))
            # None: frames are written one by one, not drawn from an iterator.
            call = stub.StreamConversation(None, metadata=metadata)
            return ConversationStream(call, f"bench-user-{index}", message_ids, content)

        return await run_stream_load(new_session, settings, service.probe)


StreamConversationCall = grpc.aio.StreamStreamCall[
    chat_service_pb2.StreamConversationRequest, chat_service_pb2.StreamConversationResponse
]


class ConversationStream:
    """Ping-pong on StreamConversation: one message, then its ack and the bot's reply."""

    def __init__(
        self,
        call: StreamConversationCall,
        user_id: str,
        message_ids: Iterator[str],
        content: content_pb2.MessageContent,
    ) -> None:
        self._call = call
        self._user_id = user_id
        self._message_ids = message_ids  # shared by all streams: ids stay unique per run
        self._content = content

    async def open(self) -> None:
        async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
            await self._call.write(
                chat_service_pb2.StreamConversationRequest(
                    # What the round trip needs only: the ack and the bot's
                    # reply (not the echo of its own message, nor delivery,
                    # typing, read or status frames).
                    open=chat_service_pb2.StreamOpen(
                        user_id=self._user_id,
                        channel=resources_pb2.CHANNEL_WEB,
                        event_kinds=[chat_service_pb2.STREAM_EVENT_KIND_MESSAGE],
                        omit_own_messages=True,
                    )
                )
            )
            first = await self._next()
        if first.WhichOneof("event") != "opened":
            raise UnexpectedReply(f"the stream opened with {first.WhichOneof('event')!r}")

    async def round_trip(self) -> None:
        message_id = next(self._message_ids)
        acked: int | None = None  # the message's sequence, once acknowledged
        replied = 0  # the last sequence of a bot message seen
        async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
            await self._call.write(
                chat_service_pb2.StreamConversationRequest(
                    message=chat_service_pb2.StreamMessage(
                        message_id=message_id, content=self._content
                    )
                )
            )
            # The reply comes before the ack on the embedded defaults; waiting
            # for both keeps the round trip whole whatever order a bus gives.
            while acked is None or replied <= acked:
                event = await self._next()
                kind = event.WhichOneof("event")
                if kind == "ack" and event.ack.message_id == message_id:
                    acked = event.ack.sequence
                elif kind == "message" and event.message.role == resources_pb2.MESSAGE_ROLE_BOT:
                    replied = max(replied, event.message.sequence)
                elif kind == "error":
                    raise StreamRefused(_described(event.error))
                # Anything else (the user's own message, delivery updates) is not this answer.

    def cancel(self) -> None:
        self._call.cancel()

    async def _next(self) -> chat_service_pb2.StreamConversationResponse:
        event = await self._call.read()
        if not isinstance(event, chat_service_pb2.StreamConversationResponse):  # grpc.aio.EOF
            raise UnexpectedReply("the service ended the stream")
        return event


def _described(error: chat_service_pb2.StreamError) -> str:
    code = next((c.name for c in grpc.StatusCode if c.value[0] == error.status.code), "UNKNOWN")
    return f"{code}: {error.status.message}"  # no message id: samples are distinct failures


# ---------------------------------------------------------------- registry

ECHO_UNARY = "echo-unary"
ECHO_BIDI = "echo-bidi"

SCENARIOS: Sequence[Scenario] = (
    Scenario(ECHO_UNARY, "bare grpc.aio unary echo of raw bytes", echo_unary),
    Scenario(
        ECHO_BIDI,
        "bare grpc.aio bidirectional echo of raw bytes, ping-pong on a stream per caller",
        echo_bidi,
    ),
    Scenario(
        "send-message-sqlite",
        "SendMessage on the embedded defaults (SQLite, in-process, built-in engine)",
        send_message_sqlite,
        baseline=ECHO_UNARY,
    ),
    Scenario(
        "send-message-grpc-layer",
        "SendMessage's gRPC layer alone (interceptors, authentication, rate limit, "
        "validation, mapping) over a use case that answers at once: the ceiling "
        "of SendMessage's speed, whatever its pipeline does",
        send_message_grpc_layer,
        baseline=ECHO_UNARY,
    ),
    Scenario(
        "send-message-redis-kafka-sqlite",
        "SendMessage with Redis (valkey) and Kafka (noida-db) on the SQLite store: "
        "the coordination cost without nx-27017's pure-Python server in the way",
        send_message_redis_kafka_sqlite,
        baseline=ECHO_UNARY,
    ),
    Scenario(
        "send-message-redis-sqlite",
        "SendMessage on one process with Redis on the SQLite store, the rest embedded "
        "(only when named: the one-process counterpart of send-message-2-workers-redis)",
        send_message_redis_sqlite,
        baseline=ECHO_UNARY,
        by_default=False,
    ),
    Scenario(
        "send-message-2-workers-redis",
        "SendMessage on 2 worker processes (serve --workers 2) sharing Redis and the "
        "SQLite file, the rest embedded",
        send_message_2_workers_redis,
        baseline=ECHO_UNARY,
    ),
    Scenario(
        "send-message-mongo",
        "SendMessage on MongoDB (nx-27017), the rest embedded "
        "(only when named: the production set measures MongoDB already)",
        send_message_mongo,
        baseline=ECHO_UNARY,
        by_default=False,
    ),
    Scenario(
        "send-message-production",
        "SendMessage on the production set: MongoDB (nx-27017), Redis, Kafka (noida-db)",
        send_message_production,
        baseline=ECHO_UNARY,
    ),
    Scenario(
        "stream-conversation-sqlite",
        "StreamConversation on the embedded defaults, ping-pong on a conversation per caller",
        stream_conversation_sqlite,
        baseline=ECHO_BIDI,
    ),
)


def scenario_named(name: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    raise KeyError(f"no scenario {name!r}; there are {', '.join(s.name for s in SCENARIOS)}")
