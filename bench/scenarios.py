"""The named scenarios: each starts its servers, runs the load, and stops them.

A scenario that names a `baseline` is reported as ratios against that
scenario's figures from the same bench run; a scenario without one is a
baseline. To add one (streams, SendMessage on MongoDB/Redis/Kafka), write
its coroutine and list it in SCENARIOS: start what it needs, hand the
running service to a load function, return the LoadResult.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from chatbot.chat.v1 import chat_service_pb2, chat_service_pb2_grpc, content_pb2, resources_pb2

from bench.echo_server import UNARY_METHOD
from bench.load import Call, LoadResult, LoadSettings, run_load
from bench.servers import RunningService, running_chat_service, running_echo_server

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


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    run: Callable[[LoadSettings], Awaitable[LoadResult]]
    baseline: str | None = None  # the scenario this one is compared against


# ------------------------------------------------------------------- echo


async def echo_unary(settings: LoadSettings) -> LoadResult:
    async with (
        running_echo_server() as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        echo = channel.unary_unary(UNARY_METHOD, None, None)  # raw bytes both ways

        async def call() -> None:
            reply = await echo(ECHO_PAYLOAD, timeout=CALL_TIMEOUT_SECONDS)
            if reply != ECHO_PAYLOAD:
                raise UnexpectedReply(f"the echo returned {len(reply)} other bytes")

        return await run_load(lambda _: call, settings)


# ------------------------------------------------------------- SendMessage


async def send_message_sqlite(settings: LoadSettings) -> LoadResult:
    async with running_chat_service() as service:
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
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)

        def caller_for(index: int) -> Call:
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

        return await run_load(caller_for, settings)


# ---------------------------------------------------------------- registry

ECHO_UNARY = "echo-unary"

SCENARIOS: Sequence[Scenario] = (
    Scenario(ECHO_UNARY, "bare grpc.aio unary echo of raw bytes", echo_unary),
    Scenario(
        "send-message-sqlite",
        "SendMessage on the embedded defaults (SQLite, in-process, built-in engine)",
        send_message_sqlite,
        baseline=ECHO_UNARY,
    ),
)


def scenario_named(name: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    raise KeyError(f"no scenario {name!r}; there are {', '.join(s.name for s in SCENARIOS)}")
