"""Reading and steering conversations, end to end: the real server over a real channel.

GetConversation, ListConversations (every filter, order and page walking),
ListMessages, UpdateConversationStatus (every transition and what each
status does to SendMessage), scopes, and SendMessage into a conversation
of another user or channel.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2
from google.protobuf import timestamp_pb2

from chat_service.auth import SCOPE_READ
from tests.e2e.requests import (
    Channel,
    ConversationStatus,
    TenantClient,
    client_for,
    failure,
    send_request,
    text_content,
)
from tests.support.grpc_client import RichError
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

C = resources_pb2
ACTIVE = C.CONVERSATION_STATUS_ACTIVE
COMPLETED = C.CONVERSATION_STATUS_COMPLETED
ABANDONED = C.CONVERSATION_STATUS_ABANDONED
ESCALATED = C.CONVERSATION_STATUS_ESCALATED
ERROR = C.CONVERSATION_STATUS_ERROR
STATUSES = (ACTIVE, COMPLETED, ABANDONED, ESCALATED, ERROR)
ASCENDING = pb.SORT_ORDER_ASCENDING
DESCENDING = pb.SORT_ORDER_DESCENDING


def status_name(status: ConversationStatus) -> str:
    return C.ConversationStatus.Name(status).removeprefix("CONVERSATION_STATUS_").lower()


def ids(conversations: Sequence[C.Conversation]) -> list[str]:
    return [conversation.conversation_id for conversation in conversations]


def assert_error(error: RichError, code: grpc.StatusCode, reason: str) -> None:
    assert (error.code, error.reason) == (code, reason), error
    assert error.domain


def assert_invalid(error: RichError, field: str) -> None:
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert error.fields == [field], error.field_violations


# ------------------------------------------------------------ the catalog

# Seven conversations of one tenant, in creation order: (user, channel, first
# message, status set afterwards). Read-only tests share them.
SEED: Sequence[tuple[str, Channel, str, ConversationStatus]] = (
    ("alice", C.CHANNEL_WEB, "Good to see the new catalog", ACTIVE),
    ("bob", C.CHANNEL_SMS, "Where is my ORDER 42?", ERROR),
    ("carol", C.CHANNEL_WEB, "\u00c9cole ferm\u00e9e demain", ACTIVE),
    ("alice", C.CHANNEL_WHATSAPP, "order status please", ACTIVE),
    ("dave", C.CHANNEL_WEB, "save 50% today", ESCALATED),
    ("erin", C.CHANNEL_SLACK, "thanks a lot", COMPLETED),
    ("alice", C.CHANNEL_WEB, "nothing to see here", ACTIVE),
)


@dataclass(frozen=True)
class Catalog:
    client: TenantClient
    # As GetConversation returns them once set up, in creation order.
    conversations: Sequence[C.Conversation]

    def ids(self, *indexes: int) -> list[str]:
        return [self.conversations[index].conversation_id for index in indexes]

    def created(self, index: int) -> timestamp_pb2.Timestamp:
        return self.conversations[index].create_time


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def catalog(
    service: ServiceProcess, module_stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> Catalog:
    client = client_for(service, module_stub, "catalog")
    conversation_ids = []
    for user, channel, text, status in SEED:  # one at a time: creation order matters
        sent = await client.send_text(text, user_id=user, channel=channel)
        if status != ACTIVE:
            await client.update_status(sent.conversation_id, status, "seeded")
        conversation_ids.append(sent.conversation_id)
    conversations = [await client.get(conversation_id) for conversation_id in conversation_ids]
    return Catalog(client, conversations)


async def walk(client: TenantClient, page_size: int, **filters: Any) -> list[list[str]]:
    """Every page of a ListConversations walk, as lists of ids."""
    pages, token = [], ""
    while True:
        page = await client.list_conversations(page_size=page_size, page_token=token, **filters)
        pages.append(ids(page.conversations))
        token = page.next_page_token
        if not token:
            return pages
        assert len(pages) < 100, "the walk does not end"


# ------------------------------------------------------------- GetConversation


async def test_get_conversation_shows_what_was_said_and_the_state_after_the_reply(
    client: TenantClient,
) -> None:
    before = time.time()
    first = await client.send(
        send_request(
            text_content("hello"),
            user_id="ada",
            session_id="session-7",
            channel_metadata=C.ChannelMetadata(platform_user_id="ada@web", thread_id="th-1"),
        )
    )
    after = time.time()

    conversation = await client.get(first.conversation_id)

    assert conversation.conversation_id == first.conversation_id
    assert (conversation.user_id, conversation.session_id) == ("ada", "session-7")
    assert conversation.channel == C.CHANNEL_WEB
    assert conversation.status == ACTIVE
    assert conversation.last_sequence == 1 + len(first.replies) == 2
    assert conversation.state == first.conversation_state
    assert conversation.state.current_intent == "greeting"
    assert conversation.channel_metadata.platform_user_id == "ada@web"
    assert conversation.channel_metadata.thread_id == "th-1"
    created = conversation.create_time.ToNanoseconds() / 1e9
    assert before - 1 <= created <= after + 1
    assert conversation.create_time.ToNanoseconds() <= conversation.update_time.ToNanoseconds()

    second = await client.send_text(
        "my name is Ada", user_id="ada", conversation_id=first.conversation_id
    )
    later = await client.get(first.conversation_id)

    assert later.last_sequence == 4
    assert later.state == second.conversation_state
    assert later.state.user_profile["name"] == "Ada"
    assert later.create_time == conversation.create_time
    assert later.update_time.ToNanoseconds() > conversation.update_time.ToNanoseconds()


async def test_get_conversation_errors(
    client: TenantClient, service: ServiceProcess, module_stub: Any
) -> None:
    sent = await client.send_text("hello")
    stranger = client_for(service, module_stub, "stranger")

    assert_invalid(await failure(client.get("")), "conversation_id")
    unknown = await failure(client.get("no-such-conversation"))
    assert_error(unknown, grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    # Another tenant's conversation does not exist, as far as the caller can tell.
    hidden = await failure(stranger.get(sent.conversation_id))
    assert_error(hidden, grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")


# ----------------------------------------------------------- ListConversations

FILTERS: Sequence[tuple[str, dict[str, Any], list[int]]] = (
    ("none", {}, [0, 1, 2, 3, 4, 5, 6]),
    ("status-active", {"status": ACTIVE}, [0, 2, 3, 6]),
    ("status-error", {"status": ERROR}, [1]),
    ("status-escalated", {"status": ESCALATED}, [4]),
    ("status-completed", {"status": COMPLETED}, [5]),
    ("status-abandoned", {"status": ABANDONED}, []),
    ("channel-web", {"channel": C.CHANNEL_WEB}, [0, 2, 4, 6]),
    ("channel-sms", {"channel": C.CHANNEL_SMS}, [1]),
    ("channel-voice", {"channel": C.CHANNEL_VOICE}, []),
    ("user", {"user_id": "alice"}, [0, 3, 6]),
    ("user-exact-match-only", {"user_id": "ali"}, []),
    ("user-unknown", {"user_id": "zoe"}, []),
    ("channel-and-user", {"channel": C.CHANNEL_WEB, "user_id": "alice"}, [0, 6]),
    ("status-and-channel", {"status": ACTIVE, "channel": C.CHANNEL_WEB}, [0, 2, 6]),
    ("search-case-insensitive", {"search_query": "oRdEr"}, [1, 3]),
    ("search-lowercase", {"search_query": "order 42"}, [1]),
    ("search-non-ascii-case-insensitive", {"search_query": "\u00c9COLE"}, [2]),
    ("search-percent-is-literal", {"search_query": "50%"}, [4]),
    ("search-underscore-is-literal", {"search_query": "_"}, []),
    ("search-no-match", {"search_query": "zebra"}, []),
    ("search-200-chars", {"search_query": "q" * 200}, []),
    ("search-and-channel", {"search_query": "ORDER", "channel": C.CHANNEL_WHATSAPP}, [3]),
)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [pytest.param(filters, expected, id=name) for name, filters, expected in FILTERS],
)
async def test_list_conversations_filters(
    catalog: Catalog, filters: dict[str, Any], expected: list[int]
) -> None:
    page = await catalog.client.list_conversations(**filters)

    # Newest first by default.
    assert ids(page.conversations) == catalog.ids(*reversed(expected))
    assert page.next_page_token == ""


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        pytest.param(2, None, [2, 3, 4, 5, 6], id="start-is-inclusive"),
        pytest.param(None, 2, [0, 1], id="end-is-exclusive"),
        pytest.param(2, 5, [2, 3, 4], id="start-and-end"),
        pytest.param(0, 1, [0], id="one"),
    ],
)
async def test_list_conversations_by_creation_time(
    catalog: Catalog, start: int | None, end: int | None, expected: list[int]
) -> None:
    filters: dict[str, Any] = {}
    if start is not None:
        filters["start_time"] = catalog.created(start)
    if end is not None:
        filters["end_time"] = catalog.created(end)

    page = await catalog.client.list_conversations(order=ASCENDING, **filters)

    assert ids(page.conversations) == catalog.ids(*expected)


async def test_list_conversations_orders_by_creation_time(catalog: Catalog) -> None:
    everyone = list(range(len(SEED)))
    ascending = await catalog.client.list_conversations(order=ASCENDING)
    descending = await catalog.client.list_conversations(order=DESCENDING)
    default = await catalog.client.list_conversations()

    assert ids(ascending.conversations) == catalog.ids(*everyone)
    assert ids(descending.conversations) == catalog.ids(*reversed(everyone))
    assert ids(default.conversations) == ids(descending.conversations)
    # What a list shows is what Get shows.
    assert list(ascending.conversations) == list(catalog.conversations)


@pytest.mark.parametrize(
    "order", [ASCENDING, DESCENDING, pb.SORT_ORDER_UNSPECIFIED], ids=["asc", "desc", "default"]
)
async def test_page_walk_returns_every_conversation_once_in_order(
    catalog: Catalog, order: int
) -> None:
    pages = await walk(catalog.client, 2, order=order)

    everyone = list(range(len(SEED)))
    expected = catalog.ids(*(everyone if order == ASCENDING else reversed(everyone)))
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    assert [conversation_id for page in pages for conversation_id in page] == expected


async def test_page_walk_keeps_the_filters(catalog: Catalog) -> None:
    pages = await walk(catalog.client, 1, channel=C.CHANNEL_WEB, order=ASCENDING)

    assert pages == [[conversation_id] for conversation_id in catalog.ids(0, 2, 4, 6)]


async def test_page_size_above_100_is_capped_and_0_means_20(client: TenantClient) -> None:
    hints = C.ProcessingHints(bypass_automation=True)  # no reply: cheaper to create
    for batch in range(0, 101, 25):
        await asyncio.gather(
            *(
                client.send_text("hi", user_id=f"user-{number}", processing_hints=hints)
                for number in range(batch, min(batch + 25, 101))
            )
        )

    first = await client.list_conversations(page_size=1000)
    rest = await client.list_conversations(page_size=1000, page_token=first.next_page_token)
    default = await client.list_conversations()

    assert len(first.conversations) == 100
    assert first.next_page_token
    assert len(rest.conversations) == 1
    assert rest.next_page_token == ""
    assert len(set(ids(first.conversations)) | set(ids(rest.conversations))) == 101
    assert len(default.conversations) == 20
    assert default.next_page_token


def _forged_token(body: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def _timestamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


# (id, request fields built from the catalog, the field named)
LIST_ERRORS: Sequence[tuple[str, Callable[[Catalog, str], dict[str, Any]], str]] = (
    ("negative-page-size", lambda cat, token: {"page_size": -1}, "page_size"),
    ("search-201-chars", lambda cat, token: {"search_query": "q" * 201}, "search_query"),
    ("user-id-256-chars", lambda cat, token: {"user_id": "u" * 256}, "user_id"),
    (
        "end-before-start",
        lambda cat, token: {"start_time": cat.created(3), "end_time": cat.created(1)},
        "end_time",
    ),
    (
        "end-equal-to-start",
        lambda cat, token: {"start_time": cat.created(3), "end_time": cat.created(3)},
        "end_time",
    ),
    (
        "start-after-year-9999",
        lambda cat, token: {"start_time": _timestamp(253_402_300_800)},
        "start_time",
    ),
    ("end-with-bad-nanos", lambda cat, token: {"end_time": _timestamp(0, -5)}, "end_time"),
    ("garbage-page-token", lambda cat, token: {"page_token": "garbage!"}, "page_token"),
    ("base64-but-not-json", lambda cat, token: {"page_token": "bm90IGpzb24"}, "page_token"),
    (
        "forged-page-token",
        lambda cat, token: {"page_token": _forged_token({"v": 1, "q": "x", "p": {}})},
        "page_token",
    ),
    (
        "page-token-with-other-status",
        lambda cat, token: {"page_token": token, "status": ACTIVE},
        "page_token",
    ),
    (
        "page-token-with-other-channel",
        lambda cat, token: {"page_token": token, "channel": C.CHANNEL_WEB},
        "page_token",
    ),
    (
        "page-token-with-other-order",
        lambda cat, token: {"page_token": token, "order": ASCENDING},
        "page_token",
    ),
    (
        "page-token-with-other-search",
        lambda cat, token: {"page_token": token, "search_query": "order"},
        "page_token",
    ),
    # A newer client's enum value must not silently widen the filter to "any".
    ("unknown-status", lambda cat, token: {"status": 99}, "status"),
    ("unknown-channel", lambda cat, token: {"channel": 99}, "channel"),
    ("unknown-order", lambda cat, token: {"order": 99}, "order"),
)


@pytest.mark.parametrize(
    ("build", "field"),
    [pytest.param(build, field, id=name) for name, build, field in LIST_ERRORS],
)
async def test_list_conversations_refuses_bad_input(
    catalog: Catalog, build: Callable[[Catalog, str], dict[str, Any]], field: str
) -> None:
    # A token issued for the default request: no filters, newest first.
    token = (await catalog.client.list_conversations(page_size=2)).next_page_token
    assert token

    error = await failure(
        catalog.client.list_conversations(**({"page_size": 2} | build(catalog, token)))
    )

    assert_invalid(error, field)


async def test_a_list_messages_token_is_no_list_conversations_token(catalog: Catalog) -> None:
    conversation_id = catalog.conversations[0].conversation_id
    messages = await catalog.client.list_messages(conversation_id, page_size=1)
    assert messages.next_page_token

    error = await failure(catalog.client.list_conversations(page_token=messages.next_page_token))

    assert_invalid(error, "page_token")


# ----------------------------------------------------------------- ListMessages


@pytest_asyncio.fixture(loop_scope="module")
async def chat(client: TenantClient) -> str:
    """A conversation of three exchanges: six messages, user and bot in turn."""
    sent = await client.send_text("first", message_id="in-1")
    for number in (2, 3):
        await client.send_text(
            f"message {number}", message_id=f"in-{number}", conversation_id=sent.conversation_id
        )
    return sent.conversation_id


async def test_list_messages_in_both_orders(client: TenantClient, chat: str) -> None:
    default = await client.list_messages(chat)
    ascending = await client.list_messages(chat, order=ASCENDING)
    descending = await client.list_messages(chat, order=DESCENDING)

    assert [m.sequence for m in default.messages] == [1, 2, 3, 4, 5, 6]
    assert list(ascending.messages) == list(default.messages)
    assert list(descending.messages) == list(reversed(default.messages))
    assert default.next_page_token == ""
    user, bot = C.MESSAGE_ROLE_USER, C.MESSAGE_ROLE_BOT
    assert [m.role for m in default.messages] == [user, bot] * 3
    assert [m.message_id for m in default.messages[::2]] == ["in-1", "in-2", "in-3"]
    assert [m.reply_to_message_id for m in default.messages[1::2]] == ["in-1", "in-2", "in-3"]
    assert [m.content.text for m in default.messages[::2]] == ["first", "message 2", "message 3"]
    assert {m.conversation_id for m in default.messages} == {chat}


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        pytest.param(ASCENDING, [[1, 2, 3, 4], [5, 6]], id="asc"),
        pytest.param(DESCENDING, [[6, 5, 4, 3], [2, 1]], id="desc"),
    ],
)
async def test_list_messages_pages(
    client: TenantClient, chat: str, order: int, expected: list[list[int]]
) -> None:
    pages, token = [], ""
    while True:
        page = await client.list_messages(chat, page_size=4, page_token=token, order=order)
        pages.append([m.sequence for m in page.messages])
        token = page.next_page_token
        if not token:
            break

    assert pages == expected


async def test_list_messages_errors(
    client: TenantClient, chat: str, service: ServiceProcess, module_stub: Any
) -> None:
    token = (await client.list_messages(chat, page_size=2)).next_page_token
    other = await client.send_text("another chat")
    stranger = client_for(service, module_stub, "stranger")

    unknown = await failure(client.list_messages("no-such-conversation"))
    hidden = await failure(stranger.list_messages(chat))

    assert_error(unknown, grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    assert_error(hidden, grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    assert_invalid(await failure(client.list_messages("")), "conversation_id")
    assert_invalid(await failure(client.list_messages(chat, page_size=-1)), "page_size")
    assert_invalid(await failure(client.list_messages(chat, page_token="garbage!")), "page_token")
    assert_invalid(
        await failure(client.list_messages(chat, page_token=token, order=DESCENDING)),
        "page_token",
    )
    assert_invalid(
        await failure(client.list_messages(other.conversation_id, page_token=token)),
        "page_token",
    )


# ------------------------------------------------------ UpdateConversationStatus

# resources.proto, ConversationStatus: the allowed changes.
ALLOWED = {
    ACTIVE: {COMPLETED, ABANDONED, ESCALATED, ERROR},
    ESCALATED: {ACTIVE, COMPLETED, ABANDONED},
    ERROR: {ACTIVE, COMPLETED, ABANDONED},
    COMPLETED: set(),
    ABANDONED: set(),
}


@pytest.mark.parametrize(
    ("source", "target"),
    [
        pytest.param(source, target, id=f"{status_name(source)}-to-{status_name(target)}")
        for source in STATUSES
        for target in STATUSES
    ],
)
async def test_status_transitions(
    client: TenantClient, source: ConversationStatus, target: ConversationStatus
) -> None:
    conversation_id = (await client.send_text("just looking")).conversation_id
    if source != ACTIVE:
        await client.update_status(conversation_id, source, "set up")
    before = await client.get(conversation_id)

    if target == source:  # a no-op that succeeds
        updated = await client.update_status(conversation_id, target, "again")
        assert updated == before
        assert await client.get(conversation_id) == before
    elif target in ALLOWED[source]:
        updated = await client.update_status(conversation_id, target, "moved on")
        assert (updated.status, updated.status_reason) == (target, "moved on")
        assert updated.update_time.ToNanoseconds() > before.update_time.ToNanoseconds()
        assert await client.get(conversation_id) == updated
    else:
        error = await failure(client.update_status(conversation_id, target, "not allowed"))
        assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATUS_TRANSITION")
        assert await client.get(conversation_id) == before


async def test_an_escalated_conversation_gets_no_bot_reply_until_active_again(
    client: TenantClient,
) -> None:
    first = await client.send_text("hello")
    conversation_id = first.conversation_id

    escalated = await client.update_status(conversation_id, ESCALATED, "customer asked")
    quiet = await client.send_text("anyone there?", conversation_id=conversation_id)
    await client.update_status(conversation_id, ACTIVE, "back to the bot")
    answered = await client.send_text("still there?", conversation_id=conversation_id)

    assert (escalated.status, escalated.status_reason) == (ESCALATED, "customer asked")
    # Escalated: the message is stored, the bot stays silent.
    assert quiet.processing_metadata.engine == "none"
    assert not quiet.replies
    assert not quiet.HasField("response")
    assert quiet.processing_metadata.sequence == 3
    # Active again: the bot answers.
    assert answered.processing_metadata.engine == "builtin"
    assert answered.replies
    assert answered.processing_metadata.sequence == 4
    messages = (await client.list_messages(conversation_id)).messages
    assert [(m.sequence, m.role) for m in messages] == [
        (1, C.MESSAGE_ROLE_USER),
        (2, C.MESSAGE_ROLE_BOT),
        (3, C.MESSAGE_ROLE_USER),
        (4, C.MESSAGE_ROLE_USER),
        (5, C.MESSAGE_ROLE_BOT),
    ]
    assert messages[2].content.text == "anyone there?"


async def test_a_conversation_in_error_still_takes_messages(client: TenantClient) -> None:
    conversation_id = (await client.send_text("hello")).conversation_id
    await client.update_status(conversation_id, ERROR, "needs a look")

    sent = await client.send_text("is it fixed?", conversation_id=conversation_id)

    assert sent.processing_metadata.sequence == 3
    assert (await client.get(conversation_id)).status == ERROR


@pytest.mark.parametrize("closed", [COMPLETED, ABANDONED], ids=status_name)
async def test_a_closed_conversation_refuses_messages(
    client: TenantClient, closed: ConversationStatus
) -> None:
    conversation_id = (await client.send_text("hello")).conversation_id
    await client.update_status(conversation_id, closed, "done")

    error = await failure(client.send_text("one more thing", conversation_id=conversation_id))

    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "CONVERSATION_CLOSED")
    assert (await client.get(conversation_id)).last_sequence == 2


async def test_a_session_message_racing_a_close_goes_to_one_conversation_or_the_next(
    client: TenantClient,
) -> None:
    # A session's conversation closes while its next message is on the way:
    # the message lands in it (before the close) or in a new conversation
    # (after it), never CONVERSATION_CLOSED.
    for attempt in range(8):
        session = f"racing-{attempt}"
        first = await client.send_text("hi", session_id=session)

        _, sent = await asyncio.gather(
            client.update_status(first.conversation_id, COMPLETED),
            client.send_text("still there?", session_id=session),
        )

        if sent.conversation_id == first.conversation_id:
            assert sent.processing_metadata.sequence == 3
        else:
            assert sent.processing_metadata.sequence == 1
            assert (await client.get(sent.conversation_id)).session_id == session
        assert (await client.get(first.conversation_id)).status == COMPLETED


async def test_update_status_refuses_bad_input(
    client: TenantClient, service: ServiceProcess, module_stub: Any
) -> None:
    conversation_id = (await client.send_text("hello")).conversation_id
    stranger = client_for(service, module_stub, "stranger")

    for status in (C.CONVERSATION_STATUS_UNSPECIFIED, 99):
        error = await failure(client.update_status(conversation_id, status))  # type: ignore[arg-type]
        assert_invalid(error, "status")
    assert_invalid(await failure(client.update_status("", ESCALATED)), "conversation_id")
    assert_invalid(
        await failure(client.update_status(conversation_id, ESCALATED, "r" * 501)), "reason"
    )
    unknown = await failure(client.update_status("no-such-conversation", ESCALATED))
    assert_error(unknown, grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    hidden = await failure(stranger.update_status(conversation_id, ESCALATED))
    assert_error(hidden, grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    assert (await client.get(conversation_id)).status == ACTIVE

    updated = await client.update_status(conversation_id, ESCALATED, "r" * 500)
    assert updated.status_reason == "r" * 500


# ---------------------------------------------------------------------- scopes


async def test_a_read_only_token_can_read_but_not_write(
    client: TenantClient, service: ServiceProcess
) -> None:
    conversation_id = (await client.send_text("hello")).conversation_id
    reader = client.with_scopes(service, SCOPE_READ)

    listed = await reader.list_conversations()
    assert ids(listed.conversations) == [conversation_id]
    assert (await reader.get(conversation_id)).status == ACTIVE
    assert len((await reader.list_messages(conversation_id)).messages) == 2

    refused_update = await failure(reader.update_status(conversation_id, ESCALATED))
    refused_send = await failure(reader.send_text("hi", conversation_id=conversation_id))
    refused_new = await failure(reader.send_text("hi"))

    for error in (refused_update, refused_send, refused_new):
        assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "INSUFFICIENT_SCOPE")
    after = await client.get(conversation_id)
    assert (after.status, after.last_sequence) == (ACTIVE, 2)
    assert ids((await client.list_conversations()).conversations) == [conversation_id]


# ------------------------------------------------------ SendMessage into a chat


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"user_id": "mallory"}, id="other-user"),
        pytest.param({"channel": C.CHANNEL_SMS}, id="other-channel"),
        pytest.param({"user_id": "mallory", "channel": C.CHANNEL_SMS}, id="both"),
    ],
)
async def test_sending_into_a_conversation_of_another_user_or_channel(
    client: TenantClient, other: dict[str, Any]
) -> None:
    conversation_id = (await client.send_text("hello", user_id="alice")).conversation_id
    fields: dict[str, Any] = {"user_id": "alice", "channel": C.CHANNEL_WEB} | other

    error = await failure(client.send_text("me too", conversation_id=conversation_id, **fields))

    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "CONVERSATION_MISMATCH")
    assert (await client.get(conversation_id)).last_sequence == 2


async def test_sending_into_an_unknown_or_foreign_conversation_is_not_found(
    client: TenantClient, service: ServiceProcess, module_stub: Any
) -> None:
    conversation_id = (await client.send_text("hello")).conversation_id
    stranger = client_for(service, module_stub, "stranger")

    unknown = await failure(client.send_text("hi", conversation_id="no-such-conversation"))
    foreign = await failure(stranger.send_text("hi", conversation_id=conversation_id))

    assert_error(unknown, grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    assert_error(foreign, grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    assert not (await stranger.list_conversations()).conversations
    assert (await client.get(conversation_id)).last_sequence == 2
