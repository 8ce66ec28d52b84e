"""The conversation's JSON columns (adapters/sqlite/rows.py) are encoded
once per state and channel metadata object, not once per write of the
conversation, and a changed state is still written as it is."""

from __future__ import annotations

from dataclasses import replace

from adapters.sqlite.rows import conversation_params, load_json, message_params
from chat_service.domain.conversation_codec import (
    channel_metadata_to_dict,
    conversation_state_to_dict,
)
from chat_service.domain.model import ChannelMetadata, ConversationState
from tests.builders import make_conversation, make_message


def test_unchanged_state_and_metadata_are_not_encoded_again() -> None:
    conversation = make_conversation(
        state=ConversationState(current_intent="greet", slots={"size": "L"}),
        channel_metadata=ChannelMetadata(thread_id="t-1"),
    )
    first = conversation_params(conversation)
    later = conversation_params(replace(conversation, version=conversation.version + 1))
    assert later["state"] is first["state"]  # the same text, not a new encode
    assert later["channel_metadata"] is first["channel_metadata"]


def test_a_new_state_is_written_as_it_is() -> None:
    conversation = make_conversation(state=ConversationState(current_intent="greet"))
    conversation_params(conversation)
    changed = replace(conversation, state=ConversationState(current_intent="order", slots={"n": 1}))
    written = load_json(conversation_params(changed)["state"])
    assert written == conversation_state_to_dict(changed.state)
    assert written["current_intent"] == "order"


def test_message_metadata_is_written_as_it_is() -> None:
    conversation = make_conversation()
    bare = make_message(conversation, 1)
    tagged = replace(bare, channel_metadata=ChannelMetadata(platform_user_id="u-9"))
    assert load_json(message_params(bare)["channel_metadata"]) == channel_metadata_to_dict(
        ChannelMetadata()
    )
    assert load_json(message_params(tagged)["channel_metadata"]) == channel_metadata_to_dict(
        tagged.channel_metadata
    )
