"""What the service logs at INFO: never an end user's id or words."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import grpc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc

from tests.support.grpc_client import bearer, text_request
from tests.support.service import ServiceProcess


async def _lines_mentioning(path: Path, needle: str, timeout: float = 10) -> list[dict[str, str]]:
    """The log's JSON records, once one mentions `needle` (the log is
    written by another process: polled)."""
    async with asyncio.timeout(timeout):
        while True:
            text = await asyncio.to_thread(path.read_text)
            records = [json.loads(line) for line in text.splitlines() if line]
            if any(needle in record["message"] for record in records):
                return records
            await asyncio.sleep(0.05)


async def test_user_ids_and_message_text_are_not_logged_at_info(
    fresh_service: ServiceProcess,
) -> None:
    fresh_service.extra_env.update({"LOG_LEVEL": "INFO", "LOG_FORMAT": "json"})
    fresh_service.start()
    user_id = f"user-{uuid.uuid4().hex}"
    text = f"my card is {uuid.uuid4().hex}"
    auth = bearer(fresh_service.token("acme"))
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        sent = await stub.SendMessage(text_request(text, user_id=user_id), metadata=auth)
        await stub.SendMessage(
            text_request(text, user_id=user_id, conversation_id=sent.conversation_id),
            metadata=auth,
        )
        await stub.ListConversations(pb.ListConversationsRequest(user_id=user_id), metadata=auth)

    # Without Kafka the outbox relay logs each event (at INFO): wait for
    # those of this conversation, then look at everything logged.
    records = await _lines_mentioning(fresh_service.log_path, sent.conversation_id)
    fresh_service.stop()
    records = [json.loads(line) for line in fresh_service.logs().splitlines() if line]

    logged = "\n".join(json.dumps(record) for record in records)
    assert user_id not in logged
    assert text.split()[-1] not in logged
    assert {record["level"] for record in records} <= {"INFO", "WARNING"}
