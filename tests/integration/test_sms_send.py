"""SmsSender against the local Twilio REST emulator
(tests/support/emulators/twilio_api.py): the real sender, the real httpx
client, Messages.json checked like Twilio checks it (basic auth, the form,
the account's numbers, the 1600-character body), opt-outs read from a real
SQLite channel store, and Twilio's failures classified as the delivery
queue needs them."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.channels.sms_send import OPTED_OUT, SmsSender, can_send_mms, sms_parts
from adapters.channels.twilio_api import TwilioApi
from adapters.sqlite.channel_store import SqliteChannelStore
from adapters.sqlite.store import SqliteStore
from chat_service.domain.content import Button, MediaContent, MessageContent
from chat_service.domain.enums import ButtonType, Channel, DeliveryStatus, MessageType
from chat_service.domain.events import EventType
from chat_service.domain.model import Conversation, Message
from chat_service.pipeline.delivery import DeliveryQueue
from chat_service.ports import DeliveryError, DeliveryReceipt, OpenedConnection
from tests.builders import T0, TENANT, create_change
from tests.fakes import InMemoryStore, SteppingClock
from tests.support.emulators import PASS, running
from tests.support.emulators.senders import (
    FakeDirectory,
    bot_reply,
    failure,
    opened_connection,
    platform_conversation,
)
from tests.support.emulators.twilio_api import TwilioApiEmulator

ACCOUNT = "AC0123456789abcdef0123456789abcdef"
TOKEN = "0123456789abcdef0123456789abcdef"
OURS = "+14155550100"
USER = "+14155551234"
ABROAD = "+447700900123"
WEBHOOK = "https://edge.example/v1/webhooks/acme/sms?key=abc"
IMAGE = MediaContent(url="https://cdn.example/receipt.png", type="image/png", alt_text="receipt")


def sms_connection(
    *, token: str = TOKEN, webhook_url: str = WEBHOOK, number: str = OURS
) -> OpenedConnection:
    opened = opened_connection(
        Channel.SMS,
        number,
        {"auth_token": token},
        public={"account_sid": ACCOUNT, "phone_number": number},
    )
    connection = dataclasses.replace(opened.connection, webhook_url=webhook_url)
    return dataclasses.replace(opened, connection=connection)


@dataclasses.dataclass
class Rig:
    emulator: TwilioApiEmulator
    sender: SmsSender
    channels: SqliteChannelStore
    sequence: int = 1

    def conversation(self, user: str = USER) -> Conversation:
        return platform_conversation(Channel.SMS, user)

    def reply(self, content: MessageContent, conversation: Conversation) -> Message:
        self.sequence += 1
        return bot_reply(conversation, None, content, self.sequence)

    async def send(self, content: MessageContent, user: str = USER) -> DeliveryReceipt:
        conversation = self.conversation(user)
        return await self.sender.send(conversation, self.reply(content, conversation))

    async def failure(self, content: MessageContent) -> DeliveryError:
        """Sends a reply of `content`; the DeliveryError it fails with."""
        return await failure(self.send(content))


@contextlib.asynccontextmanager
async def _rig(
    tmp_path: Path, *, connection: OpenedConnection | None = None, timeout: float = 5.0
) -> AsyncIterator[Rig]:
    async with running(TwilioApiEmulator()) as emulator:
        emulator.add_account(ACCOUNT, TOKEN, OURS)
        store = await SqliteStore.open(tmp_path / "chat.db")
        channels = SqliteChannelStore(store)
        api = TwilioApi(emulator.base_url, timeout=timeout)
        sender = SmsSender(
            api=api, directory=FakeDirectory(connection or sms_connection()), opt_outs=channels
        )
        try:
            yield Rig(emulator, sender, channels)
        finally:
            await api.aclose()
            await store.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with _rig(tmp_path) as each:
        yield each


# ------------------------------------------------------------------ sending


async def test_a_text_reply_is_one_message_with_a_status_callback(rig: Rig) -> None:
    receipt = await rig.send(MessageContent.of_text("Open until 6 pm today."))

    (sent,) = rig.emulator.sent()
    assert receipt.platform_message_id == sent.sid
    assert sent.sid.startswith("SM")
    assert (sent.account_sid, sent.from_, sent.to) == (ACCOUNT, OURS, USER)
    assert sent.body == "Open until 6 pm today."
    assert sent.media_urls == ()
    assert sent.status_callback == WEBHOOK
    assert receipt.metadata == {"sms_segments": 1, "sms_encoding": "GSM-7"}


async def test_the_call_is_form_encoded_with_basic_auth(rig: Rig) -> None:
    await rig.send(MessageContent.of_text("hi"))

    (call,) = rig.emulator.calls
    assert call.path == f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    assert call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert call.headers["Authorization"].startswith("Basic ")
    assert TOKEN.encode() not in call.raw  # the token is in the header only


async def test_segments_are_counted_as_carriers_do(rig: Rig) -> None:
    gsm = await rig.send(MessageContent.of_text("a" * 161))
    ucs2 = await rig.send(MessageContent.of_text("Привет! " * 10))
    emoji = await rig.send(MessageContent.of_text("😀" * 36))

    assert gsm.metadata == {"sms_segments": 2, "sms_encoding": "GSM-7"}
    assert ucs2.metadata == {"sms_segments": 2, "sms_encoding": "UCS-2"}  # 80 code units
    assert emoji.metadata == {"sms_segments": 2, "sms_encoding": "UCS-2"}  # 72 code units


async def test_buttons_become_numbered_options(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.TEXT,
        text="Which size?",
        buttons=(
            Button(type=ButtonType.POSTBACK, title="Small", payload="S"),
            Button(type=ButtonType.POSTBACK, title="Large", payload="L"),
            Button(type=ButtonType.URL, title="Size guide", url="https://shop.example/sizes"),
        ),
    )

    await rig.send(content)

    (sent,) = rig.emulator.sent()
    assert sent.body == (
        "Which size?\n\nSize guide: https://shop.example/sizes\n\n"
        "Reply with one of:\n1. Small\n2. Large"
    )


async def test_an_image_goes_as_mms_between_north_american_numbers(rig: Rig) -> None:
    receipt = await rig.send(
        MessageContent(type=MessageType.IMAGE, text="Your receipt", media=IMAGE)
    )

    (sent,) = rig.emulator.sent()
    assert sent.sid.startswith("MM")
    assert sent.body == "Your receipt"
    assert sent.media_urls == (IMAGE.url,)
    assert receipt.metadata == {"mms": True}


async def test_an_image_abroad_is_a_link_in_the_text(rig: Rig) -> None:
    await rig.send(MessageContent(type=MessageType.IMAGE, text="Your receipt", media=IMAGE), ABROAD)

    (sent,) = rig.emulator.sent(ABROAD)
    assert sent.media_urls == ()
    assert sent.body == f"Your receipt\n\nreceipt\n{IMAGE.url}"


def test_mms_is_for_plus_one_numbers_on_both_ends() -> None:
    assert can_send_mms(OURS, USER)
    assert not can_send_mms(OURS, ABROAD)
    assert not can_send_mms("+447700900000", USER)


async def test_a_body_past_1600_characters_goes_as_several_messages_in_order(rig: Rig) -> None:
    words = " ".join(f"w{n:04d}" for n in range(320))  # 1919 characters
    content = MessageContent(
        type=MessageType.IMAGE,
        text=words[:1600].rstrip(),
        media=dataclasses.replace(IMAGE, alt_text=""),
    )

    receipt = await rig.send(content, ABROAD)  # no MMS: the link is added to the text

    first, second = rig.emulator.sent(ABROAD)
    assert len(first.body) <= 1600
    assert second.body.endswith(IMAGE.url)
    assert (first.body + " " + second.body).replace("\n\n", " ").split() == [
        *words[:1600].split(),
        IMAGE.url,
    ]
    assert first.status_callback == ""  # only the message the receipt names reports back
    assert second.status_callback == WEBHOOK
    assert receipt.platform_message_id == second.sid
    assert receipt.metadata["sms_messages"] == 2


def test_parts_never_exceed_twilios_limit() -> None:
    parts = sms_parts(MessageContent.of_text("x" * 1600), mms=False)

    assert [len(part.body) for part in parts] == [1600]


# ---------------------------------------------------------------- opt-outs


async def test_nothing_goes_to_a_number_that_sent_stop_until_start(rig: Rig) -> None:
    await rig.channels.set_opt_out(TENANT, "conn-1", USER, True, T0)

    refused = await rig.failure(MessageContent.of_text("Still there?"))
    await rig.channels.set_opt_out(TENANT, "conn-1", USER, False, T0.replace(minute=1))
    await rig.send(MessageContent.of_text("Welcome back"))

    assert str(refused) == OPTED_OUT
    assert refused.retryable is False
    assert [sent.body for sent in rig.emulator.sent()] == ["Welcome back"]


async def test_an_opt_out_on_another_connection_does_not_count(rig: Rig) -> None:
    await rig.channels.set_opt_out(TENANT, "conn-2", USER, True, T0)

    await rig.send(MessageContent.of_text("hi"))

    assert len(rig.emulator.sent()) == 1


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (21211, "Twilio error 21211: invalid 'To' phone number (HTTP 400)"),
        (21610, "Twilio error 21610: the recipient has unsubscribed (replied STOP) (HTTP 400)"),
        (21614, "Twilio error 21614: the 'To' number is not a mobile number (HTTP 400)"),
        (21408, "Twilio error 21408: permission to send to this region is not enabled (HTTP 400)"),
        (30999, "Twilio error 30999 (HTTP 400)"),
    ],
)
async def test_permanent_errors_fail_at_once_with_the_reason(
    rig: Rig, code: int, reason: str
) -> None:
    rig.emulator.error(code)

    refused = await rig.failure(MessageContent.of_text("hi"))

    assert refused.retryable is False
    assert str(refused) == reason


async def test_twilio_refusing_stop_recipients_itself_is_permanent(rig: Rig) -> None:
    rig.emulator.unsubscribe(OURS, USER)

    refused = await rig.failure(MessageContent.of_text("hi"))

    assert "21610" in str(refused)
    assert refused.retryable is False


async def test_throttling_is_retried_after_twilios_wait(rig: Rig) -> None:
    rig.emulator.ratelimit(retry_after="7")
    throttled = await rig.failure(MessageContent.of_text("hi"))

    rig.emulator.error(20429, status=429)
    without_wait = await rig.failure(MessageContent.of_text("hi"))

    assert throttled.retryable is True
    assert throttled.retry_after == 7.0
    assert "20429" in str(throttled)
    assert without_wait.retryable is True
    assert without_wait.retry_after == 1.0
    assert rig.emulator.sent() == []


async def test_server_errors_and_timeouts_are_retried(tmp_path: Path) -> None:
    async with _rig(tmp_path, timeout=0.3) as rig:
        rig.emulator.server_error(503)
        unavailable = await rig.failure(MessageContent.of_text("hi"))
        rig.emulator.hang(5.0)
        hung = await rig.failure(MessageContent.of_text("hi"))
        receipt = await rig.send(MessageContent.of_text("hi"))

    assert unavailable.retryable is True
    assert str(unavailable) == "Twilio answered HTTP 503"
    assert hung.retryable is True
    assert "in time" in str(hung)
    assert receipt.platform_message_id


async def test_a_wrong_auth_token_is_permanent(tmp_path: Path) -> None:
    async with _rig(tmp_path, connection=sms_connection(token="f" * 32)) as rig:
        refused = await rig.failure(MessageContent.of_text("hi"))

    assert refused.retryable is False
    assert "20003" in str(refused)
    assert "f" * 32 not in str(refused)


async def test_a_number_not_of_the_account_is_permanent(tmp_path: Path) -> None:
    async with _rig(tmp_path, connection=sms_connection(number="+14155550199")) as rig:
        refused = await rig.failure(MessageContent.of_text("hi"))

    assert "21659" in str(refused)
    assert refused.retryable is False


async def test_a_retry_after_a_failed_second_message_does_not_resend_the_first(rig: Rig) -> None:
    words = " ".join(f"w{n:04d}" for n in range(400))
    conversation = rig.conversation()
    reply = rig.reply(MessageContent.of_text(words), conversation)
    # Past 1600 characters: two messages; the second fails once.
    rig.emulator.faults.add(PASS)
    rig.emulator.server_error(503)
    await failure(rig.sender.send(conversation, reply))
    receipt = await rig.sender.send(conversation, reply)

    first, second = rig.emulator.sent()
    assert receipt.platform_message_id == second.sid
    assert first.body.startswith("w0000")
    assert second.body.endswith("w0399")


# ------------------------------------------------------- through the queue


async def test_the_segments_are_recorded_on_the_sent_event_and_the_message(rig: Rig) -> None:
    store = InMemoryStore()
    queue = DeliveryQueue(store=store, senders={Channel.SMS: rig.sender}, clock=SteppingClock(T0))
    conversation = rig.conversation()
    reply = rig.reply(MessageContent.of_text("é" * 161), conversation)
    await store.write(create_change(conversation, messages=(reply,)))

    queue.submit(conversation, (reply,))
    assert await queue.wait_idle(5)

    (sent,) = rig.emulator.sent()
    entries = await store.claim_outbox("t", limit=100, lease_seconds=1)
    (event,) = [e.event for e in entries if e.event.event_type is EventType.DELIVERY_UPDATED]
    assert event.metadata["platform_message_id"] == sent.sid
    assert event.metadata["sms_segments"] == 2
    assert event.metadata["sms_encoding"] == "GSM-7"
    stored = await store.get_message(reply.tenant_id, reply.message_id)
    assert stored is not None
    assert stored.delivery_status is DeliveryStatus.SENT
    # ...and on the message itself, where a reader of the conversation sees it.
    assert stored.channel_metadata.additional_data["sms_segments"] == 2
    assert stored.channel_metadata.additional_data["sms_encoding"] == "GSM-7"
