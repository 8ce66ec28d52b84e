"""Abuse suite: oversized and malformed fields of every unary RPC.

One real service for the module. Requests are hostile: odd Unicode,
control characters and NUL, values of a megabyte and messages just under
gRPC's 4 MB limit, unknown enum numbers, negative and huge integers,
google.protobuf.Struct nested past every limit, huge repeated fields, empty
requests, and bytes that are no protobuf at all. Every answer must be a
clear status (see tests/support/abuse.py); SendMessage is also fuzzed
property-based, from valid requests with a few fields broken, and a
refusal must blame only the broken fields. The module ends by checking that
every acknowledged message is still listed in order, without gaps.
"""

from __future__ import annotations

import math
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import content_pb2, resources_pb2
from google.api import httpbody_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message as ProtoMessage
from hypothesis import event, example, given, note
from hypothesis import strategies as st

from tests.e2e.requests import VALID_CONTENTS, MessageType
from tests.support.abuse import (
    CALL_TIMEOUT,
    CHAT_SERVICE,
    AbuseTarget,
    Code,
    Tenant,
    attempt,
    check,
    fuzz_settings,
    outcome_of,
    refused,
    text_request,
)
from tests.support.abuse_inputs import (
    INT32,
    INT64,
    MUTATIONS,
    Mutation,
    build,
    chain,
    deep_value,
    delimited,
    int32,
    odd_text,
    set_path,
    varint,
)
from tests.support.service import ServiceStore

T = content_pb2
R = resources_pb2
MB = 1024 * 1024


@pytest.fixture(scope="module")
def target(
    service_store: ServiceStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AbuseTarget]:
    target = AbuseTarget.start(tmp_path_factory.mktemp("abuse-fields"))
    yield target
    target.close()


@pytest.fixture
def abuser(target: AbuseTarget, request: pytest.FixtureRequest) -> Iterator[Tenant]:
    """The test's tenant; afterwards the server is healthy and the victim hidden."""
    tenant = target.tenant(request.node.name)
    yield tenant
    target.assert_healthy()
    target.assert_victim_hidden(tenant)


def valid_request(message_type: MessageType = T.MESSAGE_TYPE_TEXT) -> pb.SendMessageRequest:
    return pb.SendMessageRequest(
        message_id=f"m-{uuid.uuid4().hex}",
        user_id="user-1",
        channel=R.CHANNEL_WEB,
        content=VALID_CONTENTS[message_type],
    )


# ------------------------------------------------------------- SendMessage fuzz


@fuzz_settings(max_examples=60)
@given(
    message_type=st.sampled_from(sorted(VALID_CONTENTS)),
    mutations=st.lists(MUTATIONS, min_size=1, max_size=3),
)
@example(T.MESSAGE_TYPE_TEXT, [Mutation("content.text", "a\x00b" * 100, ("content",))])
@example(T.MESSAGE_TYPE_IMAGE, [Mutation("content.media.type", "x" * MB, ("content",))])
@example(T.MESSAGE_TYPE_LOCATION, [Mutation("content.location.latitude", math.nan, ("content",))])
def test_send_message_with_broken_fields_is_refused_clearly(
    target: AbuseTarget, message_type: MessageType, mutations: list[Mutation]
) -> None:
    tenant = target.tenant("send-fuzz")
    request = valid_request(message_type)
    for change in mutations:
        set_path(request, change.path, change.value)
    note(f"SendMessage of a {T.MessageType.Name(message_type)} with {mutations}")
    touched = {change.path for change in mutations}
    allowed = {Code.OK, Code.INVALID_ARGUMENT}
    if "conversation_id" in touched:
        allowed |= {Code.NOT_FOUND, Code.FAILED_PRECONDITION}

    outcome = check(
        attempt(target.stub.SendMessage, request, tenant.metadata),
        allowed,
        case=f"SendMessage with {mutations}",
        secrets=[target.victim.secret],
    )
    event(outcome.code.name)

    if outcome.code is Code.OK:
        response: pb.SendMessageResponse = outcome.response
        if request.message_id:
            assert response.message_id == request.message_id
        target.ledger.record_send(tenant, response)
    elif outcome.code is Code.INVALID_ARGUMENT:
        assert outcome.status is not None
        blamed = {prefix for change in mutations for prefix in change.blame}
        unrelated = [f for f in outcome.status.fields if not f.startswith(tuple(blamed))]
        assert not unrelated, f"{mutations}: refused for untouched fields {unrelated}"


def test_send_message_into_another_tenants_conversation_is_not_found(
    target: AbuseTarget, abuser: Tenant
) -> None:
    request = text_request("let me in", conversation_id=target.victim.conversation_id)
    outcome = refused(
        target.stub.SendMessage, request, abuser.metadata, case="write", allowed={Code.NOT_FOUND}
    )
    assert target.victim.secret not in str(outcome.status)


# ------------------------------------------------------------- huge values


def megabyte_of(char: str = "x") -> str:
    return char * MB


HUGE_SEND_FIELDS: list[tuple[str, MessageType, Callable[[str], Any] | None]] = [
    # (field path, message type of the base request, how the huge string is wrapped)
    ("message_id", T.MESSAGE_TYPE_TEXT, None),
    ("conversation_id", T.MESSAGE_TYPE_TEXT, None),
    ("user_id", T.MESSAGE_TYPE_TEXT, None),
    ("session_id", T.MESSAGE_TYPE_TEXT, None),
    ("content.text", T.MESSAGE_TYPE_TEXT, None),
    ("content.language", T.MESSAGE_TYPE_TEXT, None),
    ("content.media.url", T.MESSAGE_TYPE_IMAGE, None),
    ("content.media.type", T.MESSAGE_TYPE_IMAGE, None),
    ("content.media.alt_text", T.MESSAGE_TYPE_IMAGE, None),
    ("content.media.thumbnail_url", T.MESSAGE_TYPE_IMAGE, None),
    ("content.location.address", T.MESSAGE_TYPE_LOCATION, None),
    ("content.quick_replies", T.MESSAGE_TYPE_QUICK_REPLY, lambda s: [T.QuickReply(title=s)]),
    (
        "content.quick_replies",
        T.MESSAGE_TYPE_QUICK_REPLY,
        lambda s: [T.QuickReply(title="t", payload=s)],
    ),
    (
        "content.quick_replies",
        T.MESSAGE_TYPE_QUICK_REPLY,
        lambda s: [T.QuickReply(title="t", payload="p", content_type=s)],
    ),
    (
        "content.buttons",
        T.MESSAGE_TYPE_TEXT,
        lambda s: [T.Button(type=T.BUTTON_TYPE_PHONE, title="Call", payload=s)],
    ),
    (
        "content.buttons",
        T.MESSAGE_TYPE_TEXT,
        lambda s: [T.Button(type=T.BUTTON_TYPE_URL, title="Open", url=s)],
    ),
    (
        "content.buttons",
        T.MESSAGE_TYPE_TEXT,
        lambda s: [T.Button(type=T.BUTTON_TYPE_POSTBACK, title=s, payload="p")],
    ),
    ("content.cards", T.MESSAGE_TYPE_CAROUSEL, lambda s: [T.CarouselCard(title=s)]),
    ("content.cards", T.MESSAGE_TYPE_CAROUSEL, lambda s: [T.CarouselCard(title="t", subtitle=s)]),
    (
        "content.cards",
        T.MESSAGE_TYPE_CAROUSEL,
        lambda s: [T.CarouselCard(title="t", image_url=s)],
    ),
    ("channel_metadata.platform_message_id", T.MESSAGE_TYPE_TEXT, None),
    ("channel_metadata.platform_user_id", T.MESSAGE_TYPE_TEXT, None),
    ("channel_metadata.thread_id", T.MESSAGE_TYPE_TEXT, None),
    ("channel_metadata.workspace_id", T.MESSAGE_TYPE_TEXT, None),
    ("channel_metadata.additional_data", T.MESSAGE_TYPE_TEXT, lambda s: {"k": s}),
    ("channel_metadata.additional_data", T.MESSAGE_TYPE_TEXT, lambda s: {s: "v"}),
]


@pytest.mark.parametrize(
    ("path", "message_type", "wrap"),
    HUGE_SEND_FIELDS,
    ids=[f"{path}-{n}" for n, (path, _, _) in enumerate(HUGE_SEND_FIELDS)],
)
@pytest.mark.parametrize("char", ["x", "\U0001f600"], ids=["ascii", "emoji"])
def test_a_megabyte_in_any_send_message_field_is_invalid_argument(
    target: AbuseTarget,
    abuser: Tenant,
    path: str,
    message_type: MessageType,
    wrap: Callable[[str], Any] | None,
    char: str,
) -> None:
    huge = megabyte_of(char) if char == "x" else char * (MB // 4)
    request = valid_request(message_type)
    set_path(request, path, huge if wrap is None else wrap(huge))

    refused(
        target.stub.SendMessage,
        request,
        abuser.metadata,
        case=f"SendMessage with a huge {path}",
        field=path,
    )


def test_text_just_under_the_message_limit_is_invalid_argument(
    target: AbuseTarget, abuser: Tenant
) -> None:
    request = valid_request()
    request.content.text = "x" * (4 * MB - 4096)
    assert request.ByteSize() < 4 * MB

    refused(
        target.stub.SendMessage, request, abuser.metadata, case="4 MB text", field="content.text"
    )


def test_a_request_over_the_message_limit_is_resource_exhausted(
    target: AbuseTarget, abuser: Tenant
) -> None:
    request = valid_request()
    request.content.text = "x" * (4 * MB + 16)

    refused(
        target.stub.SendMessage,
        request,
        abuser.metadata,
        case="over 4 MB",
        allowed={Code.RESOURCE_EXHAUSTED},
    )


@pytest.mark.parametrize(
    ("name", "request_of"),
    [
        ("GetConversation", lambda s: pb.GetConversationRequest(conversation_id=s)),
        ("ListMessages", lambda s: pb.ListMessagesRequest(conversation_id=s)),
        ("ListMessages", lambda s: pb.ListMessagesRequest(conversation_id="c", page_token=s)),
        ("ListConversations", lambda s: pb.ListConversationsRequest(user_id=s)),
        ("ListConversations", lambda s: pb.ListConversationsRequest(search_query=s)),
        ("ListConversations", lambda s: pb.ListConversationsRequest(page_token=s)),
        (
            "UpdateConversationStatus",
            lambda s: pb.UpdateConversationStatusRequest(
                conversation_id=s, status=R.CONVERSATION_STATUS_COMPLETED
            ),
        ),
    ],
    ids=["get-id", "list-messages-id", "list-messages-token", "user-id", "search", "token", "upd"],
)
@pytest.mark.parametrize("size", [MB, 4 * MB - 1024], ids=["1mb", "4mb"])
def test_huge_strings_in_reading_rpcs_are_refused_clearly(
    target: AbuseTarget,
    abuser: Tenant,
    name: str,
    request_of: Callable[[str], ProtoMessage],
    size: int,
) -> None:
    refused(
        getattr(target.stub, name),
        request_of("x" * size),
        abuser.metadata,
        case=f"{name} with {size} bytes",
        allowed={Code.INVALID_ARGUMENT, Code.NOT_FOUND},
    )


def test_a_huge_status_reason_is_invalid_argument(target: AbuseTarget, abuser: Tenant) -> None:
    sent = target.send(abuser, text_request("hello"))
    request = pb.UpdateConversationStatusRequest(
        conversation_id=sent.conversation_id,
        status=R.CONVERSATION_STATUS_ESCALATED,
        reason="r" * MB,
    )

    refused(
        target.stub.UpdateConversationStatus,
        request,
        abuser.metadata,
        case="huge reason",
        field="reason",
    )


# ------------------------------------------------------------- huge repeated fields


@pytest.mark.parametrize(
    ("path", "message_type", "items"),
    [
        (
            "content.quick_replies",
            T.MESSAGE_TYPE_QUICK_REPLY,
            [T.QuickReply(title="t", payload="p")] * 20_000,
        ),
        ("content.quick_replies", T.MESSAGE_TYPE_QUICK_REPLY, [T.QuickReply()] * 20_000),
        (
            "content.buttons",
            T.MESSAGE_TYPE_TEXT,
            [T.Button(type=T.BUTTON_TYPE_POSTBACK, title="b", payload="p")] * 20_000,
        ),
        ("content.buttons", T.MESSAGE_TYPE_TEXT, [build(T.Button, type=99)] * 20_000),
        ("content.cards", T.MESSAGE_TYPE_CAROUSEL, [T.CarouselCard(title="c")] * 20_000),
        (
            "content.cards",
            T.MESSAGE_TYPE_CAROUSEL,
            [T.CarouselCard(buttons=[T.Button()] * 50)] * 2_000,
        ),
    ],
    ids=["replies", "bad-replies", "buttons", "bad-buttons", "cards", "bad-cards"],
)
def test_huge_repeated_fields_are_invalid_argument(
    target: AbuseTarget,
    abuser: Tenant,
    path: str,
    message_type: MessageType,
    items: list[ProtoMessage],
) -> None:
    request = valid_request(message_type)
    set_path(request, path, items)

    refused(
        target.stub.SendMessage, request, abuser.metadata, case=f"{len(items)} {path}", field=path
    )


# ------------------------------------------------------------- deep Struct nesting


def with_deep_additional_data(depth: int, *, lists: bool) -> bytes:
    """A valid SendMessageRequest whose additional_data is {"k": <deep value>}."""
    value = deep_value(depth, lists=lists)
    key = delimited(1, 1) + b"k"
    entry = key + delimited(2, len(value)) + value
    struct = delimited(1, len(entry)) + entry
    metadata = delimited(5, len(struct)) + struct  # ChannelMetadata.additional_data
    return valid_request().SerializeToString() + delimited(8, len(metadata)) + metadata


def raw_unary(target: AbuseTarget, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    # No serializers: bytes go out as they are, and come back as bytes.
    return target.channel.unary_unary(f"/{CHAT_SERVICE}/{method}", None, None)


@pytest.mark.parametrize("depth", [8, 9, 30, 33, 34, 99, 100, 101, 500, 10_000])
@pytest.mark.parametrize("lists", [False, True], ids=["objects", "lists"])
def test_deeply_nested_additional_data_is_refused(
    target: AbuseTarget, abuser: Tenant, depth: int, lists: bool
) -> None:
    outcome = check(
        attempt(
            raw_unary(target, "SendMessage"),
            with_deep_additional_data(depth, lists=lists),
            abuser.metadata,
        ),
        {Code.INVALID_ARGUMENT},
        case=f"additional_data {depth} deep",
    )
    assert outcome.status is not None
    assert set(outcome.status.fields) <= {"request", "channel_metadata.additional_data"}


def test_deeply_nested_but_small_data_under_the_limit_is_accepted(
    target: AbuseTarget, abuser: Tenant
) -> None:
    request = valid_request()
    set_path(request, "channel_metadata.additional_data", chain(7))

    outcome = check(
        attempt(target.stub.SendMessage, request, abuser.metadata), {Code.OK}, case="7 deep"
    )
    target.ledger.record_send(abuser, outcome.response)


# ------------------------------------------------------------- bytes that are no request

UNARY_METHODS = [
    "SendMessage",
    "GetConversation",
    "ListConversations",
    "ListMessages",
    "UpdateConversationStatus",
    "HandleWebhook",
    "VerifyWebhook",
]
STREAMING_METHODS = ["ExportConversation", "WatchConversations"]
GARBAGE = {
    "truncated-varint": b"\x08\xff\xff\xff",
    "truncated-string": b"\x1a\x10abc",
    "wrong-wire-type": b"\x0d\x00\x00",  # field 1 as fixed32
    "huge-length": b"\x0a\xff\xff\xff\xff\x0f",
    "invalid-utf8-string": b"",  # see _garbage
    "field-number-zero": b"\x02\x00",
    "group-start": b"\x0b",
    "random": bytes(range(256)) * 4,
}


# A string field of each request (field 1 of most), for invalid UTF-8.
_STRING_FIELD = {"ListConversations": 8, "WatchConversations": 3}


def _garbage(method: str, name: str) -> bytes:
    if name == "invalid-utf8-string":
        return delimited(_STRING_FIELD.get(method, 1), 2) + b"\xff\xfe"
    return GARBAGE[name]


@pytest.mark.parametrize("method", UNARY_METHODS + STREAMING_METHODS)
@pytest.mark.parametrize("garbage", sorted(GARBAGE))
def test_bytes_that_are_no_protobuf_are_invalid_argument(
    target: AbuseTarget, abuser: Tenant, method: str, garbage: str
) -> None:
    raw = _garbage(method, garbage)
    allowed = {Code.INVALID_ARGUMENT}
    if method in {"HandleWebhook", "VerifyWebhook"}:
        allowed |= {Code.UNIMPLEMENTED, Code.UNAUTHENTICATED, Code.NOT_FOUND}
    if method in STREAMING_METHODS:
        call = target.channel.unary_stream(f"/{CHAT_SERVICE}/{method}", None, None)(
            raw, metadata=abuser.metadata, timeout=CALL_TIMEOUT
        )
        try:
            responses = list(call)
        except grpc.RpcError as error:
            check(outcome_of(error), allowed, case=f"{method} with {garbage}")
        else:
            raise AssertionError(f"{method} answered {garbage} with {responses[:1]}")
        return
    check(
        attempt(raw_unary(target, method), raw, abuser.metadata),
        allowed,
        case=f"{method} with {garbage}",
    )


def test_unknown_fields_are_ignored(target: AbuseTarget, abuser: Tenant) -> None:
    unknown = delimited(999, 5) + b"hello" + varint(1000 << 3) + varint(7)
    raw = valid_request().SerializeToString() + unknown

    outcome = check(
        attempt(raw_unary(target, "SendMessage"), raw, abuser.metadata), {Code.OK}, case="unknown"
    )
    target.ledger.record_send(abuser, pb.SendMessageResponse.FromString(outcome.response))


# ------------------------------------------------------------- enums, integers, empties


ENUM_CASES: list[tuple[str, str, Callable[[int, str], ProtoMessage]]] = [
    # (method, field, request with that field set to a number)
    ("SendMessage", "channel", lambda n, cid: _with(valid_request(), "channel", n)),
    ("SendMessage", "content.type", lambda n, cid: _with(valid_request(), "content.type", n)),
    (
        "SendMessage",
        "content.buttons[0].type",
        lambda n, cid: _with(
            valid_request(), "content.buttons", [build(T.Button, type=n, title="b", payload="p")]
        ),
    ),
    ("ListConversations", "status", lambda n, cid: build(pb.ListConversationsRequest, status=n)),
    ("ListConversations", "channel", lambda n, cid: build(pb.ListConversationsRequest, channel=n)),
    ("ListConversations", "order", lambda n, cid: build(pb.ListConversationsRequest, order=n)),
    (
        "ListMessages",
        "order",
        lambda n, cid: build(pb.ListMessagesRequest, conversation_id=cid, order=n),
    ),
    (
        "UpdateConversationStatus",
        "status",
        lambda n, cid: build(pb.UpdateConversationStatusRequest, conversation_id=cid, status=n),
    ),
    (
        "ExportConversation",
        "format",
        lambda n, cid: build(pb.ExportConversationRequest, conversation_id=cid, format=n),
    ),
]
# Unset hints mean "no preference"; a number this server does not know is refused.
HINT_CASES: list[tuple[str, str, Callable[[int, str], ProtoMessage]]] = [
    (
        "SendMessage",
        field,
        lambda n, cid, field=field: _with(valid_request(), field, n),  # type: ignore[misc]
    )
    for field in ("processing_hints.priority", "processing_hints.expected_response_type")
]


@pytest.mark.parametrize("number", [99, -1, INT32[0], INT32[1]])
@pytest.mark.parametrize(
    ("method", "field", "request_of"),
    ENUM_CASES + HINT_CASES,
    ids=[f"{m}-{f}" for m, f, _ in ENUM_CASES + HINT_CASES],
)
def test_unknown_and_negative_enum_numbers_are_invalid_argument(
    target: AbuseTarget,
    abuser: Tenant,
    method: str,
    field: str,
    request_of: Callable[[int, str], ProtoMessage],
    number: int,
) -> None:
    sent = target.send(abuser, text_request("hello"))
    request = request_of(number, sent.conversation_id)
    if method == "ExportConversation":
        _refused_stream(target, method, request, abuser, field=field)
        return
    refused(
        getattr(target.stub, method),
        request,
        abuser.metadata,
        case=f"{method} {field}={number}",
        field=field,
    )


def _with(request: pb.SendMessageRequest, path: str, value: Any) -> pb.SendMessageRequest:
    set_path(request, path, value)
    return request


def _refused_stream(
    target: AbuseTarget,
    method: str,
    request: ProtoMessage,
    tenant: Tenant,
    *,
    field: str | None = None,
    allowed: frozenset[Code] = frozenset({Code.INVALID_ARGUMENT}),
) -> None:
    call = getattr(target.stub, method)(request, metadata=tenant.metadata, timeout=CALL_TIMEOUT)
    try:
        first = next(iter(call))
    except grpc.RpcError as error:
        check(outcome_of(error), allowed, case=f"{method} {request}", field=field)
    else:
        call.cancel()
        raise AssertionError(f"{method} took {request}: {first}")


def test_negative_and_huge_integers(target: AbuseTarget, abuser: Tenant) -> None:
    stub, auth = target.stub, abuser.metadata
    sent = target.send(abuser, text_request("hello"))
    cid = sent.conversation_id
    for size in (-1, INT32[0], INT32[1]):
        for call, request in (
            (stub.ListConversations, pb.ListConversationsRequest(page_size=size)),
            (stub.ListMessages, pb.ListMessagesRequest(conversation_id=cid, page_size=size)),
        ):
            outcome = check(
                attempt(call, request, auth),
                {Code.OK, Code.INVALID_ARGUMENT},
                case=f"page_size={size}",
                field="page_size",
            )
            if outcome.code is Code.OK and size > 0:
                assert outcome.response.next_page_token == ""
    bad_times = [
        (INT64[1], 0),
        (INT64[0], 0),
        (0, -1),
        (0, INT32[1]),
        (253_402_300_800, 0),
        (-62_135_596_801, 0),
    ]
    for seconds, nanos in bad_times:
        stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
        refused(
            stub.SendMessage,
            _with(valid_request(), "timestamp", stamp),
            auth,
            case=f"timestamp {seconds}.{nanos}",
            field="timestamp",
        )
        for name in ("start_time", "end_time"):
            refused(
                stub.ListConversations,
                build(pb.ListConversationsRequest, **{name: stamp}),
                auth,
                case=f"{name} {seconds}.{nanos}",
                field=name,
            )
    refused(
        stub.ListConversations,
        pb.ListConversationsRequest(
            start_time=timestamp_pb2.Timestamp(seconds=2_000_000_000),
            end_time=timestamp_pb2.Timestamp(seconds=1_000_000_000),
        ),
        auth,
        case="end before start",
        field="end_time",
    )
    for path, value in (
        ("content.media.size_bytes", -1),
        ("content.media.size_bytes", INT64[1]),
        ("content.media.size_bytes", INT64[0]),
    ):
        refused(
            stub.SendMessage,
            _with(valid_request(T.MESSAGE_TYPE_IMAGE), path, value),
            auth,
            case=f"{path}={value}",
            field=path,
        )
    located: list[tuple[str, float]] = [
        ("content.location.accuracy_meters", -1),
        ("content.location.accuracy_meters", INT32[0]),
        ("content.location.latitude", math.nan),
        ("content.location.longitude", math.inf),
        ("content.location.latitude", -math.inf),
        ("content.location.longitude", 1e308),
    ]
    for where, number in located:
        refused(
            stub.SendMessage,
            _with(valid_request(T.MESSAGE_TYPE_LOCATION), where, number),
            auth,
            case=f"{where}={number}",
            field=where,
        )


EMPTY_CASES: list[tuple[str, ProtoMessage, frozenset[Code]]] = [
    ("SendMessage", pb.SendMessageRequest(), frozenset({Code.INVALID_ARGUMENT})),
    ("GetConversation", pb.GetConversationRequest(), frozenset({Code.INVALID_ARGUMENT})),
    ("ListConversations", pb.ListConversationsRequest(), frozenset({Code.OK})),
    ("ListMessages", pb.ListMessagesRequest(), frozenset({Code.INVALID_ARGUMENT})),
    (
        "UpdateConversationStatus",
        pb.UpdateConversationStatusRequest(),
        frozenset({Code.INVALID_ARGUMENT}),
    ),
]
WEBHOOK_CODES = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
        Code.FAILED_PRECONDITION,
        Code.UNIMPLEMENTED,
    }
)


@pytest.mark.parametrize(
    ("method", "request_", "allowed"), EMPTY_CASES, ids=[c[0] for c in EMPTY_CASES]
)
def test_empty_requests(
    target: AbuseTarget,
    abuser: Tenant,
    method: str,
    request_: ProtoMessage,
    allowed: frozenset[Code],
) -> None:
    outcome = refused(
        getattr(target.stub, method), request_, abuser.metadata, case=method, allowed=allowed
    )
    if outcome.code is Code.INVALID_ARGUMENT:
        assert outcome.status is not None
        assert outcome.status.fields
    # Without any metadata at all: not authenticated, whatever the request.
    refused(getattr(target.stub, method), request_, (), case=method, allowed={Code.UNAUTHENTICATED})


def test_empty_streaming_requests(target: AbuseTarget, abuser: Tenant) -> None:
    _refused_stream(target, "ExportConversation", pb.ExportConversationRequest(), abuser)
    _refused_stream(
        target,
        "ExportConversation",
        pb.ExportConversationRequest(),
        Tenant("nobody", ()),
        allowed=frozenset({Code.UNAUTHENTICATED}),
    )


@fuzz_settings(max_examples=25)
@given(
    tenant_id=odd_text,
    platform=st.one_of(st.sampled_from(["whatsapp", "sms", "voice", "slack"]), odd_text),
    body=st.binary(max_size=2000),
    content_type=odd_text,
    headers=st.lists(
        st.tuples(
            st.sampled_from(["x-hub-signature-256", "x-slack-signature", "x-twilio-signature"]),
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
        ),
        max_size=3,
    ),
)
def test_webhooks_with_hostile_input_are_refused_clearly(
    target: AbuseTarget,
    tenant_id: str,
    platform: str,
    body: bytes,
    content_type: str,
    headers: list[tuple[str, str]],
) -> None:
    http_body = httpbody_pb2.HttpBody(content_type=content_type, data=body)
    check(
        attempt(
            target.stub.HandleWebhook,
            pb.HandleWebhookRequest(tenant_id=tenant_id, platform=platform, body=http_body),
            tuple(headers),
        ),
        WEBHOOK_CODES | {Code.OK},
        case=f"HandleWebhook {tenant_id!r}/{platform!r}",
    )
    check(
        attempt(
            target.stub.VerifyWebhook,
            pb.VerifyWebhookRequest(
                tenant_id=tenant_id,
                platform=platform,
                hub=pb.HubChallenge(mode=content_type, verify_token=platform, challenge=tenant_id),
            ),
            (),
        ),
        WEBHOOK_CODES,
        case=f"VerifyWebhook {tenant_id!r}/{platform!r}",
    )


def test_a_huge_webhook_body_is_refused_clearly(target: AbuseTarget) -> None:
    body = httpbody_pb2.HttpBody(content_type="application/json", data=b"{" * (4 * MB - 4096))
    check(
        attempt(
            target.stub.HandleWebhook,
            pb.HandleWebhookRequest(
                tenant_id=target.victim.tenant.id, platform="whatsapp", body=body
            ),
            (),
        ),
        WEBHOOK_CODES,
        case="HandleWebhook 4 MB",
    )


# ------------------------------------------------------------- the reading RPCs, fuzzed


@fuzz_settings(max_examples=40)
@given(conversation_id=odd_text, order=int32, page_size=int32)
def test_reading_rpcs_with_odd_ids(
    target: AbuseTarget, conversation_id: str, order: int, page_size: int
) -> None:
    tenant = target.tenant("read-fuzz")
    stub, auth = target.stub, tenant.metadata
    for name, call, request in (
        (
            "GetConversation",
            stub.GetConversation,
            pb.GetConversationRequest(conversation_id=conversation_id),
        ),
        (
            "ListMessages",
            stub.ListMessages,
            build(
                pb.ListMessagesRequest,
                conversation_id=conversation_id,
                order=order,
                page_size=page_size,
            ),
        ),
        (
            "UpdateConversationStatus",
            stub.UpdateConversationStatus,
            build(
                pb.UpdateConversationStatusRequest,
                conversation_id=conversation_id,
                status=order,
                reason=conversation_id,
            ),
        ),
    ):
        check(
            attempt(call, request, auth),
            {Code.INVALID_ARGUMENT, Code.NOT_FOUND},
            case=f"{name}({conversation_id!r})",
            secrets=[target.victim.secret],
        )
    _refused_stream(
        target,
        "ExportConversation",
        build(pb.ExportConversationRequest, conversation_id=conversation_id, format=order),
        tenant,
        allowed=frozenset({Code.INVALID_ARGUMENT, Code.NOT_FOUND}),
    )


SEARCH_TEXTS = [
    "Hello (world) [x]",
    "price: $5.00 + tax",
    "a*b?c|d",
    "back\\slash ^caret$",
    "cr\u00e8me br\u00fbl\u00e9e",
]


@pytest.fixture(scope="module")
def searcher(target: AbuseTarget) -> tuple[Tenant, dict[str, str]]:
    """A tenant with one conversation per text of SEARCH_TEXTS."""
    tenant = target.tenant("searcher")
    conversations = {}
    for text in SEARCH_TEXTS:
        # No bot reply: its text would be searched too.
        request = text_request(text, processing_hints=R.ProcessingHints(bypass_automation=True))
        sent = target.send(tenant, request)
        conversations[sent.conversation_id] = text
    return tenant, conversations


@fuzz_settings(max_examples=60)
@given(
    query=st.one_of(
        st.text(alphabet="aAbcdlo()[]*+?|\\^$.{}:5-", min_size=1, max_size=8),
        st.sampled_from(SEARCH_TEXTS + [t.upper() for t in SEARCH_TEXTS] + [".*", "\\", "["]),
        # Decomposed accents: stored text is NFC, so is a search.
        st.sampled_from(["cre\u0300me", "BRU\u0302LE\u0301E", "e\u0301e"]),
    )
)
def test_search_is_literal_and_case_insensitive(
    target: AbuseTarget, searcher: tuple[Tenant, dict[str, str]], query: str
) -> None:
    tenant, conversations = searcher
    outcome = check(
        attempt(
            target.stub.ListConversations,
            pb.ListConversationsRequest(search_query=query, page_size=100),
            tenant.metadata,
        ),
        {Code.OK},
        case=f"search {query!r}",
    )
    found = {c.conversation_id for c in outcome.response.conversations}
    wanted = unicodedata.normalize("NFC", query).lower()
    expected = {cid for cid, text in conversations.items() if wanted in text.lower()}
    assert found == expected, f"search {query!r}"


@fuzz_settings(max_examples=40)
@given(query=odd_text, user_id=odd_text, status=int32, channel=int32)
@example(query="\x00", user_id="", status=0, channel=0)
@example(query="a\x00b", user_id="\x00", status=0, channel=0)
@example(query="é", user_id="", status=0, channel=0)
def test_list_conversations_with_odd_filters(
    target: AbuseTarget, query: str, user_id: str, status: int, channel: int
) -> None:
    tenant = target.tenant("list-fuzz")
    outcome = check(
        attempt(
            target.stub.ListConversations,
            build(
                pb.ListConversationsRequest,
                search_query=query,
                user_id=user_id,
                status=status,
                channel=channel,
            ),
            tenant.metadata,
        ),
        {Code.OK, Code.INVALID_ARGUMENT},
        case=f"ListConversations {query!r} {user_id!r} status={status} channel={channel}",
    )
    if outcome.code is Code.OK:
        assert list(outcome.response.conversations) == []  # a new tenant has none


# ------------------------------------------------------------- the end


def test_zz_every_acknowledged_message_is_listed_in_order(target: AbuseTarget) -> None:
    target.final_checks()
