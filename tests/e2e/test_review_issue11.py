"""Regressions found reviewing issue 11, against the real server (on each
e2e store) and the Bot Connector emulator: Teams activities whose token
verifies (so past the edge's checks) but whose body holds what the Teams
adapter did not expect got INTERNAL, poisoned the inbox, or stored a
message no read could load. Each failed before its fix
(adapters/channels/teams.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from chatbot.chat.v1 import channel_connections_pb2 as cc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from tests.e2e.requests import TenantClient, client_for, failure
from tests.support.channel_e2e import (
    eventually,
    messages_over_grpc,
    running_service,
    service_stub,
)
from tests.support.emulators import running
from tests.support.emulators.bot_connector import BotConnectorEmulator, new_app_id
from tests.support.service import ServiceProcess, ServiceStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "teams"
TEAMS = resources_pb2.CHANNEL_TEAMS


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def connector() -> AsyncIterator[BotConnectorEmulator]:
    async with running(BotConnectorEmulator()) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def review_service(
    service_store: ServiceStore,
    tmp_path_factory: pytest.TempPathFactory,
    connector: BotConnectorEmulator,
) -> Iterator[ServiceProcess]:
    environment = connector.service_environment
    with running_service(tmp_path_factory, "review11", environment, service_store) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(
    review_service: ServiceProcess,
) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    async with service_stub(review_service) as stub:
        yield stub


class Bot:
    """One tenant's Teams bot, and the Bot Connector's calls to it over gRPC
    (HandleWebhook with the token in the `authorization` metadata, as Envoy
    forwards it)."""

    def __init__(self, client: TenantClient, connector: BotConnectorEmulator) -> None:
        self.client = client
        self.connector = connector
        self.app_id = new_app_id()

    async def connect(self) -> Bot:
        password = f"secret-{uuid.uuid4().hex}"
        self.connector.add_bot(self.app_id, password)
        await self.client.stub.CreateChannelConnection(
            pb.CreateChannelConnectionRequest(
                connection=cc.ChannelConnection(
                    teams=cc.TeamsConnection(app_id=self.app_id, app_password=password)
                )
            ),
            metadata=self.client.metadata,
        )
        return self

    def activity(self, name: str = "personal_message", **changes: Any) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_bytes())
        document["recipient"]["id"] = f"28:{self.app_id}"
        document["serviceUrl"] = self.connector.service_url
        document["conversation"]["id"] = f"a:{uuid.uuid4().hex}"
        document["id"] = str(uuid.uuid4().int)[:13]
        document.update(changes)
        return document

    async def post(self, activity: dict[str, Any]) -> pb.HandleWebhookResponse:
        request = pb.HandleWebhookRequest(tenant_id=self.client.tenant, platform="teams")
        request.body.content_type = "application/json"
        # json.dumps writes a lone surrogate as its \udXXX escape.
        request.body.data = json.dumps(activity).encode()
        token = self.connector.mint(self.app_id)
        return await self.client.stub.HandleWebhook(
            request, metadata=(("authorization", f"Bearer {token}"),)
        )

    async def messages(self, user: str) -> list[resources_pb2.Message]:
        return await messages_over_grpc(self.client, TEAMS, user)


@pytest_asyncio.fixture(loop_scope="module")
async def bot(
    review_service: ServiceProcess,
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    connector: BotConnectorEmulator,
    request: pytest.FixtureRequest,
) -> Bot:
    return await Bot(client_for(review_service, stub, request.node.name), connector).connect()


def answered(messages: list[resources_pb2.Message]) -> bool:
    return (
        len(messages) == 2
        and messages[-1].role == resources_pb2.MESSAGE_ROLE_BOT
        and messages[-1].delivery_status == resources_pb2.DELIVERY_STATUS_SENT
    )


def user_of(activity: dict[str, Any]) -> str:
    return str(activity["from"].get("aadObjectId") or activity["from"]["id"])


async def test_a_lone_surrogate_in_the_conversation_id_is_no_internal_error(bot: Bot) -> None:
    # Was: INTERNAL (the inbox key could not be encoded), so the Bot
    # Connector retried an activity the service would never take.
    activity = bot.activity()
    activity["conversation"]["id"] += "\ud83d"

    response = await bot.post(activity)

    assert response.body.data == b""
    inbound, _ = await eventually(lambda: bot.messages(user_of(activity)), answered)
    assert inbound.content.text == activity["text"]


async def test_a_card_submission_with_half_an_emoji_is_stored_and_answered(bot: Bot) -> None:
    # Was: accepted, then refused by the store at every attempt of the inbox
    # worker (some twenty minutes of retries holding the user's later
    # messages back, then a dead letter): never stored, never answered.
    activity = bot.activity("card_submit", value={"comment": "see you \ud83d"})

    await bot.post(activity)

    inbound, _ = await eventually(lambda: bot.messages(user_of(activity)), answered)
    assert inbound.channel_metadata.additional_data["reply_payload"] == (
        '{"comment":"see you \ufffd"}'
    )


async def test_a_timestamp_past_the_range_of_utc_times_is_refused_at_the_edge(
    bot: Bot,
) -> None:
    # Was: accepted; on SQLite the message was written and every read of
    # its conversation then failed with INTERNAL, on MongoDB the write
    # failed at each attempt of the inbox worker.
    activity = bot.activity(timestamp="9999-12-31T23:59:59-01:00")

    error = await failure(bot.post(activity))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.fields == ["timestamp"]
    assert await bot.messages(user_of(activity)) == []
