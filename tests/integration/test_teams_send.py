"""TeamsSender against the Bot Connector emulator: the real sender, the
real httpx clients, a real HTTP server issuing tokens and checking
activities like the Bot Connector (tests/support/emulators/bot_connector.py).
Only the connection directory and the store's reads are test doubles."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from adapters.channels.bot_framework import BotTokens
from adapters.channels.outbound import Pacer
from adapters.channels.teams_send import ConnectorApi, TeamsSender, teams_sender_factory
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
from tests.builders import make_conversation, make_message
from tests.support.emulators import running
from tests.support.emulators.bot_connector import BotConnectorEmulator, new_app_id
from tests.support.emulators.senders import (
    FakeDirectory,
    FakeTime,
    MessageShelf,
    SenderRig,
    bot_reply,
    opened_connection,
    platform_conversation,
)

PASSWORD = "app-password-0123456789abcdef"
CONVERSATION = "19:aebd0ad4d6ab42c8b9ed19c251c2fc37@thread.skype;messageid=1481567603816"
ACTIVITY = "1481567603816"
USER = "29:9e52142b-5e5e-4d7b-bb3e-e82dcf620000"
TEAMS_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
IMAGE = MediaContent(url="https://cdn.example.com/parcel.png", type="image/png", alt_text="Parcel")


def teams_connection(app_id: str, password: str = PASSWORD) -> OpenedConnection:
    secrets = {"app_password": password}
    return opened_connection(Channel.TEAMS, app_id, secrets, public={"app_id": app_id})


@dataclasses.dataclass
class Rig(SenderRig[BotConnectorEmulator, TeamsSender]):
    tokens: BotTokens
    time: FakeTime
    app_id: str

    def posted(self) -> list[Any]:
        return [call.body for call in self.emulator.activities()]


def teams_message(
    conversation: Conversation, service_url: str, sequence: int = 1, **data: str
) -> Message:
    additional: dict[str, Any] = {
        "connection_id": "conn-1",
        "teams_service_url": service_url,
        "teams_conversation_id": CONVERSATION,
        "teams_activity_id": ACTIVITY,
        "teams_tenant_id": TEAMS_TENANT,
        "teams_user_id": USER,
        "teams_bot_id": "",
    } | data
    return make_message(
        conversation,
        sequence,
        "where is my order?",
        channel_metadata=ChannelMetadata(
            platform_message_id=f"{CONVERSATION}/{ACTIVITY}",
            platform_user_id="aad-user",
            additional_data=additional,
        ),
    )


@contextlib.asynccontextmanager
async def _rig(
    *, timeout: float = 5.0, allow_loopback: bool = True, password: str = PASSWORD
) -> AsyncIterator[Rig]:
    async with (
        running(BotConnectorEmulator()) as emulator,
        contextlib.aclosing(ConnectorApi(timeout=timeout)) as connector,
        httpx.AsyncClient() as login,
    ):
        app_id = new_app_id()
        emulator.add_bot(app_id, PASSWORD)
        time = FakeTime()
        conversation = platform_conversation(Channel.TEAMS, "aad-user")
        inbound = teams_message(conversation, emulator.service_url, teams_bot_id=f"28:{app_id}")
        shelf = MessageShelf(inbound)
        tokens = BotTokens(emulator.token_url, http=login, monotonic=time.monotonic)
        sender = TeamsSender(
            connector=connector,
            tokens=tokens,
            directory=FakeDirectory(teams_connection(app_id, password)),
            store=shelf,
            pacer=Pacer(50.0, monotonic=time.monotonic, sleep=time.sleep),
            allow_loopback=allow_loopback,
        )
        yield Rig(
            emulator, sender, shelf, conversation, inbound, tokens=tokens, time=time, app_id=app_id
        )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with _rig() as each:
        yield each


# ------------------------------------------------------------- payloads


async def test_a_text_reply_goes_to_the_users_activity_with_the_bots_token(rig: Rig) -> None:
    platform_id = await rig.send(MessageContent.of_text("It ships **today**."))

    (grant,) = rig.emulator.token_requests()
    assert grant.body == {
        "grant_type": "client_credentials",
        "client_id": rig.app_id,
        "scope": "https://api.botframework.com/.default",
    }
    (call,) = rig.emulator.activities()
    # "Reply to activity": the conversation and activity, path-encoded.
    assert call.query == {"conversation": CONVERSATION, "replyTo": ACTIVITY}
    assert call.path.endswith(f"/activities/{ACTIVITY}")
    assert call.body == {
        "type": "message",
        "conversation": {"id": CONVERSATION},
        "from": {"id": f"28:{rig.app_id}"},
        "recipient": {"id": USER},
        "replyToId": ACTIVITY,
        "text": "It ships **today**.",
        "textFormat": "markdown",
    }
    assert call.bearer.startswith("bf.")
    assert platform_id == call.answer["id"]


async def test_the_token_is_reused_until_shortly_before_it_expires(rig: Rig) -> None:
    await rig.send(MessageContent.of_text("one"))
    await rig.send(MessageContent.of_text("two"))
    assert len(rig.emulator.token_requests()) == 1

    rig.time.now += 3600 - 300  # five minutes before the hour is up
    await rig.send(MessageContent.of_text("three"))
    assert len(rig.emulator.token_requests()) == 2
    first, _, third = rig.emulator.activities()
    assert first.bearer != third.bearer


async def test_quick_replies_are_suggested_actions(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.QUICK_REPLY,
        text="Which size?",
        quick_replies=(QuickReply("Small", "SIZE_S"), QuickReply("Large", "SIZE_L")),
    )
    await rig.send(content)

    (body,) = rig.posted()
    assert body["text"] == "Which size?"
    assert body["suggestedActions"] == {
        "actions": [
            {"type": "imBack", "title": "Small", "value": "Small"},
            {"type": "imBack", "title": "Large", "value": "Large"},
        ]
    }


async def test_quick_replies_without_text_show_their_choices_as_text(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.QUICK_REPLY,
        quick_replies=(QuickReply("Yes", "YES"), QuickReply("No", "NO")),
    )
    await rig.send(content)

    (body,) = rig.posted()
    assert body["text"] == "Yes / No"
    assert len(body["suggestedActions"]["actions"]) == 2


async def test_buttons_are_a_hero_card_with_the_quick_replies_as_buttons_too(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.TEXT,
        text="Your order",
        buttons=(
            Button(ButtonType.POSTBACK, "Cancel it", payload="CANCEL_42"),
            Button(ButtonType.URL, "Track", url="https://track.example.com/42"),
        ),
        quick_replies=(QuickReply("Thanks", "THANKS"),),
    )
    await rig.send(content)

    (body,) = rig.posted()
    assert "text" not in body
    assert "suggestedActions" not in body  # not beside attachments
    (card,) = body["attachments"]
    assert card == {
        "contentType": "application/vnd.microsoft.card.hero",
        "content": {
            "text": "Your order",
            "buttons": [
                {
                    "type": "messageBack",
                    "title": "Cancel it",
                    "text": "Cancel it",
                    "displayText": "Cancel it",
                    "value": {"payload": "CANCEL_42"},
                },
                {"type": "openUrl", "title": "Track", "value": "https://track.example.com/42"},
                {
                    "type": "messageBack",
                    "title": "Thanks",
                    "text": "Thanks",
                    "displayText": "Thanks",
                    "value": {"payload": "THANKS"},
                },
            ],
        },
    }


async def test_an_image_is_an_attachment_and_with_quick_replies_a_card(rig: Rig) -> None:
    await rig.send(MessageContent(type=MessageType.IMAGE, text="Here it is", media=IMAGE))
    await rig.send(
        MessageContent(
            type=MessageType.IMAGE,
            text="Is this yours?",
            media=IMAGE,
            quick_replies=(QuickReply("Yes", "YES"),),
        )
    )

    alone, with_replies = rig.posted()
    assert alone["text"] == "Here it is"
    assert alone["attachments"] == [
        {"contentType": "image/png", "contentUrl": IMAGE.url, "name": "Parcel"}
    ]
    (card,) = with_replies["attachments"]
    assert card["content"]["images"] == [{"url": IMAGE.url, "alt": "Parcel"}]
    assert card["content"]["text"] == "Is this yours?"
    assert [b["title"] for b in card["content"]["buttons"]] == ["Yes"]


async def test_a_carousel_is_hero_cards_in_a_carousel_layout(rig: Rig) -> None:
    cards = tuple(
        CarouselCard(
            title=f"Pizza {n}",
            subtitle="Tomato, basil",
            image_url=f"https://cdn.example.com/pizza-{n}.png",
            buttons=(Button(ButtonType.POSTBACK, "Order", payload=f"ORDER_{n}"),),
        )
        for n in range(1, 4)
    )
    content = MessageContent(
        type=MessageType.CAROUSEL,
        text="Our pizzas",
        cards=cards,
        quick_replies=(QuickReply("None of these", "NONE"),),
    )
    await rig.send(content)

    (body,) = rig.posted()
    assert body["attachmentLayout"] == "carousel"
    assert [a["content"]["title"] for a in body["attachments"]] == [
        "Pizza 1",
        "Pizza 2",
        "Pizza 3",
    ]
    assert body["attachments"][0]["content"]["images"] == [
        {"url": "https://cdn.example.com/pizza-1.png", "alt": "Pizza 1"}
    ]
    # Suggested actions cannot ride with attachments: the choice is text.
    assert body["text"] == "Our pizzas\n\nReply with one of:\n1. None of these"


async def test_what_teams_cannot_show_arrives_formatted_as_text(rig: Rig) -> None:
    content = MessageContent(
        type=MessageType.TEXT,
        text="Need help?",
        buttons=(Button(ButtonType.PHONE, "Call us", payload="+14155550123"),),
    )
    (formatted,) = format_for_channel(content, Channel.TEAMS)
    await rig.send(formatted)

    (body,) = rig.posted()
    assert body["text"] == "Need help?\n\nCall us: +14155550123"
    assert "attachments" not in body


async def test_a_reply_answering_no_message_goes_to_the_latest_conversation(rig: Rig) -> None:
    message = bot_reply(rig.conversation, None, MessageContent.of_text("An agent here"), 2)
    rig.shelf.put(message)

    await rig.sender.send(rig.conversation, message)

    (call,) = rig.emulator.activities()
    assert call.query == {"conversation": CONVERSATION, "replyTo": ""}
    assert "replyToId" not in call.body


# ----------------------------------------------------------------- errors


async def test_a_429_is_retried_after_the_time_teams_asks(rig: Rig) -> None:
    rig.emulator.throttle(retry_after="7")
    error = await rig.failure(MessageContent.of_text("hi"))
    assert error.retryable
    assert error.retry_after == 7.0


@pytest.mark.parametrize("status", [412, 500, 502, 503, 504])
async def test_documented_transient_answers_are_retried(rig: Rig, status: int) -> None:
    rig.emulator.fail(status=status)
    error = await rig.failure(MessageContent.of_text("hi"))
    assert error.retryable


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "BadArgument"), (403, "BotNotInConversationRoster"), (404, "ConversationNotFound")],
)
async def test_refusals_are_permanent_with_the_connectors_reason(
    rig: Rig, status: int, code: str
) -> None:
    rig.emulator.refuse(status, code, "The bot cannot post here")
    error = await rig.failure(MessageContent.of_text("hi"))
    assert not error.retryable
    assert str(error) == f"HTTP {status}: {code}: The bot cannot post here"


async def test_a_cached_token_refused_is_replaced_once(rig: Rig) -> None:
    await rig.send(MessageContent.of_text("one"))
    rig.emulator.expire_tokens()

    assert await rig.send(MessageContent.of_text("two"))
    assert len(rig.emulator.token_requests()) == 2
    assert [call.status for call in rig.emulator.calls if "/v3/" in call.path] == [201, 401, 201]


async def test_a_fresh_token_refused_is_permanent(rig: Rig) -> None:
    rig.emulator.refuse(401, "Unauthorized", "Authorization has been denied")
    error = await rig.failure(MessageContent.of_text("hi"))
    assert not error.retryable
    assert len(rig.emulator.token_requests()) == 1


async def test_a_connector_that_does_not_answer_in_time_is_retried() -> None:
    async with _rig(timeout=0.3) as rig:
        rig.emulator.hang(seconds=5)
        error = await rig.failure(MessageContent.of_text("hi"))
        assert error.retryable
        assert "did not answer in time" in str(error)


async def test_a_wrong_password_is_permanent_and_never_quoted() -> None:
    wrong = "wrong-password-that-must-not-leak"
    async with _rig(password=wrong) as rig:
        error = await rig.failure(MessageContent.of_text("hi"))
        assert not error.retryable
        assert "invalid_client AADSTS7000215" in str(error)
        assert wrong not in str(error)
        assert rig.emulator.activities() == []


async def test_a_failing_token_endpoint_is_retried(rig: Rig) -> None:
    rig.emulator.fail(status=503, on="token")
    unavailable = await rig.failure(MessageContent.of_text("hi"))
    rig.emulator.throttle(retry_after="3", on="token")
    throttled = await rig.failure(MessageContent.of_text("hi"))

    assert unavailable.retryable
    assert (throttled.retryable, throttled.retry_after) == (True, 3.0)
    assert rig.emulator.activities() == []


@pytest.mark.parametrize(
    "service_url",
    [
        "https://attacker.example/",
        "http://smba.trafficmanager.net/amer/",
        "https://user:pw@smba.trafficmanager.net/amer/",
    ],
)
async def test_an_untrusted_service_url_gets_no_token(rig: Rig, service_url: str) -> None:
    planted = teams_message(rig.conversation, service_url, sequence=3)
    rig.shelf.put(planted)

    error = await rig.failure(MessageContent.of_text("hi"), to=planted)

    assert not error.retryable
    assert rig.emulator.calls == []  # no token asked for, nothing posted


async def test_loopback_service_urls_are_refused_outside_an_emulator_setup() -> None:
    async with _rig(allow_loopback=False) as rig:
        with pytest.raises(DeliveryError, match="not https"):
            await rig.send(MessageContent.of_text("hi"))


async def test_the_factory_allows_loopback_only_for_a_loopback_token_endpoint() -> None:
    connector = ConnectorApi()
    async with httpx.AsyncClient() as login:
        tokens = BotTokens(http=login)
        local = teams_sender_factory(connector, tokens, token_url="http://127.0.0.1:9/token")
        real = teams_sender_factory(
            connector,
            tokens,
            token_url="https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token",
        )
        directory, shelf = FakeDirectory(), MessageShelf()
        built_local = local(directory, shelf, None)  # type: ignore[arg-type]
        built_real = real(directory, shelf, None)  # type: ignore[arg-type]
    await connector.aclose()
    assert isinstance(built_local, TeamsSender)
    assert isinstance(built_real, TeamsSender)
    assert built_local._allow_loopback
    assert not built_real._allow_loopback


async def test_a_conversation_without_a_teams_message_cannot_be_answered(rig: Rig) -> None:
    stray = make_conversation(
        channel=Channel.TEAMS,
        channel_metadata=ChannelMetadata(additional_data={"connection_id": "conn-1"}),
    )
    message = bot_reply(stray, None, MessageContent.of_text("hi"), 1)

    with pytest.raises(DeliveryError, match="no Teams message") as raised:
        await rig.sender.send(stray, message)
    assert not raised.value.retryable


async def test_calls_are_paced_per_app_and_teams_tenant(rig: Rig) -> None:
    for text in ("one", "two", "three"):
        await rig.send(MessageContent.of_text(text))
    assert rig.time.sleeps == pytest.approx([0.02, 0.02])
