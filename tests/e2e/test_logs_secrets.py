"""What the service logs at INFO, end to end: never a secret, a token, a
message's text or a platform user's id. One realistic session against the
real service (LOG_FORMAT=json) and the Graph API and Slack emulators: a
SendMessage with a bearer token; connections made with WhatsApp, Slack and
Twilio secrets; signed WhatsApp and Slack webhooks (and one signed with the
wrong secret); calls with a forged, an expired and a malformed token; and
deliveries the platforms refuse with the token echoed in the refusal (Meta's
error body, a proxy's bare text, Slack's error). Then every line of the log
file is JSON and none of those values is in it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from chatbot.chat.v1 import channel_connections_pb2 as cc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import resources_pb2

from adapters.channels import slack as slack_signing
from adapters.channels.meta import sign
from tests.e2e.requests import TenantClient
from tests.support.channel_e2e import answered, eventually, messages_over_grpc, service_stub
from tests.support.emulators import running
from tests.support.emulators.graph_api import GraphApiEmulator
from tests.support.emulators.slack_api import SlackApiEmulator
from tests.support.grpc_client import bearer, text_request
from tests.support.meta_webhooks import FIXTURES, digits, service_environment, whatsapp_text
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

SLACK_FIXTURES = FIXTURES / "slack"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def graph() -> AsyncIterator[GraphApiEmulator]:
    async with running(GraphApiEmulator()) as emulator:
        yield emulator


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slack_api() -> AsyncIterator[SlackApiEmulator]:
    async with running(SlackApiEmulator()) as emulator:
        yield emulator


def _unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


async def _create(client: TenantClient, connection: cc.ChannelConnection) -> None:
    await client.stub.CreateChannelConnection(
        pb.CreateChannelConnectionRequest(connection=connection), metadata=client.metadata
    )


def _webhook(tenant: str, body: bytes, platform: str = "whatsapp") -> pb.HandleWebhookRequest:
    """What Envoy's transcoder makes of a platform's POST."""
    request = pb.HandleWebhookRequest(tenant_id=tenant, platform=platform)
    request.body.content_type = "application/json"
    request.body.data = body
    return request


async def test_no_secret_token_or_message_text_is_logged_at_info(
    fresh_service: ServiceProcess, graph: GraphApiEmulator, slack_api: SlackApiEmulator
) -> None:
    fresh_service.extra_env.update(
        {
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            **service_environment(graph),
            **slack_api.service_environment,
        }
    )
    fresh_service.start()
    tenant = f"t{uuid.uuid4().hex[:12]}"
    token = fresh_service.token(tenant)
    auth = bearer(token)
    web_text = _unique("web-words")
    inbound_text = _unique("whatsapp-words")
    phone_number_id = digits()
    whatsapp = {
        "app_secret": _unique("app-secret"),
        "verify_token": _unique("verify-token"),
        "access_token": _unique("access-token"),
    }
    slack = {"signing_secret": _unique("signing-secret"), "bot_token": _unique("xoxb")}
    team_id, slack_channel, slack_user = "T0LOGS", "C0LOGS", "U0LOGSUSER"
    slack_api.add_workspace(team_id, slack["bot_token"])
    slack_api.add_channel(team_id, slack_channel)
    slack_text = _unique("slack-words")
    slack_body = _slack_event(team_id, slack_channel, slack_user, slack_text)
    slack_timestamp = str(int(time.time()))
    slack_signature = slack_signing.sign(slack_body, slack["signing_secret"], slack_timestamp)
    twilio = {"auth_token": _unique("twilio-auth")}
    graph.add_whatsapp_number(phone_number_id, whatsapp["access_token"])
    user = digits()
    body = json.dumps(
        whatsapp_text(phone_number_id, user, [("wamid.LOGS1", inbound_text)])
    ).encode()
    signature = sign(body, whatsapp["app_secret"])
    second_text = _unique("more-words")
    second = json.dumps(whatsapp_text(phone_number_id, user, [("wamid.LOGS2", second_text)]))
    second_signature = sign(second.encode(), whatsapp["app_secret"])
    forged_signature = sign(body, _unique("not-the-secret"))
    forged_token = token[: token.rindex(".") + 1] + "A" * 86
    expired_token = fresh_service.token(tenant, ttl=-3600)

    async with service_stub(fresh_service) as stub:
        await stub.SendMessage(text_request(web_text, user_id=_unique("user")), metadata=auth)
        client = TenantClient(stub, tenant, auth)
        whatsapp_line = cc.WhatsAppConnection(phone_number_id=phone_number_id, **whatsapp)
        await _create(client, cc.ChannelConnection(whatsapp=whatsapp_line))
        slack_app = cc.SlackConnection(team_id=team_id, **slack)
        await _create(client, cc.ChannelConnection(slack=slack_app))
        # Twilio signs the URL it calls: an SMS connection needs it.
        sms_number = cc.TwilioConnection(
            account_sid="AC" + uuid.uuid4().hex, phone_number="+14155550123", **twilio
        )
        url = f"https://edge.example.com/v1/webhooks/{tenant}/sms"
        await _create(client, cc.ChannelConnection(sms=sms_number, webhook_url=url))
        for bad in (forged_token, expired_token, "not-a-jwt-" + uuid.uuid4().hex):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SendMessage(text_request(web_text), metadata=bearer(bad))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.HandleWebhook(
                _webhook(tenant, body), metadata=(("x-hub-signature-256", forged_signature),)
            )
        # Meta refuses the reply, echoing the token it was given.
        graph.graph_error(
            190, f"Invalid OAuth access token - {whatsapp['access_token']}", status=401
        )
        await stub.HandleWebhook(
            _webhook(tenant, body), metadata=(("x-hub-signature-256", signature),)
        )

        await eventually(
            lambda: messages_over_grpc(client, resources_pb2.CHANNEL_WHATSAPP, user), answered(2)
        )
        # A proxy's bare text refusal, echoing the token too.
        graph.fail(status=400, text=f"bad credentials: Bearer {whatsapp['access_token']}")
        await stub.HandleWebhook(
            _webhook(tenant, second.encode()),
            metadata=(("x-hub-signature-256", second_signature),),
        )
        messages = await eventually(
            lambda: messages_over_grpc(client, resources_pb2.CHANNEL_WHATSAPP, user), answered(4)
        )
        # Slack refuses the reply with the bot token echoed in its error.
        slack_api.error(f"invalid_auth {slack['bot_token']}")
        await stub.HandleWebhook(
            _webhook(tenant, slack_body, "slack"),
            metadata=(
                ("x-slack-request-timestamp", slack_timestamp),
                ("x-slack-signature", slack_signature),
            ),
        )
        (_, slack_reply) = await eventually(
            lambda: messages_over_grpc(client, resources_pb2.CHANNEL_SLACK, slack_user),
            answered(2),
        )
    failed = resources_pb2.DELIVERY_STATUS_FAILED
    assert [m.delivery_status for m in messages[1::2]] == [failed, failed]
    assert slack_reply.delivery_status == failed
    assert fresh_service.stop() == 0

    lines = fresh_service.logs().splitlines()
    records = [json.loads(line) for line in lines if line]  # every line is JSON
    assert records
    logged = "\n".join(lines)
    never = {
        "bearer token": token,
        "its signature": token.rsplit(".", 1)[1],
        "forged token": forged_token,
        "expired token": expired_token,
        "SendMessage text": web_text,
        "webhook text": inbound_text,
        "second webhook text": second_text,
        "platform user id": user,
        "Slack user id": slack_user,
        "webhook signature": signature.split("=", 1)[1],
        "forged signature": forged_signature.split("=", 1)[1],
        "second signature": second_signature.split("=", 1)[1],
        "Slack text": slack_text,
        "Slack signature": slack_signature.split("=", 1)[1],
        **whatsapp,
        **slack,
        **twilio,
    }
    assert [name for name, value in never.items() if value in logged] == []
    assert {record["level"] for record in records} <= {"INFO", "WARNING"}


def _slack_event(team_id: str, channel: str, user: str, text: str) -> bytes:
    """Slack's documented message.channels callback (tests/fixtures)."""
    body = json.loads((SLACK_FIXTURES / "message_channel.json").read_bytes())
    body["event"] |= {"channel": channel, "user": user, "text": text, "ts": f"{time.time():.6f}"}
    body["team_id"] = team_id
    body["authorizations"][0]["team_id"] = team_id
    body["event_id"] = f"Ev{uuid.uuid4().hex[:12].upper()}"
    return json.dumps(body).encode()
