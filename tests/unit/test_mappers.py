"""Proto <-> domain mapping: round trips, every enum value, and odd input."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Any, TypeVar

import pytest
from chatbot.chat.v1 import chat_service_pb2, content_pb2, resources_pb2
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message as ProtoMessage

from chat_service.domain.content import (
    Button,
    CarouselCard,
    LocationContent,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.enums import (
    ButtonType,
    Channel,
    ConversationStatus,
    DeliveryStatus,
    ExportFormat,
    MessageRole,
    MessageType,
    Priority,
    SortOrder,
)
from chat_service.domain.errors import FieldViolation, InvalidArgument
from chat_service.domain.events import DomainEvent, EventType
from chat_service.domain.model import (
    ChannelMetadata,
    Conversation,
    ConversationState,
    InboundMessage,
    JsonObject,
    Message,
    ProcessingHints,
    SendResult,
)
from chat_service.grpc_api import mappers, mappers_enums
from chat_service.protomap import enums, events, resources
from chat_service.protomap.content import (
    message_content_from_proto,
    message_content_to_proto,
)
from chat_service.protomap.wellknown import (
    datetime_to_timestamp,
    dict_to_struct,
    milliseconds_to_duration,
    seconds_to_duration,
    struct_to_dict,
    timestamp_to_datetime,
)

# --------------------------------------------------------------------- enums

EnumCase = tuple[type[Enum], EnumDescriptor, Callable[[Any], int], Callable[[int], Enum | None]]
ENUM_CASES: list[EnumCase] = [
    (
        Channel,
        resources_pb2.Channel.DESCRIPTOR,
        enums.channel_to_proto,
        enums.channel_from_proto,
    ),
    (
        ConversationStatus,
        resources_pb2.ConversationStatus.DESCRIPTOR,
        enums.conversation_status_to_proto,
        enums.conversation_status_from_proto,
    ),
    (
        MessageRole,
        resources_pb2.MessageRole.DESCRIPTOR,
        enums.message_role_to_proto,
        enums.message_role_from_proto,
    ),
    (
        DeliveryStatus,
        resources_pb2.DeliveryStatus.DESCRIPTOR,
        enums.delivery_status_to_proto,
        enums.delivery_status_from_proto,
    ),
    (
        Priority,
        resources_pb2.Priority.DESCRIPTOR,
        enums.priority_to_proto,
        enums.priority_from_proto,
    ),
    (
        MessageType,
        content_pb2.MessageType.DESCRIPTOR,
        enums.message_type_to_proto,
        enums.message_type_from_proto,
    ),
    (
        ButtonType,
        content_pb2.ButtonType.DESCRIPTOR,
        enums.button_type_to_proto,
        enums.button_type_from_proto,
    ),
    (
        SortOrder,
        chat_service_pb2.SortOrder.DESCRIPTOR,
        mappers_enums.sort_order_to_proto,
        mappers_enums.sort_order_from_proto,
    ),
    (
        ExportFormat,
        chat_service_pb2.ExportFormat.DESCRIPTOR,
        mappers_enums.export_format_to_proto,
        mappers_enums.export_format_from_proto,
    ),
]
ENUM_IDS = [case[0].__name__ for case in ENUM_CASES]


@pytest.mark.parametrize("case", ENUM_CASES, ids=ENUM_IDS)
def test_every_enum_value_maps_to_the_proto_value_of_the_same_name(case: EnumCase) -> None:
    domain_enum, descriptor, to_proto, from_proto = case
    prefix = descriptor.values_by_number[0].name.removesuffix("UNSPECIFIED")
    for member in domain_enum:
        number = to_proto(member)
        assert descriptor.values_by_number[number].name == prefix + member.name
        assert from_proto(number) is member


@pytest.mark.parametrize("case", ENUM_CASES, ids=ENUM_IDS)
def test_every_specified_proto_value_has_a_domain_value(case: EnumCase) -> None:
    domain_enum, descriptor, _, from_proto = case
    specified = [value.number for value in descriptor.values if value.number != 0]
    mapped = {from_proto(number) for number in specified}
    assert mapped == set(domain_enum)


@pytest.mark.parametrize("case", ENUM_CASES, ids=ENUM_IDS)
def test_unspecified_and_unknown_numbers_map_to_none(case: EnumCase) -> None:
    _, descriptor, to_proto, from_proto = case
    assert to_proto(None) == 0
    for number in (0, -1, len(descriptor.values) + 7, 2**31 - 1):
        assert from_proto(number) is None


# ------------------------------------------------------------------- content

FULL_CONTENT = MessageContent(
    type=MessageType.CAROUSEL,
    text="pick one",
    language="de",
    media=MediaContent(
        url="https://cdn.example/a.png",
        type="image/png",
        size_bytes=1234,
        alt_text="a cat",
        thumbnail_url="https://cdn.example/a-small.png",
    ),
    location=LocationContent(latitude=52.52, longitude=13.405, accuracy_meters=0, address="Mitte"),
    quick_replies=(
        QuickReply(title="Yes", payload="YES"),
        QuickReply(title="Mail", payload="MAIL", content_type="user_email"),
    ),
    buttons=(Button(type=ButtonType.URL, title="Open", url="https://example.com"),),
    cards=(
        CarouselCard(
            title="Card",
            subtitle="sub",
            image_url="https://cdn.example/c.png",
            buttons=(
                Button(type=ButtonType.POSTBACK, title="Buy", payload="BUY"),
                Button(type=ButtonType.PHONE, title="Call", payload="+14155550123"),
            ),
        ),
    ),
)


def test_content_round_trips_with_every_part() -> None:
    proto = message_content_to_proto(FULL_CONTENT)
    assert message_content_from_proto(_through_wire(proto)) == FULL_CONTENT


def test_content_without_media_or_location_leaves_them_unset() -> None:
    proto = message_content_to_proto(MessageContent.of_text("hi"))
    assert not proto.HasField("media")
    assert not proto.HasField("location")
    assert message_content_from_proto(proto) == MessageContent.of_text("hi")


def test_location_accuracy_presence_is_kept() -> None:
    absent = content_pb2.MessageContent(
        location=content_pb2.LocationContent(latitude=1.0, longitude=2.0)
    )
    zero = content_pb2.MessageContent(
        location=content_pb2.LocationContent(latitude=1.0, longitude=2.0, accuracy_meters=0)
    )
    absent_location = message_content_from_proto(absent).location
    zero_location = message_content_from_proto(zero).location
    assert absent_location is not None
    assert absent_location.accuracy_meters is None
    assert zero_location is not None
    assert zero_location.accuracy_meters == 0
    assert not message_content_to_proto(
        MessageContent(type=MessageType.LOCATION, location=absent_location)
    ).location.HasField("accuracy_meters")


def test_contract_defaults_apply_to_empty_language_and_quick_reply_content_type() -> None:
    proto = content_pb2.MessageContent(
        type=content_pb2.MESSAGE_TYPE_QUICK_REPLY,
        quick_replies=[content_pb2.QuickReply(title="a", payload="b")],
    )
    content = message_content_from_proto(proto)
    assert content.language == "en"
    assert content.quick_replies[0].content_type == "text"


def test_content_with_unknown_types_maps_them_to_none() -> None:
    proto = content_pb2.MessageContent(
        type=42,  # type: ignore[arg-type]
        buttons=[content_pb2.Button(type=9, title="x")],  # type: ignore[arg-type]
    )
    content = message_content_from_proto(_through_wire(proto))
    assert content.type is None
    assert content.buttons[0].type is None


# -------------------------------------------------------------------- Struct


def test_struct_numbers_are_doubles_and_integral_ones_come_back_as_int() -> None:
    data: JsonObject = {"count": 3, "ratio": 2.5, "negative": -7, "whole_float": 4.0}
    back = struct_to_dict(_through_wire(dict_to_struct(data)))
    assert back == {"count": 3, "ratio": 2.5, "negative": -7, "whole_float": 4}
    assert isinstance(back["count"], int)
    assert isinstance(back["ratio"], float)


def test_struct_keeps_types_and_nesting() -> None:
    data: JsonObject = {
        "flag": True,
        "off": False,
        "nothing": None,
        "text": "héllo",
        "list": [1, "two", [3.5], {"four": None}],
        "object": {"inner": {"deep": [True]}},
        "empty_object": {},
        "empty_list": [],
    }
    back = struct_to_dict(_through_wire(dict_to_struct(data)))
    assert back == data
    assert back["flag"] is True  # not the number 1
    assert back["empty_object"] == {}
    assert back["empty_list"] == []


def test_struct_numbers_beyond_double_precision_stay_floats() -> None:
    back = struct_to_dict(dict_to_struct({"big": 2**60, "huge": 10**400, "tiny": -(10**400)}))
    assert back["big"] == float(2**60)
    assert isinstance(back["big"], float)
    assert back["huge"] == math.inf
    assert back["tiny"] == -math.inf


def test_struct_with_nan_infinity_and_kindless_values_does_not_raise() -> None:
    struct = struct_pb2.Struct()
    struct.fields["nan"].number_value = math.nan
    struct.fields["inf"].number_value = math.inf
    struct.fields["unset"].SetInParent()  # a Value with no kind at all
    back = struct_to_dict(_through_wire(struct))
    nan = back["nan"]
    assert isinstance(nan, float)
    assert math.isnan(nan)
    assert back["inf"] == math.inf
    assert back["unset"] is None


# ---------------------------------------------------------------- timestamps


def test_datetime_round_trips_through_timestamp_to_the_microsecond() -> None:
    moment = datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC)
    back = timestamp_to_datetime(_through_wire(datetime_to_timestamp(moment)), field="t")
    assert back == moment
    assert back.tzinfo is UTC


def test_datetime_in_another_zone_maps_to_the_same_instant_in_utc() -> None:
    moment = datetime(2024, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert datetime_to_timestamp(moment).seconds == int(moment.timestamp())
    back = timestamp_to_datetime(datetime_to_timestamp(moment), field="t")
    assert back == moment
    assert back.utcoffset() == timedelta(0)


def test_naive_datetime_is_taken_as_utc() -> None:
    assert datetime_to_timestamp(datetime(1970, 1, 2)).seconds == 86_400


def test_timestamp_nanos_are_truncated_to_microseconds() -> None:
    stamp = timestamp_pb2.Timestamp(seconds=0, nanos=1_999)
    assert timestamp_to_datetime(stamp, field="t").microsecond == 1


def test_timestamps_at_the_edges_of_the_valid_range_map() -> None:
    earliest = timestamp_pb2.Timestamp(seconds=-62_135_596_800)
    latest = timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999)
    assert timestamp_to_datetime(earliest, field="t") == datetime(1, 1, 1, tzinfo=UTC)
    assert timestamp_to_datetime(latest, field="t") == datetime(
        9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (-62_135_596_801, 0),
        (253_402_300_800, 0),
        (2**63 - 1, 0),
        (-(2**63), 0),
        (0, -1),
        (0, 1_000_000_000),
    ],
)
def test_timestamps_no_datetime_can_hold_are_invalid_arguments_naming_the_field(
    seconds: int, nanos: int
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        timestamp_to_datetime(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos), field="x.ts")
    assert [violation.field for violation in raised.value.violations] == ["x.ts"]


def test_durations_are_exact_and_never_negative_or_out_of_range() -> None:
    latency = milliseconds_to_duration(1234.5)
    assert (latency.seconds, latency.nanos) == (1, 234_500_000)
    assert seconds_to_duration(-3).ToNanoseconds() == 0
    assert seconds_to_duration(math.nan).ToNanoseconds() == 0
    assert seconds_to_duration(math.inf).seconds == 315_576_000_000


# ------------------------------------------------------------ SendMessage in

NOW = datetime(2025, 5, 17, 10, 30, 15, 123_000, tzinfo=UTC)


def _full_send_request() -> chat_service_pb2.SendMessageRequest:
    return chat_service_pb2.SendMessageRequest(
        message_id="m-1",
        conversation_id="c-1",
        user_id="u-1",
        session_id="s-1",
        channel=resources_pb2.CHANNEL_WHATSAPP,
        timestamp=datetime_to_timestamp(NOW),
        content=message_content_to_proto(FULL_CONTENT),
        channel_metadata=resources_pb2.ChannelMetadata(
            platform_message_id="wamid.1",
            platform_user_id="+4915100000",
            thread_id="t",
            workspace_id="w",
            additional_data=dict_to_struct({"profile": {"name": "Ann"}, "retries": 2}),
        ),
        processing_hints=resources_pb2.ProcessingHints(
            priority=resources_pb2.PRIORITY_HIGH,
            expected_response_type=content_pb2.MESSAGE_TYPE_TEXT,
            bypass_automation=True,
            require_human_review=True,
        ),
    )


def test_send_request_maps_to_an_inbound_message_for_the_given_tenant() -> None:
    inbound = mappers.inbound_from_send_request(_through_wire(_full_send_request()), "tenant-a")
    assert inbound == InboundMessage(
        tenant_id="tenant-a",
        message_id="m-1",
        conversation_id="c-1",
        user_id="u-1",
        channel=Channel.WHATSAPP,
        content=FULL_CONTENT,
        session_id="s-1",
        timestamp=NOW,
        channel_metadata=ChannelMetadata(
            platform_message_id="wamid.1",
            platform_user_id="+4915100000",
            thread_id="t",
            workspace_id="w",
            additional_data={"profile": {"name": "Ann"}, "retries": 2},
        ),
        processing_hints=ProcessingHints(
            priority=Priority.HIGH,
            expected_response_type=MessageType.TEXT,
            bypass_automation=True,
            require_human_review=True,
        ),
    )


def test_empty_send_request_maps_to_defaults_the_validator_can_reject() -> None:
    inbound = mappers.inbound_from_send_request(chat_service_pb2.SendMessageRequest(), "t")
    assert inbound.timestamp is None
    assert inbound.channel is None
    assert inbound.content.type is None
    assert inbound.processing_hints == ProcessingHints(priority=Priority.NORMAL)
    assert inbound.channel_metadata == ChannelMetadata()


def test_unspecified_priority_is_normal() -> None:
    hints = resources_pb2.ProcessingHints()
    assert resources.processing_hints_from_proto(hints).priority is Priority.NORMAL


HINT_FIELDS = ("priority", "expected_response_type")


@pytest.mark.parametrize("hint", HINT_FIELDS)
@pytest.mark.parametrize("number", [77, -1, 2**31 - 1])
def test_an_unknown_hint_number_is_an_invalid_argument_naming_it(hint: str, number: int) -> None:
    # Regression: an unknown number read as "no preference" (NORMAL, none),
    # where every other enum of a request is refused.
    hints = resources_pb2.ProcessingHints(**{hint: number})  # type: ignore[arg-type]
    request = chat_service_pb2.SendMessageRequest(processing_hints=hints)
    with pytest.raises(InvalidArgument) as raised:
        mappers.inbound_from_send_request(request, "t")
    assert [v.field for v in raised.value.violations] == [f"processing_hints.{hint}"]
    assert str(number) in raised.value.violations[0].description

    frame = chat_service_pb2.StreamMessage(processing_hints=hints)
    with pytest.raises(InvalidArgument) as raised:
        mappers.inbound_from_stream_message(
            frame, tenant_id="t", conversation_id="c", user_id="u", channel=Channel.WEB
        )
    assert [v.field for v in raised.value.violations] == [f"message.processing_hints.{hint}"]


def test_both_unknown_hints_are_named_at_once() -> None:
    hints = resources_pb2.ProcessingHints(priority=9, expected_response_type=9)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as raised:
        mappers.inbound_from_send_request(
            chat_service_pb2.SendMessageRequest(processing_hints=hints), "t"
        )
    assert [v.field for v in raised.value.violations] == [
        "processing_hints.priority",
        "processing_hints.expected_response_type",
    ]


def test_send_request_with_an_impossible_timestamp_is_an_invalid_argument() -> None:
    request = chat_service_pb2.SendMessageRequest(timestamp=timestamp_pb2.Timestamp(seconds=2**62))
    with pytest.raises(InvalidArgument) as raised:
        mappers.inbound_from_send_request(request, "t")
    assert raised.value.violations[0].field == "timestamp"


def test_stream_message_maps_within_the_streams_conversation() -> None:
    frame = chat_service_pb2.StreamMessage(
        message_id="m-9",
        timestamp=datetime_to_timestamp(NOW),
        content=message_content_to_proto(MessageContent.of_text("hi")),
    )
    inbound = mappers.inbound_from_stream_message(
        frame,
        tenant_id="t",
        conversation_id="c",
        user_id="u",
        channel=Channel.WEB,
        session_id="s",
    )
    assert (inbound.tenant_id, inbound.conversation_id, inbound.user_id) == ("t", "c", "u")
    assert (inbound.message_id, inbound.channel, inbound.session_id) == ("m-9", Channel.WEB, "s")
    assert inbound.timestamp == NOW
    assert inbound.content == MessageContent.of_text("hi")
    frame.timestamp.nanos = -1
    with pytest.raises(InvalidArgument) as raised:
        mappers.inbound_from_stream_message(
            frame, tenant_id="t", conversation_id="c", user_id="u", channel=Channel.WEB
        )
    assert raised.value.violations[0].field == "message.timestamp"


def test_randomly_filled_send_requests_never_make_the_mapper_raise() -> None:
    rng = random.Random(20240517)
    for _ in range(300):
        request = chat_service_pb2.SendMessageRequest()
        _fill_randomly(request, rng, depth=0)
        request = _through_wire(request)
        refused = _refused_by_the_mapper(request)
        if refused:
            with pytest.raises(InvalidArgument) as raised:
                mappers.inbound_from_send_request(request, "t")
            assert [v.field for v in raised.value.violations] == refused
        else:
            inbound = mappers.inbound_from_send_request(request, "t")
            assert inbound.message_id == request.message_id


# ------------------------------------------------------------- resources out

CREATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
UPDATED = CREATED + timedelta(minutes=5)


def test_conversation_maps_every_field_except_tenant_and_version() -> None:
    state = ConversationState(
        current_intent="order",
        entities={"item": "pizza"},
        slots={"size": 32},
        user_profile={"vip": True},
        conversation_stage="collecting",
    )
    conversation = Conversation(
        conversation_id="c-1",
        tenant_id="tenant-secret-value",
        user_id="u-1",
        channel=Channel.SLACK,
        status=ConversationStatus.ESCALATED,
        created_at=CREATED,
        updated_at=UPDATED,
        last_sequence=12,
        version=7,
        session_id="s",
        state=state,
        channel_metadata=ChannelMetadata(workspace_id="T1", thread_id="th"),
        status_reason="needs a human",
    )
    proto = resources.conversation_to_proto(conversation)
    assert proto == resources_pb2.Conversation(
        conversation_id="c-1",
        user_id="u-1",
        session_id="s",
        channel=resources_pb2.CHANNEL_SLACK,
        status=resources_pb2.CONVERSATION_STATUS_ESCALATED,
        state=resources.conversation_state_to_proto(state),
        create_time=datetime_to_timestamp(CREATED),
        update_time=datetime_to_timestamp(UPDATED),
        last_sequence=12,
        channel_metadata=resources_pb2.ChannelMetadata(workspace_id="T1", thread_id="th"),
        status_reason="needs a human",
    )
    assert b"tenant-secret-value" not in proto.SerializeToString()
    assert resources.conversation_state_from_proto(_through_wire(proto.state)) == state


def test_channel_metadata_and_hints_round_trip() -> None:
    metadata = ChannelMetadata(
        platform_message_id="p",
        platform_user_id="u",
        thread_id="t",
        workspace_id="w",
        additional_data={"a": [1, {"b": None}]},
    )
    hints = ProcessingHints(priority=Priority.URGENT, expected_response_type=MessageType.IMAGE)
    assert (
        resources.channel_metadata_from_proto(
            _through_wire(resources.channel_metadata_to_proto(metadata))
        )
        == metadata
    )
    assert (
        resources.processing_hints_from_proto(
            _through_wire(resources.processing_hints_to_proto(hints))
        )
        == hints
    )


def _message(sequence: int, *, client_time: datetime | None = None) -> Message:
    return Message(
        message_id=f"m-{sequence}",
        tenant_id="tenant-secret-value",
        conversation_id="c-1",
        sequence=sequence,
        role=MessageRole.BOT,
        channel=Channel.SMS,
        user_id="u-1",
        content=MessageContent.of_text(f"reply {sequence}"),
        created_at=CREATED,
        delivery_status=DeliveryStatus.DELIVERED,
        client_time=client_time,
        reply_to_message_id="m-1",
        fingerprint="fingerprint-secret-value",
    )


def test_message_maps_every_field_except_tenant_and_fingerprint() -> None:
    proto = resources.message_to_proto(_message(2, client_time=NOW))
    assert proto == resources_pb2.Message(
        message_id="m-2",
        conversation_id="c-1",
        sequence=2,
        role=resources_pb2.MESSAGE_ROLE_BOT,
        channel=resources_pb2.CHANNEL_SMS,
        content=message_content_to_proto(MessageContent.of_text("reply 2")),
        channel_metadata=resources_pb2.ChannelMetadata(),
        delivery_status=resources_pb2.DELIVERY_STATUS_DELIVERED,
        create_time=datetime_to_timestamp(CREATED),
        client_time=datetime_to_timestamp(NOW),
        reply_to_message_id="m-1",
        user_id="u-1",
    )
    wire = proto.SerializeToString()
    assert b"tenant-secret-value" not in wire
    assert b"fingerprint-secret-value" not in wire


def test_message_without_client_time_leaves_it_unset() -> None:
    assert not resources.message_to_proto(_message(2)).HasField("client_time")


def test_send_result_maps_to_a_response_with_processing_metadata() -> None:
    result = SendResult(
        message_id="m-1",
        conversation_id="c-1",
        sequence=1,
        state=ConversationState(current_intent="greet"),
        replies=(_message(2), _message(3)),
        response=MessageContent.of_text("hello there"),
        engine="builtin",
        engine_latency_ms=12.25,
        fallback_used=True,
        fallback_reason="timeout",
        confidence_scores={"greet": 0.9, "bye": 0.1},
    )
    response = _through_wire(mappers.send_result_to_response(result))
    assert (response.message_id, response.conversation_id) == ("m-1", "c-1")
    assert message_content_from_proto(response.response) == MessageContent.of_text("hello there")
    assert response.conversation_state.current_intent == "greet"
    assert [reply.message_id for reply in response.replies] == ["m-2", "m-3"]
    metadata = response.processing_metadata
    assert metadata.engine == "builtin"
    assert metadata.engine_latency.ToNanoseconds() == 12_250_000
    assert metadata.fallback_used
    assert metadata.fallback_reason == "timeout"
    assert metadata.sequence == 1
    assert list(metadata.reply_sequences) == [2, 3]
    assert dict(metadata.confidence_scores) == {"greet": 0.9, "bye": 0.1}


def test_send_result_without_a_reply_leaves_response_unset() -> None:
    result = SendResult(message_id="m", conversation_id="c", sequence=4, state=ConversationState())
    response = mappers.send_result_to_response(result)
    assert not response.HasField("response")
    assert response.processing_metadata.engine == "none"
    assert list(response.processing_metadata.reply_sequences) == []


def test_domain_event_maps_to_a_conversation_event_with_plain_strings() -> None:
    event = DomainEvent(
        event_id="e-1",
        event_type=EventType.MESSAGE_RECEIVED,
        tenant_id="t",
        conversation_id="c",
        occurred_at=NOW,
        channel=Channel.WHATSAPP,
        user_id="u",
        message_type=MessageType.QUICK_REPLY,
        message_id="m",
        sequence=5,
        metadata={"delivery_status": "sent", "attempt": 2},
    )
    proto = _through_wire(events.event_to_proto(event))
    assert proto.event_type == "message.received"
    assert proto.channel == "whatsapp"
    assert proto.message_type == "quick_reply"
    assert (proto.event_id, proto.tenant_id, proto.conversation_id) == ("e-1", "t", "c")
    assert (proto.user_id, proto.message_id, proto.sequence) == ("u", "m", 5)
    assert timestamp_to_datetime(proto.timestamp, field="timestamp") == NOW
    assert struct_to_dict(proto.metadata) == {"delivery_status": "sent", "attempt": 2}


def test_conversation_event_without_message_has_an_empty_message_type() -> None:
    event = DomainEvent(
        event_id="e",
        event_type=EventType.STATUS_CHANGED,
        tenant_id="t",
        conversation_id="c",
        occurred_at=NOW,
        channel=Channel.WEB,
        user_id="u",
    )
    assert events.event_to_proto(event).message_type == ""


# ------------------------------------------------------------------- helpers


_M = TypeVar("_M", bound=ProtoMessage)


def _through_wire(message: _M) -> _M:
    """The message as a peer would receive it."""
    received = type(message)()
    received.ParseFromString(message.SerializeToString())
    return received


_ODD_DOUBLES = [math.nan, math.inf, -math.inf, -0.0, 1e308, -1e-320, 91.0, -181.0]
_ODD_INTS = {
    FieldDescriptor.CPPTYPE_INT32: [-(2**31), -1, 0, 2**31 - 1],
    FieldDescriptor.CPPTYPE_INT64: [-(2**63), -1, 0, 2**63 - 1],
}
_ODD_STRINGS = ["", " ", "héllo wörld", "\u202e\x00\x07", "🙂" * 300, "a" * 5000]


def _fill_randomly(message: Any, rng: random.Random, depth: int) -> None:
    """Set each field of `message` to an odd but well-formed value, or leave it unset."""
    if message.DESCRIPTOR.full_name == "google.protobuf.Struct":
        message.CopyFrom(dict_to_struct(_random_json(rng, depth)))
        return
    if message.DESCRIPTOR.full_name == "google.protobuf.Timestamp":
        message.seconds = rng.choice([0, -62_135_596_800, 253_402_300_799, 2**62, -(2**62)])
        message.nanos = rng.choice([0, 999_999_999, -1, 2**31 - 1])
        return
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.2:
            continue
        count = rng.randint(0, 3) if field.is_repeated else 1
        for _ in range(count):
            _fill_field(message, field, rng, depth)


def _fill_field(message: Any, field: FieldDescriptor, rng: random.Random, depth: int) -> None:
    container: Any = getattr(message, field.name)
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        child = container.add() if field.is_repeated else container
        _fill_randomly(child, rng, depth + 1)
        child.SetInParent()
        return
    value: Any
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        assert field.enum_type is not None
        value = rng.choice([*(v.number for v in field.enum_type.values), 99, -5])
    elif field.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        value = rng.choice(_ODD_DOUBLES)
    elif field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        value = rng.random() < 0.5
    elif field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        value = rng.choice(_ODD_STRINGS)
    else:
        value = rng.choice(_ODD_INTS[field.cpp_type])
    if field.is_repeated:
        container.append(value)
    else:
        setattr(message, field.name, value)


def _random_json(rng: random.Random, depth: int) -> dict[str, Any]:
    def value(level: int) -> Any:
        kind = rng.randrange(6 if level < 6 else 4)
        if kind == 0:
            return None
        if kind == 1:
            return rng.random() < 0.5
        if kind == 2:
            return rng.choice([*_ODD_DOUBLES, 0, 10**30, -(2**53) - 1])
        if kind == 3:
            return rng.choice(_ODD_STRINGS)
        if kind == 4:
            return [value(level + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(_ODD_STRINGS): value(level + 1) for _ in range(rng.randint(0, 3))}

    return {f"k{i}": value(depth) for i in range(rng.randint(0, 4))}


def _refused_by_the_mapper(request: chat_service_pb2.SendMessageRequest) -> list[str]:
    """The fields the mapper refuses itself (the validator the rest): a
    timestamp no datetime can hold, else the hint enums this build does not know."""
    if request.HasField("timestamp") and not _timestamp_in_range(request.timestamp):
        return ["timestamp"]
    hints = request.processing_hints
    known = {
        name: field.enum_type.values_by_number
        for name, field in hints.DESCRIPTOR.fields_by_name.items()
        if field.enum_type is not None
    }
    return [
        f"processing_hints.{name}"
        for name in HINT_FIELDS
        if getattr(hints, name) not in known[name]
    ]


def _timestamp_in_range(stamp: timestamp_pb2.Timestamp) -> bool:
    return -62_135_596_800 <= stamp.seconds <= 253_402_300_799 and 0 <= stamp.nanos < 1_000_000_000


# ------------------------------------------------------------ repeated enum filters


def test_a_repeated_enum_filter_maps_its_distinct_values() -> None:
    violations: list[FieldViolation] = []
    numbers = [resources_pb2.CHANNEL_WEB, resources_pb2.CHANNEL_SMS, resources_pb2.CHANNEL_WEB]

    found = mappers_enums.enum_set_from_proto(
        numbers,
        enums.channel_from_proto,
        field="channels",
        noun="channel",
        violations=violations,
    )

    assert found == {Channel.WEB, Channel.SMS}
    assert violations == []


def test_a_repeated_enum_filter_names_the_first_index_of_each_unknown_number() -> None:
    violations: list[FieldViolation] = []
    numbers = [resources_pb2.CHANNEL_WEB, 99, 99, resources_pb2.CHANNEL_UNSPECIFIED, 99]

    found = mappers_enums.enum_set_from_proto(
        numbers,
        enums.channel_from_proto,
        field="channels",
        noun="channel",
        violations=violations,
    )

    assert found == {Channel.WEB}
    assert violations == [
        FieldViolation("channels[1]", "unknown channel 99"),
        FieldViolation("channels[3]", "unknown channel 0"),
    ]


def test_a_huge_repeated_enum_filter_costs_one_lookup_per_distinct_number() -> None:
    calls: list[int] = []

    def counting(number: int) -> Channel | None:
        calls.append(number)
        return enums.channel_from_proto(number)

    violations: list[FieldViolation] = []
    numbers = [resources_pb2.CHANNEL_WEB] * 1_000_000 + list(range(100, 100_100))

    mappers_enums.enum_set_from_proto(
        numbers, counting, field="channels", noun="channel", violations=violations
    )

    assert len(calls) == len(set(numbers))
    assert len(violations) == mappers_enums.MAX_UNKNOWN_REPORTED
    assert violations[0] == FieldViolation("channels[1000000]", "unknown channel 100")
