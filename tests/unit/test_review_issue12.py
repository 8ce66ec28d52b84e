"""Review of issue 12 (SMS and voice through Twilio): each test proves a bug
found in review and keeps it fixed. On the in-memory core with the real
Twilio adapters (tests/unit/test_voice.py has the call helpers), as these
are bugs of the core's use cases and of the pure Twilio functions."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from adapters.channels.twilio import SIGNATURE_HEADER, TwilioSignatures, sign
from adapters.channels.twilio_api import twilio_error
from adapters.channels.voice import VoiceInbound
from chat_service.domain.connections import ChannelConnection, ConnectionFields, check_update
from chat_service.domain.enums import Channel, ConversationStatus, DeliveryStatus
from chat_service.domain.errors import InvalidArgument, PermissionDenied
from chat_service.domain.webhooks import WebhookCall
from chat_service.ports import ConversationQuery, OpenedConnection
from tests.builders import CORE_SETTINGS, T0, TENANT, build_core
from tests.fakes import InMemoryChannelStore, InMemoryStore, SteppingClock
from tests.unit.test_voice import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    NUMBER,
    WEBHOOK_URL,
    Line,
    SignallingEngine,
)

# ------------------------------------------------------------------ helpers


async def _make_line(*, reply_timeout: float, engine_timeout_ms: int = 500) -> Line:
    store, channels, engine = InMemoryStore(), InMemoryChannelStore(), SignallingEngine()
    settings = dataclasses.replace(
        CORE_SETTINGS,
        voice_reply_timeout_seconds=reply_timeout,
        mcp_engine_timeout_ms=engine_timeout_ms,
    )
    core = build_core(
        store=store,
        channels=channels,
        engine=engine,
        clock=SteppingClock(T0),
        inbound={Channel.VOICE: VoiceInbound(clock=SteppingClock(T0))},
        settings=settings,
    )
    await core.connections.create(
        TENANT,
        ConnectionFields(
            channel=Channel.VOICE,
            webhook_url=WEBHOOK_URL,
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
    made: list[Line] = []

    async def make(**options: Any) -> Line:
        made.append(await _make_line(**options))
        return made[-1]

    yield make
    for each in made:
        await each.core.calls.wait_idle(5)
        await each.core.send_message.close(1)
        await each.core.delivery.close(1)


# ------------------------------------------------------- voice: the call's end


async def test_a_hang_up_after_a_late_turn_still_completes_the_conversation(
    lines: Lines,
) -> None:
    # The engine is slower than the caller's patience: the caller hears the
    # fallback and hangs up while the turn still holds the conversation.
    line = await lines(reply_timeout=0.2, engine_timeout_ms=3_000)
    line.engine.delay = 1.0
    phone = line.phone()
    greeting = await line.hear(phone.ring())
    fallback = await line.hear(phone.say("are you there", greeting))
    assert fallback.says == (CORE_SETTINGS.fallback_text,)

    await line.post(phone.hang_up())

    assert await line.core.calls.wait_idle(5)
    (conversation,) = await line.conversations()
    assert conversation.status is ConversationStatus.COMPLETED


async def test_a_call_from_a_busy_caller_id_ends_its_own_conversation(lines: Lines) -> None:
    # Callers who withhold their number all arrive as From=anonymous: more
    # than 20 of them at once, and the first call's end must still find
    # (and complete) its own conversation.
    line = await lines(reply_timeout=5.0)
    phones = [line.phone("anonymous") for _ in range(25)]
    for phone in phones:
        await line.hear(phone.say("hello", await line.hear(phone.ring())))

    await line.post(phones[0].hang_up())

    conversations = await line.store.list_conversations(
        TENANT, ConversationQuery(user_id="anonymous", channel=Channel.VOICE), limit=100
    )
    first = next(c for c in conversations if c.channel_metadata.thread_id == phones[0].call_sid)
    assert first.status is ConversationStatus.COMPLETED


async def test_a_turn_whose_webhook_was_cancelled_is_still_waited_for(lines: Lines) -> None:
    # Twilio (or Envoy) gives up on the webhook while the turn is being
    # answered: the turn goes on (it is committed), so a shutdown that
    # waits for the calls' work must wait for it too.
    line = await lines(reply_timeout=5.0)
    line.engine.delay = 0.3
    phone = line.phone()
    greeting = await line.hear(phone.ring())
    webhook = asyncio.create_task(line.post(phone.say("hello", greeting)))
    await asyncio.wait_for(line.engine.asked.wait(), 5)

    webhook.cancel()
    with pytest.raises(asyncio.CancelledError):
        await webhook

    assert not await line.core.calls.wait_idle(0.01)
    assert await line.core.calls.wait_idle(5)
    (conversation,) = await line.conversations()
    assert len(await line.messages(conversation)) == 2


async def test_a_reply_nobody_heard_is_not_recorded_as_sent(lines: Lines) -> None:
    # The engine answers after the reply timeout (within its own): the
    # caller heard the fallback, so the stored reply must not claim to have
    # been said (SENT is "delivered by answering" on this channel).
    line = await lines(reply_timeout=0.2, engine_timeout_ms=3_000)
    line.engine.delay = 0.5
    phone = line.phone()
    greeting = await line.hear(phone.ring())

    heard = await line.hear(phone.say("are you there", greeting))

    assert heard.says == (CORE_SETTINGS.fallback_text,)
    assert await line.core.calls.wait_idle(5)
    (conversation,) = await line.conversations()
    (reply,) = [m for m in await line.messages(conversation) if m.is_outbound]
    assert reply.content.text == "echo: are you there"
    assert reply.delivery_status is DeliveryStatus.FAILED


async def test_a_late_engine_fallback_is_what_the_caller_heard(lines: Lines) -> None:
    # The engine times out just after the reply timeout: its fallback reply
    # is the text the caller heard, so it stays SENT.
    line = await lines(reply_timeout=0.2, engine_timeout_ms=300)
    line.engine.delay = 1.0
    phone = line.phone()
    greeting = await line.hear(phone.ring())

    heard = await line.hear(phone.say("are you there", greeting))

    assert heard.says == (CORE_SETTINGS.fallback_text,)
    assert await line.core.calls.wait_idle(5)
    (conversation,) = await line.conversations()
    (reply,) = [m for m in await line.messages(conversation) if m.is_outbound]
    assert reply.content.text == CORE_SETTINGS.fallback_text
    assert reply.delivery_status is DeliveryStatus.SENT


# ------------------------------------------------------- SMS: Twilio's errors


@pytest.mark.parametrize(
    "code",
    [
        21611,  # the From number's queue is full (https://www.twilio.com/docs/api/errors/21611)
        63017,  # the account's rate limit (https://www.twilio.com/docs/api/errors/63017)
    ],
)
def test_a_full_queue_or_rate_limit_is_retried_not_a_lost_reply(code: int) -> None:
    response = httpx.Response(400, json={"code": code, "message": "x", "status": 400})

    error = twilio_error(response)

    assert error.retryable
    assert error.retry_after is not None
    assert error.retry_after > 0


# --------------------------------------------------- signatures: the URL checked


def _opened(tenant: str, token: str) -> OpenedConnection:
    connection = ChannelConnection(
        connection_id=f"conn-{tenant}",
        tenant_id=tenant,
        channel=Channel.SMS,
        account_id="+14155550100",
        display_name="",
        webhook_url=f"https://edge.example/v1/webhooks/{tenant}/sms",
        public={"account_sid": "AC" + "0" * 32, "phone_number": "+14155550100"},
        secrets={},
        fingerprints={},
        created_at=T0,
        updated_at=T0,
    )
    return OpenedConnection(connection, {"auth_token": token})


def test_a_call_signed_for_one_tenant_does_not_verify_for_another_by_its_path() -> None:
    # Two tenants on one Twilio account (one auth token). A call Twilio
    # signed for globex's URL, replayed to acme's HandleWebhook by a gRPC
    # caller that names globex's path in x-envoy-original-path (Envoy
    # overwrites that header; a direct gRPC caller chooses it), must not
    # verify for acme.
    params = {"MessageSid": "SM" + "1" * 32, "Body": "hi", "From": "+1415555", "To": "+1"}
    globex_url = "https://edge.example/v1/webhooks/globex/sms"
    call = WebhookCall(
        tenant_id="acme",
        channel=Channel.SMS,
        body=b"&".join(f"{k}={v}".encode() for k, v in params.items()).replace(b"+", b"%2B"),
        content_type="application/x-www-form-urlencoded",
        headers={SIGNATURE_HEADER: sign(globex_url, "shared", params)},
        original_path="/v1/webhooks/globex/sms",
    )

    with pytest.raises(PermissionDenied):
        TwilioSignatures().verify(call, [_opened("acme", "shared")])


# --------------------------------------------------------------- connections


@pytest.mark.parametrize("channel", [Channel.SMS, Channel.VOICE])
def test_an_update_cannot_take_away_the_url_twilio_signs(channel: Channel) -> None:
    # Required when the connection is made (Twilio signs it); an update
    # clearing it would leave a connection that verifies no call (and SMS
    # replies without status callbacks).
    connection = dataclasses.replace(_opened("acme", "t").connection, channel=channel)

    with pytest.raises(InvalidArgument) as refused:
        check_update(connection, ConnectionFields(channel=channel), ("webhook_url",))

    assert refused.value.violations[0].field == "connection.webhook_url"
