"""Voice calls through Twilio, on the in-memory core (tests/builders.build_core)
with the real voice adapter: the documented webhooks (tests/fixtures/webhooks/
voice/) signed as Twilio signs them and posted where the TwiML answers say,
the TwiML read back; what is stored, what the caller hears, and when."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest

from adapters.channels.twilio import SIGNATURE_HEADER, TWIML_CONTENT_TYPE
from adapters.channels.voice import VoiceInbound, turn_url
from chat_service.config import ConfigError, Settings
from chat_service.domain.calls import CallEventKind, speech_of, spoken
from chat_service.domain.channels import format_for_channel
from chat_service.domain.connections import ConnectionFields
from chat_service.domain.content import (
    Button,
    CarouselCard,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.enums import (
    ButtonType,
    Channel,
    ConversationStatus,
    DeliveryStatus,
    MessageRole,
    MessageType,
)
from chat_service.domain.errors import InvalidArgument, PermissionDenied, Unimplemented
from chat_service.domain.model import Conversation, ConversationState, Message
from chat_service.domain.webhooks import WebhookCall
from chat_service.pipeline.webhooks import HandleWebhook
from chat_service.ports import ConversationQuery, EngineReply, EngineRequest
from chat_service.wiring import Services
from tests.builders import CORE_SETTINGS, T0, TENANT, build_core
from tests.fakes import InMemoryChannelStore, InMemoryStore, ScriptedEngine, SteppingClock
from tests.support.voice_calls import (
    FIXTURES,
    FORM,
    Phone,
    TwilioRequest,
    Twiml,
    parameters,
    read_twiml,
)

WEBHOOK_URL = f"https://voice.example.test/v1/webhooks/{TENANT}/voice"
NUMBER = "+14155550100"
CALLER = "+14155550199"
AUTH_TOKEN = "twilio-auth-token-1"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
GREETING = CORE_SETTINGS.voice_greeting


class SignallingEngine(ScriptedEngine):
    """Tells when it was asked (its answer then takes `delay`)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()

    async def process(self, request: EngineRequest) -> EngineReply:
        self.asked.set()
        return await super().process(request)


@dataclass
class Line:
    """A tenant's voice number on the core, and the calls made to it."""

    core: Services
    store: InMemoryStore
    channels: InMemoryChannelStore
    engine: SignallingEngine

    def phone(self, caller: str = CALLER, *, token: str = AUTH_TOKEN) -> Phone:
        return Phone(WEBHOOK_URL, token, ACCOUNT_SID, NUMBER, caller)

    async def post(self, request: TwilioRequest, *, tenant_id: str = TENANT) -> bytes:
        answer = await self.core.handle_webhook(
            tenant_id=tenant_id,
            platform="voice",
            body=request.body,
            content_type=FORM,
            headers=request.headers,
            original_path=request.path,
        )
        assert answer.content_type == TWIML_CONTENT_TYPE
        return answer.body

    async def hear(self, request: TwilioRequest) -> Twiml:
        return read_twiml(await self.post(request))

    async def conversations(self, user: str = CALLER) -> list[Conversation]:
        return list(
            await self.store.list_conversations(
                TENANT, ConversationQuery(user_id=user, channel=Channel.VOICE), limit=10
            )
        )

    async def messages(self, conversation: Conversation) -> list[Message]:
        return list(await self.store.list_messages(TENANT, conversation.conversation_id, limit=100))


async def make_line(*, reply_timeout: float = 5.0, webhook_url: str = WEBHOOK_URL) -> Line:
    store, channels, engine = InMemoryStore(), InMemoryChannelStore(), SignallingEngine()
    core = build_core(
        store=store,
        channels=channels,
        engine=engine,
        clock=SteppingClock(T0),
        inbound={Channel.VOICE: VoiceInbound(clock=SteppingClock(T0))},
        settings=dataclasses.replace(CORE_SETTINGS, voice_reply_timeout_seconds=reply_timeout),
    )
    await core.connections.create(
        TENANT,
        ConnectionFields(
            channel=Channel.VOICE,
            webhook_url=webhook_url,
            public={"account_sid": ACCOUNT_SID, "phone_number": NUMBER},
            secrets={"auth_token": AUTH_TOKEN},
        ),
        request_id="",
        actor="test",
    )
    return Line(core, store, channels, engine)


Lines = Callable[..., Awaitable[Line]]


@pytest.fixture
async def lines() -> AsyncIterator[Lines]:
    """make_line for the test; what it made is closed after it."""
    made: list[Line] = []

    async def make(**options: Any) -> Line:
        made.append(await make_line(**options))
        return made[-1]

    yield make
    for each in made:
        await each.core.send_message.close(1)
        await each.core.delivery.close(1)


@pytest.fixture
async def line(lines: Lines) -> Line:
    return await lines()


def reply_of(*contents: MessageContent) -> EngineReply:
    return EngineReply(contents=contents, state=ConversationState(current_intent="scripted"))


# ------------------------------------------------------------ the call


async def test_a_call_is_greeted_and_listened_to_with_nothing_stored(line: Line) -> None:
    phone = line.phone()

    answer = await line.hear(phone.ring())

    assert answer.verbs == ("Gather", "Redirect")
    assert answer.says == (GREETING,)
    assert answer.gather == {
        "input": "speech",
        "action": f"{WEBHOOK_URL}?turn=1",
        "method": "POST",
        "speechTimeout": "auto",
    }
    assert answer.redirect == f"{WEBHOOK_URL}?turn=1&silence=1"
    assert await line.conversations() == []
    assert line.channels._inbox == {}


async def test_two_turns_are_one_conversation_of_stored_messages_and_replies(line: Line) -> None:
    phone = line.phone()
    greeting = await line.hear(phone.ring())

    first = await line.hear(phone.say("what are your opening hours", greeting))
    second = await line.hear(phone.say("thank you", first))

    assert first.says == ("echo: what are your opening hours.",)
    assert first.action == f"{WEBHOOK_URL}?turn=2"
    assert second.says == ("echo: thank you.",)
    assert second.action == f"{WEBHOOK_URL}?turn=3"
    (conversation,) = await line.conversations()
    assert conversation.channel_metadata.thread_id == phone.call_sid
    messages = await line.messages(conversation)
    assert [(m.role, m.content.text) for m in messages] == [
        (MessageRole.USER, "what are your opening hours"),
        (MessageRole.BOT, "echo: what are your opening hours"),
        (MessageRole.USER, "thank you"),
        (MessageRole.BOT, "echo: thank you"),
    ]
    assert [m.message_id for m in messages if m.role is MessageRole.USER] == [
        f"voice:{phone.call_sid}:1",
        f"voice:{phone.call_sid}:2",
    ]
    # Said in the answer: delivered by answering, never through a sender.
    assert {m.delivery_status for m in messages if m.is_outbound} == {DeliveryStatus.SENT}
    said = messages[0].channel_metadata
    assert said.platform_user_id == CALLER
    assert said.workspace_id == NUMBER
    assert said.additional_data["voice_confidence"] == "0.92"
    assert said.additional_data["voice_call_sid"] == phone.call_sid
    assert said.additional_data["voice_turn"] == "1"
    assert line.channels._inbox == {}  # answered in the call, not through the inbox


async def test_a_retried_turn_is_one_message_with_one_reply_said_again(line: Line) -> None:
    phone = line.phone()
    greeting = await line.hear(phone.ring())
    request = phone.say("hello there", greeting)

    first = await line.post(request)
    again = await line.post(request)

    assert again == first
    assert len(line.engine.requests) == 1
    (conversation,) = await line.conversations()
    assert len(await line.messages(conversation)) == 2


async def test_each_call_is_a_conversation_of_its_own(line: Line) -> None:
    for _ in range(2):
        phone = line.phone()
        await line.hear(phone.say("hi", await line.hear(phone.ring())))

    conversations = await line.conversations()
    assert len(conversations) == 2
    assert len({c.session_id for c in conversations}) == 2


# ------------------------------------------------------------ what is said


async def test_everything_said_is_escaped(line: Line) -> None:
    tricky = "Tom & Jerry <b>say</b> \"hi\" </Say><Hangup/> 'ok'"
    line.engine.reply = reply_of(MessageContent.of_text(tricky))
    phone = line.phone()

    body = await line.post(
        phone.say("<Redirect>x</Redirect> & more", await line.hear(phone.ring()))
    )

    assert b"<Hangup/>" not in body
    assert b"&lt;/Say&gt;&lt;Hangup/&gt;" in body
    answer = read_twiml(body)
    assert answer.says == (tricky + ".",)
    assert answer.verbs == ("Gather", "Redirect")
    (conversation,) = await line.conversations()
    assert (await line.messages(conversation))[0].content.text == "<Redirect>x</Redirect> & more"


async def test_buttons_and_quick_replies_become_spoken_options(line: Line) -> None:
    line.engine.reply = reply_of(
        MessageContent(
            type=MessageType.QUICK_REPLY,
            text="Hello! How can I help?",
            quick_replies=(
                QuickReply(title="Help", payload="help"),
                QuickReply(title="Talk to a human", payload="handoff"),
            ),
        ),
        MessageContent(
            type=MessageType.TEXT,
            text="Or pick one",
            buttons=(
                Button(type=ButtonType.POSTBACK, title="Opening hours", payload="hours"),
                Button(type=ButtonType.POSTBACK, title="Prices", payload="prices"),
                Button(type=ButtonType.POSTBACK, title="Address", payload="where"),
            ),
        ),
    )
    phone = line.phone()

    answer = await line.hear(phone.say("hi", await line.hear(phone.ring())))

    assert answer.says == (
        "Hello! How can I help? Say one of: Help, or Talk to a human.",
        "Or pick one. Say one of: Opening hours, Prices, or Address.",
    )


def test_media_cards_and_links_are_said_as_their_text() -> None:
    reply = MessageContent(
        type=MessageType.CAROUSEL,
        text="Our plans",
        cards=(
            CarouselCard(
                title="Basic",
                subtitle="For one",
                buttons=(Button(type=ButtonType.POSTBACK, title="Choose", payload="basic"),),
            ),
            CarouselCard(
                title="Team",
                subtitle="For five",
                buttons=(
                    Button(type=ButtonType.URL, title="Details", url="https://example.com/team"),
                ),
            ),
        ),
    )
    image = MessageContent(
        type=MessageType.IMAGE,
        media=MediaContent(url="https://example.com/map.png", type="image/png", alt_text="A map"),
    )

    said = speech_of(
        part.text for c in (reply, image) for part in format_for_channel(c, Channel.VOICE)
    )

    assert said == (
        "Our plans. 1. Basic. For one. 2. Team. For five. Details: https://example.com/team."
        " Say one of: Choose (Basic).",
        "Image: A map. https://example.com/map.png.",
    )


def test_speech_keeps_a_text_without_options_as_it_is() -> None:
    assert spoken("Reply with one of the forms we sent.") == "Reply with one of the forms we sent."
    assert spoken("First line\nSecond line!\n\n") == "First line. Second line!"
    assert spoken("Reply with one of:\n1. Yes") == "Say one of: Yes."
    assert speech_of(["", "  ", "Hi"]) == ("Hi.",)


# ------------------------------------------------------------ deadlines


async def test_a_slow_bot_costs_the_caller_the_fallback_within_the_bound(lines: Lines) -> None:
    line = await lines(reply_timeout=0.2)
    line.engine.delay = 0.35  # past the reply timeout, within the engine's (0.5 s)
    phone = line.phone()
    greeting = await line.hear(phone.ring())

    started = time.monotonic()
    answer = await line.hear(phone.say("are you there", greeting))
    took = time.monotonic() - started

    assert took < 0.5
    assert answer.says == (CORE_SETTINGS.fallback_text,)
    assert answer.action == f"{WEBHOOK_URL}?turn=2"  # the call goes on
    assert line.core.calls.stats.late == 1
    # The turn is still answered and stored, though nobody hears it.
    assert await line.core.calls.wait_idle(5)
    (conversation,) = await line.conversations()
    messages = await line.messages(conversation)
    assert [m.content.text for m in messages] == ["are you there", "echo: are you there"]


async def test_a_failing_turn_costs_the_caller_the_fallback_not_an_error(line: Line) -> None:
    phone = line.phone()
    greeting = await line.hear(phone.ring())
    await line.post(phone.say("hello", greeting))
    # The same turn with other words: SendMessage refuses the reused id.
    answer = await line.hear(phone.say("goodbye", greeting))

    assert answer.says == (CORE_SETTINGS.fallback_text,)
    assert answer.action == f"{WEBHOOK_URL}?turn=2"
    assert line.core.calls.stats.fallbacks == 1


# ------------------------------------------------------------ silence


async def test_silence_is_asked_about_then_hung_up_on(line: Line) -> None:
    phone = line.phone()
    greeting = await line.hear(phone.ring())

    first = await line.hear(phone.stay_silent(greeting))
    second = await line.hear(phone.stay_silent(first))
    last = await line.hear(phone.stay_silent(second))

    assert first.says == ("Sorry, I didn't hear anything. What would you like to say?",)
    assert first.action == f"{WEBHOOK_URL}?turn=1"
    assert first.redirect == f"{WEBHOOK_URL}?turn=1&silence=2"
    assert second.redirect == f"{WEBHOOK_URL}?turn=1&silence=3"
    assert last.verbs == ("Say", "Hangup")
    assert "Goodbye" in last.says[0]
    assert await line.conversations() == []


async def test_speech_after_silence_is_the_turn_that_was_listened_for(line: Line) -> None:
    phone = line.phone()
    prompt = await line.hear(phone.stay_silent(await line.hear(phone.ring())))

    answer = await line.hear(phone.say("now I speak", prompt))

    assert answer.action == f"{WEBHOOK_URL}?turn=2"
    (conversation,) = await line.conversations()
    assert (await line.messages(conversation))[0].message_id == f"voice:{phone.call_sid}:1"


# ------------------------------------------------------------ the end


async def test_the_call_ending_completes_its_conversation(line: Line) -> None:
    phone = line.phone()
    await line.hear(phone.say("hi", await line.hear(phone.ring())))

    body = await line.post(phone.hang_up())

    assert body == b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
    (conversation,) = await line.conversations()
    assert conversation.status is ConversationStatus.COMPLETED
    assert conversation.status_reason == "call completed"
    assert line.core.calls.stats.ended == 1
    # Twilio may report it twice: nothing changes.
    await line.post(phone.hang_up())
    assert (await line.conversations())[0].version == conversation.version


async def test_a_hang_up_during_a_turn_completes_the_conversation_after_it(line: Line) -> None:
    line.engine.delay = 0.3
    phone = line.phone()
    greeting = await line.hear(phone.ring())

    turn = asyncio.create_task(line.hear(phone.say("bye now", greeting)))
    await asyncio.wait_for(line.engine.asked.wait(), 5)  # the turn is being answered
    await line.post(phone.hang_up())
    answer = await turn

    assert answer.says == ("echo: bye now.",)
    (conversation,) = await line.conversations()
    assert conversation.status is ConversationStatus.COMPLETED
    assert len(await line.messages(conversation)) == 2


async def test_a_call_nobody_spoke_in_ends_without_a_conversation(line: Line) -> None:
    phone = line.phone()
    await line.hear(phone.ring())

    assert await line.post(phone.hang_up("no-answer")) == (
        b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
    )
    assert await line.conversations() == []


# ------------------------------------------------------------ refusals


async def test_a_bad_signature_is_refused_and_stores_nothing(line: Line) -> None:
    phone = line.phone(token="not-the-auth-token")
    greeting = read_twiml(await line.post(line.phone().ring()))

    with pytest.raises(PermissionDenied):
        await line.post(phone.say("hello", greeting))
    unsigned = dataclasses.replace(line.phone().say("hello", greeting), headers={})
    with pytest.raises(PermissionDenied):
        await line.post(unsigned)

    assert await line.conversations() == []
    assert line.engine.requests == []


async def test_a_call_signed_for_another_tenants_url_is_refused(line: Line) -> None:
    request = line.phone().ring()

    with pytest.raises(PermissionDenied):
        await line.post(request, tenant_id="tenant-b")
    # Signed by Twilio for tenant-b's URL (the same account, so the same
    # token) and posted here naming tenant-b's path: the path checked is
    # the connection's own (test_review_issue12.py).
    other = Phone(WEBHOOK_URL.replace(TENANT, "tenant-b"), AUTH_TOKEN, ACCOUNT_SID, NUMBER, CALLER)
    with pytest.raises(PermissionDenied):
        await line.post(other.ring())


async def test_a_number_the_tenant_did_not_connect_is_refused(line: Line) -> None:
    phone = dataclasses.replace(line.phone(), number="+14155550111")

    with pytest.raises(InvalidArgument) as refused:
        await line.post(phone.ring())

    assert refused.value.violations[0].field == "body.To"


async def test_speech_without_a_turn_of_ours_is_refused(line: Line) -> None:
    phone = line.phone()
    greeting = Twiml(says=(), gather={"action": WEBHOOK_URL}, redirect="", hangup=False, verbs=())

    with pytest.raises(InvalidArgument) as refused:
        await line.post(phone.say("hello", greeting))

    assert refused.value.violations[0].field == "query.turn"


@pytest.mark.parametrize("query", ["turn=0", "turn=x", "turn=99999", "turn=2&silence=-1"])
async def test_turn_numbers_out_of_range_are_refused(line: Line, query: str) -> None:
    phone = line.phone()
    greeting = Twiml((), {"action": f"{WEBHOOK_URL}?{query}"}, "", False, ())

    with pytest.raises(InvalidArgument):
        await line.post(phone.say("hello", greeting))


async def test_the_next_turn_is_always_the_connections_own_url(lines: Lines) -> None:
    configured = f"{WEBHOOK_URL}?source=twilio&x=%3Cy%3E"
    line = await lines(webhook_url=configured)
    phone = Phone(configured, AUTH_TOKEN, ACCOUNT_SID, NUMBER, CALLER)

    answer = await line.hear(phone.ring())
    body = await line.post(phone.say("hi", answer))

    assert answer.action == f"{configured}&turn=1"
    assert read_twiml(body).action == f"{configured}&turn=2"
    assert (
        b'action="https://voice.example.test/v1/webhooks/tenant-a/voice?source=twilio&amp;' in body
    )


async def test_without_the_call_use_case_a_synchronous_platform_is_unimplemented(
    line: Line,
) -> None:
    edge = HandleWebhook(
        inbound={Channel.VOICE: VoiceInbound(clock=SteppingClock(T0))},
        directory=line.core.directory,
        inbox=line.channels,
        clock=SteppingClock(T0),
    )
    request = line.phone().ring()

    with pytest.raises(Unimplemented):
        await edge(
            tenant_id=TENANT,
            platform="voice",
            body=request.body,
            content_type=FORM,
            headers=request.headers,
            original_path=request.path,
        )


# ------------------------------------------------------------ the adapter


def test_every_fixture_is_read_as_its_call_event() -> None:
    inbound = VoiceInbound(clock=SteppingClock(T0))
    expected = {
        "incoming_call": ("", CallEventKind.STARTED),
        "gather_speech": ("?turn=3", CallEventKind.SPOKE),
        "gather_timeout": ("?turn=3&silence=1", CallEventKind.SILENT),
        "status_completed": ("", CallEventKind.ENDED),
        "status_no_answer": ("", CallEventKind.ENDED),
    }
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(expected)
    for name, (query, kind) in expected.items():
        params = parameters(name)
        call = WebhookCall(
            tenant_id=TENANT,
            channel=Channel.VOICE,
            body=urlencode(params).encode(),
            content_type=FORM,
            headers={SIGNATURE_HEADER: "x"},
            original_path=f"/v1/webhooks/{TENANT}/voice{query}",
        )
        event = inbound.call_event(call)
        assert event.kind is kind, name
        assert (event.account_id, event.user_id, event.call_id) == (
            params["To"],
            params["From"],
            params["CallSid"],
        )
        parsed = inbound.parse(call)
        if kind is CallEventKind.SPOKE:
            assert event.turn == 3
            assert event.text == params["SpeechResult"]
            assert event.extra == {"voice_confidence": params["Confidence"]}
            (message,) = parsed.messages
            assert message.platform_message_id == f"{params['CallSid']}:3"
            assert message.conversation_key == params["CallSid"]
        else:
            assert parsed.messages == ()
        if kind is CallEventKind.ENDED:
            assert event.status == params["CallStatus"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("CallSid", ""), ("CallSid", "XX123"), ("To", "0800"), ("From", ""), ("AccountSid", "AC1")],
)
def test_a_body_that_is_no_voice_webhook_is_refused(field: str, value: str) -> None:
    params = parameters("incoming_call") | {field: value}
    call = WebhookCall(
        tenant_id=TENANT,
        channel=Channel.VOICE,
        body=urlencode(params).encode(),
        content_type=FORM,
    )

    with pytest.raises(InvalidArgument) as refused:
        VoiceInbound(clock=SteppingClock(T0)).call_event(call)

    assert refused.value.violations[0].field == f"body.{field}"


def test_turn_urls_extend_the_configured_url() -> None:
    assert turn_url("https://a.test/v", 2) == "https://a.test/v?turn=2"
    assert turn_url("https://a.test/v?k=1", 2, silence=1) == "https://a.test/v?k=1&turn=2&silence=1"


def test_the_reply_timeout_must_fit_the_edges_and_twilios() -> None:
    assert Settings.from_env({}).voice_reply_timeout_seconds == 8.0
    assert (
        Settings.from_env({"VOICE_REPLY_TIMEOUT_SECONDS": "4.5"}).voice_reply_timeout_seconds == 4.5
    )
    with pytest.raises(ConfigError, match="VOICE_REPLY_TIMEOUT_SECONDS"):
        Settings.from_env({"VOICE_REPLY_TIMEOUT_SECONDS": "12"})
    assert Settings.from_env({"VOICE_GREETING": "Hi, this is Acme."}).voice_greeting == (
        "Hi, this is Acme."
    )
