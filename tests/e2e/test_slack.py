"""Slack end to end: the real server (on each e2e store) with a Slack
connection made through the admin RPC, Slack-signed Events API calls over
real gRPC (HandleWebhook, the signature and timestamp in the
`x-slack-signature` / `x-slack-request-timestamp` metadata as Envoy forwards
them), the bot's reply posted to the Slack Web API emulator
(SLACK_API_BASE_URL) in the user's thread, and one signed event through the
real Envoy edge."""

from __future__ import annotations

import itertools
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
import pytest_asyncio
from chatbot.chat.v1 import channel_connections_pb2 as cc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from adapters.channels.slack import sign
from tests.e2e.requests import TenantClient, client_for, failure
from tests.support.channel_e2e import (
    answered,
    edge_client,
    eventually,
    messages_over_grpc,
    running_edge,
    running_service,
    service_stub,
)
from tests.support.emulators import running
from tests.support.emulators.slack_api import SlackApiEmulator
from tests.support.envoy import EnvoyEdge
from tests.support.service import ServiceProcess, ServiceStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "slack"
SLACK = resources_pb2.CHANNEL_SLACK
BOT_USER = "U0LAN0Z89"  # the fixtures' bot user (authorizations[].user_id)
_TS = itertools.count(1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slack() -> AsyncIterator[SlackApiEmulator]:
    async with running(SlackApiEmulator()) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def slack_service(
    service_store: ServiceStore,
    tmp_path_factory: pytest.TempPathFactory,
    slack: SlackApiEmulator,
) -> Iterator[ServiceProcess]:
    environment = slack.service_environment
    with running_service(tmp_path_factory, "slack", environment, service_store) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slack_stub(
    slack_service: ServiceProcess,
) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    async with service_stub(slack_service) as stub:
        yield stub


@pytest.fixture
def tenant(
    slack_service: ServiceProcess,
    slack_stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    request: pytest.FixtureRequest,
) -> TenantClient:
    return client_for(slack_service, slack_stub, request.node.name)


# ---------------------------------------------------------------- helpers


def slack_id(prefix: str) -> str:
    """A fresh Slack id ("T...", "U...", "C..."): upper-case letters and digits."""
    return prefix + uuid.uuid4().hex[:10].upper()


def new_ts() -> str:
    """A Slack ts of now, unique in the run."""
    return f"{int(time.time())}.{next(_TS):06d}"


def document(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_bytes())
    return loaded


class Workspace:
    """One tenant's Slack app in one workspace: its connection (made with
    the admin RPC), the emulator's workspace, and Slack's signed calls."""

    def __init__(self, client: TenantClient, slack: SlackApiEmulator) -> None:
        self.client = client
        self.slack = slack
        self.team_id = slack_id("T")
        self.channel = slack_id("C")
        self.signing_secret = secrets.token_hex(16)
        self.bot_token = f"xoxb-{uuid.uuid4().hex}"
        self.connection_id = ""
        self.webhook_path = ""

    async def connect(self) -> Workspace:
        self.slack.add_workspace(self.team_id, self.bot_token, BOT_USER)
        self.slack.add_channel(self.team_id, self.channel)
        response = await self.client.stub.CreateChannelConnection(
            pb.CreateChannelConnectionRequest(
                connection=cc.ChannelConnection(
                    display_name="slack app",
                    slack=cc.SlackConnection(
                        team_id=self.team_id,
                        signing_secret=self.signing_secret,
                        bot_token=self.bot_token,
                    ),
                )
            ),
            metadata=self.client.metadata,
        )
        self.connection_id = response.connection.connection_id
        self.webhook_path = response.connection.webhook_path
        return self

    def event(
        self, user: str, text: str, *, ts: str = "", thread_ts: str = "", name: str = ""
    ) -> bytes:
        """A documented message.channels callback from `user` in the channel."""
        body = document(name or "message_channel")
        event = body["event"]
        event |= {"channel": self.channel, "user": user, "text": text, "ts": ts or new_ts()}
        if thread_ts:
            event["thread_ts"] = thread_ts
        body["team_id"] = self.team_id
        body["authorizations"][0]["team_id"] = self.team_id
        body["event_id"] = f"Ev{uuid.uuid4().hex[:12].upper()}"
        # Slack writes "/" escaped and non-ASCII as is: the signature is over these bytes.
        return json.dumps(body, ensure_ascii=False).replace("/", "\\/").encode()

    def headers(self, body: bytes, *, secret: str = "", at: float | None = None) -> dict[str, str]:
        timestamp = str(int(time.time() if at is None else at))
        return {
            "x-slack-request-timestamp": timestamp,
            "x-slack-signature": sign(body, secret or self.signing_secret, timestamp),
        }

    async def post(
        self,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> pb.HandleWebhookResponse:
        request = pb.HandleWebhookRequest(tenant_id=self.client.tenant, platform="slack")
        request.body.content_type = content_type
        request.body.data = body
        metadata = (headers or self.headers(body)) | (extra or {})
        return await self.client.stub.HandleWebhook(request, metadata=tuple(metadata.items()))

    async def messages(self, user: str) -> list[resources_pb2.Message]:
        """The user's conversation, oldest message first (the tests use one
        thread per user)."""
        return await messages_over_grpc(self.client, SLACK, user)


# ------------------------------------------------------------------ tests


async def test_a_signed_message_is_answered_in_its_thread(
    tenant: TenantClient, slack: SlackApiEmulator
) -> None:
    workspace = await Workspace(tenant, slack).connect()
    user, ts = slack_id("U"), new_ts()

    response = await workspace.post(workspace.event(user, "hi there, café / bar", ts=ts))
    assert (response.body.data, response.body.content_type) == (b"", "text/plain")

    inbound, reply = await eventually(lambda: workspace.messages(user), answered(2))
    assert inbound.content.text == "hi there, café / bar"
    metadata = inbound.channel_metadata
    assert metadata.platform_message_id == f"{workspace.channel}:{ts}"
    assert (metadata.thread_id, metadata.workspace_id) == (ts, workspace.team_id)
    assert metadata.additional_data["connection_id"] == workspace.connection_id
    assert metadata.additional_data["slack_channel"] == workspace.channel
    assert reply.reply_to_message_id == inbound.message_id
    assert reply.delivery_status == resources_pb2.DELIVERY_STATUS_SENT
    # What Slack got: the reply in the user's thread, with the workspace's bot token.
    (posted,) = slack.posted(workspace.channel)
    assert (posted.team_id, posted.thread_ts) == (workspace.team_id, ts)
    assert reply.channel_metadata.platform_message_id == f"{workspace.channel}:{posted.ts}"
    assert posted.blocks  # the greeting's quick replies, as buttons
    (call,) = [c for c in slack.calls if c.body and c.body.get("channel") == workspace.channel]
    assert call.bearer == workspace.bot_token


async def test_a_slack_retry_is_one_message_with_one_reply(
    tenant: TenantClient, slack: SlackApiEmulator
) -> None:
    workspace = await Workspace(tenant, slack).connect()
    user, ts = slack_id("U"), new_ts()
    body = workspace.event(user, "only once", ts=ts)

    await workspace.post(body)
    # Slack's retry: the same event (event_id), signed again, with its retry headers.
    await workspace.post(
        body, extra={"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"}
    )
    await eventually(lambda: workspace.messages(user), answered(2))
    # A later message in the same thread: once it is answered, both calls were handled.
    await workspace.post(workspace.event(user, "and this", thread_ts=ts))
    messages = await eventually(lambda: workspace.messages(user), answered(4))

    assert [m.content.text for m in messages[::2]] == ["only once", "and this"]
    assert [p.thread_ts for p in slack.posted(workspace.channel)] == [ts, ts]


async def test_url_verification_is_answered_with_its_challenge(
    tenant: TenantClient, slack: SlackApiEmulator
) -> None:
    workspace = await Workspace(tenant, slack).connect()
    body = (FIXTURES / "url_verification.json").read_bytes()

    response = await workspace.post(body)
    assert response.body.content_type == "application/json"
    assert json.loads(response.body.data) == {
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    }
    # Unsigned (or signed by another app), no challenge.
    error = await failure(workspace.post(body, headers=workspace.headers(body, secret="other")))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED


async def test_the_bots_own_message_is_ignored(
    tenant: TenantClient, slack: SlackApiEmulator
) -> None:
    workspace = await Workspace(tenant, slack).connect()
    user, ts = slack_id("U"), new_ts()
    # Slack echoes the bot's posts to the app (message.channels): never answered.
    await workspace.post(
        workspace.event(BOT_USER, "Here is my answer.", thread_ts=ts, name="message_own_bot")
    )
    await workspace.post(workspace.event(user, "a question", ts=ts))

    await eventually(lambda: workspace.messages(user), answered(2))
    assert (await tenant.list_conversations(channel=SLACK, user_id=BOT_USER)).conversations == []
    assert len(slack.posted(workspace.channel)) == 1


async def test_a_button_click_answers_in_the_thread(
    tenant: TenantClient, slack: SlackApiEmulator
) -> None:
    workspace = await Workspace(tenant, slack).connect()
    user, ts = slack_id("U"), new_ts()
    await workspace.post(workspace.event(user, "hello", ts=ts))
    await eventually(lambda: workspace.messages(user), answered(2))
    (greeting,) = slack.posted(workspace.channel)
    help_button = next(
        element
        for block in greeting.blocks
        if block["type"] == "actions"
        for element in block["elements"]
        if element["text"]["text"] == "Help"
    )

    click = document("block_actions")
    click["team"]["id"] = click["user"]["team_id"] = workspace.team_id
    click["user"]["id"] = user
    click["channel"]["id"] = click["container"]["channel_id"] = workspace.channel
    click["container"] |= {"message_ts": greeting.ts, "thread_ts": ts}
    click["message"] |= {"ts": greeting.ts, "thread_ts": ts}
    click["actions"][0] |= {
        "action_id": help_button["action_id"],
        "text": help_button["text"],
        "value": help_button["value"],
        "action_ts": new_ts(),
    }
    body = b"payload=" + quote(json.dumps(click), safe="").encode()
    await workspace.post(body, content_type="application/x-www-form-urlencoded")

    messages = await eventually(lambda: workspace.messages(user), answered(4))
    assert messages[2].content.text == "Help"
    assert messages[2].channel_metadata.additional_data["reply_payload"] == "help"
    assert [p.thread_ts for p in slack.posted(workspace.channel)] == [ts, ts]


async def test_stale_or_forged_calls_are_unauthenticated_and_nothing_is_stored(
    tenant: TenantClient, slack: SlackApiEmulator
) -> None:
    workspace = await Workspace(tenant, slack).connect()
    user = slack_id("U")
    body = workspace.event(user, "forged")

    stale = await failure(
        workspace.post(body, headers=workspace.headers(body, at=time.time() - 360))
    )
    assert (stale.code, stale.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "WEBHOOK_TIMESTAMP_STALE",
    )
    forged = await failure(workspace.post(body, headers=workspace.headers(body, secret="guess")))
    assert (forged.code, forged.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "WEBHOOK_SIGNATURE_INVALID",
    )
    await workspace.post(workspace.event(user, "real"))
    messages = await eventually(lambda: workspace.messages(user), answered(2))
    assert messages[0].content.text == "real"


# ------------------------------------------------------------- through Envoy


@pytest.fixture(scope="module")
def edge(
    slack_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyEdge]:
    with running_edge(tmp_path_factory, "slack-edge", slack_service) as envoy:
        yield envoy


async def test_a_signed_event_through_the_edge_is_answered(
    tenant: TenantClient, slack: SlackApiEmulator, edge: EnvoyEdge
) -> None:
    workspace = await Workspace(tenant, slack).connect()
    user, ts = slack_id("U"), new_ts()
    body = workspace.event(user, "through the edge", ts=ts)

    async with edge_client(edge) as http:
        challenge_body = (FIXTURES / "url_verification.json").read_bytes()
        challenge = await http.post(
            workspace.webhook_path,
            content=challenge_body,
            headers={"content-type": "application/json"} | workspace.headers(challenge_body),
        )
        assert challenge.status_code == 200, challenge.text
        assert challenge.json()["challenge"].startswith("3eZbrw1a")

        answer = await http.post(
            workspace.webhook_path,
            content=body,
            headers={
                "content-type": "application/json",
                "X-Slack-Request-Timestamp": workspace.headers(body)["x-slack-request-timestamp"],
                "X-Slack-Signature": workspace.headers(body)["x-slack-signature"],
            },
        )
        assert answer.status_code == 200, answer.text

        forged = await http.post(
            workspace.webhook_path,
            content=body,
            headers={"content-type": "application/json"} | workspace.headers(body, secret="x"),
        )
        assert forged.status_code == 401

    inbound, reply = await eventually(lambda: workspace.messages(user), answered(2))
    assert inbound.content.text == "through the edge"
    assert reply.delivery_status == resources_pb2.DELIVERY_STATUS_SENT
    (posted,) = slack.posted(workspace.channel)
    assert posted.thread_ts == ts
