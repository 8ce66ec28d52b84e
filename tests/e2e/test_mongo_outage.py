"""MongoDB goes away in the middle of a load, and comes back (issue 4).

Always on MongoDB, whatever CHAT_TEST_STORE says, on a server of the test's
own (stopping it disturbs no other test), with the service's production
timeouts (REQUEST_TIMEOUT_MS and the rest at their defaults).

The callers behave as the contract asks of a client: one message at a time
per conversation, and a message that failed is sent again, with the same
message_id, after its RetryInfo delay, until it is answered. So once the
load is over every message sent has been acknowledged, and the store must
hold each of them with its reply, in order, with nothing half-written.

What a caller sees, as documented by the store (adapters/mongo/journal.py):
- while MongoDB is down, UNAVAILABLE with reason STORE_UNAVAILABLE and
  RetryInfo, within seconds (the driver gives up selecting a server after 3 s);
- once it is back, a write the outage cut before its commit was never
  visible, and the next write of its conversation takes its lease over at
  once (it holds the conversation lock with a higher fencing token); the
  test still tolerates ABORTED (CONVERSATION_CHANGED, with RetryInfo) for
  a cut write's lease, within DEFAULT_WRITE_LEASE, as the store documents
  for writers without a token.
Never INTERNAL, never a hang, never a restart of the service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from adapters.mongo.store import DEFAULT_WRITE_LEASE
from tests.support.grpc_client import Metadata, bearer, rich_error, text_request
from tests.support.mongo import MongoServer
from tests.support.service import MongoDatabases, ServiceProcess

# On a MongoDB of its own whatever CHAT_TEST_STORE says: the MongoDB pass of
# `make test` would run exactly this again, so it leaves it out.
pytestmark = pytest.mark.store_independent

CONVERSATIONS = 8
# A failing call must say so promptly: well before a client would give up.
PROMPT_FAILURE_SECONDS = 10.0
# The client's own deadline: longer than any failure may take, so that a
# slow failure shows as one rather than as DEADLINE_EXCEEDED.
CALL_DEADLINE_SECONDS = 30.0

STORE_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
LEASE_HELD = (grpc.StatusCode.ABORTED, "CONVERSATION_CHANGED")


@dataclass(frozen=True)
class Failure:
    message_id: str
    started: float  # time.monotonic()
    ended: float
    code: grpc.StatusCode
    reason: str
    retry_delay: float | None

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def kind(self) -> tuple[grpc.StatusCode, str]:
        return self.code, self.reason


@dataclass
class Caller:
    """One user chatting on one conversation, one message at a time."""

    number: int
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub
    auth: Metadata
    conversation_id: str = ""
    acknowledged: list[pb.SendMessageResponse] = field(default_factory=list)
    acknowledged_at: list[float] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    async def send(self, message_id: str) -> None:
        """Sends one message until it is answered, retrying as told."""
        while True:
            started = time.monotonic()
            try:
                reply = await self.stub.SendMessage(
                    text_request(
                        f"message {message_id}",
                        conversation_id=self.conversation_id,
                        message_id=message_id,
                        user_id=f"user-{self.number}",
                    ),
                    metadata=self.auth,
                    timeout=CALL_DEADLINE_SECONDS,
                )
            except grpc.aio.AioRpcError as error:
                failure = _failure(message_id, started, error)
                self.failures.append(failure)
                await asyncio.sleep(failure.retry_delay or 1.0)
                continue
            self.conversation_id = reply.conversation_id
            self.acknowledged.append(reply)
            self.acknowledged_at.append(time.monotonic())
            return

    async def chat(self, until: asyncio.Event) -> None:
        number = 1
        while not until.is_set():
            await self.send(f"c{self.number}-m{number}")
            number += 1

    def answered_since(self, moment: float) -> int:
        return sum(at > moment for at in self.acknowledged_at)


def _failure(message_id: str, started: float, error: grpc.aio.AioRpcError) -> Failure:
    ended = time.monotonic()
    try:
        details = rich_error(error)
    except AssertionError:  # no rich status: not one of the service's own errors
        return Failure(message_id, started, ended, error.code(), "", None)
    return Failure(message_id, started, ended, details.code, details.reason, details.retry_delay)


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[MongoServer]:
    """A server of the test's own: stopping it disturbs no other test."""
    server = MongoServer(tmp_path / "mongo").start()
    yield server
    server.kill()


@pytest.fixture
def service_on_own_mongo(own_mongo: MongoServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        tmp_path / "service",
        {"RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000"},
        store=MongoDatabases(own_mongo.uri),
    )
    process.start()
    yield process
    process.kill()


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def test_calls_fail_promptly_while_mongodb_is_down_and_nothing_is_half_written(
    own_mongo: MongoServer, service_on_own_mongo: ServiceProcess
) -> None:
    mongo, service = own_mongo, service_on_own_mongo
    auth = bearer(service.token("acme"))
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        callers = [Caller(number, stub, auth) for number in range(CONVERSATIONS)]
        for caller in callers:  # each conversation exists before the load
            await caller.send(f"c{caller.number}-m0")
        stop_load = asyncio.Event()
        load = [asyncio.create_task(caller.chat(stop_load)) for caller in callers]
        try:
            await _until(
                lambda: all(len(c.acknowledged) >= 3 for c in callers), 10, "load under way"
            )

            stopping = time.monotonic()
            await asyncio.to_thread(mongo.stop)  # in the middle of the load
            await _until(
                lambda: all(c.failures for c in callers), 15, "every caller saw the outage"
            )
            starting = time.monotonic()
            await asyncio.to_thread(mongo.start)
            started = time.monotonic()

            # The same service process recovers by itself: every caller is
            # answered again; then the load ends, each caller finishing the
            # message in hand.
            await _until(
                lambda: all(c.answered_since(started) >= 3 for c in callers),
                DEFAULT_WRITE_LEASE.total_seconds() + 10,
                "every caller answered again after MongoDB returned",
            )
            stop_load.set()
            await asyncio.wait_for(asyncio.gather(*load), 20)
        finally:
            stop_load.set()
            for task in load:
                task.cancel()

        failures = [failure for caller in callers for failure in caller.failures]
        print(
            f"\nmongo outage: down {starting - stopping:.1f} s; {len(failures)} failed calls "
            f"({sum(f.kind == LEASE_HELD for f in failures)} on a cut write's lease after), "
            f"slowest {max(f.seconds for f in failures):.2f} s; "
            f"{sum(len(c.acknowledged) for c in callers)} calls acknowledged"
        )
        lease_over = stopping + DEFAULT_WRITE_LEASE.total_seconds()
        for failure in failures:
            assert failure.retry_delay is not None, failure
            assert failure.seconds < PROMPT_FAILURE_SECONDS, failure
            if failure.ended < starting:  # MongoDB down
                assert failure.kind == STORE_UNAVAILABLE, failure
            else:
                assert failure.kind in (STORE_UNAVAILABLE, LEASE_HELD), failure
                assert failure.kind != LEASE_HELD or failure.started < lease_over, failure
        assert any(f.kind == STORE_UNAVAILABLE and f.ended < starting for f in failures)

        for caller in callers:
            await _assert_whole(stub, auth, caller)


async def _assert_whole(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata, caller: Caller
) -> None:
    """Every acknowledged message and its replies are stored, nothing else;
    the conversation is sequences 1..N, each user message followed by its
    reply, and its last_sequence is N."""
    conversation = (
        await stub.GetConversation(
            pb.GetConversationRequest(conversation_id=caller.conversation_id), metadata=auth
        )
    ).conversation
    listed = await stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=caller.conversation_id, page_size=1000),
        metadata=auth,
    )
    messages = list(listed.messages)
    assert listed.next_page_token == ""
    assert [m.sequence for m in messages] == list(range(1, len(messages) + 1))
    assert conversation.last_sequence == len(messages)

    stored = {m.message_id: m for m in messages}
    for reply in caller.acknowledged:
        assert stored[reply.message_id].sequence == reply.processing_metadata.sequence
        assert len(reply.replies) == 1
        assert stored[reply.replies[0].message_id].reply_to_message_id == reply.message_id

    users, bots = messages[::2], messages[1::2]
    assert [m.message_id for m in users] == [r.message_id for r in caller.acknowledged]
    for user, bot in zip(users, bots, strict=True):
        assert user.role == resources_pb2.MESSAGE_ROLE_USER
        assert bot.role == resources_pb2.MESSAGE_ROLE_BOT
        assert bot.reply_to_message_id == user.message_id
