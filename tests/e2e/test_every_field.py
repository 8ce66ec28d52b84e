"""Every request field of every unary RPC and ExportConversation/WatchConversations,
given bad values, over a real channel.

The fields are found by reflection on the request messages (nested ones
too), so a field added to the contract is covered without a new test. Each
gets the values a hostile or broken client sends: 1 MiB strings, NUL and
terminal escapes, CRLF, a bidi override; enum numbers no build knows; the
int extremes and negatives; NaN and infinities. The answer is never
INTERNAL, UNKNOWN or RESOURCE_EXHAUSTED (a status too big for the trailers
reaches the client as that), and an INVALID_ARGUMENT names the field
given the value (or the part of the request holding it). Timestamps have
their own cases in test_validation.py; StreamConversation's frames in
test_input_bounds.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, content_pb2, resources_pb2
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tests.e2e.requests import (
    VALID_CONTENTS,
    TenantClient,
    client_for,
    postback,
    quick_reply,
    send_request,
    text_content,
)
from tests.support.grpc_client import rich_error
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

STRINGS = {
    "1MiB": "x" * (1 << 20),
    "nul": "a\x00b",
    "escape": "\x1b[2J",
    "crlf": "a\r\nb",
    "bidi": "\u202eevil",
}
INT32 = {"negative": -1, "min": -(2**31), "max": 2**31 - 1}
INT64 = {**INT32, "min64": -(2**63), "max64": 2**63 - 1}
ENUMS = {"unknown": 99, "negative": -1}
DOUBLES = {"nan": float("nan"), "inf": float("inf"), "huge": 1e308}
# Their own rules and cases: see the module's docstring.
SKIPPED_TYPES = {"google.protobuf.Timestamp", "google.protobuf.Duration"}
NEVER = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

Path = tuple[FieldDescriptor, ...]


def text_with_everything() -> content_pb2.MessageContent:
    phone = content_pb2.Button(
        type=content_pb2.BUTTON_TYPE_PHONE, title="Call", payload="+14155550123"
    )
    return text_content("hi", quick_replies=[quick_reply()], buttons=[phone, postback()])


# A valid request of each RPC; SendMessage once per shape of content.
BASES: dict[str, list[Callable[[], Message]]] = {
    "SendMessage": [
        lambda: send_request(text_with_everything()),
        lambda: send_request(VALID_CONTENTS[content_pb2.MESSAGE_TYPE_IMAGE]),
        lambda: send_request(VALID_CONTENTS[content_pb2.MESSAGE_TYPE_LOCATION]),
        lambda: send_request(VALID_CONTENTS[content_pb2.MESSAGE_TYPE_CAROUSEL]),
    ],
    "GetConversation": [lambda: pb.GetConversationRequest(conversation_id="c-1")],
    "ListConversations": [lambda: pb.ListConversationsRequest(page_size=5)],
    "ListMessages": [lambda: pb.ListMessagesRequest(conversation_id="c-1")],
    "UpdateConversationStatus": [
        lambda: pb.UpdateConversationStatusRequest(
            conversation_id="c-1", status=resources_pb2.CONVERSATION_STATUS_ACTIVE
        )
    ],
    "ExportConversation": [
        lambda: pb.ExportConversationRequest(conversation_id="c-1", format=pb.EXPORT_FORMAT_CSV)
    ],
    "WatchConversations": [lambda: pb.WatchConversationsRequest()],
}
STREAMING = {"ExportConversation", "WatchConversations"}


def field_paths(message: Descriptor, prefix: Path = ()) -> Iterator[Path]:
    for field in message.fields:
        if field.message_type is not None and field.message_type.full_name in SKIPPED_TYPES:
            continue
        path = (*prefix, field)
        yield path
        nested = field.message_type
        if nested is not None and not nested.full_name.startswith("google.protobuf."):
            yield from field_paths(nested, path)


def bad_values(field: FieldDescriptor) -> dict[str, Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return STRINGS
    if kind == FieldDescriptor.TYPE_ENUM:
        return ENUMS
    if kind == FieldDescriptor.TYPE_INT32:
        return INT32
    if kind == FieldDescriptor.TYPE_INT64:
        return INT64
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return DOUBLES
    if field.message_type is not None and field.message_type.full_name == (
        "google.protobuf.Struct"
    ):
        return {"nul key": {"k\x00": 1}, "1MiB value": {"k": STRINGS["1MiB"]}}
    return {}


def set_value(request: Message, path: Path, value: Any) -> bool:
    """Set the field at `path` (in the first element of repeated parents);
    False where there is nothing to set: a repeated message itself, or a
    list the valid request leaves empty (another base request fills it)."""
    target = request
    for parent in path[:-1]:
        if parent.is_repeated:
            items = getattr(target, parent.name)
            if not items:
                return False
            target = items[0]
        else:
            target = getattr(target, parent.name)
    field = path[-1]
    if field.is_repeated:
        if field.message_type is not None:
            return False
        getattr(target, field.name).append(value)
    elif field.message_type is not None:
        struct = struct_pb2.Struct()
        struct.update(value)
        getattr(target, field.name).CopyFrom(struct)
    else:
        setattr(target, field.name, value)
    return True


def unindexed(field: str) -> str:
    return re.sub(r"\[\d+\]", "", field)


async def call(client: TenantClient, method: str, request: Message) -> None:
    rpc = getattr(client.stub, method)
    if method not in STREAMING:
        await rpc(request, metadata=client.metadata, timeout=10)
        return
    responses = rpc(request, metadata=client.metadata)
    try:
        # A refused request fails at once; one that was taken may wait for
        # events (a watch), which is its answer too.
        async with asyncio.timeout(2):
            async for _ in responses:
                break
    except TimeoutError:
        pass
    finally:
        responses.cancel()


@pytest.mark.parametrize("method", list(BASES))
async def test_no_bad_field_value_is_answered_internal(
    service: ServiceProcess,
    module_stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    request: pytest.FixtureRequest,
    method: str,
) -> None:
    # One call per field and bad value (hundreds for SendMessage): about a
    # second or two per RPC. Tenants are switched to stay under the rate limit.
    problems: list[str] = []
    calls = 0
    client = client_for(service, module_stub, request.node.name)
    for make in BASES[method]:
        descriptor: Any = make().DESCRIPTOR
        for path in field_paths(descriptor):
            name = ".".join(field.name for field in path)
            for label, value in bad_values(path[-1]).items():
                mutated = make()
                if not set_value(mutated, path, value):
                    continue
                calls += 1
                if calls % 150 == 0:
                    client = client_for(service, module_stub, f"{request.node.name}-{calls}")
                try:
                    await call(client, method, mutated)
                except grpc.aio.AioRpcError as error:
                    problem = _problem(error, name)
                    if problem:
                        problems.append(f"{name} = {label}: {problem}")
    assert calls > 0
    assert not problems, "\n".join(problems)


def _problem(error: grpc.aio.AioRpcError, name: str) -> str | None:
    if error.code() in NEVER:
        return f"{error.code().name} {error.details()!r:.200}"
    if error.code() is not grpc.StatusCode.INVALID_ARGUMENT:
        return None  # NOT_FOUND for an id that looks fine, and the like
    fields = [unindexed(field) for field in rich_error(error).fields]
    # The field itself, or the part of the request holding it ("content.media"
    # on a message type that takes none, "request" for what cannot be parsed).
    if any(name == field or name.startswith(field + ".") for field in fields):
        return None
    if fields == ["request"]:
        return None
    return f"INVALID_ARGUMENT naming {fields}"
