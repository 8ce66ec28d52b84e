"""Platform webhooks end to end: the real server (on each e2e store) with a
real connection made through the admin RPC, Meta-signed webhooks over real
gRPC (HandleWebhook, the signature in the `x-hub-signature-256` metadata as
Envoy forwards it), the bot's reply delivered to the Graph API emulator
(META_GRAPH_API_BASE_URL), and the platform's status webhooks moving the
reply's delivery status; each step seen through the RPCs."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from chatbot.chat.v1 import channel_connections_pb2 as cc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from adapters.channels.meta import sign
from adapters.mongo import MongoStore
from adapters.mongo.channel_store import MongoChannelStore
from adapters.sqlite.channel_store import SqliteChannelStore
from adapters.sqlite.store import SqliteStore
from chat_service.domain.enums import Channel
from chat_service.domain.webhooks import UNSUPPORTED_REPLY, body_dedup_key
from chat_service.ports import WebhookDelivery, WebhookInbox
from tests.e2e.requests import TenantClient, client_for, failure
from tests.support.channel_e2e import (
    answered,
    eventually,
    messages_over_grpc,
    running_service,
    service_stub,
)
from tests.support.emulators import running
from tests.support.emulators.graph_api import GraphApiEmulator
from tests.support.meta_webhooks import (
    FIXTURES,
    digits,
    messenger_event,
    service_environment,
    whatsapp_status,
    whatsapp_text,
)
from tests.support.service import ServiceProcess, ServiceStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

WHATSAPP = resources_pb2.CHANNEL_WHATSAPP
MESSENGER = resources_pb2.CHANNEL_MESSENGER


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def graph() -> AsyncIterator[GraphApiEmulator]:
    async with running(GraphApiEmulator()) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def webhook_service(
    service_store: ServiceStore,
    tmp_path_factory: pytest.TempPathFactory,
    graph: GraphApiEmulator,
) -> Iterator[ServiceProcess]:
    environment = graph.service_environment
    with running_service(tmp_path_factory, "webhooks", environment, service_store) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def webhook_stub(
    webhook_service: ServiceProcess,
) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    async with service_stub(webhook_service) as stub:
        yield stub


@pytest.fixture
def tenant(
    webhook_service: ServiceProcess,
    webhook_stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    request: pytest.FixtureRequest,
) -> TenantClient:
    return client_for(webhook_service, webhook_stub, request.node.name)


# ---------------------------------------------------------------- helpers


class Line:
    """One tenant's WhatsApp number: its connection (made through the
    admin RPC) and the emulator's account for it."""

    def __init__(self, client: TenantClient, graph: GraphApiEmulator) -> None:
        self.client = client
        self.graph = graph
        self.phone_number_id = digits()
        self.app_secret = f"app-secret-{uuid.uuid4().hex}"
        self.verify_token = f"verify-{uuid.uuid4().hex}"
        self.access_token = f"token-{uuid.uuid4().hex}"

    async def connect(self) -> cc.ChannelConnection:
        self.graph.add_whatsapp_number(self.phone_number_id, self.access_token)
        response = await self.client.stub.CreateChannelConnection(
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
            metadata=self.client.metadata,
        )
        return response.connection

    def text(self, user: str, *messages: tuple[str, str]) -> bytes:
        """A documented text-message webhook carrying `messages` ((wamid,
        text) pairs) from `user`, sent now."""
        document = whatsapp_text(self.phone_number_id, user, messages)
        # Non-ASCII and an escaped slash, as Meta writes them: the signature
        # is over these bytes.
        return json.dumps(document, ensure_ascii=True).replace("/", "\\/").encode()

    def status(self, platform_id: str, status: str, user: str, *, late: int = 0) -> bytes:
        """A status webhook for our message `platform_id`; `late` seconds
        after now (so that a repeated status is another call, not the same)."""
        document = whatsapp_status(self.phone_number_id, platform_id, status, user, late=late)
        return json.dumps(document).encode()

    async def post(self, body: bytes, *, secret: str | None = None) -> pb.HandleWebhookResponse:
        signature = sign(body, self.app_secret if secret is None else secret)
        return await self.client.stub.HandleWebhook(
            webhook_request(self.client.tenant, "whatsapp", body),
            metadata=(("x-hub-signature-256", signature),),
        )

    async def messages(self, user: str) -> list[resources_pb2.Message]:
        """The user's conversation on this line, oldest message first."""
        return await messages_over_grpc(self.client, WHATSAPP, user)


def webhook_request(tenant_id: str, platform: str, body: bytes) -> pb.HandleWebhookRequest:
    """What Envoy's transcoder makes of a platform's POST."""
    request = pb.HandleWebhookRequest(tenant_id=tenant_id, platform=platform)
    request.body.content_type = "application/json"
    request.body.data = body
    return request


def reply_status(
    expected: resources_pb2.DeliveryStatus.ValueType,
) -> Callable[[list[resources_pb2.Message]], bool]:
    """The first reply (the conversation's second message) has `expected`."""
    return lambda messages: messages[1].delivery_status == expected


# ------------------------------------------------------------------ tests


async def test_a_signed_message_is_answered_through_the_platform_and_read(
    tenant: TenantClient, graph: GraphApiEmulator
) -> None:
    line = Line(tenant, graph)
    connection = await line.connect()
    user = digits()

    response = await line.post(line.text(user, ("wamid.E2E1", "hello from whatsapp é")))
    assert (response.body.data, response.body.content_type) == (b"", "text/plain")

    inbound, reply = await eventually(lambda: line.messages(user), answered(2))
    assert inbound.content.text == "hello from whatsapp é"
    assert inbound.channel_metadata.platform_message_id == "wamid.E2E1"
    assert inbound.channel_metadata.additional_data["connection_id"] == connection.connection_id
    assert reply.reply_to_message_id == inbound.message_id
    assert reply.delivery_status == resources_pb2.DELIVERY_STATUS_SENT
    platform_id = reply.channel_metadata.platform_message_id
    assert platform_id.startswith("wamid.")
    # What the emulator (Meta) got: the reply, to that user, with the line's token.
    (sent,) = graph.sent(line.phone_number_id)
    assert (sent["messaging_product"], sent["to"]) == ("whatsapp", user)
    assert reply.content.text in json.dumps(sent, ensure_ascii=False)

    for status, expected in (
        ("delivered", resources_pb2.DELIVERY_STATUS_DELIVERED),
        ("read", resources_pb2.DELIVERY_STATUS_READ),
    ):
        await line.post(line.status(platform_id, status, user))
        await eventually(lambda: line.messages(user), reply_status(expected))
    # A late "delivered" never moves READ back; a later message shows the
    # worker went past it.
    await line.post(line.status(platform_id, "delivered", user, late=60))
    await line.post(line.text(user, ("wamid.E2E2", "still there?")))
    messages = await eventually(lambda: line.messages(user), answered(4))
    assert messages[1].delivery_status == resources_pb2.DELIVERY_STATUS_READ


async def test_a_redelivered_message_is_one_message_with_one_reply(
    tenant: TenantClient, graph: GraphApiEmulator
) -> None:
    line = Line(tenant, graph)
    await line.connect()
    user = digits()
    body = line.text(user, ("wamid.DUP", "only once"))

    await line.post(body)
    await line.post(body)  # Meta's redelivery of the same call
    await eventually(lambda: line.messages(user), answered(2))
    # The same wamid again, batched with a new message: once the new one is
    # answered, the whole call was handled.
    await line.post(line.text(user, ("wamid.DUP", "only once"), ("wamid.NEW", "and this")))
    messages = await eventually(lambda: line.messages(user), answered(4))

    assert [m.content.text for m in messages[::2]] == ["only once", "and this"]
    assert len(graph.sent(line.phone_number_id)) == 2


async def test_a_bad_signature_is_unauthenticated_and_nothing_is_stored(
    tenant: TenantClient, graph: GraphApiEmulator
) -> None:
    line = Line(tenant, graph)
    await line.connect()
    user = digits()

    error = await failure(line.post(line.text(user, ("wamid.FORGED", "forged")), secret="guess"))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "WEBHOOK_SIGNATURE_INVALID"
    # The same refusal for a tenant that does not exist.
    stranger = await failure(
        line.client.stub.HandleWebhook(
            webhook_request(f"nobody-{uuid.uuid4().hex}", "whatsapp", b"{}"),
            metadata=(("x-hub-signature-256", sign(b"{}", "guess")),),
        )
    )
    assert (stranger.code, stranger.reason, stranger.message) == (
        error.code,
        error.reason,
        error.message,
    )

    await line.post(line.text(user, ("wamid.REAL", "real")))
    messages = await eventually(lambda: line.messages(user), answered(2))
    assert messages[0].content.text == "real"


async def test_an_unsupported_message_gets_the_polite_reply(
    tenant: TenantClient, graph: GraphApiEmulator
) -> None:
    line = Line(tenant, graph)
    await line.connect()
    user = digits()
    document = json.loads((FIXTURES / "whatsapp" / "reaction_message.json").read_bytes())
    value = document["entry"][0]["changes"][0]["value"]
    value["metadata"]["phone_number_id"] = line.phone_number_id
    value["contacts"][0]["wa_id"] = user
    value["messages"][0] |= {"from": user, "timestamp": str(int(time.time()))}

    await line.post(json.dumps(document).encode())
    inbound, reply = await eventually(lambda: line.messages(user), answered(2))
    assert inbound.content.text == "[unsupported WhatsApp message: reaction]"
    assert reply.content.text == UNSUPPORTED_REPLY


async def test_messenger_receipts_move_the_reply_by_their_watermark(
    tenant: TenantClient, graph: GraphApiEmulator
) -> None:
    page_id, app_secret, token, psid = (
        digits(),
        f"fb-{uuid.uuid4().hex}",
        uuid.uuid4().hex,
        digits(),
    )
    graph.add_messenger_page(page_id, token)
    await tenant.stub.CreateChannelConnection(
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
        metadata=tenant.metadata,
    )

    def event(**fields: Any) -> bytes:
        return json.dumps(messenger_event(page_id, **fields)).encode()

    async def post(body: bytes) -> None:
        await tenant.stub.HandleWebhook(
            webhook_request(tenant.tenant, "messenger", body),
            metadata=(("x-hub-signature-256", sign(body, app_secret)),),
        )

    async def messages() -> list[resources_pb2.Message]:
        return await messages_over_grpc(tenant, MESSENGER, psid)

    who = {"sender": {"id": psid}, "recipient": {"id": page_id}}
    await post(
        event(**who, timestamp=int(time.time() * 1000), message={"mid": "m_E2E1", "text": "hi"})
    )
    _, reply = await eventually(messages, answered(2))
    assert reply.delivery_status == resources_pb2.DELIVERY_STATUS_SENT
    assert reply.channel_metadata.platform_message_id.startswith("m_")

    # Receipts name no message: everything sent to the user up to the watermark.
    watermark = int(time.time() * 1000) + 1000
    await post(event(**who, delivery={"watermark": watermark}))
    await eventually(messages, reply_status(resources_pb2.DELIVERY_STATUS_DELIVERED))
    await post(event(**who, read={"watermark": watermark}))
    await eventually(messages, reply_status(resources_pb2.DELIVERY_STATUS_READ))


async def test_the_meta_handshake(tenant: TenantClient, graph: GraphApiEmulator) -> None:
    line = Line(tenant, graph)
    await line.connect()

    def verify(token: str) -> Awaitable[pb.VerifyWebhookResponse]:
        return tenant.stub.VerifyWebhook(
            pb.VerifyWebhookRequest(
                tenant_id=tenant.tenant,
                platform="whatsapp",
                hub=pb.HubChallenge(mode="subscribe", verify_token=token, challenge="1158201444"),
            )
        )

    answer = await verify(line.verify_token)
    assert (answer.body.data, answer.body.content_type) == (b"1158201444", "text/plain")
    error = await failure(verify("wrong"))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED


async def test_an_acknowledged_webhook_is_handled_after_a_restart(
    service_store: ServiceStore, graph: GraphApiEmulator, tmp_path: Path
) -> None:
    """The process acknowledged a webhook (it is in the inbox) and died before
    handling it: the next start handles it."""
    service = ServiceProcess(tmp_path / "service", service_environment(graph), store=service_store)
    service.start()
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            client = client_for(service, chat_service_pb2_grpc.ChatServiceStub(channel), "restart")
            line = Line(client, graph)
            await line.connect()
            user = digits()
            body = line.text(user, ("wamid.LEFT", "left in the inbox"))
            service.kill()

            # What HandleWebhook had stored when the process died.
            await put_in_inbox(
                service,
                WebhookDelivery(
                    tenant_id=client.tenant,
                    channel=Channel.WHATSAPP,
                    dedup_key=body_dedup_key(body),
                    body=body,
                    content_type="application/json",
                    received_at=datetime.now(UTC),
                ),
            )
            service.start()
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = chat_service_pb2_grpc.ChatServiceStub(channel)
            line.client = TenantClient(stub, client.tenant, client.metadata)
            inbound, reply = await eventually(lambda: line.messages(user), answered(2))
            assert inbound.content.text == "left in the inbox"
            assert reply.delivery_status == resources_pb2.DELIVERY_STATUS_SENT
    finally:
        service.stop()


async def put_in_inbox(service: ServiceProcess, delivery: WebhookDelivery) -> None:
    store = await service.open_store()
    try:
        inbox: WebhookInbox
        if isinstance(store, MongoStore):
            inbox = MongoChannelStore(store)
        else:
            assert isinstance(store, SqliteStore)
            inbox = SqliteChannelStore(store)
        assert await inbox.put(delivery)
    finally:
        await store.close()
