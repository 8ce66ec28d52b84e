"""Bounded memory: slow stream readers, and exports of long conversations.

These measure the server process's resident memory (VmHWM, its peak, from
/proc) around the load, and print the figures (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, ConversationStatus, DeliveryStatus, MessageRole
from chat_service.domain.model import Conversation, Message
from chat_service.ports import ConversationChange
from tests.support.grpc_client import bearer, rich_error, text_request
from tests.support.service import ServiceProcess
from tests.support.streams import StreamClient

MIB = 1024 * 1024


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


# The bound is the stream's buffer, whatever the store; and flooding 48 MB
# through nx-27017 (a pure-Python MongoDB) would take minutes.
@pytest.mark.heavy_load
async def test_a_slow_reader_is_ended_and_server_memory_stays_bounded(
    fresh_service: ServiceProcess,
) -> None:
    fresh_service.extra_env.update(
        {
            "STREAM_BUFFER_SIZE": "32",
            # The client reads again only after the flood; it gets its status then.
            "STREAM_STALL_GRACE_SECONDS": "120",
            "RATE_LIMIT_PER_SECOND": "100000",
            "RATE_LIMIT_BURST": "100000",
        }
    )
    fresh_service.start()
    auth = bearer(fresh_service.token("acme"))
    # 3000 messages of 4000 four-byte characters: 48 MB through one stalled
    # stream (as UTF-8 on the wire, and as Python strings in memory).
    flood, text = 3000, "\N{GRINNING FACE}" * 4000
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        first = await stub.SendMessage(text_request("start"), metadata=auth)
        conversation_id = first.conversation_id
        slow = StreamClient(stub, auth)
        await slow.open(conversation_id=conversation_id)
        before = memory_kib(fresh_service.pid, "VmRSS")

        # The slow client reads nothing while the conversation floods.
        request = text_request(
            text,
            conversation_id=conversation_id,
            processing_hints=resources_pb2.ProcessingHints(bypass_automation=True),
        )
        for _ in range(0, flood, 50):
            await asyncio.gather(*(stub.SendMessage(request, metadata=auth) for _ in range(50)))
        peak_growth = (memory_kib(fresh_service.pid, "VmHWM") - before) / 1024
        print(
            f"\nslow reader: {flood} messages of {len(text.encode()) // 1024} KiB through a "
            f"stalled stream; server peak RSS growth {peak_growth:.1f} MiB"
        )

        responses, ended = await slow.until_error()
        received = [r.message.sequence for r in responses if r.WhichOneof("event") == "message"]
        error = rich_error(ended)
        assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.reason == "STREAM_BUFFER_FULL"
        resume_from = int(error.metadata["resume_after_sequence"])
        assert received == list(range(3, resume_from + 1))  # in order, up to the resume point

        # The client reconnects from there and gets the rest, nothing twice.
        again = StreamClient(stub, auth)
        await again.open(conversation_id=conversation_id, resume_after=resume_from)
        rest = await again.messages_through(flood + 2, timeout=60)
        assert [m.sequence for m in rest] == list(range(resume_from + 1, flood + 3))
        again.cancel()

    # Holding the flood would take more than its 48 MB; the stream holds at
    # most STREAM_BUFFER_SIZE messages (and gRPC its flow-control window).
    assert peak_growth < 20


async def _seed_conversation(service: ServiceProcess, count: int, text: str) -> str:
    """Writes a long conversation straight into the store the service will use
    (its SQLite file, or its MongoDB database)."""
    store = await service.open_store()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    conversation = Conversation(
        conversation_id="long-one",
        tenant_id="acme",
        user_id="patient-user",
        channel=Channel.WEB,
        status=ConversationStatus.ACTIVE,
        created_at=start,
        updated_at=start,
        version=1,
    )
    await store.write(ConversationChange(conversation, expected_version=0))
    batch = 5000
    for first in range(1, count + 1, batch):
        messages = tuple(
            Message(
                message_id=f"m-{sequence}",
                tenant_id="acme",
                conversation_id="long-one",
                sequence=sequence,
                role=MessageRole.USER if sequence % 2 else MessageRole.BOT,
                channel=Channel.WEB,
                user_id="patient-user",
                content=MessageContent.of_text(f"{sequence}: {text}"),
                created_at=start + timedelta(seconds=sequence),
                delivery_status=DeliveryStatus.SENT,
            )
            for sequence in range(first, min(first + batch, count + 1))
        )
        updated = replace(
            conversation, last_sequence=messages[-1].sequence, version=conversation.version + 1
        )
        await store.write(
            ConversationChange(updated, expected_version=conversation.version, messages=messages)
        )
        conversation = updated
    await store.close()
    return conversation.conversation_id


# Seeding and exporting 100,000 messages through nx-27017 (a pure-Python
# server) takes over a minute and crowds the tests after it; the MongoDB
# export's cursor batches are covered by test_watch_and_export.py.
@pytest.mark.heavy_load
async def test_export_of_a_hundred_thousand_messages_in_bounded_memory(
    fresh_service: ServiceProcess,
) -> None:
    count, text = 100_000, "lorem ipsum dolor sit amet " * 10  # ~280 characters each
    conversation_id = await _seed_conversation(fresh_service, count, text)
    fresh_service.start()
    auth = bearer(fresh_service.token("acme"))
    async with grpc.aio.insecure_channel(
        fresh_service.address, options=[("grpc.max_receive_message_length", 8 * MIB)]
    ) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        await stub.ListConversations(pb.ListConversationsRequest(), metadata=auth)  # warm up
        before = memory_kib(fresh_service.pid, "VmHWM")
        started = time.monotonic()
        size = lines = 0
        last_line = b""
        async for chunk in stub.ExportConversation(
            pb.ExportConversationRequest(
                conversation_id=conversation_id, format=pb.EXPORT_FORMAT_JSON_LINES
            ),
            metadata=auth,
        ):
            size += len(chunk.data)
            lines += chunk.data.count(b"\n")
            last_line = chunk.data.rsplit(b"\n", 2)[-2] if chunk.data else last_line
        seconds = time.monotonic() - started
        growth = (memory_kib(fresh_service.pid, "VmHWM") - before) / 1024

    print(
        f"\nexport: {count} messages, {size / MIB:.1f} MiB of JSON lines in {seconds:.1f} s; "
        f"server peak RSS growth {growth:.1f} MiB"
    )
    assert lines == count
    assert b'"sequence":"100000"' in last_line.replace(b" ", b"")
    # The export is far larger than what the server ever held at once.
    assert growth < size / MIB / 4
