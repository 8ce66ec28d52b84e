"""Validation encodes additional_data only to measure it, so a message
without any (most of them) is not encoded at all; and a message already in
its normal form is given back as it is, not rebuilt."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat_service.domain import validation
from chat_service.domain.content import MessageContent, QuickReply
from chat_service.domain.enums import MessageType
from chat_service.domain.errors import InvalidArgument
from chat_service.domain.model import ChannelMetadata
from tests.unit.test_validation import inbound


def test_a_message_without_additional_data_is_not_encoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("encoded")

    monkeypatch.setattr(json, "dumps", refuse)  # validation calls json.dumps
    message = inbound(channel_metadata=ChannelMetadata(thread_id="t-1"))
    assert validation.validate_inbound(message) == message


def test_additional_data_is_still_measured() -> None:
    blob = {"blob": "x" * (validation.MAX_ADDITIONAL_DATA_BYTES)}
    assert len(json.dumps(blob)) > validation.MAX_ADDITIONAL_DATA_BYTES
    with pytest.raises(InvalidArgument):
        validation.validate_inbound(inbound(channel_metadata=ChannelMetadata(additional_data=blob)))


def test_a_message_in_normal_form_is_given_back_as_it_is() -> None:
    message = inbound(MessageContent.of_text("Hello there", language="en"))
    assert validation.validate_inbound(message) is message


def test_a_message_not_in_normal_form_is_still_normalized() -> None:
    content = MessageContent(
        MessageType.QUICK_REPLY,
        text="  Pick one ",
        quick_replies=(QuickReply("Red", "red", content_type=""), QuickReply("Blue", "blue")),
    )
    normal = validation.validate_inbound(inbound(content)).content
    assert (normal.text, normal.language) == ("Pick one", "en")
    assert [reply.content_type for reply in normal.quick_replies] == ["text", "text"]
