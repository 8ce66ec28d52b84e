"""Abuse suite: the protocols of StreamConversation and WatchConversations.

One real service for the module, with small stream buffers (so that floods
reach the limits quickly), a short first-frame timeout and small per-tenant
caps. A stream that never opens, opens twice, opens another tenant's
conversation or sends frames that are wrong in every field gets a clear
answer (an `error` frame while the stream goes on, or a status that ends
it), never INTERNAL; a flood of typing frames never evicts a peer; many
streams and watches at once are served or refused past the tenant's cap; a
watch that falls behind keeps flowing or ends resumably, never freezes. At
the end every acknowledged message is still listed in order, without gaps.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, content_pb2, resources_pb2
from google.protobuf.message import Message as ProtoMessage
from hypothesis import given
from hypothesis import strategies as st

from tests.support.abuse import (
    CHAT_SERVICE,
    AbuseTarget,
    Code,
    Outcome,
    Tenant,
    attempt,
    check,
    fuzz_settings,
    list_all_messages,
    outcome_of,
    text_request,
)
from tests.support.service import ServiceStore
from tests.support.streams import StreamClient

BUFFER = 4
FIRST_FRAME_TIMEOUT = 1.0
STREAM_CAP = 30
WATCH_CAP = 10
ENV = {
    "STREAM_BUFFER_SIZE": str(BUFFER),
    "STREAM_FIRST_FRAME_TIMEOUT_SECONDS": str(FIRST_FRAME_TIMEOUT),
    "MAX_STREAMS_PER_TENANT": str(STREAM_CAP),
    "MAX_WATCHES_PER_TENANT": str(WATCH_CAP),
    # Floods and fleets of streams below are one tenant's; the rate limit
    # is not what is under test here.
    "RATE_LIMIT_PER_SECOND": "1000",
    "RATE_LIMIT_BURST": "2000",
}
# Longer than any honest answer takes: a read that waits this long hangs.
HANG = 10.0
MB = 1024 * 1024


@pytest.fixture(scope="module")
def target(
    service_store: ServiceStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AbuseTarget]:
    target = AbuseTarget.start(tmp_path_factory.mktemp("abuse-streams"), ENV)
    yield target
    target.close()


@pytest.fixture
async def stub(target: AbuseTarget) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    async with grpc.aio.insecure_channel(target.address) as channel:
        yield chat_service_pb2_grpc.ChatServiceStub(channel)


@pytest.fixture
def abuser(target: AbuseTarget, request: pytest.FixtureRequest) -> Iterator[Tenant]:
    """The test's tenant; afterwards the server is healthy and the victim hidden."""
    tenant = target.tenant(request.node.name)
    yield tenant
    target.assert_healthy()
    target.assert_victim_hidden(tenant)


async def ended(client: StreamClient, timeout: float = HANG) -> tuple[list[Any], Outcome]:
    """Everything the stream sends until it ends, and how it ended (OK: it
    ended without an error)."""
    received: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    response = await client.call.read()
                except grpc.aio.AioRpcError as error:
                    return received, outcome_of(error)
                if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return received, Outcome(Code.OK)
                received.append(response)
    except TimeoutError:
        client.cancel()
        raise AssertionError(f"the stream did not end within {timeout} s") from None


async def opened(stub: Any, tenant: Tenant, **fields: Any) -> tuple[StreamClient, str]:
    client = StreamClient(stub, tenant.metadata)
    opening = await client.open(**fields)
    return client, opening.conversation.conversation_id


def record_ack(target: AbuseTarget, tenant: Tenant, cid: str, ack: pb.MessageAck) -> None:
    target.ledger.record(tenant, cid, ack.message_id, ack.sequence)


def check_error_frame(error: pb.StreamError, *, case: str, field: str | None) -> None:
    """An `error` frame carries a clear INVALID_ARGUMENT naming `field`."""
    status = error.status
    assert status.code == Code.INVALID_ARGUMENT.value[0], f"{case}: error frame {status.code}"
    assert len(status.message) <= 4096, f"{case}: an error message of {len(status.message)}"
    assert status.ByteSize() <= 8192, f"{case}: an error frame of {status.ByteSize()} bytes"
    if field is not None:
        assert field in status.message or field in str(status), f"{case}: {field} not named"


# ------------------------------------------------------------------ opening


async def test_a_stream_closed_before_its_first_frame_ends_cleanly(
    target: AbuseTarget, stub: Any, abuser: Tenant
) -> None:
    client = StreamClient(stub, abuser.metadata)
    client.done_sending()

    frames, outcome = await ended(client)

    check(outcome, {Code.OK, Code.INVALID_ARGUMENT}, case="no first frame, half-closed")
    assert frames == []


async def test_a_stream_that_never_sends_its_first_frame_is_ended(
    target: AbuseTarget, stub: Any, abuser: Tenant
) -> None:
    client = StreamClient(stub, abuser.metadata)
    started = time.monotonic()

    frames, outcome = await ended(client, timeout=FIRST_FRAME_TIMEOUT + 4)

    assert outcome.code in {
        Code.INVALID_ARGUMENT,
        Code.FAILED_PRECONDITION,
        Code.DEADLINE_EXCEEDED,
    }, f"a silent stream ended with {outcome.code.name} {outcome.details!r}"
    assert time.monotonic() - started < FIRST_FRAME_TIMEOUT + 5
    assert frames == []


FIRST_FRAMES: dict[str, dict[str, Any]] = {
    "message": {
        "message": pb.StreamMessage(
            message_id="m-1",
            content=content_pb2.MessageContent(type=content_pb2.MESSAGE_TYPE_TEXT, text="hi"),
        )
    },
    "typing": {"typing": pb.TypingIndicator(typing=True)},
    "read": {"read": pb.ReadReceipt(read_through_sequence=1)},
    "empty": {},
}


@pytest.mark.parametrize("first", sorted(FIRST_FRAMES))
async def test_a_first_frame_other_than_open_is_invalid_argument(
    target: AbuseTarget, stub: Any, abuser: Tenant, first: str
) -> None:
    client = StreamClient(stub, abuser.metadata)
    client.send(**FIRST_FRAMES[first])

    frames, outcome = await ended(client)

    check(outcome, {Code.INVALID_ARGUMENT}, case=f"first frame {first}", field="open")
    assert frames == []


async def test_a_second_open_ends_the_stream(
    target: AbuseTarget, stub: Any, abuser: Tenant
) -> None:
    client, cid = await opened(stub, abuser)
    client.send(open=pb.StreamOpen(conversation_id=cid))

    _, outcome = await ended(client)

    check(outcome, {Code.INVALID_ARGUMENT}, case="a second open", field="open")


async def test_opening_another_tenants_conversation_is_not_found(
    target: AbuseTarget, stub: Any, abuser: Tenant
) -> None:
    victim = target.victim
    for resume in (None, 0):
        client = StreamClient(stub, abuser.metadata)
        frame = pb.StreamOpen(conversation_id=victim.conversation_id)
        if resume is not None:
            frame.resume_after_sequence = resume
        client.send(open=frame)

        frames, outcome = await ended(client)

        check(outcome, {Code.NOT_FOUND}, case="another's conversation", secrets=[victim.secret])
        assert victim.secret not in str(frames)
        assert frames == []


@pytest.mark.parametrize(
    ("resume_after", "field"),
    [(-1, "open.resume_after_sequence"), (2**63 - 1, "open.resume_after_sequence")],
)
async def test_odd_resume_positions(
    target: AbuseTarget, stub: Any, abuser: Tenant, resume_after: int, field: str
) -> None:
    sent = target.send(abuser, text_request("hello"))
    client = StreamClient(stub, abuser.metadata)
    frame = pb.StreamOpen(conversation_id=sent.conversation_id, resume_after_sequence=resume_after)
    client.send(open=frame)

    _, outcome = await ended(client)

    check(outcome, {Code.INVALID_ARGUMENT}, case=f"resume after {resume_after}", field=field)


# The open frame, fuzzed: each example runs on its own event loop and channel.
odd_text = st.one_of(
    st.sampled_from(["", "\x00", "u" * 256, "a/b", "\u202e", str(uuid.uuid4()), "é" * 300]),
    st.text(max_size=20),
)


@fuzz_settings(max_examples=30)
@given(
    conversation_id=odd_text,
    user_id=odd_text,
    channel=st.integers(-(2**31), 2**31 - 1) | st.sampled_from([0, 1, 6, 99]),
    session_id=odd_text,
    resume_after=st.none() | st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 1, -1]),
    event_kinds=st.lists(st.integers(-(2**31), 2**31 - 1) | st.integers(0, 6), max_size=8),
    omit_own_messages=st.booleans(),
)
def test_open_frames_with_odd_fields_get_a_clear_answer(
    target: AbuseTarget,
    conversation_id: str,
    user_id: str,
    channel: int,
    session_id: str,
    resume_after: int | None,
    event_kinds: list[int],
    omit_own_messages: bool,
) -> None:
    frame = pb.StreamOpen(
        conversation_id=conversation_id,
        user_id=user_id,
        channel=channel,  # type: ignore[arg-type]
        session_id=session_id,
        event_kinds=event_kinds,  # type: ignore[arg-type]
        omit_own_messages=omit_own_messages,
    )
    if resume_after is not None:
        frame.resume_after_sequence = resume_after
    tenant = target.tenant("open-fuzz")

    async def attempt_open() -> None:
        async with grpc.aio.insecure_channel(target.address) as channel_:
            client = StreamClient(chat_service_pb2_grpc.ChatServiceStub(channel_), tenant.metadata)
            client.send(open=frame)
            try:
                async with asyncio.timeout(HANG):
                    first = await client.call.read()
            except grpc.aio.AioRpcError as error:
                check(
                    outcome_of(error),
                    {Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION},
                    case=f"open {frame}",
                    secrets=[target.victim.secret],
                )
                return
            assert first.WhichOneof("event") == "opened", first
            client.cancel()

    asyncio.run(attempt_open())


# ------------------------------------------------------------------ frames on an open stream


def bad_message(message_id: str, **content: Any) -> pb.StreamMessage:
    return pb.StreamMessage(message_id=message_id, content=content_pb2.MessageContent(**content))


TEXT = content_pb2.MESSAGE_TYPE_TEXT
BAD_FRAMES: list[tuple[str, dict[str, Any], str | None]] = [
    # (case, frame, the field the error frame names)
    ("no message id", {"message": bad_message("", type=TEXT, text="hi")}, "message_id"),
    ("odd message id", {"message": bad_message("a b\x00", type=TEXT, text="hi")}, "message_id"),
    ("no content", {"message": pb.StreamMessage(message_id="m-x")}, "content"),
    ("unknown type", {"message": bad_message("m-t", type=99, text="hi")}, "content.type"),
    (
        "huge language",
        {"message": bad_message("m-l", type=TEXT, text="hi", language="x" * MB)},
        "language",
    ),
    ("huge text", {"message": bad_message("m-h", type=TEXT, text="x" * (4 * MB - 4096))}, "text"),
    (
        "huge media type",
        {
            "message": bad_message(
                "m-i",
                type=content_pb2.MESSAGE_TYPE_IMAGE,
                media=content_pb2.MediaContent(url="https://x.example/a.png", type="x" * MB),
            )
        },
        "media",
    ),
    (
        "20k quick replies",
        {
            "message": bad_message(
                "m-q",
                type=content_pb2.MESSAGE_TYPE_QUICK_REPLY,
                quick_replies=[content_pb2.QuickReply()] * 20_000,
            )
        },
        "quick_replies",
    ),
    (
        "nan latitude",
        {
            "message": bad_message(
                "m-n",
                type=content_pb2.MESSAGE_TYPE_LOCATION,
                location=content_pb2.LocationContent(latitude=math.nan),
            )
        },
        "location",
    ),
    ("read 0", {"read": pb.ReadReceipt(read_through_sequence=0)}, "read_through_sequence"),
    ("read -1", {"read": pb.ReadReceipt(read_through_sequence=-1)}, "read_through_sequence"),
    (
        "read past the end",
        {"read": pb.ReadReceipt(read_through_sequence=2**63 - 1)},
        "read_through_sequence",
    ),
    ("empty frame", {}, None),
]


async def test_bad_frames_get_error_frames_and_the_stream_goes_on(
    target: AbuseTarget, stub: Any, abuser: Tenant
) -> None:
    client, cid = await opened(stub, abuser)
    for _, frame, _ in BAD_FRAMES:
        client.send(**frame)
        client.send(typing=pb.TypingIndicator(typing=True, role=99))  # type: ignore[arg-type]
    client.say("still here", "m-ok")

    errors: list[pb.StreamError] = []
    async with asyncio.timeout(HANG):
        ack = None
        while ack is None:
            response = await client.next(HANG)
            kind = response.WhichOneof("event")
            if kind == "error":
                errors.append(response.error)
            elif kind == "ack":
                ack = response.ack

    assert (ack.message_id, ack.duplicate) == ("m-ok", False)
    record_ack(target, abuser, cid, ack)
    assert len(errors) == len(BAD_FRAMES), [e.status.message[:80] for e in errors]
    for error, (case, _, field) in zip(errors, BAD_FRAMES, strict=True):
        check_error_frame(error, case=case, field=field)
    client.cancel()


def raw_stream(target_channel: grpc.aio.Channel) -> Any:
    # No serializers: frames go out as the bytes given.
    return target_channel.stream_stream(
        f"/{CHAT_SERVICE}/StreamConversation",
        request_serializer=None,
        response_deserializer=pb.StreamConversationResponse.FromString,
    )


@pytest.mark.parametrize("after_open", [False, True], ids=["first", "after-open"])
@pytest.mark.parametrize(
    "garbage", [b"\x0a\xff\xff\xff\xff\x0f", b"\x0b"], ids=["huge-length", "group"]
)
async def test_undecodable_frames_are_invalid_argument(
    target: AbuseTarget, abuser: Tenant, after_open: bool, garbage: bytes
) -> None:
    # One bad frame, then silence: a client writing on after the server
    # ended the call would see its own write fail instead of the status.
    frames = [garbage]
    if after_open:
        open_frame = pb.StreamConversationRequest(
            open=pb.StreamOpen(user_id="u", channel=resources_pb2.CHANNEL_WEB)
        )
        frames.insert(0, open_frame.SerializeToString())

    async def sending() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame
        await asyncio.sleep(HANG)  # keep the stream open: the server must end it

    async with grpc.aio.insecure_channel(target.address) as channel:
        call = raw_stream(channel)(sending(), metadata=abuser.metadata)
        received: list[pb.StreamConversationResponse] = []
        try:
            async with asyncio.timeout(HANG):
                async for response in call:
                    received.append(response)
                    if response.WhichOneof("event") == "error":
                        break  # refused as a frame; the stream goes on: also clear
        except grpc.aio.AioRpcError as error:
            check(outcome_of(error), {Code.INVALID_ARGUMENT}, case=f"garbage frames {frames}")
        else:
            assert received[-1].WhichOneof("event") == "error", received
            call.cancel()


async def test_a_half_closed_stream_still_gets_the_conversation(
    target: AbuseTarget, stub: Any, abuser: Tenant
) -> None:
    client, cid = await opened(stub, abuser)
    client.say("before closing", "m-1")
    ack = await client.next_of("ack")
    record_ack(target, abuser, cid, ack)
    client.done_sending()  # half-close: nothing more from this client

    sent = target.send(abuser, text_request("from elsewhere", conversation_id=cid))
    seen = await client.messages_through(sent.processing_metadata.sequence)

    assert seen[-1].message_id == sent.message_id
    client.cancel()


# ------------------------------------------------------------------ floods and fleets


async def test_a_typing_flood_never_evicts_a_peer(
    target: AbuseTarget, stub: Any, abuser: Tenant
) -> None:
    flooder, cid = await opened(stub, abuser)
    peer = StreamClient(stub, abuser.metadata)
    await peer.open(conversation_id=cid)  # and then reads nothing during the flood
    started = time.monotonic()
    for n in range(10_000):
        flooder.send(typing=pb.TypingIndicator(typing=n % 2 == 0))
    # The reader takes frames in order: the refused read says all came in.
    flooder.send(read=pb.ReadReceipt(read_through_sequence=0))
    async with asyncio.timeout(HANG):
        while (await flooder.next_of("error")).status.message.find("read") < 0:
            pass
    elapsed = time.monotonic() - started
    sent = target.send(abuser, text_request("after the flood", conversation_id=cid))

    typing_seen = 0
    async with asyncio.timeout(HANG):
        while True:
            try:
                response = await peer.next(HANG)
            except grpc.aio.AioRpcError as error:
                raise AssertionError(
                    f"the flood ended the peer's stream: {error.code().name} {error.details()}"
                ) from None
            kind = response.WhichOneof("event")
            typing_seen += kind == "typing"
            if kind == "message" and response.message.message_id == sent.message_id:
                break

    assert typing_seen <= 4 + 2 * math.ceil(elapsed), (
        f"{typing_seen} typing indicators reached the peer in {elapsed:.1f} s"
    )
    flooder.cancel()
    peer.cancel()


async def test_many_streams_at_once_are_served_up_to_the_cap(
    target: AbuseTarget, stub: Any, abuser: Tenant
) -> None:
    clients = [StreamClient(stub, abuser.metadata) for _ in range(STREAM_CAP + 10)]
    for n, client in enumerate(clients):
        client.send(open=pb.StreamOpen(user_id=f"user-{n}", channel=resources_pb2.CHANNEL_WEB))
    firsts = await asyncio.gather(
        *(asyncio.wait_for(c.call.read(), HANG) for c in clients), return_exceptions=True
    )

    served: list[tuple[StreamClient, str]] = []
    for client, first in zip(clients, firsts, strict=True):
        if isinstance(first, grpc.aio.AioRpcError):
            check(outcome_of(first), {Code.RESOURCE_EXHAUSTED}, case="a stream past the cap")
        else:
            assert not isinstance(first, BaseException), first
            served.append((client, first.opened.conversation.conversation_id))
    assert len(served) == STREAM_CAP, f"{len(served)} of {len(clients)} streams opened"

    # Another tenant is not held up by this one's streams.
    other = target.tenant("bystander")
    bystander, _ = await opened(stub, other)
    bystander.cancel()

    for n, (client, _) in enumerate(served):
        client.say(f"hello {n}", f"m-{n}")
    acks = await asyncio.gather(*(client.next_of("ack") for client, _ in served))
    for (client, cid), ack in zip(served, acks, strict=True):
        record_ack(target, abuser, cid, ack)
        client.cancel()

    # Slots come back when streams end.
    async with asyncio.timeout(HANG):
        while True:
            again = StreamClient(stub, abuser.metadata)
            again.send(open=pb.StreamOpen(user_id="again", channel=resources_pb2.CHANNEL_WEB))
            try:
                await again.call.read()
                break
            except grpc.aio.AioRpcError as error:
                check(outcome_of(error), {Code.RESOURCE_EXHAUSTED}, case="reopen")
                await asyncio.sleep(0.05)
    again.cancel()
    for client in clients:
        client.cancel()


class Watcher:
    """A WatchConversations call read in the background."""

    def __init__(self, stub: Any, tenant: Tenant, **request: Any) -> None:
        self.call = stub.WatchConversations(
            pb.WatchConversationsRequest(**request), metadata=tenant.metadata
        )
        self.events: list[pb.WatchConversationsResponse] = []
        self._changed = asyncio.Event()  # an event came, or the call ended
        self.task = asyncio.create_task(self._read())
        self.task.add_done_callback(lambda _: self._changed.set())

    async def _read(self) -> None:
        async for response in self.call:
            self.events.append(response)
            self._changed.set()

    async def change(self) -> None:
        """Until the next event or the end of the call."""
        self._changed.clear()
        if not self.task.done():
            await self._changed.wait()

    async def until(self, done: Callable[[Watcher], bool]) -> None:
        while not done(self):
            if self.task.done():
                raise AssertionError(f"the watch ended: {self.ended()}")
            await self.change()

    async def listening(self) -> None:
        await asyncio.wait_for(self.call.initial_metadata(), HANG)

    def ended(self) -> Outcome | None:
        if not self.task.done():
            return None
        error = self.task.exception()
        if isinstance(error, grpc.aio.AioRpcError):
            return outcome_of(error)
        assert error is None, error
        return Outcome(Code.OK)

    async def stop(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_a_watch_that_falls_behind_keeps_flowing_or_ends_resumably(
    target: AbuseTarget, stub: Any, abuser: Tenant
) -> None:
    watcher = Watcher(stub, abuser)
    await watcher.listening()
    burst = 10 * BUFFER  # all at once: the tail hands their events over in batches
    # No reply (cheaper), and the escalation adds an event to the same write.
    quiet = resources_pb2.ProcessingHints(bypass_automation=True, require_human_review=True)

    async def send(n: int) -> str:
        request = text_request(f"burst {n}", processing_hints=quiet)
        response = await stub.SendMessage(request, metadata=abuser.metadata)
        target.ledger.record_send(abuser, response)
        return str(response.message_id)

    received: set[str] = set()
    resumed = 0
    # Whether a batch overflows the buffer while the watch waits is a race:
    # two bursts give it two chances.
    for round_ in range(2):
        sent = set(
            await asyncio.gather(*(send(n) for n in range(round_ * burst, (round_ + 1) * burst)))
        )
        try:
            async with asyncio.timeout(HANG):
                while True:
                    received |= {
                        e.event.message_id
                        for e in watcher.events
                        if e.event.event_type == "message.received"
                    }
                    if sent <= received:
                        break
                    outcome = watcher.ended()
                    if outcome is None:
                        await watcher.change()
                        continue
                    check(outcome, {Code.RESOURCE_EXHAUSTED}, case="a watch that fell behind")
                    watcher = Watcher(stub, abuser, resume_token=_resume_token(watcher, outcome))
                    resumed += 1
                    assert resumed <= 20, "the watch keeps ending"
        except TimeoutError:
            raise AssertionError(
                f"the watch froze: {len(sent - received)} of {len(sent)} messages never came, "
                f"the call still open: {watcher.ended() is None}"
            ) from None
    await watcher.stop()


def _resume_token(watcher: Watcher, ending: Outcome) -> str:
    """Where an ended watch resumes: its last event's token, or the one its
    error names."""
    if watcher.events:
        return watcher.events[-1].resume_token
    assert ending.status is not None
    token = ending.status.metadata.get("resume_token")
    assert token, f"the watch ended with no event and no resume_token: {ending.status}"
    return token


async def test_many_watches_at_once_are_served_up_to_the_cap(
    target: AbuseTarget, stub: Any, abuser: Tenant
) -> None:
    watchers = [Watcher(stub, abuser) for _ in range(WATCH_CAP + 5)]
    await asyncio.gather(
        *(asyncio.wait_for(w.call.initial_metadata(), HANG) for w in watchers),
        return_exceptions=True,
    )
    sent = target.send(abuser, text_request("for every watcher"))

    def saw_it(watcher: Watcher) -> bool:
        return any(e.event.message_id == sent.message_id for e in watcher.events)

    # Each watch either is refused or shows the message.
    def answered(watcher: Watcher) -> bool:
        return watcher.task.done() or saw_it(watcher)

    async with asyncio.timeout(HANG):
        await asyncio.gather(*(w.until(answered) for w in watchers))
    for watcher in watchers:
        outcome = watcher.ended()
        if outcome is not None:
            check(outcome, {Code.RESOURCE_EXHAUSTED}, case="a watch past the cap")
    serving = [w for w in watchers if saw_it(w)]
    assert len(serving) == WATCH_CAP, f"{len(serving)} of {len(watchers)} watches served"
    for watcher in watchers:
        await watcher.stop()


@pytest.mark.parametrize(
    ("field", "values", "allowed"),
    [
        ("channels", [99], frozenset({Code.INVALID_ARGUMENT})),
        ("channels", [-1, 0], frozenset({Code.INVALID_ARGUMENT})),
        ("statuses", [2**31 - 1], frozenset({Code.INVALID_ARGUMENT})),
        ("channels", [99] * 100_000, frozenset({Code.INVALID_ARGUMENT})),
        ("statuses", list(range(10, 100_010)), frozenset({Code.INVALID_ARGUMENT})),
        ("channels", [1, 2, 3, 4, 5, 6, 7] * 20_000, frozenset({Code.OK, Code.INVALID_ARGUMENT})),
        # Event types are strings: no case folding, no blank, no near miss.
        ("event_types", ["message.sent", ""], frozenset({Code.INVALID_ARGUMENT})),
        ("event_types", ["MESSAGE.SENT"], frozenset({Code.INVALID_ARGUMENT})),
        ("event_types", [" message.sent"], frozenset({Code.INVALID_ARGUMENT})),
        ("event_types", ["message.sent\x00"], frozenset({Code.INVALID_ARGUMENT})),
        ("event_types", [f"type-{i}" for i in range(100_000)], frozenset({Code.INVALID_ARGUMENT})),
        (
            "event_types",
            ["e" * 4_000_000],
            frozenset({Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}),
        ),
        ("event_types", ["message.sent"] * 200_000, frozenset({Code.OK})),
    ],
    ids=[
        "unknown",
        "negative",
        "max-int",
        "100k-unknown",
        "100k-distinct",
        "140k-valid",
        "type-blank",
        "type-case",
        "type-space",
        "type-nul",
        "100k-unknown-types",
        "4MB-type",
        "200k-same-type",
    ],
)
async def test_odd_watch_filters(
    target: AbuseTarget,
    stub: Any,
    abuser: Tenant,
    field: str,
    values: list[int],
    allowed: frozenset[Code],
) -> None:
    watcher = Watcher(stub, abuser, **{field: values})
    # A refusal ends the call at once; a watch that took the filter stays open.
    await asyncio.wait({watcher.task}, timeout=1.0 if Code.OK in allowed else HANG)
    outcome = watcher.ended() or Outcome(Code.OK)  # still open: taken
    check(outcome, allowed, case=f"watch {field}={values[:3]}... ({len(values)})", field=field)
    await watcher.stop()


async def test_silent_streams_do_not_block_another_tenant(
    target: AbuseTarget, stub: Any, abuser: Tenant
) -> None:
    silent = [StreamClient(stub, abuser.metadata) for _ in range(STREAM_CAP)]
    other = target.tenant("bystander")
    client, cid = await opened(stub, other)
    client.say("hello", "m-1")
    ack = await client.next_of("ack")
    record_ack(target, other, cid, ack)
    client.cancel()
    for stream in silent:
        stream.cancel()


# ------------------------------------------------------------------ below gRPC: raw HTTP/2
# A gRPC client cannot send after half-closing; a hostile one talks HTTP/2
# itself. HPACK literals and frames are simple enough to write by hand.

_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x7
_END_STREAM, _END_HEADERS, _ACK = 0x1, 0x4, 0x1


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    header = len(payload).to_bytes(3, "big") + bytes([kind, flags])
    return header + stream.to_bytes(4, "big") + payload


def _hpack_int(value: int, prefix_bits: int = 7) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = bytearray([limit]), value - limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def _hpack(headers: list[tuple[str, str]]) -> bytes:
    """Literal header fields without indexing, new names, no Huffman."""
    block = b""
    for name, value in headers:
        block += b"\x00" + _hpack_int(len(name)) + name.encode()
        block += _hpack_int(len(value)) + value.encode()
    return block


def _grpc_message(message: ProtoMessage) -> bytes:
    body = message.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def _read_frames(sock: socket.socket, seconds: float) -> list[tuple[int, int, int]]:
    """(type, flags, stream) of every frame the server sends until it ends
    the stream or the connection, or goes quiet: for `seconds`, or for a
    moment once the stream has answered."""
    sock.settimeout(seconds)
    buffer, frames = b"", list[tuple[int, int, int]]()
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return frames
            buffer += chunk
            while len(buffer) >= 9:
                size = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + size:
                    break
                kind, flags = buffer[3], buffer[4]
                stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                frames.append((kind, flags, stream))
                if kind == _DATA and stream == 1:
                    sock.settimeout(0.3)  # answered; now a reset would come at once
                if kind == _SETTINGS and not flags & _ACK:
                    sock.sendall(_h2_frame(_SETTINGS, _ACK, 0))
                buffer = buffer[9 + size :]
                if kind in (_RST_STREAM, _GOAWAY) or (
                    kind == _HEADERS and stream == 1 and flags & _END_STREAM
                ):
                    return frames
    except TimeoutError:
        return frames


@pytest.mark.parametrize("extra", ["a-message", "a-second-open", "empty-data"])
def test_frames_after_half_close_change_nothing(
    target: AbuseTarget, abuser: Tenant, extra: str
) -> None:
    host, port = target.address.rsplit(":", 1)
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", f"/{CHAT_SERVICE}/StreamConversation"),
        (":authority", target.address),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *abuser.metadata,
    ]
    opening = pb.StreamConversationRequest(
        open=pb.StreamOpen(user_id="u", channel=resources_pb2.CHANNEL_WEB)
    )
    after = {
        "a-message": _grpc_message(
            pb.StreamConversationRequest(
                message=pb.StreamMessage(
                    message_id="late",
                    content=content_pb2.MessageContent(type=TEXT, text="after the end"),
                )
            )
        ),
        "a-second-open": _grpc_message(opening),
        "empty-data": b"",
    }[extra]
    with socket.create_connection((host, int(port)), timeout=HANG) as sock:
        sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _h2_frame(_SETTINGS, 0, 0)
            + _h2_frame(_HEADERS, _END_HEADERS, 1, _hpack(headers))
            + _h2_frame(_DATA, _END_STREAM, 1, _grpc_message(opening))  # half-closed here
            + _h2_frame(_DATA, 0, 1, after)  # and yet
        )
        frames = _read_frames(sock, seconds=HANG)

    # Refused by HTTP/2 (RST_STREAM or GOAWAY), or the stream answered and
    # ended: what matters is that the server carries on.
    assert frames, "the server said nothing at all"
    target.assert_healthy()
    late = check(
        attempt(
            target.stub.ListConversations,
            pb.ListConversationsRequest(page_size=100),
            abuser.metadata,
        ),
        {Code.OK},
        case="after raw frames",
    )
    for conversation in late.response.conversations:
        listed = list_all_messages(target.stub, abuser.metadata, conversation.conversation_id)
        assert all(m.message_id != "late" for m in listed), "a frame after half-close was stored"


# ------------------------------------------------------------------ the end


def test_zz_every_acknowledged_message_is_listed_in_order(target: AbuseTarget) -> None:
    target.final_checks()
