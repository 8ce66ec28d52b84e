"""What MongoDB refuses of a caller's input, on the real store (nx-27017).

MongoDB refuses a regular expression holding a NUL byte, field names with
NUL, documents past 16 MiB, invalid patterns: the store must never send
the first, and must report the others as StoreRejected (the caller's fault:
INVALID_ARGUMENT or RESOURCE_EXHAUSTED), never as a bare driver error that
becomes INTERNAL. nx-27017 accepts a NUL inside a $regex, so the first is
checked on the commands the store sends.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from bson.errors import InvalidDocument
from pymongo import monitoring
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from adapters.mongo import MongoStore
from adapters.mongo.errors import translated_errors
from adapters.mongo.filters import literal_pattern
from chat_service.domain.model import ChannelMetadata, ConversationState
from chat_service.ports import ConversationQuery, StoreRejected
from tests.builders import TENANT, create_change, make_conversation, make_message


class Regexes(monitoring.CommandListener):
    """Every $regex pattern in the commands sent."""

    def __init__(self) -> None:
        self.patterns: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self._collect(event.command)

    def _collect(self, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "$regex":
                    self.patterns.append(item.pattern if hasattr(item, "pattern") else item)
                else:
                    self._collect(item)
        elif isinstance(value, list):
            for item in value:
                self._collect(item)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def regexes(mongo_uri: str) -> AsyncIterator[tuple[MongoStore, Regexes]]:
    listener = Regexes()
    store = await MongoStore.open(mongo_uri, client_options={"event_listeners": [listener]})
    yield store, listener
    await store.close()


@pytest.fixture
async def store(mongo_uri: str) -> AsyncIterator[MongoStore]:
    opened = await MongoStore.open(mongo_uri)
    yield opened
    await opened.close()


async def test_a_search_never_sends_a_nul_inside_a_regex(
    regexes: tuple[MongoStore, Regexes],
) -> None:
    store, listener = regexes
    conversation = make_conversation()
    await store.write(create_change(conversation, [make_message(conversation, 1, "hi")]))

    for text in ("a\x00b", "\x00", "\\\x00("):
        await store.list_conversations(TENANT, ConversationQuery(search_query=text), limit=5)

    assert listener.patterns
    assert not [pattern for pattern in listener.patterns if "\x00" in pattern]


@pytest.mark.parametrize(
    "text",
    ["a\x00b", "\x00", "x00", "\\x00", "\\\x00", "a+b (c) [d] ^$ .* \\ {2} | #~&-", "caf\u00e9\t"],
)
def test_a_literal_pattern_matches_exactly_its_text_and_holds_no_nul(text: str) -> None:
    pattern = literal_pattern(text)

    assert "\x00" not in pattern
    assert re.search(pattern, f"<<{text}>>")
    assert re.fullmatch(pattern, text)
    assert not re.search(pattern, text[:-1])


async def test_a_field_name_the_driver_cannot_encode_is_rejected(store: MongoStore) -> None:
    conversation = make_conversation()
    message = make_message(conversation, 1, "hi")
    message = replace(message, channel_metadata=ChannelMetadata(additional_data={"a\x00b": 1}))

    with pytest.raises(StoreRejected) as raised:
        await store.write(create_change(conversation, [message]))

    assert not raised.value.too_large
    assert await store.get_conversation(TENANT, conversation.conversation_id) is None
    assert await store.get_message(TENANT, message.message_id) is None


async def test_a_document_past_16_mib_is_rejected_as_too_large(store: MongoStore) -> None:
    # A bot engine's state, say: nothing a caller sends directly can be so big.
    conversation = make_conversation(
        state=ConversationState(slots={"notes": "x" * (17 * 1024 * 1024)})
    )
    message = make_message(conversation, 1, "hi")

    with pytest.raises(StoreRejected) as raised:
        await store.write(create_change(conversation, [message]))

    assert raised.value.too_large
    assert await store.get_conversation(TENANT, conversation.conversation_id) is None
    assert await store.get_message(TENANT, message.message_id) is None


@pytest.mark.parametrize(
    ("error", "too_large"),
    [
        (OperationFailure("Regular expression is invalid", code=51091), False),
        (OperationFailure("key too long", code=17280), False),
        (OperationFailure("object to insert too large", code=10334), True),
        (OperationFailure("Resulting document after update is larger", code=17419), True),
        (BulkWriteError({"writeErrors": [{"index": 0, "code": 10334, "errmsg": "big"}]}), True),
        (InvalidDocument("Key names must not contain the NULL byte"), False),
    ],
    ids=["bad regex", "key too long", "too large", "update too large", "bulk", "driver"],
)
def test_the_callers_faults_become_store_rejected(error: Exception, too_large: bool) -> None:
    with pytest.raises(StoreRejected) as raised, translated_errors("test"):
        raise error

    assert raised.value.too_large is too_large
    assert raised.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        OperationFailure("bad query", code=2),
        DuplicateKeyError("E11000", code=11000),
        BulkWriteError(
            {"writeErrors": [{"code": 10334, "errmsg": "big"}, {"code": 11000, "errmsg": "dup"}]}
        ),
    ],
    ids=["our bug", "duplicate key", "mixed bulk"],
)
def test_other_driver_errors_pass_through(error: Exception) -> None:
    with pytest.raises(type(error)), translated_errors("test"):
        raise error
