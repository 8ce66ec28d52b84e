"""Oversized and odd input of every RPC, end to end over a real channel.

Whatever a caller sends within gRPC's message limit (4 MiB, the server's
grpc.max_receive_message_length; past it gRPC itself answers
RESOURCE_EXHAUSTED), the answer is INVALID_ARGUMENT naming the field, in a
status small enough for gRPC's trailers (8 KiB by default: a bigger one
reaches the client as RESOURCE_EXHAUSTED with no details). Then: control
characters in ids and search strings, search by either Unicode composition,
and CSV exports that cannot run as spreadsheet formulas.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import content_pb2, resources_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]

from tests.e2e.requests import (
    TenantClient,
    card,
    carousel_content,
    location_content,
    media_content,
    quick_reply,
    quick_reply_content,
    send_request,
    text_content,
)
from tests.support.grpc_client import RichError, rich_error
from tests.support.streams import StreamClient

# Refused or decided before the store is touched: the MongoDB pass of
# `make test` leaves this module out (see the marker in pyproject.toml).
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.store_independent]

T = content_pb2
MB = 1 << 20
BIG = "x" * MB
# What a status's trailers may take: well under gRPC's 8 KiB default.
TRAILER_LIMIT = 6 * 1024


async def refused(call: Awaitable[object]) -> RichError:
    """The call's INVALID_ARGUMENT, checked to fit in small trailers."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    trailers: Any = error.trailing_metadata() or ()
    size = sum(len(key) + len(value) for key, value in trailers) + len(error.details() or "")
    assert size < TRAILER_LIMIT, size
    return rich_error(error)


# ---------------------------------------------------- SendMessage, 1 MiB fields

Mutation = Callable[[pb.SendMessageRequest], None]


def content(value: content_pb2.MessageContent) -> Mutation:
    return lambda request: request.content.CopyFrom(value)


def phone(payload: str) -> content_pb2.Button:
    return content_pb2.Button(type=T.BUTTON_TYPE_PHONE, title="Call us", payload=payload)


def metadata(name: str, value: str) -> Mutation:
    return lambda request: setattr(request.channel_metadata, name, value)


def additional_data(data: dict[str, Any]) -> Mutation:
    struct = struct_pb2.Struct()
    struct.update(data)
    return lambda request: request.channel_metadata.additional_data.CopyFrom(struct)


def top(name: str, value: str) -> Mutation:
    return lambda request: setattr(request, name, value)


HUGE_SEND_FIELDS: list[tuple[str, Mutation]] = [
    ("content.language", content(text_content("hi", language=BIG))),
    ("content.media.type", content(media_content(T.MESSAGE_TYPE_IMAGE, BIG))),
    (
        "content.quick_replies[0].content_type",
        content(quick_reply_content(quick_reply(content_type=BIG))),
    ),
    ("content.buttons[0].payload", content(text_content("hi", buttons=[phone(BIG)]))),
    ("content.text", content(text_content(BIG))),
    ("message_id", top("message_id", BIG)),
    ("conversation_id", top("conversation_id", BIG)),
    ("user_id", top("user_id", BIG)),
    ("session_id", top("session_id", BIG)),
    ("content.media.url", content(media_content(url="https://cdn.example.com/" + BIG))),
    ("content.media.alt_text", content(media_content(alt_text=BIG))),
    ("content.media.thumbnail_url", content(media_content(thumbnail_url=BIG))),
    ("content.location.address", content(location_content(address=BIG))),
    ("content.quick_replies[0].title", content(quick_reply_content(quick_reply(title=BIG)))),
    ("content.quick_replies[0].payload", content(quick_reply_content(quick_reply(payload=BIG)))),
    (
        "content.buttons[0].title",
        content(
            text_content(
                "hi",
                buttons=[content_pb2.Button(type=T.BUTTON_TYPE_POSTBACK, title=BIG, payload="p")],
            )
        ),
    ),
    (
        "content.buttons[0].url",
        content(
            text_content(
                "hi",
                buttons=[content_pb2.Button(type=T.BUTTON_TYPE_URL, title="Open", url=BIG)],
            )
        ),
    ),
    ("content.cards[0].title", content(carousel_content(card(title=BIG)))),
    ("content.cards[0].subtitle", content(carousel_content(card(subtitle=BIG)))),
    ("content.cards[0].image_url", content(carousel_content(card(image_url=BIG)))),
    (
        "content.cards[0].buttons[0].payload",
        content(carousel_content(card(buttons=[phone(BIG)]))),
    ),
    *(
        (f"channel_metadata.{name}", metadata(name, BIG))
        for name in ("platform_message_id", "platform_user_id", "thread_id", "workspace_id")
    ),
    ("channel_metadata.additional_data", additional_data({"k": BIG})),
    ("channel_metadata.additional_data", additional_data({"\x00" + BIG: 1})),
]


@pytest.mark.parametrize(
    ("field", "mutate"),
    [
        pytest.param(field, mutate, id=f"{i}-{field}")
        for i, (field, mutate) in enumerate(HUGE_SEND_FIELDS)
    ],
)
async def test_a_one_mib_field_is_refused_by_name_in_a_small_status(
    client: TenantClient, field: str, mutate: Mutation
) -> None:
    request = send_request()
    mutate(request)

    error = await refused(client.send(request))

    assert error.fields == [field], error.field_violations
    assert not (await client.list_conversations()).conversations


async def test_a_request_past_4_mib_is_grpcs_resource_exhausted(client: TenantClient) -> None:
    # The server's grpc.max_receive_message_length: gRPC itself refuses the
    # message before any handler runs; the service carries on.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.send(send_request(text_content("x" * (4 * MB + 1))))

    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await client.send(send_request())).processing_metadata.sequence == 1


HUGE_LISTS: list[tuple[str, content_pb2.MessageContent]] = [
    (
        "content.quick_replies",
        quick_reply_content(*[quick_reply(title="") for _ in range(100_000)]),
    ),
    ("content.buttons", text_content("hi", buttons=[content_pb2.Button()] * 200_000)),
    ("content.cards", carousel_content(*[card(title="", buttons=[]) for _ in range(50_000)])),
    (
        "content.cards[0].buttons",
        carousel_content(card(buttons=[content_pb2.Button()] * 200_000)),
    ),
]


@pytest.mark.parametrize(("field", "value"), HUGE_LISTS, ids=[field for field, _ in HUGE_LISTS])
async def test_a_huge_list_is_refused_by_name_in_a_small_status(
    client: TenantClient, field: str, value: content_pb2.MessageContent
) -> None:
    error = await refused(client.send(send_request(value)))

    assert field in error.fields


# ------------------------------------------------------------------ other RPCs


async def test_one_mib_fields_of_the_reading_and_status_rpcs(client: TenantClient) -> None:
    stub, auth = client.stub, client.metadata
    cases: list[tuple[str, Awaitable[object]]] = [
        (
            "conversation_id",
            stub.GetConversation(pb.GetConversationRequest(conversation_id=BIG), metadata=auth),
        ),
        (
            "user_id",
            stub.ListConversations(pb.ListConversationsRequest(user_id=BIG), metadata=auth),
        ),
        (
            "search_query",
            stub.ListConversations(pb.ListConversationsRequest(search_query=BIG), metadata=auth),
        ),
        (
            "page_token",
            stub.ListConversations(pb.ListConversationsRequest(page_token=BIG), metadata=auth),
        ),
        (
            "conversation_id",
            stub.ListMessages(pb.ListMessagesRequest(conversation_id=BIG), metadata=auth),
        ),
        (
            "page_token",
            stub.ListMessages(
                pb.ListMessagesRequest(conversation_id="c-1", page_token=BIG), metadata=auth
            ),
        ),
        (
            "conversation_id",
            stub.UpdateConversationStatus(
                pb.UpdateConversationStatusRequest(
                    conversation_id=BIG, status=resources_pb2.CONVERSATION_STATUS_ACTIVE
                ),
                metadata=auth,
            ),
        ),
        (
            "reason",
            stub.UpdateConversationStatus(
                pb.UpdateConversationStatusRequest(
                    conversation_id="c-1",
                    status=resources_pb2.CONVERSATION_STATUS_ACTIVE,
                    reason=BIG,
                ),
                metadata=auth,
            ),
        ),
    ]
    for field, call in cases:
        error = await refused(call)
        assert error.fields == [field], (field, error.field_violations)


async def first_response(responses: Any) -> object:
    async for response in responses:
        return response
    return None


async def test_one_mib_fields_of_the_streaming_rpcs(client: TenantClient) -> None:
    stub, auth = client.stub, client.metadata
    export = stub.ExportConversation(
        pb.ExportConversationRequest(conversation_id=BIG, format=pb.EXPORT_FORMAT_CSV),
        metadata=auth,
    )
    assert (await refused(first_response(export))).fields == ["conversation_id"]

    watch = stub.WatchConversations(pb.WatchConversationsRequest(resume_token=BIG), metadata=auth)
    assert (await refused(first_response(watch))).fields == ["resume_token"]

    # A million unknown channel numbers: one violation each would be megabytes.
    unknown: Any = [99] * MB
    watch = stub.WatchConversations(pb.WatchConversationsRequest(channels=unknown), metadata=auth)
    error = await refused(first_response(watch))
    assert error.fields[0] == "channels[0]"


async def test_a_stream_refuses_a_huge_open_field_by_name(client: TenantClient) -> None:
    stream = StreamClient(client.stub, client.metadata)
    stream.send(open=pb.StreamOpen(user_id=BIG, channel=resources_pb2.CHANNEL_WEB))

    _, error = await stream.until_error()

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert rich_error(error).fields == ["open.user_id"]


async def test_a_stream_answers_a_huge_message_field_with_a_small_error_frame(
    client: TenantClient,
) -> None:
    stream = StreamClient(client.stub, client.metadata)
    await stream.open()
    frame = pb.StreamMessage(message_id="m-1", content=text_content("hi", language=BIG))
    frame.content.buttons.append(phone(BIG))
    stream.send(message=frame)

    refusal = await stream.next_of("error")
    stream.cancel()

    status: status_pb2.Status = refusal.status
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.ByteSize() < TRAILER_LIMIT
    assert "message.content.language" in status.message
    assert "message.content.buttons[0].payload" in status.message


# ------------------------------------------------------------ control characters


async def test_ids_with_control_characters_are_refused(client: TenantClient) -> None:
    with_platform_id = send_request()
    with_platform_id.channel_metadata.platform_user_id = "u\x00"
    for field, request in (
        ("user_id", send_request(user_id="alice\x00")),
        ("session_id", send_request(session_id="s\x1b[2J")),
        ("channel_metadata.platform_user_id", with_platform_id),
    ):
        error = await refused(client.send(request))
        assert error.fields == [field]

    error = await refused(client.list_conversations(user_id="alice\x00"))
    assert error.fields == ["user_id"]

    stream = StreamClient(client.stub, client.metadata)
    stream.send(open=pb.StreamOpen(user_id="bob\x00", channel=resources_pb2.CHANNEL_WEB))
    _, stream_error = await stream.until_error()
    assert stream_error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert rich_error(stream_error).fields == ["open.user_id"]
    assert not (await client.list_conversations()).conversations


async def test_additional_data_keys_with_control_characters_are_refused(
    client: TenantClient,
) -> None:
    request = send_request()
    additional_data({"ok": {"na\x00me": 1}})(request)

    error = await refused(client.send(request))

    assert error.fields == ["channel_metadata.additional_data"]


async def test_additional_data_values_and_odd_keys_are_stored_as_sent(
    client: TenantClient,
) -> None:
    request = send_request()
    data = {"a.b": 1, "$set": {"x": "nul\x00inside"}, "": "empty key"}
    additional_data(data)(request)

    sent = await client.send(request)

    stored = (await client.list_messages(sent.conversation_id)).messages[0]
    assert dict(stored.channel_metadata.additional_data) == struct_of(data)


def struct_of(data: dict[str, Any]) -> dict[str, Any]:
    struct = struct_pb2.Struct()
    struct.update(data)
    return dict(struct)


# ---------------------------------------------------------------------- search


async def test_search_finds_text_however_it_was_composed(client: TenantClient) -> None:
    composed = await client.send_text("un caf\u00e9 cr\u00e8me")  # stored as sent
    decomposed = await client.send_text("Pe\u0301rez")  # stored NFC
    await client.send_text("unrelated", user_id="other")

    async def found(query: str) -> list[str]:
        listed = await client.list_conversations(search_query=query)
        return [conversation.conversation_id for conversation in listed.conversations]

    assert await found("cafe\u0301") == [composed.conversation_id]
    assert await found("CAFE\u0301 CRE\u0300ME") == [composed.conversation_id]
    assert await found("p\u00e9rez") == [decomposed.conversation_id]
    assert await found("pe\u0301rez") == [decomposed.conversation_id]


@pytest.mark.parametrize("query", ["a\x00b", "\x00", "bell\x07", "\x1b[31m"])
async def test_a_search_with_control_characters_is_refused_by_name(
    client: TenantClient, query: str
) -> None:
    await client.send_text("a b")

    error = await refused(client.list_conversations(search_query=query))

    assert error.fields == ["search_query"]


async def test_a_search_may_hold_tabs_and_line_breaks(client: TenantClient) -> None:
    sent = await client.send_text("first line\nsecond\tcolumn")

    for query in ("line\nsecond", "line\r\nsecond", "second\tcol"):
        listed = await client.list_conversations(search_query=query)
        assert [c.conversation_id for c in listed.conversations] == [sent.conversation_id], query


# ------------------------------------------------------------------ CSV export

FORMULA_TEXTS = ["=1+1", "+1", "-1", "@SUM(A1:A9)", '=HYPERLINK("http://x","y")', "plain"]


async def test_csv_cells_never_start_a_spreadsheet_formula(client: TenantClient) -> None:
    first = await client.send(send_request(text_content(FORMULA_TEXTS[0]), message_id="@m-0"))
    conversation_id = first.conversation_id
    for index, text in enumerate(FORMULA_TEXTS[1:], start=1):
        await client.send(
            send_request(
                text_content(text), message_id=f"-m-{index}", conversation_id=conversation_id
            )
        )

    data = bytearray()
    async for chunk in client.stub.ExportConversation(
        pb.ExportConversationRequest(conversation_id=conversation_id, format=pb.EXPORT_FORMAT_CSV),
        metadata=client.metadata,
    ):
        data += chunk.data
    rows = list(csv.reader(io.StringIO(data.decode(), newline="")))[1:]

    inbound = [row for row in rows if row[2] == "user"]
    # OWASP: a cell starting with = + - @ (or tab, carriage return) gets a
    # leading single quote, so a spreadsheet shows it as text.
    assert [row[5] for row in inbound] == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@SUM(A1:A9)",
        '\'=HYPERLINK("http://x","y")',
        "plain",
    ]
    assert [row[1] for row in inbound] == ["'@m-0", *(f"'-m-{i}" for i in range(1, 6))]
    for row in rows:
        assert row[0].isdigit()  # numbers stay numbers
        for cell in row:
            assert not cell or cell[0] not in "=+-@\t\r", row
