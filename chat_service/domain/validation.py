"""The rules of an end user's message and of a bot reply, as the contract's
comments state them.

proto/chatbot/chat/v1/{chat_service,content,resources}.proto document every
rule; this module is where they are applied, on every inbound path
(SendMessage, streams, webhooks: validate_inbound) and on the bot engine's
replies (validate_content). The rules of the content itself are in
content_checks.py, its limits in content_limits.py; the rules of the
request around it (ids, channel, channel metadata) are here.

Validation reports every broken rule at once, each under its path in the
request (field_checks.py). A valid message comes back normalized (see
normalize_text); nothing else is rewritten.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

from chat_service.domain.channel_rules import rules_for
from chat_service.domain.content import MessageContent
from chat_service.domain.content_checks import check_content, type_names
from chat_service.domain.field_checks import FieldChecker
from chat_service.domain.identifiers import (
    MAX_MESSAGE_ID_LENGTH,
    MAX_SESSION_ID_LENGTH,
    MAX_USER_ID_LENGTH,
    MESSAGE_ID_PATTERN,
    conversation_id_problem,
    has_control,
)
from chat_service.domain.model import ChannelMetadata, InboundMessage, JsonValue
from chat_service.domain.text import quote
from chat_service.domain.webhooks import reserved_metadata_key

MAX_METADATA_FIELD_LENGTH = 255
MAX_ADDITIONAL_DATA_BYTES = 16 * 1024  # compact JSON, UTF-8
MAX_ADDITIONAL_DATA_DEPTH = 8  # additional_data itself is level 1

_METADATA_STRING_FIELDS = ("platform_message_id", "platform_user_id", "thread_id", "workspace_id")


def validate_inbound(msg: InboundMessage, *, field_prefix: str = "") -> InboundMessage:
    """Check an end user's message against every rule of SendMessageRequest.

    Returns the message with its content normalized; raises InvalidArgument
    naming every violation, each field as `field_prefix` + its path (the
    prefix is used verbatim, e.g. "message.").
    """
    check = FieldChecker(field_prefix)
    if msg.conversation_id:
        problem = conversation_id_problem(msg.conversation_id)
        if problem:
            check.fail("conversation_id", problem)
    if msg.message_id:
        check.length("message_id", msg.message_id, maximum=MAX_MESSAGE_ID_LENGTH)
        if not MESSAGE_ID_PATTERN.fullmatch(msg.message_id):
            check.fail("message_id", "must contain only letters, digits and . _ : @ -")
    check.identifier("user_id", msg.user_id, required=True, maximum=MAX_USER_ID_LENGTH)
    check.identifier("session_id", msg.session_id, maximum=MAX_SESSION_ID_LENGTH)
    if msg.channel is None:
        check.fail("channel", "is required")
    content = check_content(check.nested("content."), msg.content)
    if msg.channel is not None and msg.content.type is not None:
        rules = rules_for(msg.channel)
        if msg.content.type not in rules.inbound_types:
            channel = msg.channel.value
            check.fail(
                "content.type",
                f"{channel} users cannot send {msg.content.type.name} messages;"
                f" {channel} accepts {type_names(rules.inbound_types)}",
            )
    _check_channel_metadata(check.nested("channel_metadata."), msg.channel_metadata)
    if not msg.from_platform:
        reserved = reserved_metadata_key(msg.channel_metadata.additional_data)
        if reserved is not None:
            check.fail(
                "channel_metadata.additional_data",
                f"the key {quote(reserved)} is reserved for platform webhooks",
            )
    # processing_hints: every value its types allow is valid.
    check.raise_if_any()
    return msg if content is msg.content else dataclasses.replace(msg, content=content)


def validate_content(content: MessageContent, *, field_prefix: str) -> MessageContent:
    """Check one MessageContent (an inbound one, or a bot engine's reply).

    Fields are named `field_prefix` + their path inside the content, e.g.
    "response_contents[0]." + "quick_replies[1].title". Returns the content
    normalized; raises InvalidArgument naming every violation.
    """
    check = FieldChecker(field_prefix)
    normalized = check_content(check, content)
    check.raise_if_any()
    return normalized


# ---------------------------------------------------------------- metadata


def _check_channel_metadata(check: FieldChecker, metadata: ChannelMetadata) -> None:
    for field in _METADATA_STRING_FIELDS:
        check.identifier(field, getattr(metadata, field), maximum=MAX_METADATA_FIELD_LENGTH)
    problem = _additional_data_problem(metadata.additional_data)
    if problem:
        check.fail("additional_data", problem)


def _additional_data_problem(data: Mapping[str, JsonValue]) -> str | None:
    if not data:
        return None  # most messages carry none: nothing to encode to measure
    # Depth first: it bounds the recursion the serializer does next.
    depth = _depth(data, MAX_ADDITIONAL_DATA_DEPTH + 1)
    if depth > MAX_ADDITIONAL_DATA_DEPTH:
        return f"must be nested at most {MAX_ADDITIONAL_DATA_DEPTH} levels deep"
    # Keys become field names in MongoDB, where NUL is refused outright.
    bad_key = _control_key(data)
    if bad_key is not None:
        return f"keys must not contain control characters, got {quote(bad_key)}"
    try:
        encoded = json.dumps(
            data, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
        ).encode("utf-8")
    except (TypeError, ValueError) as error:
        return f"must be JSON-serializable: {error}"
    if len(encoded) > MAX_ADDITIONAL_DATA_BYTES:
        return f"must be at most {MAX_ADDITIONAL_DATA_BYTES} bytes as JSON, got {len(encoded)}"
    return None


def _control_key(value: object) -> str | None:
    """The first object key in `value` holding a control character (depth
    already bounded by the caller)."""
    if isinstance(value, Mapping):
        for key, child in value.items():
            if has_control(str(key)):
                return str(key)
            if (found := _control_key(child)) is not None:
                return found
    elif isinstance(value, Sequence) and not isinstance(value, str):
        for child in value:
            if (found := _control_key(child)) is not None:
                return found
    return None


def _depth(value: object, cap: int) -> int:
    """Levels of objects and lists in `value` (a scalar is 0), counted up to `cap`."""
    if isinstance(value, str) or not isinstance(value, Mapping | Sequence):
        return 0
    if cap <= 1:
        return 1
    children = value.values() if isinstance(value, Mapping) else value
    return 1 + max((_depth(child, cap - 1) for child in children), default=0)


def _json_default(value: object) -> object:
    # Struct values arrive as any Mapping or Sequence, not only dict and list.
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")
