"""Platform webhooks through the core: HandleWebhook and VerifyWebhook at the
edge, the inbox worker behind it (tests/builders.build_core: fakes for the
store, inbox, engine and senders; the real Meta inbound adapters, which are
pure)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.channels import meta_inbound
from adapters.channels.messenger import MessengerInbound
from adapters.channels.meta import sign, verify_signature
from adapters.channels.whatsapp import WhatsAppInbound
from adapters.memory.live_bus import InProcessLiveBus
from chat_service.domain.connections import ChannelConnection, ConnectionFields
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, DeliveryStatus, MessageRole, MessageType
from chat_service.domain.errors import (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unimplemented,
)
from chat_service.domain.events import EventType
from chat_service.domain.live import DeliveryChanged, LiveEvent, conversation_topic
from chat_service.domain.model import Message
from chat_service.domain.webhooks import UNSUPPORTED_REPLY, inbound_message_id, session_of
from chat_service.pipeline.inbox_worker import InboxSettings
from chat_service.pipeline.webhooks import MAX_WEBHOOK_BODY_BYTES, WebhookAnswer
from chat_service.ports import ConversationChange, ConversationQuery, StoreUnavailable, Tracer
from chat_service.wiring import Services
from tests.builders import (
    FAST,
    T0,
    TENANT,
    build_core,
    create_change,
    make_conversation,
    make_message,
)
from tests.fakes import (
    InMemoryChannelStore,
    InMemoryStore,
    RecordingSender,
    ScriptedEngine,
    SteppingClock,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"
GRAPH = "https://graph.test/v23.0"

PHONE_NUMBER_ID = "106540352242922"  # the WhatsApp fixtures' metadata.phone_number_id
WA_ID = "16505551234"
PAGE_ID = "682498302938465"  # the Messenger fixtures' recipient
PSID = "1254477777772919"

WA_SECRET = "wa-app-secret"
FB_SECRET = "fb-app-secret"
VERIFY_TOKEN = "verify-token-1"

pytestmark = pytest.mark.asyncio


def fixture(platform: str, name: str) -> bytes:
    return (FIXTURES / platform / f"{name}.json").read_bytes()


def edited(platform: str, name: str, edit: Any) -> bytes:
    """A documented payload with one thing changed (`edit` changes the
    parsed document in place): a body Meta could send."""
    document = json.loads(fixture(platform, name))
    edit(document)
    return json.dumps(document).encode()


def wa_value(document: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = document["entry"][0]["changes"][0]["value"]
    return value


def wa_status(platform_id: str, status: str) -> bytes:
    def edit(document: dict[str, Any]) -> None:
        wa_value(document)["statuses"][0] |= {"id": platform_id, "status": status}

    return edited("whatsapp", "status_read", edit)


def wa_text(wamid: str, text: str, *, account: str = PHONE_NUMBER_ID, user: str = WA_ID) -> bytes:
    def edit(document: dict[str, Any]) -> None:
        value = wa_value(document)
        value["metadata"]["phone_number_id"] = account
        value["messages"][0] |= {"id": wamid, "from": user, "text": {"body": text}}

    return edited("whatsapp", "text_message", edit)


def fb_receipt(kind: str, watermark: datetime, mids: list[str] | None = None) -> bytes:
    receipt: dict[str, Any] = {"watermark": int(watermark.timestamp() * 1000)}
    if mids:
        receipt["mids"] = mids

    def edit(document: dict[str, Any]) -> None:
        event = document["entry"][0]["messaging"][0]
        event.pop("delivery", None)
        event[kind] = receipt

    return edited("messenger", "message_delivered", edit)


@dataclass
class Harness:
    core: Services
    bus: InProcessLiveBus
    store: InMemoryStore
    channels: InMemoryChannelStore
    clock: SteppingClock
    engine: ScriptedEngine
    senders: dict[Channel, RecordingSender]
    whatsapp: ChannelConnection
    messenger: ChannelConnection

    async def post(
        self,
        platform: str,
        body: bytes,
        *,
        secret: str | None = None,
        tenant_id: str = TENANT,
        headers: dict[str, str] | None = None,
    ) -> WebhookAnswer:
        if headers is None:
            key = (
                secret
                if secret is not None
                else (WA_SECRET if platform == "whatsapp" else FB_SECRET)
            )
            headers = {"x-hub-signature-256": sign(body, key)}
        return await self.core.handle_webhook(
            tenant_id=tenant_id,
            platform=platform,
            body=body,
            content_type="application/json",
            headers=headers,
        )

    async def work(self) -> int:
        """Runs the worker over what is due, then lets deliveries finish."""
        handled = 0
        while claimed := await self.core.inbox_worker.process_once():
            handled += claimed
        assert await self.core.delivery.wait_idle(5)
        return handled

    async def conversation_messages(self, user_id: str, channel: Channel) -> list[Message]:
        (conversation,) = await self.store.list_conversations(
            TENANT, ConversationQuery(user_id=user_id, channel=channel), limit=10
        )
        return list(await self.store.list_messages(TENANT, conversation.conversation_id, limit=100))


async def make_harness(
    *,
    store: InMemoryStore | None = None,
    settings: InboxSettings | None = None,
    tracer: Tracer | None = None,
) -> Harness:
    store = store or InMemoryStore()
    channels = InMemoryChannelStore()
    clock = SteppingClock(T0)
    engine = ScriptedEngine()
    senders = {Channel.WHATSAPP: RecordingSender(), Channel.MESSENGER: RecordingSender()}
    bus = InProcessLiveBus()
    core = build_core(
        store=store,
        bus=bus,
        channels=channels,
        clock=clock,
        engine=engine,
        senders=senders,
        inbound={
            Channel.WHATSAPP: WhatsAppInbound(graph_base_url=GRAPH),
            Channel.MESSENGER: MessengerInbound(),
        },
        tuning=dataclasses.replace(FAST, inbox=settings or InboxSettings()),
        tracer=tracer,
    )
    whatsapp = await core.connections.create(
        TENANT,
        ConnectionFields(
            channel=Channel.WHATSAPP,
            public={"phone_number_id": PHONE_NUMBER_ID},
            secrets={
                "app_secret": WA_SECRET,
                "verify_token": VERIFY_TOKEN,
                "access_token": "wa-token",
            },
        ),
        request_id="",
        actor="test",
    )
    messenger = await core.connections.create(
        TENANT,
        ConnectionFields(
            channel=Channel.MESSENGER,
            public={"page_id": PAGE_ID},
            secrets={
                "app_secret": FB_SECRET,
                "verify_token": VERIFY_TOKEN,
                "page_access_token": "fb-token",
            },
        ),
        request_id="",
        actor="test",
    )
    return Harness(core, bus, store, channels, clock, engine, senders, whatsapp, messenger)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await make_harness()
    yield h
    await h.core.delivery.close(1)
    await h.core.send_message.close(1)


# ------------------------------------------------------------------ the edge


async def test_a_signed_message_is_acknowledged_stored_and_answered(harness: Harness) -> None:
    answer = await harness.post("whatsapp", fixture("whatsapp", "text_message"))

    assert answer == WebhookAnswer(b"", "text/plain")
    assert await harness.store.list_conversations(TENANT, ConversationQuery(), limit=10) == []
    assert await harness.work() == 1

    inbound, reply = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
    assert inbound.message_id == inbound_message_id(Channel.WHATSAPP, "wamid.TEXT1")
    assert inbound.content == MessageContent.of_text("Does it come in another color?")
    assert (inbound.role, inbound.user_id, inbound.channel) == (
        MessageRole.USER,
        WA_ID,
        Channel.WHATSAPP,
    )
    metadata = inbound.channel_metadata
    assert (metadata.platform_message_id, metadata.platform_user_id, metadata.workspace_id) == (
        "wamid.TEXT1",
        WA_ID,
        PHONE_NUMBER_ID,
    )
    assert metadata.additional_data == {
        "connection_id": harness.whatsapp.connection_id,
        "kind": "text",
        "user_name": "Sheena Nelson",
    }
    assert inbound.client_time == datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC)
    assert reply.content == MessageContent.of_text("echo: Does it come in another color?")
    assert reply.reply_to_message_id == inbound.message_id
    assert [m.message_id for m in harness.senders[Channel.WHATSAPP].delivered] == [reply.message_id]
    (conversation,) = await harness.store.list_conversations(TENANT, ConversationQuery(), limit=10)
    assert conversation.session_id == session_of(harness.whatsapp.connection_id, WA_ID)
    # What the sender needs to answer through the same connection, to the same user.
    assert conversation.channel_metadata.additional_data == {
        "connection_id": harness.whatsapp.connection_id
    }
    assert conversation.channel_metadata.platform_user_id == WA_ID
    assert harness.core.inbox_worker.stats.messages == 1


async def test_the_next_message_of_the_user_continues_the_conversation(harness: Harness) -> None:
    await harness.post("whatsapp", wa_text("wamid.A", "first"))
    await harness.work()
    await harness.post("whatsapp", wa_text("wamid.B", "second"))
    await harness.work()

    messages = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
    assert [m.content.text for m in messages] == ["first", "echo: first", "second", "echo: second"]


async def test_a_bad_signature_is_unauthenticated_and_stores_nothing(harness: Harness) -> None:
    body = fixture("whatsapp", "text_message")
    for headers in (
        {"x-hub-signature-256": sign(body, "not-the-secret")},
        {"x-hub-signature-256": sign(body + b" ", WA_SECRET)},
        {"x-hub-signature-256": "sha256=xyz"},
        {},
    ):
        with pytest.raises(Unauthenticated) as raised:
            await harness.post("whatsapp", body, headers=headers)
        assert raised.value.reason == "WEBHOOK_SIGNATURE_INVALID"
    # The other platform's secret does not sign this one's webhooks.
    with pytest.raises(Unauthenticated):
        await harness.post("whatsapp", body, secret=FB_SECRET)
    assert await harness.work() == 0
    assert harness.engine.requests == []


async def test_the_signature_is_checked_before_the_body_is_parsed(harness: Harness) -> None:
    junk = b"\xff not json {"
    with pytest.raises(Unauthenticated):
        await harness.post("whatsapp", junk, secret="wrong")
    # Signed junk is refused as junk, and not stored either.
    with pytest.raises(InvalidArgument) as raised:
        await harness.post("whatsapp", junk)
    assert raised.value.reason == "WEBHOOK_PAYLOAD_INVALID"
    wrong_object = fixture("messenger", "text_message")
    with pytest.raises(InvalidArgument) as raised:
        await harness.post("whatsapp", wrong_object)
    assert [v.field for v in raised.value.violations] == ["object"]
    assert await harness.work() == 0


async def test_an_unknown_tenant_gets_the_answer_a_bad_signature_gets(harness: Harness) -> None:
    body = fixture("whatsapp", "text_message")
    with pytest.raises(Unauthenticated) as unknown:
        await harness.post("whatsapp", body, tenant_id="nobody")
    with pytest.raises(Unauthenticated) as bad:
        await harness.post("whatsapp", body, secret="wrong")
    assert (unknown.value.reason, unknown.value.message) == (bad.value.reason, bad.value.message)
    with pytest.raises(Unauthenticated) as unknown_missing:
        await harness.post("whatsapp", body, tenant_id="nobody", headers={})
    with pytest.raises(Unauthenticated) as missing:
        await harness.post("whatsapp", body, headers={})
    assert unknown_missing.value.message == missing.value.message


async def test_platform_and_size_are_checked(harness: Harness) -> None:
    body = fixture("whatsapp", "text_message")
    with pytest.raises(InvalidArgument) as raised:
        await harness.post("telegram", body)
    assert [v.field for v in raised.value.violations] == ["platform"]
    with pytest.raises(Unimplemented):
        await harness.post("slack", body)
    huge = b" " * (MAX_WEBHOOK_BODY_BYTES + 1)
    with pytest.raises(InvalidArgument) as raised:
        await harness.post("whatsapp", huge)
    assert raised.value.reason == "WEBHOOK_BODY_TOO_LARGE"
    with pytest.raises(InvalidArgument) as raised:
        await harness.post("whatsapp", body, tenant_id="")
    assert [v.field for v in raised.value.violations] == ["tenant_id"]


async def test_a_body_naming_another_connections_account_is_refused(harness: Harness) -> None:
    other_secret = "other-app-secret"
    await harness.core.connections.create(
        TENANT,
        ConnectionFields(
            channel=Channel.WHATSAPP,
            public={"phone_number_id": "999"},
            secrets={
                "app_secret": other_secret,
                "verify_token": "t",
                "access_token": "a",
            },
        ),
        request_id="",
        actor="test",
    )
    # Signed with the other app's secret, but speaking for this number.
    with pytest.raises(Unauthenticated):
        await harness.post("whatsapp", fixture("whatsapp", "text_message"), secret=other_secret)
    # Its own number is fine.
    await harness.post("whatsapp", wa_text("wamid.X", "hi", account="999"), secret=other_secret)
    assert await harness.work() == 1


# ------------------------------------------------------------ idempotency


async def test_a_redelivered_message_is_one_message_with_one_reply(harness: Harness) -> None:
    body = fixture("whatsapp", "text_message")
    await harness.post("whatsapp", body)
    await harness.post("whatsapp", body)  # the same call again: one inbox entry
    assert await harness.work() == 1
    # The same wamid in a body that differs (Meta batches differently): a
    # second inbox entry, still the same message.
    await harness.post("whatsapp", body + b"\n")
    assert await harness.work() == 1

    messages = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
    assert [m.role for m in messages] == [MessageRole.USER, MessageRole.BOT]
    assert len(harness.engine.requests) == 1
    assert len(harness.senders[Channel.WHATSAPP].delivered) == 1


async def test_the_same_id_with_other_content_is_refused_and_not_retried(harness: Harness) -> None:
    await harness.post("whatsapp", wa_text("wamid.SAME", "one"))
    await harness.work()
    await harness.post("whatsapp", wa_text("wamid.SAME", "two"))
    assert await harness.work() == 1

    stats = harness.core.inbox_worker.stats
    assert (stats.refused, stats.retries, stats.deliveries) == (1, 0, 2)
    messages = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
    assert [m.content.text for m in messages] == ["one", "echo: one"]


# ------------------------------------------------------ what it cannot read


async def test_an_unsupported_type_is_stored_and_answered_politely(harness: Harness) -> None:
    await harness.post("whatsapp", fixture("whatsapp", "reaction_message"))
    await harness.work()

    inbound, reply = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
    assert inbound.content == MessageContent.of_text("[unsupported WhatsApp message: reaction]")
    assert inbound.channel_metadata.additional_data["unsupported"] is True
    assert reply.content == MessageContent.of_text(UNSUPPORTED_REPLY)
    assert harness.engine.requests == []  # the engine never saw the placeholder
    assert [m.message_id for m in harness.senders[Channel.WHATSAPP].delivered] == [reply.message_id]
    assert harness.core.inbox_worker.stats.unsupported == 1
    # The user's next message goes to the engine as usual.
    await harness.post("whatsapp", wa_text("wamid.NEXT", "hello"))
    await harness.work()
    assert [r.content.text for r in harness.engine.requests] == ["hello"]


async def test_whatsapp_media_is_kept_by_its_graph_api_node(harness: Harness) -> None:
    await harness.post("whatsapp", fixture("whatsapp", "image_message"))
    await harness.work()

    inbound, _ = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
    assert inbound.content.type is MessageType.IMAGE
    assert inbound.content.text == "Here it is"
    assert inbound.content.media is not None
    assert (inbound.content.media.url, inbound.content.media.type) == (
        f"{GRAPH}/1003383421387256",
        "image/jpeg",
    )
    assert inbound.channel_metadata.additional_data["media_id"] == "1003383421387256"
    assert harness.engine.requests[0].content == inbound.content


async def test_media_in_a_type_the_model_does_not_take_is_unsupported(harness: Harness) -> None:
    # A voice note: audio/ogg, which the content model does not take.
    await harness.post("whatsapp", fixture("whatsapp", "audio_message"))
    await harness.work()

    inbound, reply = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
    assert inbound.content == MessageContent.of_text(
        "[unsupported WhatsApp message: audio (audio/ogg)]"
    )
    extra = inbound.channel_metadata.additional_data
    assert (extra["media_id"], extra["mime_type"]) == ("1003383421387257", "audio/ogg")
    assert reply.content.text == UNSUPPORTED_REPLY


async def test_messenger_attachments_take_the_mime_type_of_their_file(harness: Harness) -> None:
    await harness.post("messenger", fixture("messenger", "image_attachment"))
    await harness.post("messenger", fixture("messenger", "audio_attachment"))
    await harness.work()

    image, image_reply, audio, audio_reply = await harness.conversation_messages(
        PSID, Channel.MESSENGER
    )
    assert image.content.media is not None
    assert (image.content.type, image.content.media.url, image.content.media.type) == (
        MessageType.IMAGE,
        "https://scontent.xx.fbcdn.net/v/image.jpg",
        "image/jpeg",
    )
    assert image_reply.content.text.startswith("echo")
    # A voice clip is MP4 audio: not a type the model takes for AUDIO.
    assert audio.content.text == "[unsupported Messenger message: attachment.audio]"
    assert (
        audio.channel_metadata.additional_data["media_url"] == "https://cdn.fbsbx.com/v/audio.mp4"
    )
    assert audio_reply.content.text == UNSUPPORTED_REPLY


async def test_what_the_channel_refuses_is_answered_as_unsupported(harness: Harness) -> None:
    # Messenger users cannot send locations (domain/channel_rules.py), yet
    # older payloads carry them: stored as a placeholder, with the reason.
    await harness.post("messenger", fixture("messenger", "location_attachment"))
    await harness.work()

    inbound, reply = await harness.conversation_messages(PSID, Channel.MESSENGER)
    assert inbound.content.text == "[unsupported Messenger message: attachment.location]"
    reason = inbound.channel_metadata.additional_data["unsupported_reason"]
    assert isinstance(reason, str)
    assert reason.startswith("content.type:")
    assert reply.content.text == UNSUPPORTED_REPLY


async def test_a_message_for_an_account_without_connection_is_skipped(harness: Harness) -> None:
    await harness.post("whatsapp", wa_text("wamid.LOST", "hi", account="123456"))
    assert await harness.work() == 1
    stats = harness.core.inbox_worker.stats
    assert (stats.no_connection, stats.messages, stats.deliveries) == (1, 0, 1)
    assert await harness.store.list_conversations(TENANT, ConversationQuery(), limit=10) == []


# ---------------------------------------------------------------- statuses


async def answered_whatsapp(harness: Harness) -> Message:
    """The bot's reply to a WhatsApp user, delivered (SENT, its platform id recorded)."""
    await harness.post("whatsapp", fixture("whatsapp", "text_message"))
    await harness.work()
    _, reply = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
    assert reply.delivery_status is DeliveryStatus.SENT
    assert reply.channel_metadata.platform_message_id == f"p-{reply.message_id}"
    return reply


async def test_statuses_move_the_reply_forward_only(harness: Harness) -> None:
    reply = await answered_whatsapp(harness)
    platform_id = reply.channel_metadata.platform_message_id
    before = await harness.store.last_event_position()

    for status in ("delivered", "read", "delivered", "sent"):
        await harness.post("whatsapp", wa_status(platform_id, status))
        await harness.work()

    stored = await harness.store.get_message(TENANT, reply.message_id)
    assert stored is not None
    assert stored.delivery_status is DeliveryStatus.READ
    events = await harness.store.read_events(after_position=before, limit=10)
    assert [(e.event.event_type, e.event.metadata["delivery_status"]) for e in events] == [
        (EventType.DELIVERY_UPDATED, "delivered"),
        (EventType.DELIVERY_UPDATED, "read"),
    ]
    assert harness.core.inbox_worker.stats.statuses == 2
    assert harness.core.inbox_worker.stats.unknown_statuses == 0


async def test_a_failed_status_keeps_the_platform_error(harness: Harness) -> None:
    reply = await answered_whatsapp(harness)
    platform_id = reply.channel_metadata.platform_message_id
    before = await harness.store.last_event_position()

    def edit(document: dict[str, Any]) -> None:
        wa_value(document)["statuses"][0]["id"] = platform_id

    await harness.post("whatsapp", edited("whatsapp", "status_failed", edit))
    await harness.work()

    stored = await harness.store.get_message(TENANT, reply.message_id)
    assert stored is not None
    assert stored.delivery_status is DeliveryStatus.FAILED
    (entry,) = await harness.store.read_events(after_position=before, limit=10)
    assert entry.event.metadata["error"] == "131026: Message undeliverable"


async def test_status_changes_reach_streams_and_watches(harness: Harness) -> None:
    """The worker notifies what the delivery queue notifies: the live bus
    (streams) and the event tail (watches)."""
    reply = await answered_whatsapp(harness)
    received: list[LiveEvent] = []
    harness.bus.subscribe(conversation_topic(TENANT, reply.conversation_id), received.append)

    await harness.post("whatsapp", wa_status(reply.channel_metadata.platform_message_id, "read"))
    await harness.work()

    assert received == [
        DeliveryChanged(
            reply.message_id,
            reply.sequence,
            DeliveryStatus.READ,
            reply.channel_metadata.platform_message_id,
        )
    ]


async def work_through_retries(harness: Harness, rounds: int = 5) -> None:
    """Runs the worker, stepping the clock past each retry delay."""
    for _ in range(rounds):
        await harness.work()
        harness.clock.advance(timedelta(minutes=10))


async def test_unknown_ids_are_counted_and_ignored(harness: Harness) -> None:
    await harness.post("whatsapp", fixture("whatsapp", "status_read"))  # wamid.OUTBOUND1: not ours
    await work_through_retries(harness)
    stats = harness.core.inbox_worker.stats
    assert (stats.unknown_statuses, stats.statuses, stats.deliveries) == (1, 0, 1)
    assert stats.retries == InboxSettings().unknown_status_attempts - 1


async def test_a_status_that_overtakes_our_sent_record_is_applied_when_it_lands(
    harness: Harness,
) -> None:
    """Meta may call with "delivered" before the sender recorded SENT and the
    wamid: the status is looked at again shortly, not dropped."""
    conversation = make_conversation(tenant_id=TENANT, channel=Channel.WHATSAPP)
    reply = make_message(
        conversation, 1, "hello", role=MessageRole.BOT, delivery_status=DeliveryStatus.PENDING
    )
    await harness.store.write(create_change(conversation, [reply]))
    await harness.post("whatsapp", wa_status("wamid.LATE", "delivered"))
    assert await harness.work() == 1
    assert harness.core.inbox_worker.stats.unknown_statuses == 0

    # The sender's record lands, then the status's retry finds it.
    await harness.store.update_delivery_status(
        TENANT, reply.message_id, DeliveryStatus.SENT, platform_message_id="wamid.LATE"
    )
    await work_through_retries(harness)
    stored = await harness.store.get_message(TENANT, reply.message_id)
    assert stored is not None
    assert stored.delivery_status is DeliveryStatus.DELIVERED
    assert harness.core.inbox_worker.stats.unknown_statuses == 0


async def test_messenger_watermarks_move_what_was_sent_before_them(harness: Harness) -> None:
    await harness.post("messenger", fixture("messenger", "text_message"))
    await harness.work()
    _, first_reply = await harness.conversation_messages(PSID, Channel.MESSENGER)
    watermark = first_reply.created_at + timedelta(milliseconds=1)
    harness.clock.advance(timedelta(seconds=5))  # the next reply comes after the watermark
    await harness.post("messenger", edited("messenger", "text_message", _mid("m_TEXT2")))
    await harness.work()

    await harness.post("messenger", fb_receipt("delivery", watermark))
    await harness.work()
    statuses = [
        m.delivery_status for m in await harness.conversation_messages(PSID, Channel.MESSENGER)
    ]
    assert statuses == [
        DeliveryStatus.SENT,  # the user's own message
        DeliveryStatus.DELIVERED,
        DeliveryStatus.SENT,
        DeliveryStatus.SENT,
    ]

    later = watermark + timedelta(minutes=1)
    await harness.post("messenger", fb_receipt("read", later))
    await harness.work()
    statuses = [
        m.delivery_status for m in await harness.conversation_messages(PSID, Channel.MESSENGER)
    ]
    assert statuses[1::2] == [DeliveryStatus.READ, DeliveryStatus.READ]
    # A delivery watermark after the read one moves nothing back.
    await harness.post("messenger", fb_receipt("delivery", later + timedelta(seconds=1)))
    await harness.work()
    statuses = [
        m.delivery_status for m in await harness.conversation_messages(PSID, Channel.MESSENGER)
    ]
    assert statuses[1::2] == [DeliveryStatus.READ, DeliveryStatus.READ]
    # Receipts that cover our messages are never "unknown", even when they move nothing.
    assert harness.core.inbox_worker.stats.unknown_statuses == 0


async def test_a_watermark_for_nothing_of_ours_is_counted(harness: Harness) -> None:
    await harness.post("messenger", fixture("messenger", "message_read"))
    assert await harness.work() == 1
    assert harness.core.inbox_worker.stats.unknown_statuses == 1


def _mid(mid: str) -> Any:
    def edit(document: dict[str, Any]) -> None:
        event = document["entry"][0]["messaging"][0]
        event["message"]["mid"] = mid
        event["timestamp"] += 5000

    return edit


# ------------------------------------------------------------------- errors


class FlakyStore(InMemoryStore):
    """Writes fail while `down`, and those of the `refused` message ids."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused: set[str] = set()

    async def write(self, change: ConversationChange) -> None:
        if self.down or any(m.message_id in self.refused for m in change.messages):
            raise StoreUnavailable("store down")
        await super().write(change)


async def test_a_store_outage_sends_the_delivery_back_for_later() -> None:
    store = FlakyStore()
    harness = await make_harness(store=store)
    try:
        store.down = True
        await harness.post("whatsapp", fixture("whatsapp", "text_message"))
        assert await harness.work() == 1
        stats = harness.core.inbox_worker.stats
        assert (stats.retries, stats.deliveries) == (1, 0)
        assert await harness.work() == 0  # not due yet

        store.down = False
        harness.clock.advance(timedelta(seconds=2))
        assert await harness.work() == 1
        assert stats.deliveries == 1
        inbound, reply = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
        assert reply.reply_to_message_id == inbound.message_id
    finally:
        await harness.core.delivery.close(1)


async def test_after_the_last_attempt_the_delivery_is_a_dead_letter() -> None:
    store = FlakyStore()
    harness = await make_harness(store=store, settings=InboxSettings(max_attempts=3))
    try:
        store.down = True
        await harness.post("whatsapp", fixture("whatsapp", "text_message"))
        for _ in range(3):
            assert await harness.work() == 1
            harness.clock.advance(timedelta(hours=1))
        assert await harness.work() == 0  # never again
        ((delivery, error),) = harness.channels.dead_letters()
        assert delivery.attempts == 3
        assert error.startswith("gave up after 3 attempts: STORE_UNAVAILABLE")
        assert harness.core.inbox_worker.stats.dead_letters == 1
    finally:
        await harness.core.delivery.close(1)


async def test_a_users_later_message_waits_for_an_earlier_one_to_retry() -> None:
    store = FlakyStore()
    harness = await make_harness(store=store)
    try:
        store.refused.add(inbound_message_id(Channel.WHATSAPP, "wamid.1"))
        await harness.post("whatsapp", wa_text("wamid.1", "first"))
        await harness.post("whatsapp", wa_text("wamid.2", "second"))
        await harness.post("whatsapp", wa_text("wamid.3", "other user's", user="15550001111"))
        assert await harness.work() == 3  # one batch

        # "second" was not taken before "first"; the other user went on.
        stats = harness.core.inbox_worker.stats
        assert (stats.retries, stats.messages) == (2, 1)
        (other,) = await harness.store.list_conversations(TENANT, ConversationQuery(), limit=10)
        assert other.user_id == "15550001111"

        store.refused.clear()
        harness.clock.advance(timedelta(seconds=5))
        assert await harness.work() == 2
        messages = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
        assert [m.content.text for m in messages] == [
            "first",
            "echo: first",
            "second",
            "echo: second",
        ]
    finally:
        await harness.core.delivery.close(1)


async def test_an_unfinished_delivery_is_taken_over_after_its_lease(harness: Harness) -> None:
    """Acknowledged, then the process died: while nobody works the inbox the
    delivery waits there; a worker that claimed it and died holds it for its
    lease, then another worker (another process's owner id) handles it."""
    await harness.post("whatsapp", fixture("whatsapp", "text_message"))
    crashed = await harness.channels.claim(
        "crashed-process", now=harness.clock.now(), limit=10, lease_seconds=60
    )
    assert len(crashed) == 1
    assert await harness.work() == 0  # leased to the dead worker

    harness.clock.advance(timedelta(seconds=61))
    assert await harness.work() == 1
    inbound, reply = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
    assert reply.reply_to_message_id == inbound.message_id


async def test_processed_deliveries_are_pruned_after_the_retention(harness: Harness) -> None:
    await harness.post("whatsapp", fixture("whatsapp", "text_message"))
    await harness.work()
    assert await harness.core.inbox_worker.prune_once() == 0
    harness.clock.advance(timedelta(hours=169))
    assert await harness.core.inbox_worker.prune_once() == 1


# --------------------------------------------------------------- handshake


async def test_the_meta_handshake_echoes_the_challenge(harness: Harness) -> None:
    for platform in ("whatsapp", "messenger"):
        answer = await harness.core.verify_webhook(
            tenant_id=TENANT,
            platform=platform,
            mode="subscribe",
            verify_token=VERIFY_TOKEN,
            challenge="1158201444",
        )
        assert answer == WebhookAnswer(b"1158201444", "text/plain")


async def test_anything_but_the_handshake_is_permission_denied(harness: Harness) -> None:
    async def verify(**overrides: str) -> None:
        arguments = {
            "tenant_id": TENANT,
            "platform": "whatsapp",
            "mode": "subscribe",
            "verify_token": VERIFY_TOKEN,
            "challenge": "42",
        } | overrides
        await harness.core.verify_webhook(**arguments)

    reasons = []
    for overrides in (
        {"verify_token": "wrong"},
        {"verify_token": ""},
        {"mode": "unsubscribe"},
        {"tenant_id": "nobody"},
        {"platform": "slack"},
    ):
        with pytest.raises(PermissionDenied) as raised:
            await verify(**overrides)
        reasons.append(raised.value.reason)
    assert reasons[0] == reasons[1] == reasons[3] == "WEBHOOK_VERIFY_TOKEN_MISMATCH"
    assert reasons[2] == "WEBHOOK_VERIFY_MODE_INVALID"
    with pytest.raises(InvalidArgument):
        await verify(platform="telegram")


# ------------------------------------------------------------ review (H7)


async def test_a_connection_made_on_another_process_is_found_by_this_worker() -> None:
    """Process A makes a second number's connection and acknowledges its
    first webhook; process B, whose directory cached the tenant's numbers
    before that, works the inbox. B must not skip the message as one for
    an unknown account (finished, so lost for good): a miss reads the
    store before giving up."""
    a = await make_harness()
    b = build_core(
        store=a.store,
        channels=a.channels,
        clock=a.clock,
        engine=a.engine,
        senders=a.senders,
        inbound={
            Channel.WHATSAPP: WhatsAppInbound(graph_base_url=GRAPH),
            Channel.MESSENGER: MessengerInbound(),
        },
        tuning=FAST,
    )
    try:
        assert len(await b.directory.for_channel(TENANT, Channel.WHATSAPP)) == 1  # cached
        second = await a.core.connections.create(
            TENANT,
            ConnectionFields(
                channel=Channel.WHATSAPP,
                public={"phone_number_id": "5550001"},
                secrets={"app_secret": "second-app", "verify_token": "v", "access_token": "t"},
            ),
            request_id="",
            actor="test",
        )
        await a.post("whatsapp", wa_text("wamid.NEW", "hi", account="5550001"), secret="second-app")

        assert await b.inbox_worker.process_once() == 1
        assert b.inbox_worker.stats.no_connection == 0
        assert await b.delivery.wait_idle(5)
        inbound, _reply = await a.conversation_messages(WA_ID, Channel.WHATSAPP)
        assert inbound.channel_metadata.additional_data["connection_id"] == second.connection_id
    finally:
        for core in (a.core, b):
            await core.delivery.close(1)
            await core.send_message.close(1)


async def test_a_lone_surrogate_is_no_poison_message(harness: Harness) -> None:
    """Half a surrogate pair, escaped in the JSON, made every attempt fail
    (UnicodeEncodeError in SendMessage's fingerprint) until dead-lettered."""
    body = wa_text("wamid.SUR", "x").replace(b'"x"', b'"broken \\ud83d emoji"')
    await harness.post("whatsapp", body)
    assert await harness.work() == 1

    stats = harness.core.inbox_worker.stats
    assert (stats.retries, stats.messages) == (0, 1)
    inbound, _reply = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
    assert inbound.content.text == "broken \ufffd emoji"


async def test_a_refusal_costs_one_hmac_of_the_body_per_distinct_app_secret(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signature check over a (3 MiB) body is the work anybody can ask
    for: one HMAC per distinct app secret (numbers of one Meta app share
    it), and one for a tenant without connections, so that its answer
    costs what a tenant with one connection's does (the module's promise)."""
    body = fixture("whatsapp", "text_message")
    hashed: list[bytes] = []

    def counting(raw_body: bytes, header: str | None, app_secret: str) -> None:
        if raw_body == body:
            hashed.append(raw_body)
        verify_signature(raw_body, header, app_secret)

    monkeypatch.setattr(meta_inbound, "verify_signature", counting)

    async def hmacs_of_a_refusal(tenant_id: str) -> int:
        hashed.clear()
        with pytest.raises(Unauthenticated):
            await harness.post("whatsapp", body, secret="forged", tenant_id=tenant_id)
        return len(hashed)

    assert await hmacs_of_a_refusal("nobody") == 1
    assert await hmacs_of_a_refusal(TENANT) == 1
    for account in ("2001", "2002"):  # two more numbers of the same app
        await harness.core.connections.create(
            TENANT,
            ConnectionFields(
                channel=Channel.WHATSAPP,
                public={"phone_number_id": account},
                secrets={"app_secret": WA_SECRET, "verify_token": "v", "access_token": "t"},
            ),
            request_id="",
            actor="test",
        )
    assert await hmacs_of_a_refusal(TENANT) == 1
    # And a body one of them signs speaks for all three.
    await harness.post("whatsapp", wa_text("wamid.3", "hi", account="2002"))
    assert await harness.work() == 1


async def test_a_text_longer_than_the_service_keeps_is_cut_and_marked_not_refused(
    harness: Harness,
) -> None:
    """WhatsApp users may send up to 65,536 characters; the service keeps 4,096."""
    await harness.post("whatsapp", wa_text("wamid.LONG", "a" * 5000))
    await harness.work()
    inbound, reply = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
    assert inbound.content.text == "a" * 4096
    assert inbound.channel_metadata.additional_data["truncated_from"] == "5000"
    assert "unsupported" not in inbound.channel_metadata.additional_data
    assert reply.content.text != UNSUPPORTED_REPLY


async def test_a_users_later_delivery_waits_for_an_earlier_one_being_retried() -> None:
    """Order per user holds across batches: a later call of the same user is
    not stored while an earlier one waits to be tried again."""
    store = FlakyStore()
    harness = await make_harness(store=store)
    try:
        store.refused.add(inbound_message_id(Channel.WHATSAPP, "wamid.1"))
        await harness.post("whatsapp", wa_text("wamid.1", "first"))
        assert await harness.work() == 1  # sent back for later
        store.refused.clear()
        await harness.post("whatsapp", wa_text("wamid.2", "second"))  # a later call
        await harness.work()
        assert (
            await store.get_message(TENANT, inbound_message_id(Channel.WHATSAPP, "wamid.2")) is None
        )
        for _ in range(3):
            harness.clock.advance(timedelta(seconds=5))
            await harness.work()

        messages = await harness.conversation_messages(WA_ID, Channel.WHATSAPP)
        assert [m.content.text for m in messages] == [
            "first",
            "echo: first",
            "second",
            "echo: second",
        ]
        assert harness.core.inbox_worker.stats.dead_letters == 0
    finally:
        await harness.core.delivery.close(1)
