"""The streaming RPCs: StreamConversation, WatchConversations, ExportConversation.

The protocols are specified in chat_service.proto; the logic lives in the
pipeline (stream_opener, conversation_stream, watch, export). This module reads frames,
maps domain items to protobuf frames, and formats exports.

Every stream on a conversation gets the same live event object from the bus
(and every watch of a tenant the same outbox entry from the event tail), so
the frame of a live event is built once and shared (SharedFrames): with N
streams open on a conversation, a message costs one mapping, not N.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import grpc
from chatbot.chat.v1 import chat_service_pb2 as pb
from google.protobuf import json_format

from chat_service import bench_counters
from chat_service.domain.enums import Channel, ConversationStatus, ExportFormat
from chat_service.domain.errors import (
    RESUME_TOKEN_EXPIRED,
    ChatError,
    FieldViolation,
    Internal,
    InvalidArgument,
)
from chat_service.domain.events import EventType, OutboxEntry
from chat_service.domain.live import (
    DeliveryChanged,
    LiveEvent,
    MessageStored,
    ReadThrough,
    StatusChanged,
    TypingChanged,
)
from chat_service.domain.model import Message
from chat_service.grpc_api.auth_interceptor import current_principal
from chat_service.grpc_api.errors import to_status
from chat_service.grpc_api.mappers import inbound_from_stream_message
from chat_service.grpc_api.mappers_enums import (
    enum_set_from_proto,
    export_format_from_proto,
)
from chat_service.pipeline.conversation_stream import (
    Acked,
    ConversationStream,
    EventKind,
    Opened,
    Refused,
)
from chat_service.pipeline.export import ExportConversation, spreadsheet_safe
from chat_service.pipeline.page_tokens import PageTokens
from chat_service.pipeline.stream_limits import with_metadata
from chat_service.pipeline.stream_opener import (
    ConversationStreams,
    StreamOpenRequest,
    open_violations,
)
from chat_service.pipeline.watch import WatchConversations
from chat_service.protomap.enums import (
    channel_from_proto,
    conversation_status_from_proto,
    conversation_status_to_proto,
    delivery_status_to_proto,
    message_role_to_proto,
)
from chat_service.protomap.events import event_to_proto
from chat_service.protomap.resources import conversation_to_proto
from chat_service.protomap.resources import message_to_proto as message_proto

log = logging.getLogger(__name__)

EXPORT_CHUNK_BYTES = 64 * 1024
_FRAME_COUNTER = "stream_frames"  # bench_counters: frames sent on streams and watches

_E = TypeVar("_E")
_F = TypeVar("_F")


class SharedFrames(Generic[_E, _F]):
    """The frame of each live event, built by the first stream that sends it
    and reused by the others.

    Keyed by the event object's identity (the bus hands every listener the
    same object), and kept exactly as long as that object lives: a weak
    reference drops the frame with the event, once no stream's buffer holds
    it. So sharing adds no memory beyond one frame per buffered event, however
    large the messages. Frames are never changed once built (gRPC only
    serializes them), so streams can share them.
    """

    def __init__(self, build: Callable[[_E], _F]) -> None:
        self._build = build
        self._frames: dict[int, tuple[weakref.ref[_E], _F]] = {}

    def frame(self, event: _E) -> _F:
        key = id(event)
        cached = self._frames.get(key)
        if cached is not None and cached[0]() is event:
            return cached[1]
        frame = self._build(event)
        try:
            ref = weakref.ref(event, self._forgetter(key))
        except TypeError:
            # An event type without a weakref slot is built per stream, not
            # shared: slower, never wrong (test_stream_frames checks ours).
            return frame
        self._frames[key] = (ref, frame)
        return frame

    def _forgetter(self, key: int) -> Callable[[weakref.ref[_E]], None]:
        def forget(gone: weakref.ref[_E]) -> None:
            cached = self._frames.get(key)
            if cached is not None and cached[0] is gone:
                del self._frames[key]

        return forget

    def __len__(self) -> int:
        return len(self._frames)


class StreamFrames:
    """The frames one server's streams and watches share."""

    def __init__(self, tokens: PageTokens) -> None:
        self.live: SharedFrames[LiveEvent, pb.StreamConversationResponse] = SharedFrames(
            _live_frame
        )

        def watch_frame(entry: OutboxEntry) -> pb.WatchConversationsResponse:
            return pb.WatchConversationsResponse(
                event=event_to_proto(entry.event),
                resume_token=tokens.resume_token(entry.event.tenant_id, entry.position),
            )

        self.watch: SharedFrames[OutboxEntry, pb.WatchConversationsResponse] = SharedFrames(
            watch_frame
        )


# ---------------------------------------------------------- StreamConversation


async def stream_conversation(
    frames: AsyncIterator[pb.StreamConversationRequest],
    streams: ConversationStreams,
    tenant_id: str,
    *,
    error_domain: str,
    shared: StreamFrames | None = None,
) -> AsyncIterator[pb.StreamConversationResponse]:
    # A call that never says what it wants must not hold a connection's
    # stream (and the server's task) for ever.
    timeout = streams.first_frame_timeout
    try:
        async with asyncio.timeout(timeout):
            first = await anext(frames, None)
    except TimeoutError:
        raise InvalidArgument.of(
            "open",
            f"the first frame of a stream must be `open`, sent within {timeout:g} s",
            reason="FIRST_FRAME_TIMEOUT",
        ) from None
    if first is None:
        return  # the client closed before saying anything
    if first.WhichOneof("frame") != "open":
        raise InvalidArgument.of("open", "the first frame of a stream must be `open`")
    live_frame = shared.live.frame if shared is not None else _live_frame
    handler = asyncio.current_task()
    assert handler is not None
    stream = await streams.open(
        tenant_id,
        _open_request(first.open),
        abandon=handler.cancel,
        valid_until=current_principal().valid_until,
    )
    reader = asyncio.create_task(_read_frames(frames, stream), name=f"stream {stream.id} reader")
    try:
        async for item in stream.items():
            if bench_counters.enabled:
                bench_counters.count(_FRAME_COUNTER)
            if isinstance(item, _LIVE_EVENTS):
                yield live_frame(item)
            else:
                yield _answer_frame(item, error_domain)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        stream.close()


_EVENT_KINDS: dict[int, EventKind] = {
    pb.STREAM_EVENT_KIND_MESSAGE: EventKind.MESSAGE,
    pb.STREAM_EVENT_KIND_DELIVERY: EventKind.DELIVERY,
    pb.STREAM_EVENT_KIND_TYPING: EventKind.TYPING,
    pb.STREAM_EVENT_KIND_READ: EventKind.READ,
    pb.STREAM_EVENT_KIND_STATUS: EventKind.STATUS,
}


def _open_request(frame: pb.StreamOpen) -> StreamOpenRequest:
    violations: list[FieldViolation] = []
    kinds = enum_set_from_proto(
        frame.event_kinds,
        _EVENT_KINDS.get,
        field="open.event_kinds",
        noun="event kind",
        violations=violations,
    )
    request = StreamOpenRequest(
        conversation_id=frame.conversation_id,
        user_id=frame.user_id,
        channel=channel_from_proto(frame.channel),
        session_id=frame.session_id,
        resume_after=(
            frame.resume_after_sequence if frame.HasField("resume_after_sequence") else None
        ),
        event_kinds=kinds,
        omit_own_messages=frame.omit_own_messages,
    )
    if violations:
        # With the other fields' problems: one status says all.
        raise InvalidArgument([*open_violations(request), *violations])
    return request


async def _read_frames(
    frames: AsyncIterator[pb.StreamConversationRequest], stream: ConversationStream
) -> None:
    """The client's frames, one at a time, until it stops sending (the
    stream stays open for output) or the stream ends."""
    conversation = stream.conversation
    try:
        async for frame in frames:
            kind = frame.WhichOneof("frame")
            if kind == "message":
                try:
                    inbound = inbound_from_stream_message(
                        frame.message,
                        tenant_id=stream.tenant_id,
                        conversation_id=conversation.conversation_id,
                        user_id=conversation.user_id,
                        channel=conversation.channel,
                        session_id=conversation.session_id,
                    )
                except ChatError as error:
                    await stream.refuse(frame.message.message_id, error)
                    continue
                await stream.send(inbound)
            elif kind == "typing":
                stream.typing(frame.typing.typing)
            elif kind == "read":
                await stream.read(frame.read.read_through_sequence)
            elif kind == "open":
                stream.fail(InvalidArgument.of("open", "a stream takes `open` only once"))
                return
            else:
                await stream.refuse("", InvalidArgument.of("frame", "the frame is empty"))
    except asyncio.CancelledError:
        raise
    except grpc.RpcError as error:  # the call broke (client gone)
        log.debug("stream %s: reading frames stopped: %s", stream.id, error)
    except ChatError as error:  # a frame the server could not even decode
        stream.fail(error)
    except Exception:
        # A bug: the stream cannot go on taking frames, and must say so
        # rather than ignore the client from now on.
        log.exception("stream %s: reading frames failed", stream.id)
        stream.fail(Internal())


_LIVE_EVENTS = (MessageStored, DeliveryChanged, TypingChanged, ReadThrough, StatusChanged)


def _answer_frame(
    item: Opened | Acked | Refused, error_domain: str
) -> pb.StreamConversationResponse:
    """A frame of this stream's own: not shared."""
    if isinstance(item, Opened):
        return pb.StreamConversationResponse(
            opened=pb.StreamOpened(
                conversation=conversation_to_proto(item.conversation),
                replay_through_sequence=item.replay_through,
            )
        )
    if isinstance(item, Acked):
        return pb.StreamConversationResponse(
            ack=pb.MessageAck(
                message_id=item.message_id, sequence=item.sequence, duplicate=item.duplicate
            )
        )
    return pb.StreamConversationResponse(
        error=pb.StreamError(
            message_id=item.message_id, status=to_status(item.error, domain=error_domain)
        )
    )


def _live_frame(item: LiveEvent) -> pb.StreamConversationResponse:
    """A live event's frame, the same for every stream that carries it."""
    if isinstance(item, MessageStored):
        return pb.StreamConversationResponse(message=message_proto(item.message))
    if isinstance(item, DeliveryChanged):
        return pb.StreamConversationResponse(
            delivery=pb.DeliveryUpdate(
                message_id=item.message_id,
                sequence=item.sequence,
                status=delivery_status_to_proto(item.status),
                platform_message_id=item.platform_message_id,
            )
        )
    if isinstance(item, TypingChanged):
        return pb.StreamConversationResponse(
            typing=pb.TypingIndicator(role=message_role_to_proto(item.role), typing=item.typing)
        )
    if isinstance(item, ReadThrough):
        return pb.StreamConversationResponse(
            read=pb.ReadReceipt(
                role=message_role_to_proto(item.role), read_through_sequence=item.sequence
            )
        )
    assert isinstance(item, StatusChanged)
    return pb.StreamConversationResponse(
        status=pb.StatusChange(
            from_status=conversation_status_to_proto(item.previous),
            to_status=conversation_status_to_proto(item.current),
            reason=item.reason,
        )
    )


# ---------------------------------------------------------- WatchConversations


async def watch_conversations(
    request: pb.WatchConversationsRequest,
    watches: WatchConversations,
    tenant_id: str,
    context: Any,
    shared: StreamFrames | None = None,
) -> AsyncIterator[pb.WatchConversationsResponse]:
    channels, statuses, event_types = _watch_filters(request)
    watch_frame = (shared or StreamFrames(watches.tokens)).watch.frame
    resume_after = await watches.start_after(tenant_id, request.resume_token)
    handler = asyncio.current_task()
    assert handler is not None
    watch = watches.open(
        tenant_id,
        channels=channels,
        statuses=statuses,
        event_types=event_types,
        resume_after=resume_after,
        valid_until=current_principal().valid_until,
        abandon=handler.cancel,
    )
    try:
        # Headers now: the client knows the watch is listening before the
        # first event, however long that takes.
        await context.send_initial_metadata(())
        try:
            async for entry in watch.entries():
                if bench_counters.enabled:
                    bench_counters.count(_FRAME_COUNTER)
                yield watch_frame(entry)
        except ChatError as error:
            # Whatever ended the watch (drain, expired token, the store), the
            # client resumes where it stopped: everything before went out.
            # Except past the retention: that position is gone, and a token
            # for it would only be refused again; the client starts afresh.
            if error.reason == RESUME_TOKEN_EXPIRED:
                raise
            token = watches.tokens.resume_token(tenant_id, watch.position)
            raise with_metadata(error, resume_token=token) from None
    finally:
        watch.close()


def _watch_filters(
    request: pb.WatchConversationsRequest,
) -> tuple[frozenset[Channel], frozenset[ConversationStatus], frozenset[EventType]]:
    violations: list[FieldViolation] = []
    channels = enum_set_from_proto(
        request.channels,
        channel_from_proto,
        field="channels",
        noun="channel",
        violations=violations,
    )
    statuses = enum_set_from_proto(
        request.statuses,
        conversation_status_from_proto,
        field="statuses",
        noun="status",
        violations=violations,
    )
    event_types = enum_set_from_proto(
        request.event_types,
        _EVENT_TYPES.get,
        field="event_types",
        noun="event type",
        violations=violations,
        hint=f" (one of {', '.join(sorted(_EVENT_TYPES))})",
    )
    if violations:
        raise InvalidArgument(violations)
    return channels, statuses, event_types


_EVENT_TYPES = {event_type.value: event_type for event_type in EventType}


# ---------------------------------------------------------- ExportConversation

_CONTENT_TYPES = {
    ExportFormat.JSON_LINES: "application/x-ndjson",
    ExportFormat.CSV: "text/csv",
}
CSV_COLUMNS = (
    "sequence",
    "message_id",
    "role",
    "create_time",
    "type",
    "text",
    "media_url",
    "delivery_status",
)


async def export_conversation(
    request: pb.ExportConversationRequest, export: ExportConversation, tenant_id: str
) -> AsyncIterator[pb.ExportConversationResponse]:
    violations = []
    if not request.conversation_id:
        violations.append(FieldViolation("conversation_id", "is required"))
    export_format = export_format_from_proto(request.format)
    if export_format is None:
        problem = f"{request.format} is not a known format" if request.format else "is required"
        violations.append(FieldViolation("format", f"{problem}: JSON_LINES or CSV"))
    if violations:
        raise InvalidArgument(violations)
    assert export_format is not None
    _, messages = await export.open(tenant_id, request.conversation_id)
    encode = _json_line if export_format is ExportFormat.JSON_LINES else _CsvLines().line
    content_type = _CONTENT_TYPES[export_format]
    chunk = bytearray(_csv_header() if export_format is ExportFormat.CSV else b"")
    async for message in messages:
        line = encode(message)
        if chunk and len(chunk) + len(line) > EXPORT_CHUNK_BYTES:
            yield pb.ExportConversationResponse(content_type=content_type, data=bytes(chunk))
            content_type = ""  # on the first chunk only
            chunk.clear()
        chunk += line
    if chunk or content_type:
        yield pb.ExportConversationResponse(content_type=content_type, data=bytes(chunk))


def _json_line(message: Message) -> bytes:
    text = json_format.MessageToJson(
        message_proto(message), indent=None, preserving_proto_field_name=True
    )
    return text.encode() + b"\n"


class _CsvLines:
    """RFC 4180 rows, one message each; no cell can run as a spreadsheet
    formula (spreadsheet_safe)."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def line(self, message: Message) -> bytes:
        content = message.content
        self._writer.writerow(
            (
                message.sequence,
                *map(
                    spreadsheet_safe,
                    (
                        message.message_id,
                        message.role.value,
                        message.created_at.isoformat(),
                        content.type.value if content.type else "",
                        content.text,
                        content.media.url if content.media else "",
                        message.delivery_status.value,
                    ),
                ),
            )
        )
        row = self._buffer.getvalue().encode()
        self._buffer.seek(0)
        self._buffer.truncate()
        return row


def _csv_header() -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(CSV_COLUMNS)
    return buffer.getvalue().encode()
