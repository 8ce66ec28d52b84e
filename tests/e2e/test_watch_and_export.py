"""WatchConversations and ExportConversation over real gRPC."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from typing import Any

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from tests.support.grpc_client import Metadata, bearer, rich_error, text_request
from tests.support.service import ServiceProcess


def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


class Watcher:
    """Reads a WatchConversations call in the background."""

    def __init__(self, stub: Any, metadata: Metadata, **request: Any) -> None:
        self.call = stub.WatchConversations(
            pb.WatchConversationsRequest(**request), metadata=metadata
        )
        self.events: list[pb.WatchConversationsResponse] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            self.events.append(response)

    async def until(self, count: int, timeout: float = 10) -> list[pb.WatchConversationsResponse]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                if self._task.done():
                    self._task.result()  # raises the call's error
                    raise AssertionError(f"the watch ended after {len(self.events)} events")
                await asyncio.sleep(0.01)
        return self.events

    async def error(self, timeout: float = 10) -> grpc.aio.AioRpcError:
        """The error the watch ends with (all of its events are read by then)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except grpc.aio.AioRpcError as error:
            return error
        raise AssertionError("the watch ended without an error")

    async def stop(self) -> None:
        self.call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _started(watcher: Watcher) -> None:
    # The watch is open once the server has sent its headers.
    await asyncio.wait_for(watcher.call.initial_metadata(), 10)


async def test_watch_shows_the_tenants_events_and_never_anothers(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    mine, theirs = bearer(service.token(tenant())), bearer(service.token(tenant()))
    watcher = Watcher(stub, mine)
    spy = Watcher(stub, theirs)
    await asyncio.gather(_started(watcher), _started(spy))

    sent = await stub.SendMessage(text_request("hello"), metadata=mine)
    events = await watcher.until(3)

    assert [e.event.event_type for e in events[:3]] == [
        "conversation.started",
        "message.received",
        "message.sent",
    ]
    assert {e.event.conversation_id for e in events} == {sent.conversation_id}
    assert all(e.event.conversation_status == "active" for e in events)
    # The spy's own events come after ours in the log, and a watch hands
    # events out in log order: once it has its own, it would have had ours.
    own = await stub.SendMessage(text_request("mine"), metadata=theirs)
    heard = await spy.until(3)
    assert {e.event.conversation_id for e in heard} == {own.conversation_id}
    await watcher.stop()
    await spy.stop()


async def test_watch_filters_by_channel_and_status(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant()))
    sms_only = Watcher(stub, auth, channels=[resources_pb2.CHANNEL_SMS])
    escalated_only = Watcher(stub, auth, statuses=[resources_pb2.CONVERSATION_STATUS_ESCALATED])
    await asyncio.gather(_started(sms_only), _started(escalated_only))

    await stub.SendMessage(text_request("web"), metadata=auth)
    sms = await stub.SendMessage(
        text_request("sms", channel=resources_pb2.CHANNEL_SMS), metadata=auth
    )
    await stub.UpdateConversationStatus(
        pb.UpdateConversationStatusRequest(
            conversation_id=sms.conversation_id,
            status=resources_pb2.CONVERSATION_STATUS_ESCALATED,
        ),
        metadata=auth,
    )

    # Last, an event both filters let through: once each watch has it, it
    # has had every earlier event it would ever get (log order).
    marker = await stub.SendMessage(
        text_request("last", channel=resources_pb2.CHANNEL_SMS), metadata=auth
    )
    await stub.UpdateConversationStatus(
        pb.UpdateConversationStatusRequest(
            conversation_id=marker.conversation_id,
            status=resources_pb2.CONVERSATION_STATUS_ESCALATED,
        ),
        metadata=auth,
    )
    sms_events = await _through_marker(sms_only, marker.conversation_id)
    escalated = await _through_marker(escalated_only, marker.conversation_id)

    assert {e.event.channel for e in sms_events} == {"sms"}
    assert {e.event.conversation_id for e in sms_events} == {
        sms.conversation_id,
        marker.conversation_id,
    }
    # (Delivery updates of an escalated conversation's replies may pass too.)
    assert {e.event.conversation_status for e in escalated} == {"escalated"}
    changes = [e.event for e in escalated if e.event.event_type == "conversation.status_changed"]
    assert [c.conversation_id for c in changes] == [sms.conversation_id, marker.conversation_id]
    assert changes[0].metadata["to"] == "escalated"
    await sms_only.stop()
    await escalated_only.stop()


async def _through_marker(
    watcher: Watcher, conversation_id: str
) -> list[pb.WatchConversationsResponse]:
    """The watch's events through the marker conversation's status change."""

    def has_marker() -> bool:
        return any(
            e.event.conversation_id == conversation_id
            and e.event.event_type == "conversation.status_changed"
            for e in watcher.events
        )

    async with asyncio.timeout(10):
        while not has_marker():
            await watcher.until(len(watcher.events) + 1)
    return list(watcher.events)


async def test_a_resumed_watch_misses_nothing_and_repeats_nothing(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant()))
    first = Watcher(stub, auth)
    await _started(first)
    await stub.SendMessage(text_request("one"), metadata=auth)
    seen = await first.until(3)
    await first.stop()

    for text in ("two", "three"):  # while nobody watches
        await stub.SendMessage(text_request(text), metadata=auth)
    resumed = Watcher(stub, auth, resume_token=seen[-1].resume_token)
    later = await resumed.until(6)
    everything = Watcher(stub, auth, resume_token=seen[0].resume_token)
    all_events = await everything.until(8)

    ids_seen = [e.event.event_id for e in seen[:3]]
    ids_later = [e.event.event_id for e in later[:6]]
    assert not set(ids_seen) & set(ids_later)
    assert [e.event.event_id for e in all_events[:8]] == ids_seen[1:] + ids_later
    await resumed.stop()
    await everything.stop()


async def test_a_bad_resume_token_is_invalid(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    call = stub.WatchConversations(
        pb.WatchConversationsRequest(resume_token="not-a-token"),
        metadata=bearer(service.token(tenant())),
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass

    assert rich_error(caught.value).fields == ["resume_token"]


async def _export(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata, **request: Any
) -> tuple[str, bytes, list[int]]:
    content_type, data, sizes = "", bytearray(), []
    async for chunk in stub.ExportConversation(
        pb.ExportConversationRequest(**request), metadata=auth
    ):
        content_type = content_type or chunk.content_type
        sizes.append(len(chunk.data))
        data += chunk.data
    return content_type, bytes(data), sizes


async def test_export_as_json_lines_and_csv(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant()))
    first = await stub.SendMessage(text_request('hello, "world"\nsecond line'), metadata=auth)
    conversation_id = first.conversation_id
    await stub.SendMessage(text_request("bye", conversation_id=conversation_id), metadata=auth)

    kind, data, _ = await _export(
        stub, auth, conversation_id=conversation_id, format=pb.EXPORT_FORMAT_JSON_LINES
    )
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert kind == "application/x-ndjson"
    assert [line["sequence"] for line in lines] == ["1", "2", "3", "4"]  # int64 as JSON string
    assert lines[0]["content"]["text"] == 'hello, "world"\nsecond line'
    assert lines[1]["role"] == "MESSAGE_ROLE_BOT"

    kind, data, _ = await _export(
        stub, auth, conversation_id=conversation_id, format=pb.EXPORT_FORMAT_CSV
    )
    rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert kind == "text/csv"
    assert rows[0] == [
        "sequence",
        "message_id",
        "role",
        "create_time",
        "type",
        "text",
        "media_url",
        "delivery_status",
    ]
    assert [row[0] for row in rows[1:]] == ["1", "2", "3", "4"]
    assert rows[1][5] == 'hello, "world"\nsecond line'
    assert rows[2][2] == "bot"


async def test_export_chunks_end_on_lines_and_stay_under_64_kib(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant()))
    first = await stub.SendMessage(text_request("x" * 4000), metadata=auth)
    for _ in range(30):
        await stub.SendMessage(
            text_request("y" * 4000, conversation_id=first.conversation_id), metadata=auth
        )

    _, data, sizes = await _export(
        stub, auth, conversation_id=first.conversation_id, format=pb.EXPORT_FORMAT_JSON_LINES
    )

    assert len(sizes) > 1
    assert max(sizes) <= 64 * 1024
    offset = 0
    for size in sizes:
        offset += size
        assert data[offset - 1 : offset] == b"\n"
    assert len(data.splitlines()) == 62


async def test_export_errors(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    owner = bearer(service.token(tenant()))
    sent = await stub.SendMessage(text_request("secret"), metadata=owner)
    stranger = bearer(service.token(tenant()))

    requests: list[tuple[dict[str, Any], list[str]]] = [
        ({"conversation_id": sent.conversation_id}, ["format"]),
        ({"format": pb.EXPORT_FORMAT_CSV}, ["conversation_id"]),
    ]
    for request, expected in requests:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _export(stub, owner, **request)
        assert rich_error(caught.value).fields == expected
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(
            stub, stranger, conversation_id=sent.conversation_id, format=pb.EXPORT_FORMAT_CSV
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_an_unknown_export_format_is_not_called_missing(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    # Regression: a format number this build does not know was "is required".
    owner = bearer(service.token(tenant()))
    sent = await stub.SendMessage(text_request("hello"), metadata=owner)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(stub, owner, conversation_id=sent.conversation_id, format=7)
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = error.field_violations
    assert field == "format"
    assert "7 is not a known format" in description
    assert "required" not in description


async def test_a_waiting_watch_whose_buffer_overflows_keeps_flowing(
    fresh_service: ServiceProcess,
) -> None:
    # Regression: the overflow emptied the buffer under a waiting watcher and
    # never woke it: the watch froze for good. A buffer of one overflows on
    # the first write (conversation.started and message.received together).
    fresh_service.extra_env["STREAM_BUFFER_SIZE"] = "1"
    fresh_service.start()
    auth = bearer(fresh_service.token(tenant()))
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        watcher = Watcher(stub, auth)
        await _started(watcher)

        sent = await stub.SendMessage(text_request("hello"), metadata=auth)
        events = await watcher.until(3)
        again = await stub.SendMessage(
            text_request("again", conversation_id=sent.conversation_id), metadata=auth
        )
        more = await watcher.until(5)

        assert [e.event.event_type for e in events[:3]] == [
            "conversation.started",
            "message.received",
            "message.sent",
        ]
        assert [e.event.message_id for e in more[3:5]] == [
            again.message_id,
            again.replies[0].message_id,
        ]
        await watcher.stop()
