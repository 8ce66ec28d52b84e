"""Domain objects <-> SQLite rows: columns for what is filtered or sorted on,
JSON (in the shared serialization shape) for the structured rest."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from adapters.storage import json_text
from adapters.storage.search import message_search_text
from adapters.storage.times import from_micros, to_micros
from chat_service.domain.content_codec import content_from_dict, content_to_dict
from chat_service.domain.conversation_codec import (
    channel_metadata_from_dict,
    channel_metadata_to_dict,
    conversation_state_from_dict,
    conversation_state_to_dict,
    send_result_from_dict,
    send_result_to_dict,
)
from chat_service.domain.enums import Channel, ConversationStatus, DeliveryStatus, MessageRole
from chat_service.domain.model import (
    ChannelMetadata,
    Conversation,
    ConversationState,
    IdempotencyRecord,
    Message,
)
from chat_service.domain.serialization import Document

Params = dict[str, Any]


def dump_json(document: Document) -> str:
    return json_text.encode(document)


def load_json(text: str) -> Document:
    document: Document = json_text.decode(text)
    return document


# ------------------------------------------------------------- conversations


def conversation_params(conversation: Conversation) -> Params:
    return {
        "conversation_id": conversation.conversation_id,
        "tenant_id": conversation.tenant_id,
        "user_id": conversation.user_id,
        "channel": conversation.channel.value,
        "status": conversation.status.value,
        "created_at": to_micros(conversation.created_at),
        "updated_at": to_micros(conversation.updated_at),
        "last_sequence": conversation.last_sequence,
        "version": conversation.version,
        "session_id": conversation.session_id,
        "status_reason": conversation.status_reason,
        "state": _state_json(conversation.state),
        "channel_metadata": _conversation_metadata_json(conversation.channel_metadata),
    }


# A conversation's state and channel metadata are written again with every
# change of it (each message), though they seldom change: a change carries
# the very objects it was made from (frozen; a new state is a new object), so
# their text is kept by the object's identity. Each entry holds its object,
# so that an id is not reused while its entry lives; past the bound the whole
# memo goes (it refills with the conversations in use).
_MEMO_SIZE = 4096
_T = TypeVar("_T")


class _TextsByIdentity(Generic[_T]):
    """`encode(value)`, kept by the value's identity."""

    def __init__(self, encode: Callable[[_T], str]) -> None:
        self._encode = encode
        self._texts: dict[int, tuple[_T, str]] = {}

    def __call__(self, value: _T) -> str:
        kept = self._texts.get(id(value))
        if kept is not None and kept[0] is value:
            return kept[1]
        text = self._encode(value)
        if len(self._texts) >= _MEMO_SIZE:
            self._texts.clear()
        self._texts[id(value)] = (value, text)
        return text


_NO_METADATA = ChannelMetadata()


@functools.cache
def _no_metadata_text() -> str:
    return dump_json(channel_metadata_to_dict(_NO_METADATA))


def _metadata_json(metadata: ChannelMetadata) -> str:
    """Most messages (every bot reply) have no channel metadata: that text is made once."""
    if metadata != _NO_METADATA:
        return dump_json(channel_metadata_to_dict(metadata))
    return _no_metadata_text()


_state_json = _TextsByIdentity[ConversationState](
    lambda state: dump_json(conversation_state_to_dict(state))
)
_conversation_metadata_json = _TextsByIdentity[ChannelMetadata](_metadata_json)


def conversation_from_row(row: sqlite3.Row) -> Conversation:
    return Conversation(
        conversation_id=row["conversation_id"],
        tenant_id=row["tenant_id"],
        user_id=row["user_id"],
        channel=Channel(row["channel"]),
        status=ConversationStatus(row["status"]),
        created_at=from_micros(row["created_at"]),
        updated_at=from_micros(row["updated_at"]),
        last_sequence=row["last_sequence"],
        version=row["version"],
        session_id=row["session_id"],
        status_reason=row["status_reason"],
        state=conversation_state_from_dict(load_json(row["state"])),
        channel_metadata=channel_metadata_from_dict(load_json(row["channel_metadata"])),
    )


# ------------------------------------------------------------------ messages


def message_params(message: Message) -> Params:
    return {
        "conversation_id": message.conversation_id,
        "sequence": message.sequence,
        "tenant_id": message.tenant_id,
        "message_id": message.message_id,
        "role": message.role.value,
        "channel": message.channel.value,
        "user_id": message.user_id,
        "content": dump_json(content_to_dict(message.content)),
        "search_text": message_search_text(message),
        "created_at": to_micros(message.created_at),
        "delivery_status": message.delivery_status.value,
        "client_time": None if message.client_time is None else to_micros(message.client_time),
        "channel_metadata": _metadata_json(message.channel_metadata),
        "reply_to_message_id": message.reply_to_message_id,
        "fingerprint": message.fingerprint,
    }


def message_from_row(row: sqlite3.Row) -> Message:
    client_time = row["client_time"]
    return Message(
        message_id=row["message_id"],
        tenant_id=row["tenant_id"],
        conversation_id=row["conversation_id"],
        sequence=row["sequence"],
        role=MessageRole(row["role"]),
        channel=Channel(row["channel"]),
        user_id=row["user_id"],
        content=content_from_dict(load_json(row["content"])),
        created_at=from_micros(row["created_at"]),
        delivery_status=DeliveryStatus(row["delivery_status"]),
        client_time=None if client_time is None else from_micros(client_time),
        channel_metadata=channel_metadata_from_dict(load_json(row["channel_metadata"])),
        reply_to_message_id=row["reply_to_message_id"],
        fingerprint=row["fingerprint"],
    )


# ------------------------------------------------------------------- records


def record_params(record: IdempotencyRecord) -> Params:
    return {
        "tenant_id": record.tenant_id,
        "message_id": record.message_id,
        "fingerprint": record.fingerprint,
        "result": dump_json(send_result_to_dict(record.result)),
        "created_at": to_micros(record.created_at),
    }


def record_from_row(row: sqlite3.Row) -> IdempotencyRecord:
    return IdempotencyRecord(
        tenant_id=row["tenant_id"],
        message_id=row["message_id"],
        fingerprint=row["fingerprint"],
        result=send_result_from_dict(load_json(row["result"])),
        created_at=from_micros(row["created_at"]),
    )
