"""Voice calls end to end through the real edge: Twilio's webhooks (the
documented parameter sets, signed as Twilio signs them) go to the real Envoy
(deploy/envoy/envoy.yaml) in front of the real service with its built-in
bot, and the TwiML answers come back through it; the next request goes
where the answer's <Gather> or <Redirect> says, as Twilio's would.

The connection's webhook_url is the public https address Twilio is given
(TLS ends in front of the edge); requests reach Envoy on its loopback port
with that URL's path and query, which the signature check takes from
Envoy's x-envoy-original-path. The operator's part (the connection, the
reads) goes over gRPC.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
from chatbot.chat.v1 import channel_connections_pb2 as cc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from tests.e2e.requests import TenantClient, client_for
from tests.support.channel_e2e import edge_client, running_edge, running_service, service_stub
from tests.support.envoy import EnvoyEdge
from tests.support.service import ServiceProcess, ServiceStore
from tests.support.voice_calls import FORM, Phone, TwilioRequest, Twiml, read_twiml, twilio_sid

pytestmark = pytest.mark.asyncio(loop_scope="module")

PUBLIC_ORIGIN = "https://voice.example.test"
VOICE = resources_pb2.CHANNEL_VOICE
USER, BOT = resources_pb2.MESSAGE_ROLE_USER, resources_pb2.MESSAGE_ROLE_BOT


@pytest.fixture(scope="module")
def voice_service(
    service_store: ServiceStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    # No platform API to point at: the answers are TwiML on the webhook's response.
    with running_service(tmp_path_factory, "voice", {}, service_store) as process:
        yield process


@pytest.fixture(scope="module")
def edge(
    voice_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyEdge]:
    with running_edge(tmp_path_factory, "voice-edge", voice_service) as envoy:
        yield envoy


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin_stub(
    voice_service: ServiceProcess,
) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    async with service_stub(voice_service) as stub:
        yield stub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(edge: EnvoyEdge) -> AsyncIterator[httpx.AsyncClient]:
    async with edge_client(edge) as client:
        yield client


class Line:
    """A tenant's Twilio number: its voice connection (made with the admin
    RPC) and Twilio's requests to it, through the edge."""

    def __init__(self, client: TenantClient, http: httpx.AsyncClient) -> None:
        self.client = client
        self.http = http
        self.account_sid = twilio_sid("AC")
        self.auth_token = uuid.uuid4().hex
        self.number = "+1415555" + str(uuid.uuid4().int % 10_000).zfill(4)
        self.webhook_url = ""

    async def connect(self) -> Line:
        path = f"/v1/webhooks/{self.client.tenant}/voice"
        response = await self.client.stub.CreateChannelConnection(
            pb.CreateChannelConnectionRequest(
                connection=cc.ChannelConnection(
                    display_name="phone line",
                    webhook_url=PUBLIC_ORIGIN + path,
                    voice=cc.TwilioConnection(
                        account_sid=self.account_sid,
                        auth_token=self.auth_token,
                        phone_number=self.number,
                    ),
                )
            ),
            metadata=self.client.metadata,
        )
        assert response.connection.webhook_path == path
        self.webhook_url = response.connection.webhook_url
        return self

    def phone(self, caller: str = "+14155550199", *, token: str = "") -> Phone:
        return Phone(
            self.webhook_url, token or self.auth_token, self.account_sid, self.number, caller
        )

    async def post(self, request: TwilioRequest) -> httpx.Response:
        """What Twilio sends, to the edge (the public URL's path and query)."""
        return await self.http.post(
            request.path, content=request.body, headers={"Content-Type": FORM, **request.headers}
        )

    async def hear(self, request: TwilioRequest) -> Twiml:
        reply = await self.post(request)
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == "text/xml"
        return read_twiml(reply.content)

    async def conversations(self, caller: str) -> list[resources_pb2.Conversation]:
        listed = await self.client.list_conversations(channel=VOICE, user_id=caller)
        return list(listed.conversations)


@pytest_asyncio.fixture(loop_scope="module")
async def line(
    voice_service: ServiceProcess,
    admin_stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    http: httpx.AsyncClient,
    request: pytest.FixtureRequest,
) -> Line:
    return await Line(client_for(voice_service, admin_stub, request.node.name), http).connect()


async def test_a_two_turn_call_is_answered_stored_and_completed(line: Line) -> None:
    phone = line.phone()

    greeting = await line.hear(phone.ring())
    first = await line.hear(phone.say("hello", greeting))
    second = await line.hear(phone.say("my name is Ada", first))

    assert greeting.says == ("Hello! How can I help you?",)
    assert greeting.gather is not None
    assert greeting.gather["input"] == "speech"
    assert greeting.action == f"{line.webhook_url}?turn=1"
    assert greeting.redirect == f"{line.webhook_url}?turn=1&silence=1"
    # The built-in bot's answers, its quick replies said as options.
    assert first.says == ("Hello! How can I help? Say one of: Help, or Talk to a human.",)
    assert first.action == f"{line.webhook_url}?turn=2"
    assert second.says == ("Nice to meet you, Ada!",)
    assert second.action == f"{line.webhook_url}?turn=3"

    (conversation,) = await line.conversations(phone.caller)
    page = await line.client.list_messages(conversation.conversation_id, page_size=10)
    assert [(m.role, m.content.text) for m in page.messages] == [
        (USER, "hello"),
        (BOT, "Hello! How can I help?\n\nReply with one of:\n1. Help\n2. Talk to a human"),
        (USER, "my name is Ada"),
        (BOT, "Nice to meet you, Ada!"),
    ]
    assert [m.message_id for m in page.messages if m.role == USER] == [
        f"voice:{phone.call_sid}:1",
        f"voice:{phone.call_sid}:2",
    ]
    assert {m.delivery_status for m in page.messages if m.role == BOT} == {
        resources_pb2.DELIVERY_STATUS_SENT
    }

    ended = await line.post(phone.hang_up())

    assert ended.status_code == 200, ended.text
    assert read_twiml(ended.content).verbs == ()
    done = await line.client.get(conversation.conversation_id)
    assert done.status == resources_pb2.CONVERSATION_STATUS_COMPLETED


async def test_a_retried_turn_is_answered_the_same_and_stored_once(line: Line) -> None:
    phone = line.phone()
    greeting = await line.hear(phone.ring())
    turn = phone.say("good morning", greeting)

    first = await line.post(turn)
    again = await line.post(turn)

    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    (conversation,) = await line.conversations(phone.caller)
    page = await line.client.list_messages(conversation.conversation_id, page_size=10)
    assert len(page.messages) == 2


async def test_silence_is_asked_about_through_the_edge(line: Line) -> None:
    phone = line.phone()
    greeting = await line.hear(phone.ring())

    prompt = await line.hear(phone.stay_silent(greeting))  # ?turn=1&silence=1
    answered = await line.hear(phone.say("hello", prompt))

    assert prompt.says == ("Sorry, I didn't hear anything. What would you like to say?",)
    assert prompt.redirect == f"{line.webhook_url}?turn=1&silence=2"
    assert answered.action == f"{line.webhook_url}?turn=2"


async def test_a_bad_signature_is_403_and_stores_nothing(line: Line) -> None:
    greeting = await line.hear(line.phone().ring())
    forged = line.phone(token="not-the-auth-token").say("hello", greeting)

    reply = await line.post(forged)

    assert reply.status_code == 403, reply.text
    assert reply.json()["details"][0]["reason"] == "WEBHOOK_SIGNATURE_INVALID"
    assert await line.conversations(line.phone().caller) == []
