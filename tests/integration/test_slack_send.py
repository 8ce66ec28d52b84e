"""SlackSender against the local Slack Web API emulator
(tests/support/emulators/slack_api.py): the real sender, the real httpx
client, chat.postMessage checked like Slack checks it (token, channel
membership, Block Kit limits)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.channels.outbound import Pacer
from adapters.channels.slack_api import SlackWebApi
from adapters.channels.slack_send import SlackSender
from chat_service.domain.channels import format_for_channel
from chat_service.domain.content import (
    Button,
    CarouselCard,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.enums import ButtonType, Channel, MessageType
from chat_service.domain.model import ChannelMetadata, Conversation, Message
from chat_service.ports import DeliveryError, OpenedConnection
from tests.builders import T0, make_message
from tests.support.emulators import PASS, running
from tests.support.emulators.senders import (
    FakeDirectory,
    FakeTime,
    MessageShelf,
    SenderRig,
    bot_reply,
    opened_connection,
    platform_conversation,
)
from tests.support.emulators.slack_api import SlackApiEmulator

TEAM = "T123ABC456"
TOKEN = "xoxb-test-bot-token-0123456789"
USER = "U123ABC456"
CHANNEL = "C123ABC456"
DM = "D024BE91L"
ROOT = "1482960137.003543"


def slack_connection(token: str = TOKEN, connection_id: str = "conn-1") -> OpenedConnection:
    secrets = {"signing_secret": "s", "bot_token": token}
    return opened_connection(Channel.SLACK, TEAM, secrets, connection_id, public={"team_id": TEAM})


def users_message(
    conversation: Conversation, sequence: int, channel: str, thread_ts: str, ts: str = ROOT
) -> Message:
    """A user's Slack message as the inbox worker stores it."""
    return make_message(
        conversation,
        sequence,
        "hi",
        created_at=T0,
        channel_metadata=ChannelMetadata(
            platform_message_id=f"{channel}:{ts}",
            platform_user_id=USER,
            thread_id=thread_ts or ts,
            workspace_id=TEAM,
            additional_data={
                "connection_id": "conn-1",
                "slack_channel": channel,
                "slack_ts": ts,
                "slack_thread_ts": thread_ts,
            },
        ),
    )


@dataclasses.dataclass
class Rig(SenderRig[SlackApiEmulator, SlackSender]):
    time: FakeTime

    def payloads(self) -> list[Any]:
        return [posted.payload for posted in self.emulator.posted()]


@contextlib.asynccontextmanager
async def _rig(
    *,
    channel: str = CHANNEL,
    thread_ts: str = ROOT,
    timeout: float = 5.0,
    directory: FakeDirectory | None = None,
) -> AsyncIterator[Rig]:
    async with (
        running(SlackApiEmulator()) as emulator,
        contextlib.aclosing(SlackWebApi(emulator.base_url, timeout=timeout)) as api,
    ):
        emulator.add_workspace(TEAM, TOKEN)
        emulator.add_channel(TEAM, CHANNEL)
        emulator.add_channel(TEAM, DM)
        conversation = platform_conversation(Channel.SLACK, USER)
        inbound = users_message(conversation, 1, channel, thread_ts)
        shelf = MessageShelf(inbound)
        time = FakeTime()
        sender = SlackSender(
            api=api,
            directory=directory or FakeDirectory(slack_connection()),
            store=shelf,
            pacer=Pacer(1.0, monotonic=time.monotonic, sleep=time.sleep),
        )
        yield Rig(emulator, sender, shelf, conversation, inbound, time=time)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with _rig() as each:
        yield each


# --------------------------------------------------------------- mapping


async def test_text_goes_into_the_users_thread_and_its_ts_comes_back(rig: Rig) -> None:
    receipt = await rig.send(MessageContent.of_text("Fish & chips <3 > crisps"))

    [call] = rig.emulator.calls
    assert call.path == "/api/chat.postMessage"
    assert call.bearer == TOKEN
    assert call.headers["Content-Type"].startswith("application/json")
    assert call.body == {
        "channel": CHANNEL,
        "thread_ts": ROOT,
        "text": "Fish &amp; chips &lt;3 &gt; crisps",  # Slack's escapes
    }
    assert receipt == f"{CHANNEL}:{call.answer['ts']}"


async def test_a_dm_reply_goes_to_the_dm_itself() -> None:
    async with _rig(channel=DM, thread_ts="") as rig:
        await rig.send(MessageContent.of_text("Hello"))
        assert rig.payloads() == [{"channel": DM, "text": "Hello"}]


async def test_an_agents_message_goes_where_the_user_last_wrote(rig: Rig) -> None:
    later = users_message(rig.conversation, 3, CHANNEL, "1500000000.000001", ts="1500000009.000009")
    rig.shelf.put(later)
    agent = bot_reply(rig.conversation, None, MessageContent.of_text("An agent here"), 4)
    rig.shelf.put(agent)

    await rig.sender.send(rig.conversation, agent)
    assert rig.payloads()[0]["thread_ts"] == "1500000000.000001"


async def test_quick_replies_and_buttons_are_an_actions_block(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.QUICK_REPLY,
        text="Which size?",
        quick_replies=(QuickReply("Small", "SIZE_S"), QuickReply("Large", "")),
        buttons=(
            Button(ButtonType.POSTBACK, "Help", payload="HELP"),
            Button(ButtonType.URL, "Size chart", url="https://example.com/sizes"),
        ),
    )
    await rig.send(content)

    [payload] = rig.payloads()
    assert payload["text"] == "Which size?"  # the notification fallback
    assert payload["blocks"] == [
        {"type": "section", "text": {"type": "mrkdwn", "text": "Which size?"}},
        {
            "type": "actions",
            "elements": [
                button("Help", "button-0", value="HELP"),
                button("Size chart", "button-1", url="https://example.com/sizes"),
                button("Small", "qr-0", value="SIZE_S"),
                button("Large", "qr-1", value="Large"),  # no payload: the title comes back
            ],
        },
    ]


def button(title: str, action_id: str, **target: str) -> dict[str, Any]:
    text = {"type": "plain_text", "text": title, "emoji": True}
    return {"type": "button", "text": text, "action_id": action_id, **target}


async def test_an_image_is_an_image_block(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.IMAGE,
        text="Here it is",
        media=MediaContent(url="https://cdn.example.com/a.png", type="image/png", alt_text="A"),
    )
    await rig.send(content)
    [payload] = rig.payloads()
    assert payload["blocks"][1] == {
        "type": "image",
        "image_url": "https://cdn.example.com/a.png",
        "alt_text": "A",
    }


async def test_a_carousel_is_a_section_per_card(rig: Rig) -> None:
    cards = tuple(
        CarouselCard(
            title=f"Shoe {n}",
            subtitle="Leather",
            image_url=f"https://cdn.example.com/{n}.jpg",
            buttons=(Button(ButtonType.POSTBACK, "Buy", payload=f"BUY_{n}"),),
        )
        for n in range(10)
    )
    content = MessageContent(type=MessageType.CAROUSEL, text="Our shoes", cards=cards)
    (formatted,) = format_for_channel(content, Channel.SLACK)
    assert formatted == content  # Slack shows carousels natively

    await rig.send(formatted)
    [payload] = rig.payloads()
    blocks = payload["blocks"]
    assert blocks[1] == {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "*Shoe 0*\nLeather"},
        "accessory": {
            "type": "image",
            "image_url": "https://cdn.example.com/0.jpg",
            "alt_text": "Shoe 0",
        },
    }
    assert blocks[2] == {"type": "actions", "elements": [button("Buy", "card-0-0", value="BUY_0")]}
    assert blocks[3] == {"type": "divider"}
    assert len(blocks) == 1 + 10 * 2 + 9


async def test_past_a_block_kit_limit_the_content_goes_as_text(rig: Rig) -> None:
    # More cards than one message's 50 blocks hold (beyond the content
    # model's limits, which never get here: the sender holds anyway).
    cards = tuple(
        CarouselCard(title=f"Item {n}", buttons=(Button(ButtonType.POSTBACK, "Pick", "P"),))
        for n in range(30)
    )
    await rig.send(MessageContent(type=MessageType.CAROUSEL, text="All items", cards=cards))
    [payload] = rig.payloads()
    assert "blocks" not in payload
    assert payload["text"].startswith("All items\n\n1. Item 0\n\n2. Item 1")
    assert "Reply with one of:\n1. Pick (Item 0)" in payload["text"]


async def test_long_text_is_posted_in_order_in_the_thread(rig: Rig) -> None:
    text = ("word " * 1700).strip()  # 8499 characters
    receipt = await rig.send(MessageContent.of_text(text))

    payloads = rig.payloads()
    assert len(payloads) == 3
    assert all(p["thread_ts"] == ROOT and len(p["text"]) <= 4000 for p in payloads)
    assert " ".join(p["text"] for p in payloads) == text
    assert receipt == f"{CHANNEL}:{rig.emulator.posted()[-1].ts}"


async def test_a_retry_after_a_failed_later_post_does_not_repeat_the_earlier(rig: Rig) -> None:
    reply = rig.reply(MessageContent.of_text(("word " * 1000).strip()))
    rig.emulator.faults.add(PASS)  # the first part goes out
    rig.emulator.server_error(503)  # the second does not
    with pytest.raises(DeliveryError) as raised:
        await rig.sender.send(rig.conversation, reply)
    assert raised.value.retryable

    await rig.sender.send(rig.conversation, reply)
    assert len(rig.payloads()) == 2  # the first part once, the second once


# ----------------------------------------------------------------- errors


async def test_ratelimited_is_retryable_after_slacks_wait(rig: Rig) -> None:
    rig.emulator.ratelimit(retry_after="7")
    error = await rig.failure(MessageContent.of_text("hi"))
    assert (error.retryable, error.retry_after) == (True, 7.0)
    assert "ratelimited" in str(error)


async def test_rate_limited_without_a_wait_is_retried_after_a_second(rig: Rig) -> None:
    rig.emulator.error("rate_limited")
    error = await rig.failure(MessageContent.of_text("hi"))
    assert (error.retryable, error.retry_after) == (True, 1.0)


@pytest.mark.parametrize(
    "code",
    ["channel_not_found", "not_in_channel", "invalid_auth", "account_inactive", "token_revoked"],
)
async def test_slacks_refusals_are_permanent_with_the_reason(rig: Rig, code: str) -> None:
    rig.emulator.error(code)
    error = await rig.failure(MessageContent.of_text("hi"))
    assert not error.retryable
    assert str(error) == f"Slack error: {code}"


async def test_a_channel_the_bot_is_not_in_is_refused_by_slack_itself() -> None:
    async with _rig(channel="C0PRIVATE1") as rig:
        rig.emulator.add_channel(TEAM, "C0PRIVATE1", member=False)
        error = await rig.failure(MessageContent.of_text("hi"))
        assert (error.retryable, str(error)) == (False, "Slack error: not_in_channel")


async def test_a_revoked_token_is_invalid_auth_and_never_quoted() -> None:
    directory = FakeDirectory(slack_connection(token="xoxb-revoked-token-9999"))
    async with _rig(directory=directory) as rig:
        error = await rig.failure(MessageContent.of_text("hi"))
        assert str(error) == "Slack error: invalid_auth"
        assert "xoxb" not in str(error)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retryable(rig: Rig, status: int) -> None:
    rig.emulator.server_error(status)
    error = await rig.failure(MessageContent.of_text("hi"))
    assert error.retryable


async def test_a_hung_call_times_out_retryable() -> None:
    async with _rig(timeout=0.3) as rig:
        rig.emulator.hang(5.0)
        error = await rig.failure(MessageContent.of_text("hi"))
        assert error.retryable
        assert "did not answer in time" in str(error)


async def test_a_conversation_without_a_slack_place_is_permanent() -> None:
    async with _rig() as rig:
        # A user message without Slack metadata (not from a webhook).
        bare = make_message(rig.conversation, 1, "hi", created_at=T0)
        rig.shelf.put(dataclasses.replace(rig.inbound, channel_metadata=ChannelMetadata()))
        reply = bot_reply(rig.conversation, bare, MessageContent.of_text("x"), 2)
        rig.shelf.put(bare, reply)
        with pytest.raises(DeliveryError) as raised:
            await rig.sender.send(rig.conversation, reply)
        assert not raised.value.retryable
        assert "no Slack channel" in str(raised.value)
        assert rig.emulator.calls == []


async def test_a_deleted_or_foreign_connection_is_permanent() -> None:
    whatsapp = opened_connection(Channel.WHATSAPP, "1065", {"access_token": "t"}, "conn-1")
    for directory, expected in (
        (FakeDirectory(), "does not exist"),
        (FakeDirectory(whatsapp), "is a whatsapp connection"),
        (FakeDirectory(slack_connection(token="")), "has no bot_token"),
    ):
        async with _rig(directory=directory) as rig:
            error = await rig.failure(MessageContent.of_text("hi"))
            assert not error.retryable
            assert expected in str(error)
            assert rig.emulator.calls == []


# ----------------------------------------------------------------- pacing


async def test_posts_to_one_channel_are_a_second_apart_others_are_not(rig: Rig) -> None:
    await rig.send(MessageContent.of_text("one"))
    await rig.send(MessageContent.of_text("two"))
    assert rig.time.sleeps == [1.0]

    dm_user = users_message(rig.conversation, 5, DM, "", ts="1600000000.000001")
    rig.shelf.put(dm_user)
    reply = bot_reply(rig.conversation, dm_user, MessageContent.of_text("three"), 6)
    rig.shelf.put(reply)
    await rig.sender.send(rig.conversation, reply)
    assert rig.time.sleeps == [1.0]  # another channel: no wait
