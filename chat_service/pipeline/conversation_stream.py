"""StreamConversation: one client's live view of a conversation, and its input.

stream_opener.py opens the streams; this is one open stream.

A stream listens on the conversation's live topic before it reads the
conversation, then replays what the client asked for from the store, then
goes live. Messages carry gap-free sequences, so the stream can check every
live message against the last one it sent: older ones are dropped, and a gap
(a live event lost or late) is filled from the store. Whatever the bus does,
the client sees every message once, in order.

Memory is bounded per stream: at most `buffer_size` items wait for a slow
client. Past that the stream stops listening at once and ends with
RESOURCE_EXHAUSTED (the client reconnects with resume_after_sequence), so one
slow reader can never make the server hold an unbounded backlog. A client
that reads nothing at all cannot even be told: after `stall_grace` seconds
its call is abandoned (cancelled) instead. Typing indicators never count
against that bound and never end a stream (see stream_buffer).

A tenant holds at most `max_per_tenant` streams in a process; a stream ends
with UNAUTHENTICATED when its token expires, and with UNAVAILABLE when the
server drains. Every ending but a protocol error carries
`resume_after_sequence`: the last sequence the client was sent.

A client may ask for some kinds of live event only (`EventKind`): the others
are dropped as they arrive, before they take a slot of the buffer. A stream
that does not carry messages neither replays nor fills gaps (both are
messages), and its resume position stays where it started: it sent no
message, so a client that resumes from it asking for messages misses none.
A client may also leave out the echo of the messages it sends on this stream
(`omit_own`): the stream remembers their ids until their messages pass by;
they still move the resume position (their acks carried the sequences).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeAlias

from chat_service.domain.enums import MessageRole
from chat_service.domain.errors import ChatError, InvalidArgument, ResourceExhausted
from chat_service.domain.live import (
    DeliveryChanged,
    LiveEvent,
    MessageStored,
    ReadThrough,
    StatusChanged,
    TypingChanged,
    conversation_topic,
)
from chat_service.domain.model import Conversation, InboundMessage, Message
from chat_service.pipeline.admission import TenantAdmission
from chat_service.pipeline.errors import port_errors
from chat_service.pipeline.read_receipts import MarkRead
from chat_service.pipeline.send_message import SendMessage
from chat_service.pipeline.stream_buffer import StreamBuffer, TypingThrottle
from chat_service.pipeline.stream_limits import on_expiry, token_expired, with_metadata
from chat_service.pipeline.writer import ConversationWriter
from chat_service.ports import Clock, ConversationStore, LiveBus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Opened:
    conversation: Conversation
    replay_through: int


@dataclass(frozen=True, slots=True)
class Acked:
    message_id: str
    sequence: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """A client frame was refused; the stream goes on."""

    message_id: str
    error: ChatError


StreamItem: TypeAlias = Opened | Acked | Refused | LiveEvent


class EventKind(Enum):
    """A kind of live event a client can ask its stream to carry."""

    MESSAGE = "message"
    DELIVERY = "delivery"
    TYPING = "typing"
    READ = "read"
    STATUS = "status"


_EVENT_CLASSES: dict[EventKind, type[LiveEvent]] = {
    EventKind.MESSAGE: MessageStored,
    EventKind.DELIVERY: DeliveryChanged,
    EventKind.TYPING: TypingChanged,
    EventKind.READ: ReadThrough,
    EventKind.STATUS: StatusChanged,
}


def unwanted_classes(kinds: frozenset[EventKind]) -> frozenset[type[LiveEvent]]:
    """The live event classes a stream asking for `kinds` drops (none when
    `kinds` is empty: it carries every kind)."""
    if not kinds:
        return frozenset()
    return frozenset(cls for kind, cls in _EVENT_CLASSES.items() if kind not in kinds)


@dataclass(frozen=True, slots=True)
class StreamServices:
    """What a stream works with."""

    store: ConversationStore
    writer: ConversationWriter
    bus: LiveBus
    send_message: SendMessage
    mark_read: MarkRead
    admission: TenantAdmission
    clock: Clock
    buffer_size: int
    # How long a stream that failed may take to tell its client before it
    # is abandoned (a client that reads nothing never gets the status).
    stall_grace: float = 5.0
    # How long opening waits for the live subscription to be in effect;
    # past it the stream opens anyway (it fills gaps from the store).
    subscribe_timeout: float = 2.0
    # Open streams per tenant in this process (RESOURCE_EXHAUSTED past it).
    max_per_tenant: int = 1000
    # How long a new stream may take to send its `open` frame.
    first_frame_timeout: float = 10.0
    # A stream publishes at most one typing indicator per interval.
    typing_interval: float = 1.0


class ConversationStream:
    def __init__(
        self,
        services: StreamServices,
        tenant_id: str,
        conversation_id: str,
        resume_after: int | None,
        *,
        on_close: Callable[[ConversationStream], None],
        abandon: Callable[[], object],
        event_kinds: frozenset[EventKind] = frozenset(),
        omit_own: bool = False,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.tenant_id = tenant_id
        self.conversation_id = conversation_id
        self.conversation: Conversation  # set by start()
        self._services = services
        self._resume_after = resume_after
        self._on_close = on_close
        self._abandon = abandon
        self._unwanted = unwanted_classes(event_kinds)
        self._messages_wanted = MessageStored not in self._unwanted
        # With omit_own: the ids of messages this client sent whose message
        # has not passed by yet (so at most those in flight).
        self._own: set[str] | None = set() if omit_own and self._messages_wanted else None
        self._finished = False
        self._typing = TypingThrottle(services.typing_interval, self._publish_typing)
        self._out: StreamBuffer[StreamItem] = StreamBuffer(services.buffer_size)
        # Live events that arrive while the replay runs wait here.
        self._pending: list[LiveEvent] | None = []
        self._fatal: ChatError | None = None
        self._resumable = False  # the fatal error gets the resume position
        self._timers: list[asyncio.TimerHandle] = []
        self._last = 0  # the last message sequence sent to the client
        self._topic = conversation_topic(tenant_id, conversation_id)
        # Listening starts before the conversation is read: see the module doc.
        self._unsubscribe: Callable[[], None] | None = services.bus.subscribe(
            self._topic, self._on_live
        )

    def start(self, conversation: Conversation) -> None:
        """The conversation as read after listening began."""
        self.conversation = conversation
        resume_after = self._resume_after
        self._last = conversation.last_sequence if resume_after is None else resume_after

    def close(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._stop_listening()
        self._typing.close()
        for timer in self._timers:
            timer.cancel()
        self._on_close(self)

    def expire_at(self, valid_until: float | None) -> None:
        timer = on_expiry(valid_until, lambda: self.fail(token_expired(), resumable=True))
        if timer is not None:
            self._timers.append(timer)

    def _stop_listening(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def fail(self, error: ChatError, *, resumable: bool = False) -> None:
        """End the stream with `error`: at once if the client is waiting, else
        when it reads next; abandon the call if it does not within the grace.
        A `resumable` error gets `resume_after_sequence` when it is raised."""
        if self._fatal is not None or self._finished:
            return
        self._fatal = error
        self._resumable = resumable
        self._stop_listening()  # nothing more piles up
        self._pending = None
        self._out.wake()
        self._timers.append(
            asyncio.get_running_loop().call_later(
                self._services.stall_grace, self._abandon_if_stalled
            )
        )

    def _abandon_if_stalled(self) -> None:
        if not self._finished:
            log.info("stream %s: the client reads nothing; abandoning the call", self.id)
            self._abandon()

    # ------------------------------------------------------------- output

    async def items(self) -> AsyncIterator[StreamItem]:
        """Opened, the replay, then live items until the client leaves or a
        fatal error (raised) ends the stream."""
        conversation = self.conversation
        yield Opened(conversation, replay_through=conversation.last_sequence)
        if self._resume_after is not None and self._messages_wanted:
            async for message in self._messages(self._last, conversation.last_sequence):
                self._check()
                # Counted as sent once handed over: the yield only returns
                # after the transport took it.
                self._last = message.sequence
                yield MessageStored(message)
        pending, self._pending = self._pending or [], None
        for event in pending:
            self._check()
            async for item in self._deliverable(event):
                yield item
        while True:
            self._check()
            queued = await self._out.get()
            if queued is None:
                continue
            if not isinstance(queued, MessageStored):
                yield queued
            elif queued.message.sequence == self._last + 1:
                # The usual case, in order: no replay generator to set up.
                self._last = queued.message.sequence
                if not self._own_echo(queued.message):
                    yield queued
            else:
                async for deliverable in self._deliverable(queued):
                    yield deliverable

    def _on_live(self, event: LiveEvent) -> None:
        if self._fatal is not None:
            return
        if type(event) in self._unwanted:
            # Dropped before it takes room. A dropped message does not move
            # the resume position: the client was not sent it, and may ask
            # for messages when it resumes.
            return
        if isinstance(event, TypingChanged | ReadThrough) and event.origin == self.id:
            return  # the client knows what it said itself
        if isinstance(event, TypingChanged):
            self._out.typing(event)  # coalesced, outside the bound: never ends the stream
            return
        if self._pending is not None:
            if len(self._pending) >= self._services.buffer_size:
                self.fail(self._overflow(), resumable=True)
            else:
                self._pending.append(event)
            return
        if not self._out.offer(event):
            self.fail(self._overflow(), resumable=True)

    async def _deliverable(self, item: StreamItem) -> AsyncIterator[StreamItem]:
        if not isinstance(item, MessageStored):
            yield item
            return
        sequence = item.message.sequence
        if sequence <= self._last:
            return  # already sent (replayed, or a duplicate)
        if sequence > self._last + 1:
            # A gap: earlier messages' events were lost or are late. The
            # store has them.
            async for message in self._messages(self._last, sequence - 1):
                self._last = message.sequence
                if not self._own_echo(message):
                    yield MessageStored(message)
        self._last = sequence
        if not self._own_echo(item.message):
            yield item

    def _own_echo(self, message: Message) -> bool:
        """Whether `message` is one of the client's own, not to be echoed
        (it is forgotten then: it passes by once)."""
        own = self._own
        if not own or message.role is not MessageRole.USER or message.message_id not in own:
            return False
        own.discard(message.message_id)
        return True

    async def _messages(self, after: int, through: int) -> AsyncIterator[Message]:
        with port_errors():
            async for message in self._services.store.iter_messages(
                self.tenant_id, self.conversation_id, after_sequence=after, through_sequence=through
            ):
                yield message

    def _check(self) -> None:
        if self._fatal is None:
            return
        if self._resumable:
            # Everything yielded so far went out before this status does.
            raise with_metadata(self._fatal, resume_after_sequence=str(self._last))
        raise self._fatal

    def _overflow(self) -> ResourceExhausted:
        return ResourceExhausted(
            "the client reads too slowly; reconnect with resume_after_sequence",
            reason="STREAM_BUFFER_FULL",
        )

    # -------------------------------------------------------------- input

    async def send(self, inbound: InboundMessage) -> None:
        """An end-user message from the client: handled as SendMessage."""
        own = self._own
        try:
            if not inbound.message_id:
                raise InvalidArgument.of("message.message_id", "is required on a stream")
            if own is not None:
                own.add(inbound.message_id)  # before its message can pass by
            await self._services.admission.admit(self.tenant_id)
            # Not shielded: SendMessage finishes what it committed, and a
            # stream that ends before the commit leaves nothing stored (the
            # client, without an ack, resends the message when it reconnects).
            outcome = await self._services.send_message(inbound, field_prefix="message.")
        except ChatError as error:
            if own is not None:
                own.discard(inbound.message_id)  # in doubt: echoed if it was stored
            await self._out.put(Refused(inbound.message_id, error))
            return
        result = outcome.result
        if own is not None and outcome.replayed:
            own.discard(inbound.message_id)  # stored before: no message passes by
        await self._out.put(Acked(result.message_id, result.sequence, outcome.replayed))

    def typing(self, typing: bool) -> None:
        """A typing frame. Rate limited per stream, not by the tenant's limit:
        at most one indicator per `typing_interval`, the latest state winning
        (TypingThrottle); with the per-tenant stream cap that bounds a
        tenant's typing traffic, and typing never spends the budget that the
        tenant's messages need."""
        if self._fatal is None and not self._finished:
            self._typing.set(typing)

    def _publish_typing(self, typing: bool) -> None:
        self._services.bus.publish(
            self._topic, TypingChanged(MessageRole.USER, typing, origin=self.id)
        )

    async def read(self, through_sequence: int) -> None:
        try:
            await self._services.admission.admit(self.tenant_id)
            await self._services.mark_read(
                self.tenant_id,
                self.conversation_id,
                through_sequence,
                field="read.read_through_sequence",
            )
        except ChatError as error:
            await self._out.put(Refused("", error))
            return
        self._services.bus.publish(
            self._topic, ReadThrough(MessageRole.USER, through_sequence, origin=self.id)
        )

    async def refuse(self, message_id: str, error: ChatError) -> None:
        await self._out.put(Refused(message_id, error))
