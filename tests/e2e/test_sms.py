"""SMS through Twilio end to end, through the real edge: the real service
(on each e2e store) behind the real Envoy (deploy/envoy/envoy.yaml), its
replies going to the Twilio REST emulator (TWILIO_API_BASE_URL).

Twilio's side is played as Twilio plays it: each call POSTed to where the
edge listens, form-encoded, signed for the PUBLIC URL the connection was
configured with (https://sms.example.com/..., as behind a load balancer
that ends TLS): the service rebuilds that URL from the connection's
webhook_url origin and the path and query Envoy forwards
(x-envoy-original-path). The operator's side (the admin RPC, reads) goes
over gRPC.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
from chatbot.chat.v1 import channel_connections_pb2 as cc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from adapters.channels.twilio import sign, url_with_body_hash
from chat_service.domain.connections import webhook_path
from chat_service.domain.enums import Channel
from chat_service.domain.sms_segments import count_segments
from tests.e2e.requests import TenantClient, client_for
from tests.support.channel_e2e import (
    edge_client,
    eventually,
    messages_over_grpc,
    running_edge,
    running_service,
    service_stub,
)
from tests.support.emulators import running
from tests.support.emulators.twilio_api import (
    SentMessage,
    TwilioApiEmulator,
    incoming_sms,
    new_sid,
    signed_post,
    status_callback,
)
from tests.support.envoy import EnvoyEdge
from tests.support.service import ServiceProcess, ServiceStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

PUBLIC_ORIGIN = "https://sms.example.com"
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
SMS = resources_pb2.CHANNEL_SMS


# ---------------------------------------------------------------- fixtures


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def twilio() -> AsyncIterator[TwilioApiEmulator]:
    async with running(TwilioApiEmulator()) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def no_fault_left_over(twilio: TwilioApiEmulator) -> Iterator[None]:
    yield
    twilio.faults.clear()


@pytest.fixture(scope="module")
def sms_service(
    service_store: ServiceStore,
    tmp_path_factory: pytest.TempPathFactory,
    twilio: TwilioApiEmulator,
) -> Iterator[ServiceProcess]:
    environment = twilio.service_environment
    with running_service(tmp_path_factory, "sms", environment, service_store) as process:
        yield process


@pytest.fixture(scope="module")
def edge(
    sms_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyEdge]:
    with running_edge(tmp_path_factory, "sms-edge", sms_service) as envoy:
        yield envoy


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sms_stub(
    sms_service: ServiceProcess,
) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    async with service_stub(sms_service) as stub:
        yield stub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(edge: EnvoyEdge) -> AsyncIterator[httpx.AsyncClient]:
    async with edge_client(edge) as client:
        yield client


@pytest.fixture
def tenant(
    sms_service: ServiceProcess,
    sms_stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    request: pytest.FixtureRequest,
) -> TenantClient:
    return client_for(sms_service, sms_stub, request.node.name)


# ----------------------------------------------------------------- helpers


def phone_number() -> str:
    """A fresh North American number (+1, area code 415)."""
    return f"+1415{secrets.randbelow(10**7):07d}"


@dataclass
class Line:
    """One tenant's Twilio number: its connection (made with the admin RPC,
    its webhook_url the public URL Twilio is given) and Twilio's calls."""

    client: TenantClient
    twilio: TwilioApiEmulator
    http: httpx.AsyncClient
    account_sid: str
    auth_token: str
    number: str
    webhook_url: str = ""

    @classmethod
    async def connect(
        cls,
        client: TenantClient,
        twilio: TwilioApiEmulator,
        http: httpx.AsyncClient,
        *,
        query: str = "",
    ) -> Line:
        line = cls(
            client,
            twilio,
            http,
            account_sid="AC" + secrets.token_hex(16),
            auth_token=secrets.token_hex(16),
            number=phone_number(),
        )
        twilio.add_account(line.account_sid, line.auth_token, line.number)
        line.webhook_url = PUBLIC_ORIGIN + webhook_path(client.tenant, Channel.SMS) + query
        await client.stub.CreateChannelConnection(
            pb.CreateChannelConnectionRequest(
                connection=cc.ChannelConnection(
                    display_name="support line",
                    webhook_url=line.webhook_url,
                    sms=cc.TwilioConnection(
                        account_sid=line.account_sid,
                        auth_token=line.auth_token,
                        phone_number=line.number,
                    ),
                )
            ),
            metadata=client.metadata,
        )
        return line

    @property
    def target(self) -> str:
        """Where Twilio's POST lands at the edge: the public URL's path and query."""
        parts = urlsplit(self.webhook_url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    async def text(self, user: str, body: str, *, sid: str = "") -> httpx.Response:
        form = incoming_sms(
            account_sid=self.account_sid,
            from_number=user,
            to_number=self.number,
            body=body,
            sid=sid,
        )
        return await signed_post(
            self.http,
            self.target,
            public_url=self.webhook_url,
            auth_token=self.auth_token,
            form=form,
        )

    async def report(
        self, message: SentMessage, status: str, error_code: str = ""
    ) -> httpx.Response:
        """Twilio's status callback for `message`, to the StatusCallback it was sent with."""
        parts = urlsplit(message.status_callback)
        form = status_callback(
            account_sid=self.account_sid, message=message, status=status, error_code=error_code
        )
        return await signed_post(
            self.http,
            parts.path + (f"?{parts.query}" if parts.query else ""),
            public_url=message.status_callback,
            auth_token=self.auth_token,
            form=form,
        )

    async def messages(self, user: str) -> list[resources_pb2.Message]:
        return await messages_over_grpc(self.client, SMS, user)

    async def replies(self, user: str, count: int) -> list[resources_pb2.Message]:
        """The user's conversation once `count` bot replies are out of PENDING."""

        def settled(messages: list[resources_pb2.Message]) -> bool:
            bots = [m for m in messages if m.role == resources_pb2.MESSAGE_ROLE_BOT]
            return len(bots) == count and all(
                m.delivery_status != resources_pb2.DELIVERY_STATUS_PENDING for m in bots
            )

        return await eventually(lambda: self.messages(user), settled)


async def sent_to(twilio: TwilioApiEmulator, user: str, count: int) -> list[SentMessage]:
    async def probe() -> list[SentMessage]:
        return twilio.sent(user)

    return await eventually(probe, lambda sent: len(sent) >= count)


# ------------------------------------------------------------------- tests


async def test_an_sms_is_answered_through_the_api_and_reported_delivered(
    tenant: TenantClient, twilio: TwilioApiEmulator, http: httpx.AsyncClient
) -> None:
    line = await Line.connect(tenant, twilio, http)
    user = phone_number()

    answer = await line.text(user, "Hello there")

    # Answered at once with empty TwiML: the reply goes through the REST API.
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/xml"
    assert answer.content == EMPTY_TWIML
    (sent,) = await sent_to(twilio, user, 1)
    assert (sent.from_, sent.to, sent.account_sid) == (line.number, user, line.account_sid)
    assert sent.status_callback == line.webhook_url
    inbound, reply = await line.replies(user, 1)
    assert inbound.content.text == "Hello there"
    assert inbound.channel_metadata.platform_user_id == user
    assert reply.channel_metadata.platform_message_id == sent.sid
    assert reply.delivery_status == resources_pb2.DELIVERY_STATUS_SENT
    # The carrier's count for what was sent, on the message (issue 12).
    counted = count_segments(sent.body)
    assert reply.channel_metadata.additional_data["sms_segments"] == counted.segments
    assert reply.channel_metadata.additional_data["sms_encoding"] == counted.encoding

    reported = await line.report(sent, "delivered")

    assert reported.status_code == 200, reported.text
    assert reported.content == EMPTY_TWIML
    delivered = await eventually(
        lambda: line.messages(user),
        lambda messages: messages[-1].delivery_status == resources_pb2.DELIVERY_STATUS_DELIVERED,
    )
    assert delivered[-1].message_id == reply.message_id


async def test_a_webhook_url_with_a_query_string_verifies_through_the_edge(
    tenant: TenantClient, twilio: TwilioApiEmulator, http: httpx.AsyncClient
) -> None:
    line = await Line.connect(tenant, twilio, http, query="?key=abc&region=eu")
    user = phone_number()

    answer = await line.text(user, "hi with a query")

    assert answer.status_code == 200, answer.text
    (sent,) = await sent_to(twilio, user, 1)
    assert sent.status_callback == line.webhook_url
    # The status callback comes back to the same URL, query string and all.
    assert (await line.report(sent, "delivered")).status_code == 200
    await eventually(
        lambda: line.messages(user),
        lambda messages: messages[-1].delivery_status == resources_pb2.DELIVERY_STATUS_DELIVERED,
    )


async def test_a_json_body_is_checked_against_its_bodysha256_through_the_edge(
    tenant: TenantClient, twilio: TwilioApiEmulator, http: httpx.AsyncClient
) -> None:
    line = await Line.connect(tenant, twilio, http)
    body = json.dumps({"MessageSid": new_sid(), "Body": "json"}).encode()
    public = url_with_body_hash(line.webhook_url, body)
    target = urlsplit(public)
    headers = {
        "content-type": "application/json",
        "x-twilio-signature": sign(public, line.auth_token),
    }

    signed = await http.post(f"{target.path}?{target.query}", content=body, headers=headers)
    tampered = await http.post(
        f"{target.path}?{target.query}", content=body.replace(b"json", b"JSON"), headers=headers
    )

    # The hash and the signature pass (the query string reached the check);
    # an SMS webhook is a form, so the body itself is refused, unstored.
    assert signed.status_code == 400, signed.text
    assert "WEBHOOK_PAYLOAD_INVALID" in signed.text
    assert tampered.status_code == 403, tampered.text


async def test_an_unsigned_or_missigned_call_is_a_403_and_nothing_is_stored(
    tenant: TenantClient, twilio: TwilioApiEmulator, http: httpx.AsyncClient
) -> None:
    line = await Line.connect(tenant, twilio, http)
    user = phone_number()
    form = incoming_sms(
        account_sid=line.account_sid, from_number=user, to_number=line.number, body="forged"
    )
    other_path = line.webhook_url.replace("/sms", "/sms/") + "x"

    forged = await signed_post(
        http, line.target, public_url=line.webhook_url, auth_token="0" * 32, form=form
    )
    elsewhere = await signed_post(
        http, line.target, public_url=other_path, auth_token=line.auth_token, form=form
    )
    bare = await http.post(
        line.target,
        content=b"Body=forged",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )

    assert [forged.status_code, elsewhere.status_code, bare.status_code] == [403, 403, 403]
    assert await line.messages(user) == []


async def test_stop_then_nothing_is_sent_until_start(
    tenant: TenantClient, twilio: TwilioApiEmulator, http: httpx.AsyncClient
) -> None:
    line = await Line.connect(tenant, twilio, http)
    user = phone_number()

    assert (await line.text(user, "STOP")).status_code == 200
    stopped = await line.replies(user, 1)
    assert (await line.text(user, "are you there?")).status_code == 200
    silent = await line.replies(user, 2)
    sent_while_stopped = list(twilio.sent(user))
    assert (await line.text(user, "start")).status_code == 200
    await sent_to(twilio, user, 1)
    resumed = await line.replies(user, 3)

    # The keyword is stored as the user's message; the bot's answer to it,
    # and to the next message, are refused by the sender (FAILED): nothing
    # reached Twilio while the number was opted out.
    assert stopped[0].content.text == "STOP"
    assert stopped[0].channel_metadata.additional_data["sms_keyword"] == "stop"
    assert [m.delivery_status for m in silent if m.role == resources_pb2.MESSAGE_ROLE_BOT] == [
        resources_pb2.DELIVERY_STATUS_FAILED,
        resources_pb2.DELIVERY_STATUS_FAILED,
    ]
    assert sent_while_stopped == []
    assert resumed[-1].delivery_status == resources_pb2.DELIVERY_STATUS_SENT
    assert len(twilio.sent(user)) == 1


async def test_a_redelivered_sms_is_one_message_and_one_reply(
    tenant: TenantClient, twilio: TwilioApiEmulator, http: httpx.AsyncClient
) -> None:
    line = await Line.connect(tenant, twilio, http)
    user = phone_number()
    sid = new_sid()

    first = await line.text(user, "once", sid=sid)
    again = await line.text(user, "once", sid=sid)

    assert first.status_code == again.status_code == 200
    await sent_to(twilio, user, 1)
    messages = await line.replies(user, 1)
    assert [m.content.text for m in messages if m.role == resources_pb2.MESSAGE_ROLE_USER] == [
        "once"
    ]
    assert len(twilio.sent(user)) == 1
