"""MessengerSender against the local Graph API emulator (the Send API side
of tests/support/emulators/graph_api.py): the real sender, the real httpx
client, payloads checked like Meta checks them."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from adapters.channels.graph_api import GraphApi
from adapters.channels.messenger_send import MessengerSender
from adapters.channels.outbound import Pacer
from chat_service.domain.channels import format_for_channel
from chat_service.domain.content import (
    Button,
    CarouselCard,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.enums import ButtonType, Channel, MessageType
from chat_service.domain.text import normalize_text
from chat_service.ports import DeliveryError
from tests.builders import T0
from tests.support.emulators import running
from tests.support.emulators.graph_api import GraphApiEmulator
from tests.support.emulators.senders import (
    FakeDirectory,
    FakeTime,
    MessageShelf,
    SenderRig,
    SettableClock,
    opened_connection,
    platform_conversation,
    user_message,
)

PAGE_ID = "102938475610293"
TOKEN = "EAAGtestpageaccesstoken0123456789abcdef"
PSID = "6789012345678901"


@dataclasses.dataclass
class Rig(SenderRig[GraphApiEmulator, MessengerSender]):
    clock: SettableClock

    def messages(self) -> list[Any]:
        return [body["message"] for body in self.emulator.sent(PAGE_ID)]


@contextlib.asynccontextmanager
async def _rig(
    *,
    timeout: float = 5.0,
    token: str = TOKEN,
    emulator: GraphApiEmulator | None = None,
    time: FakeTime | None = None,
) -> AsyncIterator[Rig]:
    async with (
        running(emulator or GraphApiEmulator()) as emulator,
        contextlib.aclosing(GraphApi(emulator.base_url, timeout=timeout)) as api,
    ):
        emulator.add_messenger_page(PAGE_ID, TOKEN)
        conversation = platform_conversation(Channel.MESSENGER, PSID)
        inbound = user_message(conversation, T0)
        shelf = MessageShelf(inbound)
        clock = SettableClock(T0 + timedelta(hours=2))
        directory = FakeDirectory(
            opened_connection(
                Channel.MESSENGER,
                PAGE_ID,
                {"page_access_token": token, "app_secret": "s", "verify_token": "v"},
            )
        )
        pacers = {}
        if time is not None:
            pacers = {
                "text_pacer": Pacer(300.0, monotonic=time.monotonic, sleep=time.sleep),
                "media_pacer": Pacer(10.0, monotonic=time.monotonic, sleep=time.sleep),
            }
        sender = MessengerSender(api=api, directory=directory, store=shelf, clock=clock, **pacers)
        yield Rig(emulator, sender, shelf, conversation, inbound, clock=clock)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with _rig() as each:
        yield each


async def test_text_goes_to_the_page_as_a_response_and_its_mid_comes_back(rig: Rig) -> None:
    receipt = await rig.send(MessageContent.of_text("Hello!"))

    [call] = rig.emulator.calls
    assert call.path == f"/v23.0/{PAGE_ID}/messages"
    assert call.bearer == TOKEN
    assert "access_token" not in call.query  # never in a URL
    assert call.body == {
        "recipient": {"id": PSID},
        "messaging_type": "RESPONSE",
        "message": {"text": "Hello!"},
    }
    assert receipt == call.answer["message_id"]
    assert receipt.startswith("m_")


async def test_quick_replies_ride_on_the_text(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.QUICK_REPLY,
        text="Which one?",
        quick_replies=(
            QuickReply("Red", "RED"),
            QuickReply("Blue", ""),
            QuickReply("", "", content_type="user_email"),
        ),
    )
    await rig.send(content)
    assert rig.messages() == [
        {
            "text": "Which one?",
            "quick_replies": [
                {"content_type": "text", "title": "Red", "payload": "RED"},
                {"content_type": "text", "title": "Blue", "payload": "Blue"},
                {"content_type": "user_email"},
            ],
        }
    ]


async def test_an_image_with_text_is_two_messages_text_first(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.IMAGE,
        text="Our shop",
        media=MediaContent(url="https://cdn.example.com/shop.jpg", type="image/jpeg"),
        quick_replies=(QuickReply("Nice", "NICE"),),
    )
    receipt = await rig.send(content)
    assert rig.messages() == [
        {"text": "Our shop"},
        {
            "attachment": {
                "type": "image",
                "payload": {"url": "https://cdn.example.com/shop.jpg", "is_reusable": False},
            },
            # On the last message, under what the user answers.
            "quick_replies": [{"content_type": "text", "title": "Nice", "payload": "NICE"}],
        },
    ]
    assert receipt == rig.emulator.calls[-1].answer["message_id"]


async def test_buttons_are_a_button_template(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.TEXT,
        text="How can we help?",
        buttons=(
            Button(ButtonType.POSTBACK, "Talk to us", "AGENT"),
            Button(ButtonType.URL, "Website", url="https://example.com"),
            Button(ButtonType.PHONE, "Call", "+14155550100"),
        ),
    )
    await rig.send(content)
    [message] = rig.messages()
    assert message == {
        "attachment": {
            "type": "template",
            "payload": {
                "template_type": "button",
                "text": "How can we help?",
                "buttons": [
                    {"type": "postback", "title": "Talk to us", "payload": "AGENT"},
                    {"type": "web_url", "title": "Website", "url": "https://example.com"},
                    {"type": "phone_number", "title": "Call", "payload": "+14155550100"},
                ],
            },
        }
    }


async def test_a_carousel_is_a_generic_template_after_its_text(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.CAROUSEL,
        text="Our plans",
        cards=(
            CarouselCard("Basic", "5 EUR", "https://cdn.example.com/b.png"),
            CarouselCard(
                "Pro", "15 EUR", buttons=(Button(ButtonType.POSTBACK, "Pick Pro", "PRO"),)
            ),
        ),
    )
    await rig.send(content)
    text, carousel = rig.messages()
    assert text == {"text": "Our plans"}
    assert carousel == {
        "attachment": {
            "type": "template",
            "payload": {
                "template_type": "generic",
                "elements": [
                    {
                        "title": "Basic",
                        "subtitle": "5 EUR",
                        "image_url": "https://cdn.example.com/b.png",
                    },
                    {
                        "title": "Pro",
                        "subtitle": "15 EUR",
                        "buttons": [{"type": "postback", "title": "Pick Pro", "payload": "PRO"}],
                    },
                ],
            },
        }
    }


async def test_a_long_reply_is_split_and_sent_in_order(rig: Rig) -> None:
    sentence = "Messenger keeps a text message to two thousand characters. "
    content = MessageContent.of_text(sentence * 68)  # about 4000 characters
    parts = format_for_channel(content, Channel.MESSENGER)
    assert len(parts) == 3
    for sequence, part in enumerate(parts, start=2):
        await rig.send(part, sequence)

    texts = [message["text"] for message in rig.messages()]
    assert texts == [part.text for part in parts]
    assert all(len(text) <= 2000 for text in texts)
    assert " ".join(texts) == normalize_text(content.text)


async def test_throttling_is_retryable_after_the_wait_meta_names(rig: Rig) -> None:
    rig.emulator.graph_error(
        613,
        "(#613) Calls to this API have exceeded the rate limit.",
        headers={"Retry-After": "12"},
    )
    error = await rig.failure(MessageContent.of_text("hi"))
    assert error.retryable
    assert error.retry_after == 12.0


async def test_business_use_case_usage_names_the_wait_when_retry_after_is_absent(
    rig: Rig,
) -> None:
    usage = '{"102938475610293": [{"type": "messenger", "estimated_time_to_regain_access": 3}]}'
    rig.emulator.graph_error(
        32, "(#32) Page request limit reached", headers={"X-Business-Use-Case-Usage": usage}
    )
    error = await rig.failure(MessageContent.of_text("hi"))
    assert error.retryable
    assert error.retry_after == 180.0


async def test_a_temporary_send_failure_is_retryable(rig: Rig) -> None:
    rig.emulator.graph_error(1200, "Temporary send message failure. Please try again later.")
    error = await rig.failure(MessageContent.of_text("hi"))
    assert error.retryable


async def test_a_server_error_is_retryable(rig: Rig) -> None:
    rig.emulator.fail(status=500)
    error = await rig.failure(MessageContent.of_text("hi"))
    assert error.retryable


async def test_no_answer_in_time_is_retryable() -> None:
    async with _rig(timeout=0.3) as rig:
        rig.emulator.hang(seconds=10)
        error = await rig.failure(MessageContent.of_text("hi"))
        assert error.retryable


async def test_an_unavailable_person_fails_at_once_with_the_reason(rig: Rig) -> None:
    rig.emulator.graph_error(551, "This person isn't available right now.", subcode=1545041)
    error = await rig.failure(MessageContent.of_text("hi"))
    assert not error.retryable
    assert str(error) == "551: This person isn't available right now. (subcode 1545041)"


async def test_outside_the_window_is_refused_without_any_call(rig: Rig) -> None:
    rig.clock.at = rig.inbound.created_at + timedelta(days=2)
    error = await rig.failure(MessageContent.of_text("late"))
    assert not error.retryable
    assert str(error) == (
        "outside the 24-hour standard messaging window: a message tag is required"
    )
    assert rig.emulator.calls == []


async def test_a_bad_token_never_shows_in_the_error_or_the_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "EAAGwrongpagetoken9876543210zyxwvutsrqp"
    caplog.set_level(logging.DEBUG)
    async with _rig(token=wrong) as rig:
        error = await rig.failure(MessageContent.of_text("hi"))
        assert wrong in str(rig.emulator.calls[0].answer)  # echoed by the emulator
        assert str(error).startswith("190: ")
        assert wrong not in str(error)
        assert wrong not in caplog.text


async def test_a_whatsapp_connection_is_not_used_for_messenger(rig: Rig) -> None:
    api = GraphApi(rig.emulator.base_url)
    sender = MessengerSender(
        api=api,
        directory=FakeDirectory(
            opened_connection(Channel.WHATSAPP, "123", {"access_token": "t"}, "conn-1")
        ),
        store=rig.shelf,
        clock=rig.clock,
    )
    with pytest.raises(DeliveryError, match="not messenger") as caught:
        await sender.send(rig.conversation, rig.reply(MessageContent.of_text("hi")))
    await api.aclose()
    assert not caught.value.retryable
    assert rig.emulator.calls == []


async def test_audio_and_video_are_paced_apart_from_text() -> None:
    time = FakeTime()
    emulator = GraphApiEmulator(clock=time.monotonic)
    async with _rig(emulator=emulator, time=time) as rig:
        audio = MessageContent(
            type=MessageType.AUDIO,
            media=MediaContent(url="https://cdn.example.com/a.mp3", type="audio/mpeg"),
        )
        for sequence in range(2, 5):
            await rig.send(audio, sequence)
        audio_times = [call.at for call in emulator.calls]
        # 10 per second per Page for audio and video.
        assert audio_times[-1] - audio_times[0] == pytest.approx(0.2)

        before = time.now
        await rig.send(MessageContent.of_text("hi"), 5)
        assert time.now == before  # text waits for no audio
