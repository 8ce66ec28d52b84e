"""WhatsAppSender against the local Graph API emulator: the real sender,
the real httpx client, a real HTTP server checking payloads like the Cloud
API (tests/support/emulators/graph_api.py). Only the connection directory
and the store's reads are test doubles."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from adapters.channels.graph_api import GraphApi
from adapters.channels.outbound import Pacer
from adapters.channels.whatsapp_send import WhatsAppSender
from chat_service.domain.channels import format_for_channel
from chat_service.domain.content import (
    Button,
    CarouselCard,
    LocationContent,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.enums import ButtonType, Channel, MessageType
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
    bot_reply,
    opened_connection,
    platform_conversation,
    user_message,
)

PHONE_ID = "106540352242922"
TOKEN = "EAAGtestwhatsapptoken0123456789abcdef"
USER = "16505551234"
OUTSIDE = "outside the 24-hour customer service window: a template message is required"


@dataclasses.dataclass
class Rig(SenderRig[GraphApiEmulator, WhatsAppSender]):
    api: GraphApi
    clock: SettableClock

    def calls(self) -> int:
        return len(self.emulator.calls)


@contextlib.asynccontextmanager
async def _rig(
    *,
    timeout: float = 5.0,
    pacer: Pacer | None = None,
    token: str = TOKEN,
    emulator: GraphApiEmulator | None = None,
) -> AsyncIterator[Rig]:
    async with (
        running(emulator or GraphApiEmulator()) as emulator,
        contextlib.aclosing(GraphApi(emulator.base_url, timeout=timeout)) as api,
    ):
        emulator.add_whatsapp_number(PHONE_ID, TOKEN)
        conversation = platform_conversation(Channel.WHATSAPP, USER)
        inbound = user_message(conversation, T0)
        shelf = MessageShelf(inbound)
        clock = SettableClock(T0 + timedelta(minutes=5))
        directory = FakeDirectory(
            opened_connection(
                Channel.WHATSAPP,
                PHONE_ID,
                {"access_token": token, "app_secret": "s", "verify_token": "v"},
            )
        )
        sender = WhatsAppSender(
            api=api,
            directory=directory,
            store=shelf,
            clock=clock,
            pacer=pacer or Pacer(1000.0),
        )
        yield Rig(emulator, sender, shelf, conversation, inbound, api=api, clock=clock)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with _rig() as each:
        yield each


def _base() -> dict[str, str]:
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": USER}


# ------------------------------------------------------------- payloads


async def test_text_goes_out_with_the_bearer_token_and_its_wamid_comes_back(rig: Rig) -> None:
    receipt = await rig.send(MessageContent.of_text("Hello!"))

    [call] = rig.emulator.calls
    assert call.path == f"/v23.0/{PHONE_ID}/messages"
    assert call.bearer == TOKEN
    assert "access_token" not in call.query  # never in a URL
    assert call.body == _base() | {
        "type": "text",
        "text": {"body": "Hello!", "preview_url": False},
    }
    assert receipt == call.answer["messages"][0]["id"]
    assert receipt.startswith("wamid.")


async def test_a_link_in_text_asks_for_a_preview(rig: Rig) -> None:
    text = "See https://example.com/offer"
    await rig.send(MessageContent.of_text(text))
    assert rig.emulator.sent(PHONE_ID)[0]["text"] == {"body": text, "preview_url": True}


async def test_an_image_carries_its_text_as_caption(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.IMAGE,
        text="Our shop",
        media=MediaContent(url="https://cdn.example.com/shop.jpg", type="image/jpeg"),
    )
    await rig.send(content)
    assert rig.emulator.sent(PHONE_ID) == [
        _base()
        | {
            "type": "image",
            "image": {"link": "https://cdn.example.com/shop.jpg", "caption": "Our shop"},
        }
    ]


async def test_a_document_is_named_after_its_url(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.FILE,
        text="Your invoice",
        media=MediaContent(
            url="https://cdn.example.com/files/invoice%2042.pdf", type="application/pdf"
        ),
    )
    await rig.send(content)
    [sent] = rig.emulator.sent(PHONE_ID)
    assert sent["document"] == {
        "link": "https://cdn.example.com/files/invoice%2042.pdf",
        "filename": "invoice 42.pdf",
        "caption": "Your invoice",
    }


async def test_audio_has_no_caption_so_its_text_goes_first(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.AUDIO,
        text="Listen to this",
        media=MediaContent(url="https://cdn.example.com/a.mp3", type="audio/mpeg"),
    )
    receipt = await rig.send(content)

    text, audio = rig.emulator.sent(PHONE_ID)
    assert text["text"]["body"] == "Listen to this"
    assert audio["audio"] == {"link": "https://cdn.example.com/a.mp3"}
    # The receipt is the call that carries what defines the message.
    assert receipt == rig.emulator.calls[-1].answer["messages"][0]["id"]


async def test_a_gif_goes_as_a_link_whatsapp_previews(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.IMAGE,
        text="Dancing",
        media=MediaContent(url="https://cdn.example.com/d.gif", type="image/gif", alt_text="A cat"),
    )
    await rig.send(content)
    [sent] = rig.emulator.sent(PHONE_ID)
    assert sent["text"] == {
        "body": "Dancing\n\nA cat\nhttps://cdn.example.com/d.gif",
        "preview_url": True,
    }


async def test_a_location_with_text(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.LOCATION,
        text="We are here",
        location=LocationContent(latitude=48.8584, longitude=2.2945, address="Champ de Mars"),
    )
    await rig.send(content)
    text, location = rig.emulator.sent(PHONE_ID)
    assert text["text"]["body"] == "We are here"
    assert location["location"] == {
        "latitude": 48.8584,
        "longitude": 2.2945,
        "address": "Champ de Mars",
    }


async def test_up_to_three_quick_replies_are_reply_buttons(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.QUICK_REPLY,
        text="Shall we?",
        quick_replies=(QuickReply("Yes", "YES"), QuickReply("No", "")),
    )
    await rig.send(content)
    [sent] = rig.emulator.sent(PHONE_ID)
    assert sent["interactive"] == {
        "type": "button",
        "body": {"text": "Shall we?"},
        "action": {
            "buttons": [
                {"type": "reply", "reply": {"id": "YES", "title": "Yes"}},
                # No payload: the title comes back as the reply's id.
                {"type": "reply", "reply": {"id": "No", "title": "No"}},
            ]
        },
    }


async def test_more_quick_replies_are_a_list(rig: Rig) -> None:
    replies = tuple(QuickReply(f"Size {n}", f"SIZE_{n}") for n in range(36, 41))
    content = MessageContent(type=MessageType.QUICK_REPLY, quick_replies=replies)
    await rig.send(content)
    [sent] = rig.emulator.sent(PHONE_ID)
    interactive = sent["interactive"]
    assert interactive["type"] == "list"
    # No text of its own: the body (required) names the options.
    assert interactive["body"]["text"] == "Size 36 / Size 37 / Size 38 / Size 39 / Size 40"
    assert interactive["action"]["button"] == "Options"
    assert [row["id"] for row in interactive["action"]["sections"][0]["rows"]] == [
        f"SIZE_{n}" for n in range(36, 41)
    ]


async def test_postback_buttons_on_an_image_are_reply_buttons_under_an_image_header(
    rig: Rig,
) -> None:
    content = MessageContent(
        type=MessageType.IMAGE,
        text="Like it?",
        media=MediaContent(url="https://cdn.example.com/p.png", type="image/png"),
        buttons=(Button(ButtonType.POSTBACK, "Buy", "BUY"),),
    )
    await rig.send(content)
    [sent] = rig.emulator.sent(PHONE_ID)
    assert sent["interactive"]["header"] == {
        "type": "image",
        "image": {"link": "https://cdn.example.com/p.png"},
    }
    assert sent["interactive"]["body"] == {"text": "Like it?"}


async def test_a_payload_too_long_for_whatsapp_fails_at_once_without_a_call(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.QUICK_REPLY,
        text="Pick",
        quick_replies=(QuickReply("A", "x" * 300), QuickReply("B", "b")),
    )
    error = await rig.failure(content)
    assert not error.retryable
    assert "256" in str(error)
    assert rig.calls() == 0


async def test_a_formatted_reply_goes_out_part_by_part_in_order(rig: Rig) -> None:
    # A carousel (not shown by WhatsApp) with a long text and quick replies:
    # format_for_channel makes it text parts and a last interactive part.
    paragraph = "This paragraph explains the plans in some detail. " * 12
    content = MessageContent(
        type=MessageType.CAROUSEL,
        text="\n\n".join([paragraph.strip()] * 4),
        cards=(
            CarouselCard("Basic", "5 EUR"),
            CarouselCard(
                "Pro", "15 EUR", buttons=(Button(ButtonType.POSTBACK, "Pick Pro", "PRO"),)
            ),
        ),
        quick_replies=(QuickReply("Basic", "BASIC"), QuickReply("Pro", "PRO")),
    )
    parts = format_for_channel(content, Channel.WHATSAPP)
    assert len(parts) >= 2
    receipts = []
    for sequence, part in enumerate(parts, start=2):
        receipts.append(await rig.send(part, sequence))

    sent = rig.emulator.sent(PHONE_ID)
    assert len(sent) == len(parts)
    shown = [
        body["text"]["body"] if body["type"] == "text" else body["interactive"]["body"]["text"]
        for body in sent
    ]
    assert shown == [part.text for part in parts]  # in order, nothing lost
    assert sent[-1]["interactive"]["type"] == "button"
    assert "1. Basic" in "\n".join(shown)  # the carousel as numbered text
    assert len(set(receipts)) == len(parts)


# ---------------------------------------------------------------- failures


async def test_throttled_with_retry_after_is_retryable_after_that_wait(rig: Rig) -> None:
    rig.emulator.throttle(retry_after="7")
    error = await rig.failure(MessageContent.of_text("hi"))
    assert error.retryable
    assert error.retry_after == 7.0
    assert "130429" in str(error)


async def test_the_pair_rate_limit_waits_its_documented_time(rig: Rig) -> None:
    rig.emulator.graph_error(
        131056, "(#131056) (Business Account, Consumer Account) pair rate limit hit"
    )
    error = await rig.failure(MessageContent.of_text("hi"))
    assert error.retryable
    assert error.retry_after == 6.0


@pytest.mark.parametrize("text", ["", "<html>Bad Gateway</html>"])
async def test_a_server_error_is_retryable(rig: Rig, text: str) -> None:
    rig.emulator.fail(status=502, text=text)
    error = await rig.failure(MessageContent.of_text("hi"))
    assert error.retryable


async def test_no_answer_in_time_is_retryable() -> None:
    async with _rig(timeout=0.3) as rig:
        rig.emulator.hang(seconds=10)
        error = await rig.failure(MessageContent.of_text("hi"))
        assert error.retryable
        assert "did not answer in time" in str(error)


async def test_an_undeliverable_message_fails_at_once_with_its_code(rig: Rig) -> None:
    rig.emulator.graph_error(131026, "(#131026) Message Undeliverable.")
    error = await rig.failure(MessageContent.of_text("hi"))
    assert not error.retryable
    assert str(error) == "131026: Message Undeliverable."


async def test_a_payload_meta_refuses_is_a_permanent_failure(rig: Rig) -> None:
    # Past what format_for_channel would ever store: Meta's 4096 binds.
    too_long = dataclasses.replace(MessageContent.of_text("x"), text="y" * 5000)
    error = await rig.failure(too_long)
    assert not error.retryable
    assert str(error).startswith("131009: Parameter value is not valid")


async def test_a_bad_token_never_shows_in_the_error_or_the_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "EAAGwrongtoken9876543210zyxwvutsrqponm"
    caplog.set_level(logging.DEBUG)
    async with _rig(token=wrong) as rig:
        error = await rig.failure(MessageContent.of_text("hi"))
        # The emulator echoed it, as Meta once did; the error must not.
        assert wrong in str(rig.emulator.calls[0].answer)
        assert not error.retryable
        assert str(error).startswith("190: ")
        assert wrong not in str(error)
        assert wrong not in repr(error.args)
        assert wrong not in caplog.text
        assert TOKEN not in caplog.text


async def test_a_retry_does_not_send_the_parts_that_went_out_again(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.AUDIO,
        text="Listen",
        media=MediaContent(url="https://cdn.example.com/a.mp3", type="audio/mpeg"),
    )
    reply = rig.reply(content)
    rig.emulator.let_through(1)
    rig.emulator.fail(status=500)
    with pytest.raises(DeliveryError):
        await rig.sender.send(rig.conversation, reply)

    await rig.sender.send(rig.conversation, reply)

    kinds = [body["type"] for body in rig.emulator.sent(PHONE_ID)]
    assert kinds == ["text", "audio"]  # the text once


# --------------------------------------------------------- refused before


async def test_outside_the_window_is_refused_without_any_call(rig: Rig) -> None:
    rig.clock.at = rig.inbound.created_at + timedelta(hours=24, seconds=1)
    error = await rig.failure(MessageContent.of_text("late"))
    assert not error.retryable
    assert str(error) == OUTSIDE
    assert rig.calls() == 0


async def test_the_window_runs_from_the_platform_time_of_the_users_message(rig: Rig) -> None:
    # Stored late (an inbox backlog), sent by the user 25 hours ago.
    late = dataclasses.replace(
        rig.inbound,
        client_time=rig.clock.at - timedelta(hours=25),
        created_at=rig.clock.at - timedelta(hours=1),
    )
    rig.shelf.put(late)
    with pytest.raises(DeliveryError, match="template message is required"):
        await rig.send(MessageContent.of_text("late"))
    assert rig.calls() == 0


async def test_a_message_answering_nothing_uses_the_users_latest_message(rig: Rig) -> None:
    agent_note = bot_reply(rig.conversation, None, MessageContent.of_text("An agent here"), 2)
    await rig.sender.send(rig.conversation, agent_note)  # the user wrote 5 minutes ago
    assert len(rig.emulator.sent(PHONE_ID)) == 1

    rig.clock.at += timedelta(days=1)
    with pytest.raises(DeliveryError, match="template message is required"):
        await rig.sender.send(rig.conversation, agent_note)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [({}, "names no channel connection"), ({"connection_id": "gone"}, "does not exist")],
)
async def test_an_unknown_connection_fails_at_once_without_a_call(
    rig: Rig, metadata: dict[str, str], reason: str
) -> None:
    conversation = dataclasses.replace(
        rig.conversation,
        channel_metadata=dataclasses.replace(
            rig.conversation.channel_metadata, additional_data=metadata
        ),
    )
    with pytest.raises(DeliveryError, match=reason) as caught:
        await rig.sender.send(conversation, rig.reply(MessageContent.of_text("hi")))
    assert not caught.value.retryable
    assert rig.calls() == 0


# ------------------------------------------------------------------ pacing


async def test_calls_per_number_are_paced_to_the_rate() -> None:
    time = FakeTime()
    emulator = GraphApiEmulator(clock=time.monotonic)
    pacer = Pacer(4.0, monotonic=time.monotonic, sleep=time.sleep)
    async with _rig(pacer=pacer, emulator=emulator) as rig:
        for sequence in range(2, 11):
            await rig.send(MessageContent.of_text(f"n{sequence}"), sequence)
        times = [call.at for call in emulator.calls]
        assert len(times) == 9
        assert all(b - a >= 0.25 - 1e-9 for a, b in itertools.pairwise(times))
        # No one-second window holds more than the rate.
        assert max(sum(1 for t in times if start <= t < start + 1) for start in times) == 4


async def test_numbers_are_paced_apart_from_each_other() -> None:
    time = FakeTime()
    pacer = Pacer(4.0, monotonic=time.monotonic, sleep=time.sleep)
    start = time.now
    for _ in range(4):
        await pacer.wait("A")
    assert time.now - start == pytest.approx(0.75)
    await pacer.wait("B")  # another number: its first call waits for nothing
    assert time.now - start == pytest.approx(0.75)


async def test_media_ids_resolve_to_their_url(rig: Rig) -> None:
    rig.emulator.add_media(
        "1037543291543636", phone_number_id=PHONE_ID, url="https://lookaside.example/m"
    )
    answer = await rig.api.get("1037543291543636", token=TOKEN)
    assert answer["url"] == "https://lookaside.example/m"
    assert answer["mime_type"] == "image/jpeg"
