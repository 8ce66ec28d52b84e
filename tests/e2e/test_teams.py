"""Microsoft Teams end to end through the real edge: the Bot Connector's
calls go to the real Envoy (deploy/envoy/envoy.yaml) in front of the real
service, which checks their tokens against the Bot Connector emulator's
published keys (TEAMS_OPENID_METADATA_URL) and posts its replies to the
emulator's activities endpoint with a token from the emulator's token
endpoint (TEAMS_TOKEN_URL).

The Bot Connector's `Authorization: Bearer` token is not a token of the
service: these calls passing Envoy and the service's auth interceptor
(HandleWebhook is a public method) while the same header on any other RPC
would be refused is part of what is tested here.

One service, one Envoy and one emulator for the module; each test has a
tenant and a bot (app id) of its own. The operator's steps go over gRPC
(the admin RPC is not at the edge); the platform's calls, and what an HTTP
client reads, through Envoy.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import pytest_asyncio
from chatbot.chat.v1 import channel_connections_pb2 as cc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc

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
from tests.support.emulators.bot_connector import BotConnectorEmulator, new_app_id
from tests.support.envoy import EnvoyEdge
from tests.support.service import ServiceProcess, ServiceStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "teams"
SENT = "DELIVERY_STATUS_SENT"


# ---------------------------------------------------------------- fixtures


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def connector() -> AsyncIterator[BotConnectorEmulator]:
    async with running(BotConnectorEmulator()) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def no_fault_left_over(connector: BotConnectorEmulator) -> Iterator[None]:
    yield
    connector.faults.clear()
    connector.token_faults.clear()


@pytest.fixture(scope="module")
def teams_service(
    service_store: ServiceStore,
    tmp_path_factory: pytest.TempPathFactory,
    connector: BotConnectorEmulator,
) -> Iterator[ServiceProcess]:
    environment = connector.service_environment
    with running_service(tmp_path_factory, "teams", environment, service_store) as process:
        yield process


@pytest.fixture(scope="module")
def edge(
    teams_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyEdge]:
    with running_edge(tmp_path_factory, "teams-edge", teams_service) as envoy:
        yield envoy


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin_stub(
    teams_service: ServiceProcess,
) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    async with service_stub(teams_service) as stub:
        yield stub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(edge: EnvoyEdge) -> AsyncIterator[httpx.AsyncClient]:
    async with edge_client(edge) as client:
        yield client


@pytest.fixture
def bot(
    teams_service: ServiceProcess,
    admin_stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    http: httpx.AsyncClient,
    connector: BotConnectorEmulator,
    request: pytest.FixtureRequest,
) -> Bot:
    return Bot(client_for(teams_service, admin_stub, request.node.name), http, connector)


# ---------------------------------------------------------------- helpers


@dataclass
class Bot:
    """One tenant's Teams bot: its connection (made with the admin RPC), the
    emulator's registration of it, and the Bot Connector's calls to it."""

    admin: TenantClient
    http: httpx.AsyncClient
    connector: BotConnectorEmulator
    app_id: str = ""
    password: str = ""
    webhook_path: str = ""
    connection_id: str = ""

    async def connect(self) -> Self:
        self.app_id, self.password = new_app_id(), f"secret-{uuid.uuid4().hex}"
        self.connector.add_bot(self.app_id, self.password)
        response = await self.admin.stub.CreateChannelConnection(
            pb.CreateChannelConnectionRequest(
                connection=cc.ChannelConnection(
                    display_name="helpdesk bot",
                    teams=cc.TeamsConnection(app_id=self.app_id, app_password=self.password),
                )
            ),
            metadata=self.admin.metadata,
        )
        self.connection_id = response.connection.connection_id
        self.webhook_path = response.connection.webhook_path
        return self

    def activity(self, name: str = "personal_message", **changes: Any) -> dict[str, Any]:
        """A documented activity to this bot, from the emulator's serviceUrl,
        in a conversation of its own."""
        document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_bytes())
        document["recipient"]["id"] = f"28:{self.app_id}"
        document["serviceUrl"] = self.connector.service_url
        document["conversation"]["id"] = f"a:{uuid.uuid4().hex}"
        document["id"] = str(uuid.uuid4().int)[:13]
        for entity in document.get("entities", []):
            if entity.get("type") == "mention":
                entity["mentioned"]["id"] = f"28:{self.app_id}"
        document.update(changes)
        return document

    async def post(self, activity: dict[str, Any], token: str | None = None) -> httpx.Response:
        """`activity` as the Bot Connector posts it, with its signed token."""
        token = self.connector.mint(self.app_id) if token is None else token
        return await self.http.post(
            self.webhook_path,
            content=json.dumps(activity).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )

    async def messages(self, user: str) -> list[Message]:
        """The user's Teams conversation, oldest message first, over HTTP/JSON."""
        return await messages_over_http(self.http, dict(self.admin.metadata), "CHANNEL_TEAMS", user)

    def replies(self, conversation_id: str) -> list[RecordedCall]:
        return self.connector.activities(conversation_id)


def user_of(activity: dict[str, Any]) -> str:
    return str(activity["from"].get("aadObjectId") or activity["from"]["id"])


# ------------------------------------------------------------------ tests


async def test_a_signed_activity_is_answered_in_its_conversation(bot: Bot) -> None:
    await bot.connect()
    activity = bot.activity()
    conversation_id, user = activity["conversation"]["id"], user_of(activity)

    response = await bot.post(activity)
    assert (response.status_code, response.content) == (200, b"")

    inbound, reply = await eventually(lambda: bot.messages(user), answered_over_http(2, SENT))
    assert inbound["content"]["text"] == activity["text"]
    metadata = inbound["channel_metadata"]
    assert metadata["platform_message_id"] == f"{conversation_id}/{activity['id']}"
    assert metadata["additional_data"]["connection_id"] == bot.connection_id
    assert metadata["additional_data"]["teams_service_url"] == bot.connector.service_url
    # The reply went to that conversation, answering that activity, with a
    # token the token endpoint issued for this bot.
    (call,) = bot.replies(conversation_id)
    assert call.query["replyTo"] == activity["id"]
    assert call.body["replyToId"] == activity["id"]
    assert call.body["text"] == reply["content"]["text"]
    assert call.body["recipient"] == {"id": activity["from"]["id"]}
    grants = [c for c in bot.connector.token_requests() if c.body["client_id"] == bot.app_id]
    assert [g.status for g in grants] == [200]
    assert reply["reply_to_message_id"] == inbound["message_id"]
    assert reply["channel_metadata"]["platform_message_id"] == call.answer["id"]


async def test_a_channel_mention_is_answered_in_its_thread(bot: Bot) -> None:
    await bot.connect()
    activity = bot.activity("channel_mention")
    thread = f"19:{uuid.uuid4().hex}@thread.skype;messageid={activity['id']}"
    activity["conversation"]["id"] = thread
    user = user_of(activity)

    assert (await bot.post(activity)).status_code == 200

    inbound, _ = await eventually(lambda: bot.messages(user), answered_over_http(2, SENT))
    assert inbound["content"]["text"] == "where is my order?"  # without the @mention
    (call,) = bot.replies(thread)
    assert call.query == {"conversation": thread, "replyTo": activity["id"]}


async def test_a_redelivered_activity_is_one_message_with_one_reply(bot: Bot) -> None:
    await bot.connect()
    activity = bot.activity()
    user = user_of(activity)

    for _ in range(3):
        assert (await bot.post(activity)).status_code == 200

    await eventually(lambda: bot.messages(user), answered_over_http(2, SENT))
    assert len(bot.replies(activity["conversation"]["id"])) == 1


async def test_a_throttled_reply_is_sent_after_the_wait(bot: Bot) -> None:
    await bot.connect()
    bot.connector.throttle(retry_after="1")
    activity = bot.activity()

    assert (await bot.post(activity)).status_code == 200

    await eventually(
        lambda: bot.messages(user_of(activity)), answered_over_http(2, SENT), timeout=30
    )
    statuses = [
        c.status
        for c in bot.connector.calls
        if c.query.get("conversation") == activity["conversation"]["id"]
    ]
    assert statuses == [429, 201]


@pytest.mark.parametrize(
    ("what", "status"),
    [
        ("another bot's token", 401),
        ("no token", 401),
        ("a forged token", 401),
        ("another serviceUrl", 403),
    ],
)
async def test_refused_activities_are_not_stored(bot: Bot, what: str, status: int) -> None:
    await bot.connect()
    activity = bot.activity()
    token = {
        "another bot's token": bot.connector.mint(new_app_id()),
        "no token": "",
        "a forged token": bot.connector.mint(
            bot.app_id, key=bot.connector.foreign_key(bot.connector.current_key.kid)
        ),
        "another serviceUrl": bot.connector.mint(
            bot.app_id, service_url="https://smba.trafficmanager.net/emea/"
        ),
    }[what]

    if token:
        response = await bot.post(activity, token)
    else:
        response = await bot.http.post(
            bot.webhook_path,
            content=json.dumps(activity).encode(),
            headers={"Content-Type": "application/json"},
        )

    assert response.status_code == status, response.text
    assert await bot.messages(user_of(activity)) == []


async def test_membership_and_typing_are_acknowledged_and_not_stored(bot: Bot) -> None:
    await bot.connect()
    for name in ("members_added", "typing"):
        activity = bot.activity(name)
        response = await bot.post(activity)
        assert (response.status_code, response.content) == (200, b"")
    listed = await bot.admin.list_conversations()
    assert list(listed.conversations) == []


async def test_the_bot_connectors_token_opens_no_other_rpc(bot: Bot) -> None:
    await bot.connect()
    token = bot.connector.mint(bot.app_id)

    listed = await bot.http.get("/v1/conversations", headers={"Authorization": f"Bearer {token}"})

    assert listed.status_code == 401
