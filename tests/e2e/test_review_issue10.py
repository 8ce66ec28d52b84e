"""Regressions found reviewing issue 10, at the edge of the real server: a
webhook body signed with the tenant's own app secret (so past the signature
check) but of a shape the parsers did not expect got INTERNAL instead of an
answer, and a text Python cannot encode poisoned the inbox. Each failed
before its fix (adapters/channels/meta.py, messenger.py)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import pytest_asyncio
from chatbot.chat.v1 import channel_connections_pb2 as cc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from adapters.channels.meta import sign
from tests.e2e.requests import TenantClient, client_for, failure
from tests.support.channel_e2e import running_service, service_stub
from tests.support.service import ServiceProcess, ServiceStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

PHONE_NUMBER_ID = "106540352242922"
PAGE_ID = "682498302938465"
APP_SECRET = "review-app-secret"
USER = "16505551234"


@pytest.fixture(scope="module")
def review_service(
    service_store: ServiceStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    # Replies go nowhere (a closed local port), never to the real Graph API.
    environment = {"META_GRAPH_API_BASE_URL": "http://127.0.0.1:9/v23.0"}
    with running_service(tmp_path_factory, "review", environment, service_store) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(
    review_service: ServiceProcess,
) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    async with service_stub(review_service) as stub:
        yield stub


@pytest_asyncio.fixture(loop_scope="module")
async def tenant(
    review_service: ServiceProcess,
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    request: pytest.FixtureRequest,
) -> TenantClient:
    client = client_for(review_service, stub, request.node.name)
    for connection in (
        cc.ChannelConnection(
            whatsapp=cc.WhatsAppConnection(
                phone_number_id=PHONE_NUMBER_ID,
                app_secret=APP_SECRET,
                verify_token="v",
                access_token="t",
            )
        ),
        cc.ChannelConnection(
            messenger=cc.MessengerConnection(
                page_id=PAGE_ID, app_secret=APP_SECRET, verify_token="v", page_access_token="t"
            )
        ),
    ):
        await stub.CreateChannelConnection(
            pb.CreateChannelConnectionRequest(connection=connection), metadata=client.metadata
        )
    return client


async def post(client: TenantClient, platform: str, body: bytes) -> pb.HandleWebhookResponse:
    request = pb.HandleWebhookRequest(tenant_id=client.tenant, platform=platform)
    request.body.content_type = "application/json"
    request.body.data = body
    signature = (("x-hub-signature-256", sign(body, APP_SECRET)),)
    return await client.stub.HandleWebhook(request, metadata=signature)


def whatsapp_message(message: str) -> bytes:
    return (
        '{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",'
        '"value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"'
        + PHONE_NUMBER_ID
        + '"},"messages":['
        + message
        + "]}}]}]}"
    ).encode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # A decimal string past Python's int conversion limit.
        (
            whatsapp_message(
                '{"id":"wamid.T","from":"' + USER + '","timestamp":"' + "9" * 5000 + '",'
                '"type":"text","text":{"body":"hi"}}'
            ),
            "entry[0].changes[0].value.messages[0].timestamp",
        ),
        # An integer too large for a float.
        (
            whatsapp_message(
                '{"id":"wamid.L","from":"' + USER + '","timestamp":"1700000000",'
                '"type":"location","location":{"latitude":1' + "0" * 400 + ',"longitude":2}}'
            ),
            "entry[0].changes[0].value.messages[0].location.latitude",
        ),
    ],
    ids=["huge-timestamp-string", "huge-latitude"],
)
async def test_a_signed_body_of_absurd_numbers_is_invalid_argument_not_internal(
    tenant: TenantClient, body: bytes, field: str
) -> None:
    error = await failure(post(tenant, "whatsapp", body))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.fields == [field]


async def test_a_signed_messenger_attachment_with_an_unreadable_url_is_acknowledged(
    tenant: TenantClient,
) -> None:
    body = json.dumps(
        {
            "object": "page",
            "entry": [
                {
                    "id": PAGE_ID,
                    "time": 1,
                    "messaging": [
                        {
                            "sender": {"id": USER},
                            "recipient": {"id": PAGE_ID},
                            "timestamp": 1_700_000_000_000,
                            "message": {
                                "mid": f"m_{uuid.uuid4().hex}",
                                "attachments": [
                                    {"type": "image", "payload": {"url": "https://[::1/cat.jpg"}}
                                ],
                            },
                        }
                    ],
                }
            ],
        }
    ).encode()
    answer = await post(tenant, "messenger", body)  # INTERNAL before the fix
    assert answer.body.data == b""


async def test_a_lone_surrogate_is_stored_as_the_replacement_character(
    tenant: TenantClient,
) -> None:
    # Half an emoji's surrogate pair, escaped: Python keeps it, and every
    # attempt to store the message failed on it until it was dead-lettered.
    body = whatsapp_message(
        '{"id":"wamid.S","from":"' + USER + '","timestamp":"1700000000",'
        '"type":"text","text":{"body":"broken \\ud83d emoji"}}'
    )
    await post(tenant, "whatsapp", body)

    messages = await _user_messages(tenant)
    assert messages[0].content.text == "broken \ufffd emoji"


async def _user_messages(
    client: TenantClient, timeout: float = 15.0
) -> list[resources_pb2.Message]:
    """The messages of the tenant's one conversation, once the inbox worker
    stored them (it runs after the webhook was answered)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = await client.list_conversations()
        if listed.conversations:
            conversation_id = listed.conversations[0].conversation_id
            page = await client.list_messages(conversation_id)
            if page.messages:
                return list(page.messages)
        assert time.monotonic() < deadline, "the webhook's message was never stored"
        await asyncio.sleep(0.05)
