"""WhatsApp and Messenger end to end through the real edge: Meta's calls go
to the real Envoy (deploy/envoy/envoy.yaml) in front of the real service,
whose replies go to the Graph API emulator (META_GRAPH_API_BASE_URL).

One service, one Envoy and one emulator for the module; each test has a
tenant (and connection) of its own. What a tenant's operator would do goes
over gRPC (the admin RPC is not exposed at the edge); what the platform
does (the handshake, signed webhooks) and what an HTTP client reads
(ListConversations, ListMessages with a Bearer token) goes through Envoy.
Why a reply FAILED is not on the message (no field for it), only in its
`message.delivery_updated` event: those are read with WatchConversations
over gRPC, whose headers say when it listens (over SSE nothing does).
Everything here stores or reads messages, connections and statuses, so it
runs on both e2e stores, except the handshake (store_independent).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Self

import grpc
import httpx
import pytest
import pytest_asyncio
from chatbot.chat.v1 import channel_connections_pb2 as cc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc
from chatbot.events.v1 import conversation_event_pb2

from adapters.channels.meta import sign
from tests.e2e.requests import TenantClient, client_for
from tests.support.channel_e2e import JsonMessage as Message
from tests.support.channel_e2e import (
    answered_over_http,
    edge_client,
    eventually,
    messages_over_http,
    running_edge,
    running_service,
    service_stub,
)
from tests.support.emulators import RecordedCall, running
from tests.support.emulators.graph_api import VERSION, GraphApiEmulator
from tests.support.envoy import EnvoyEdge
from tests.support.meta_webhooks import (
    digits,
    fixture,
    messenger_event,
    whatsapp_status,
    whatsapp_text,
)
from tests.support.service import ServiceProcess, ServiceStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

Check = Callable[[list[Message]], bool]

# The 24-hour customer service window (chat_service/domain/service_window.py).
WINDOW_REASON = "outside the 24-hour customer service window: a template message is required"


# ---------------------------------------------------------------- fixtures


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def graph() -> AsyncIterator[GraphApiEmulator]:
    async with running(GraphApiEmulator()) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def no_fault_left_over(graph: GraphApiEmulator) -> Iterator[None]:
    """A fault a test queued but did not use must not hit the next test."""
    yield
    graph.faults.clear()


@pytest.fixture(scope="module")
def channel_service(
    service_store: ServiceStore,
    tmp_path_factory: pytest.TempPathFactory,
    graph: GraphApiEmulator,
) -> Iterator[ServiceProcess]:
    environment = graph.service_environment
    with running_service(tmp_path_factory, "channels", environment, service_store) as process:
        yield process


@pytest.fixture(scope="module")
def edge(
    channel_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyEdge]:
    with running_edge(tmp_path_factory, "channels-edge", channel_service) as envoy:
        yield envoy


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin_stub(
    channel_service: ServiceProcess,
) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    async with service_stub(channel_service) as stub:
        yield stub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(edge: EnvoyEdge) -> AsyncIterator[httpx.AsyncClient]:
    async with edge_client(edge) as client:
        yield client


@dataclass(frozen=True)
class Tenant:
    """One tenant: its operator over gRPC, its HTTP callers through Envoy."""

    admin: TenantClient
    http: httpx.AsyncClient

    @property
    def auth(self) -> dict[str, str]:
        return dict(self.admin.metadata)  # {"authorization": "Bearer ..."}

    async def messages(self, channel: str, user: str) -> list[Message]:
        """The user's conversation on `channel`, oldest message first, as
        ListConversations and ListMessages return them over HTTP/JSON."""
        return await messages_over_http(self.http, self.auth, channel, user)


@pytest.fixture
def tenant(
    channel_service: ServiceProcess,
    admin_stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    http: httpx.AsyncClient,
    request: pytest.FixtureRequest,
) -> Tenant:
    return Tenant(client_for(channel_service, admin_stub, request.node.name), http)


# ---------------------------------------------------------------- helpers


class WhatsAppLine:
    """A tenant's WhatsApp number: its connection (made with the admin RPC),
    the emulator's account for it, and Meta's calls to its webhook URL."""

    def __init__(self, tenant: Tenant, graph: GraphApiEmulator) -> None:
        self.tenant = tenant
        self.graph = graph
        self.phone_number_id = digits()
        self.app_secret = f"app-secret-{uuid.uuid4().hex}"
        # Characters a query string must carry encoded (Meta's verify
        # token is whatever the developer typed).
        self.verify_token = f"verify a+b&c=d%25/é {uuid.uuid4().hex}"
        self.access_token = f"EAAtoken{uuid.uuid4().hex}"
        self.connection_id = ""  # both set by connect()
        self.webhook_path = ""

    async def connect(self) -> Self:
        self.graph.add_whatsapp_number(self.phone_number_id, self.access_token)
        response = await self.tenant.admin.stub.CreateChannelConnection(
            pb.CreateChannelConnectionRequest(
                connection=cc.ChannelConnection(
                    display_name="support line",
                    whatsapp=cc.WhatsAppConnection(
                        phone_number_id=self.phone_number_id,
                        app_secret=self.app_secret,
                        verify_token=self.verify_token,
                        access_token=self.access_token,
                    ),
                )
            ),
            metadata=self.tenant.admin.metadata,
        )
        self.connection_id = response.connection.connection_id
        self.webhook_path = response.connection.webhook_path
        return self

    def text(self, user: str, *messages: tuple[str, str], sent_at: float | None = None) -> bytes:
        document = whatsapp_text(self.phone_number_id, user, messages, sent_at=sent_at)
        return json.dumps(document).encode()

    def status(self, user: str, *updates: tuple[str, str], late: int = 0) -> bytes:
        """One `statuses` webhook with `updates` ((wamid, status) pairs), in
        order, `late` seconds after now."""
        documents = [
            whatsapp_status(self.phone_number_id, wamid, status, user, late=late)
            for wamid, status in updates
        ]
        document = documents[0]
        statuses = document["entry"][0]["changes"][0]["value"]["statuses"]
        statuses.extend(d["entry"][0]["changes"][0]["value"]["statuses"][0] for d in documents[1:])
        return json.dumps(document).encode()

    async def post(self, body: bytes) -> httpx.Response:
        """`body` as Meta posts it: signed with the app secret."""
        return await self.post_as_is(body, {"X-Hub-Signature-256": sign(body, self.app_secret)})

    async def post_as_is(
        self, body: bytes | AsyncIterator[bytes], headers: dict[str, str]
    ) -> httpx.Response:
        return await self.tenant.http.post(
            self.webhook_path,
            content=body,
            headers={"Content-Type": "application/json", **headers},
        )

    async def messages(self, user: str) -> list[Message]:
        return await self.tenant.messages("CHANNEL_WHATSAPP", user)

    def calls(self) -> list[RecordedCall]:
        """The emulator's calls for this number, in order (whatever they got)."""
        return [c for c in self.graph.calls if c.path.split("/")[2] == self.phone_number_id]


def odd_bytes(document: dict[str, Any]) -> bytes:
    """`document` written the way no JSON library of ours would write it:
    raw UTF-8 beside a \\u escape, every slash escaped (as Meta writes
    them), tabs, CRLFs, spaces before separators and a trailing blank line.
    The signature covers exactly these bytes."""
    text = json.dumps(document, ensure_ascii=False, indent="\t", separators=(" ,", " :  "))
    text = text.replace("é", "\\u00e9").replace("/", "\\/").replace("\n", "\r\n")
    return (text + "\r\n\n").encode()


def reply_status(expected: str) -> Check:
    """The first reply (the conversation's second message) is `expected`."""
    return lambda messages: messages[1]["delivery_status"] == f"DELIVERY_STATUS_{expected}"


class FailedDeliveries:
    """A WatchConversations call (over gRPC: its headers say when it
    listens) that picks out the events of failed deliveries, whose
    metadata carries the dead letter's reason."""

    def __init__(self, admin: TenantClient) -> None:
        self._call = admin.stub.WatchConversations(
            pb.WatchConversationsRequest(), metadata=admin.metadata
        )

    async def __aenter__(self) -> Self:
        await asyncio.wait_for(self._call.initial_metadata(), 10)
        return self

    async def __aexit__(self, *_: object) -> None:
        self._call.cancel()

    async def first(self, timeout: float = 15) -> conversation_event_pb2.ConversationEvent:
        async with asyncio.timeout(timeout):
            async for response in self._call:
                event = response.event
                if (
                    event.event_type == "message.delivery_updated"
                    and event.metadata["delivery_status"] == "failed"
                ):
                    return event
        raise AssertionError("the watch ended without a failed delivery")


# ------------------------------------------------------------------ WhatsApp


@pytest.mark.store_independent
async def test_the_meta_handshake_over_get(tenant: Tenant, graph: GraphApiEmulator) -> None:
    line = await WhatsAppLine(tenant, graph).connect()

    def hub(token: str) -> dict[str, str]:
        return {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "1158201444"}

    # httpx encodes the space of the token as "+", as Meta does.
    right = await tenant.http.get(line.webhook_path, params=hub(line.verify_token))
    wrong = await tenant.http.get(line.webhook_path, params=hub("not the token"))

    assert right.status_code == 200, right.text
    assert right.headers["content-type"] == "text/plain"
    assert right.content == b"1158201444"
    assert wrong.status_code == 403
    assert wrong.json()["code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]


async def test_a_signed_message_is_stored_answered_delivered_and_read(
    tenant: Tenant, graph: GraphApiEmulator
) -> None:
    line = await WhatsAppLine(tenant, graph).connect()
    user = digits()
    said = "Grüße aus 東京 🚀 — café? https://example.com/a/b"
    body = odd_bytes(whatsapp_text(line.phone_number_id, user, [("wamid.EDGE1", said)]))
    assert b"\\/" in body
    assert b"\\u00e9" in body
    assert "東京".encode() in body

    acknowledged = await line.post(body)

    assert acknowledged.status_code == 200, acknowledged.text
    # Acknowledged once stored, before the reply goes out ("well under a second").
    assert acknowledged.elapsed < timedelta(seconds=1)
    inbound, reply = await eventually(lambda: line.messages(user), answered_over_http(2))
    assert inbound["content"]["text"] == said
    assert inbound["role"] == "MESSAGE_ROLE_USER"
    assert inbound["user_id"] == user
    assert inbound["channel_metadata"]["platform_message_id"] == "wamid.EDGE1"
    assert inbound["channel_metadata"]["additional_data"]["connection_id"] == line.connection_id
    assert reply["reply_to_message_id"] == inbound["message_id"]
    assert reply["delivery_status"] == "DELIVERY_STATUS_SENT"

    # What Meta got: the reply's text, for that user, with the line's token;
    # and the wamid Meta answered is the one the message records.
    (call,) = line.calls()
    assert call.bearer == line.access_token
    answer_text = reply["content"]["text"]
    assert call.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": user,
        "type": "text",
        "text": {"body": answer_text, "preview_url": "://" in answer_text},
    }
    wamid = call.answer["messages"][0]["id"]
    assert reply["channel_metadata"]["platform_message_id"] == wamid

    for status in ("DELIVERED", "READ"):
        moved = await line.post(line.status(user, (wamid, status.lower())))
        assert moved.status_code == 200, moved.text
        await eventually(lambda: line.messages(user), reply_status(status))

    # A late "delivered" does not move READ back. It comes first in a
    # webhook whose next status moves another reply: once that one shows,
    # the late one was handled (a webhook's statuses are handled in order).
    await line.post(line.text(user, ("wamid.EDGE2", "still there?")))
    await eventually(lambda: line.messages(user), answered_over_http(4))
    second_wamid = line.calls()[1].answer["messages"][0]["id"]
    late = await line.post(line.status(user, (wamid, "delivered"), (second_wamid, "read"), late=60))
    assert late.status_code == 200, late.text
    messages = await eventually(
        lambda: line.messages(user), lambda m: m[3]["delivery_status"] == "DELIVERY_STATUS_READ"
    )
    assert messages[1]["delivery_status"] == "DELIVERY_STATUS_READ"


async def test_a_re_serialized_or_unsigned_body_is_a_401_and_stores_nothing(
    tenant: Tenant, graph: GraphApiEmulator
) -> None:
    line = await WhatsAppLine(tenant, graph).connect()
    user = digits()
    body = odd_bytes(whatsapp_text(line.phone_number_id, user, [("wamid.REFUSED", "café/1")]))
    signature = sign(body, line.app_secret)
    # The same JSON, as a proxy that parses and writes it again would pass it on.
    reserialized = json.dumps(json.loads(body)).encode()
    assert reserialized != body
    assert json.loads(reserialized) == json.loads(body)

    refusals = [
        await line.post_as_is(reserialized, {"X-Hub-Signature-256": signature}),
        await line.post_as_is(body, {}),
    ]

    for refused in refusals:
        assert refused.status_code == 401, refused.text
        assert refused.json()["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    # The same user's next, well signed message is the first one stored.
    accepted = await line.post(line.text(user, ("wamid.ACCEPTED", "hello")))
    assert accepted.status_code == 200, accepted.text
    inbound, _ = await eventually(lambda: line.messages(user), answered_over_http(2))
    assert inbound["channel_metadata"]["platform_message_id"] == "wamid.ACCEPTED"
    assert len(line.calls()) == 1


async def test_a_redelivered_webhook_is_one_message_with_one_reply(
    tenant: Tenant, graph: GraphApiEmulator
) -> None:
    line = await WhatsAppLine(tenant, graph).connect()
    user = digits()
    body = line.text(user, ("wamid.TWICE", "only once"))

    async def in_pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64):
            yield body[start : start + 64]

    first = await line.post(body)
    # Meta's redelivery, this time sent chunked: the same bytes, the same call.
    again = await line.post_as_is(in_pieces(), {"X-Hub-Signature-256": sign(body, line.app_secret)})

    assert (first.status_code, again.status_code) == (200, 200)
    await eventually(lambda: line.messages(user), answered_over_http(2))
    # A later message, answered, shows everything before it was handled.
    await line.post(line.text(user, ("wamid.AFTER", "and this")))
    messages = await eventually(lambda: line.messages(user), answered_over_http(4))
    assert [m["content"]["text"] for m in messages[::2]] == ["only once", "and this"]
    assert [c.status for c in line.calls()] == [200, 200]


async def test_a_reply_outside_the_24_hour_window_fails_with_template_required(
    tenant: Tenant, graph: GraphApiEmulator
) -> None:
    line = await WhatsAppLine(tenant, graph).connect()
    user = digits()
    # Meta delivers a message written 25 hours ago (a long backlog): the
    # window runs from when the user wrote, which has passed.
    written = time.time() - 25 * 3600

    async with FailedDeliveries(tenant.admin) as failed:
        await line.post(line.text(user, ("wamid.OLD", "anyone?"), sent_at=written))
        event = await failed.first()

    inbound, reply = await eventually(lambda: line.messages(user), answered_over_http(2))
    assert inbound["content"]["text"] == "anyone?"
    assert reply["delivery_status"] == "DELIVERY_STATUS_FAILED"
    assert reply["channel_metadata"].get("platform_message_id", "") == ""
    assert event.message_id == reply["message_id"]
    assert event.metadata["error"] == WINDOW_REASON
    assert line.calls() == []  # refused here, not sent to fail at Meta


async def test_a_throttled_reply_is_sent_after_the_wait_meta_asked_for(
    tenant: Tenant, graph: GraphApiEmulator
) -> None:
    line = await WhatsAppLine(tenant, graph).connect()
    user = digits()
    graph.throttle(1, retry_after="1")

    await line.post(line.text(user, ("wamid.BUSY", "are you busy?")))

    _, reply = await eventually(lambda: line.messages(user), answered_over_http(2))
    assert reply["delivery_status"] == "DELIVERY_STATUS_SENT"
    throttled, sent = line.calls()
    assert (throttled.status, sent.status) == (429, 200)
    assert sent.at - throttled.at >= 1.0  # Retry-After: 1 honoured
    assert reply["channel_metadata"]["platform_message_id"] == sent.answer["messages"][0]["id"]


async def test_a_permanent_graph_error_fails_the_reply_with_its_code_and_title(
    tenant: Tenant, graph: GraphApiEmulator
) -> None:
    line = await WhatsAppLine(tenant, graph).connect()
    user = digits()
    graph.graph_error(131026, "(#131026) Message undeliverable")

    async with FailedDeliveries(tenant.admin) as failed:
        await line.post(line.text(user, ("wamid.GONE", "hello?")))
        event = await failed.first()

    _, reply = await eventually(lambda: line.messages(user), answered_over_http(2))
    assert reply["delivery_status"] == "DELIVERY_STATUS_FAILED"
    assert event.message_id == reply["message_id"]
    assert event.metadata["error"] == "131026: Message undeliverable"
    assert event.metadata["dead_letter"] is True
    assert event.metadata["attempts"] == 1  # permanent: not retried
    assert [c.status for c in line.calls()] == [400]


async def test_a_failed_status_from_meta_fails_the_reply_with_its_error(
    tenant: Tenant, graph: GraphApiEmulator
) -> None:
    line = await WhatsAppLine(tenant, graph).connect()
    user = digits()
    await line.post(line.text(user, ("wamid.LOST", "hello")))
    _, reply = await eventually(lambda: line.messages(user), answered_over_http(2))
    wamid = reply["channel_metadata"]["platform_message_id"]
    # Meta took the reply, then could not deliver it (the documented payload).
    document = fixture("whatsapp", "status_failed")
    value = document["entry"][0]["changes"][0]["value"]
    value["metadata"]["phone_number_id"] = line.phone_number_id
    value["statuses"][0] |= {"id": wamid, "recipient_id": user}

    async with FailedDeliveries(tenant.admin) as failed:
        assert (await line.post(json.dumps(document).encode())).status_code == 200
        event = await failed.first()

    messages = await eventually(lambda: line.messages(user), reply_status("FAILED"))
    assert event.message_id == messages[1]["message_id"]
    assert event.metadata["error"] == "131026: Message undeliverable"
    assert event.metadata["source"] == "platform"
    # FAILED is final: a "read" that comes after it changes nothing (seen
    # once the webhook's next status, for another reply, has moved that one).
    await line.post(line.text(user, ("wamid.LOST2", "hello again")))
    await eventually(lambda: line.messages(user), answered_over_http(4))
    second_wamid = line.calls()[1].answer["messages"][0]["id"]
    await line.post(line.status(user, (wamid, "read"), (second_wamid, "read"), late=60))
    messages = await eventually(
        lambda: line.messages(user), lambda m: m[3]["delivery_status"] == "DELIVERY_STATUS_READ"
    )
    assert messages[1]["delivery_status"] == "DELIVERY_STATUS_FAILED"


# ----------------------------------------------------------------- Messenger


async def test_a_messenger_message_is_answered_and_read_by_its_watermark(
    tenant: Tenant, graph: GraphApiEmulator
) -> None:
    page_id, psid = digits(), digits()
    app_secret, token = f"fb-{uuid.uuid4().hex}", f"EAApage{uuid.uuid4().hex}"
    graph.add_messenger_page(page_id, token)
    created = await tenant.admin.stub.CreateChannelConnection(
        pb.CreateChannelConnectionRequest(
            connection=cc.ChannelConnection(
                messenger=cc.MessengerConnection(
                    page_id=page_id,
                    app_secret=app_secret,
                    verify_token="v",
                    page_access_token=token,
                )
            )
        ),
        metadata=tenant.admin.metadata,
    )
    path = created.connection.webhook_path
    who = {"sender": {"id": psid}, "recipient": {"id": page_id}}

    async def post(**event: Any) -> None:
        body = json.dumps(messenger_event(page_id, **who, **event)).encode()
        answer = await tenant.http.post(
            path,
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": sign(body, app_secret),
            },
        )
        assert answer.status_code == 200, answer.text

    def messages() -> Awaitable[list[Message]]:
        return tenant.messages("CHANNEL_MESSENGER", psid)

    await post(timestamp=int(time.time() * 1000), message={"mid": "m_EDGE1", "text": "salut"})

    inbound, reply = await eventually(messages, answered_over_http(2))
    assert inbound["content"]["text"] == "salut"
    assert reply["delivery_status"] == "DELIVERY_STATUS_SENT"
    (call,) = [c for c in graph.calls if c.path.split("/")[2] in (page_id, "me")]
    assert call.path == f"/{VERSION}/{page_id}/messages"
    assert call.bearer == token
    assert call.body["recipient"] == {"id": psid}
    assert call.body["message"]["text"] == reply["content"]["text"]
    assert reply["channel_metadata"]["platform_message_id"] == call.answer["message_id"]

    # A read receipt names no message: everything sent up to its watermark.
    await post(read={"watermark": int(time.time() * 1000) + 1000})
    await eventually(messages, reply_status("READ"))
