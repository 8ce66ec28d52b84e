"""Teams activities (documented payloads under tests/fixtures/webhooks/teams)
read as platform-neutral values. The token checks run against the Bot
Connector emulator: tests/integration/test_teams_verify.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.channels.bot_framework import ConnectorKeys
from adapters.channels.meta import WEBHOOK_PAYLOAD_INVALID
from adapters.channels.teams import TeamsInbound, parse_activity, platform_message_id
from chat_service.domain.content import MediaContent, MessageContent
from chat_service.domain.content_limits import MAX_TEXT_LENGTH
from chat_service.domain.enums import Channel, MessageType
from chat_service.domain.errors import InvalidArgument
from chat_service.domain.webhooks import PlatformMessage, WebhookCall, body_dedup_key

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "teams"
APP_ID = "c9e8c047-2a74-40a2-b28a-b162d5f5327c"
BOT = f"28:{APP_ID}"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
MEGAN_AAD = "7faf8ab2-3d56-4244-b585-20c8a42ed2b8"
MEGAN = "29:1XJKJMvc5GBtc2JwZq0oj8tHZmzrQgFmB39ATiQWA85gQtHieVkKilBZ9XHoq9j7Zaqt7CZ-NJWi7me2kHTL3Bw"
PERSONAL = (
    "a:17I0kl9EkpE1O9PH5TWrzrLNwnWWcfrU7QZjKR0WSfOpzbfcAg2IaydGElSo10tVr4C7Fc6GtieTJX663WuJCc1"
    "uA83n4CSrHSgGBj5XNYLcVlJAs2ZX8DbYBPck201w-"
)
THREAD = "19:aebd0ad4d6ab42c8b9ed19c251c2fc37@thread.skype;messageid=1481567603816"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def document(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(fixture(name))
    return value


def only_message(body: bytes) -> PlatformMessage:
    parsed = parse_activity(body)
    assert parsed.statuses == ()
    assert parsed.skipped == ()
    (message,) = parsed.messages
    return message


def test_a_personal_message_is_the_users_text_without_the_html_copy() -> None:
    message = only_message(fixture("personal_message"))

    assert message.content == MessageContent.of_text(
        "Hello Teams TestBot. Sending bold-italic rich text"
    )
    assert message.supported
    assert message.account_id == APP_ID  # recipient.id without "28:"
    assert message.user_id == MEGAN_AAD  # stable across the tenant
    assert message.user_name == "Megan Bowen"
    assert message.platform_message_id == f"{PERSONAL}/1485983408511"
    assert message.sent_at == datetime(2017, 2, 1, 21, 10, 7, 437000, tzinfo=UTC)
    assert message.conversation_key == message.thread_id == PERSONAL
    assert message.extra == {
        "teams_service_url": "https://smba.trafficmanager.net/amer/",
        "teams_conversation_id": PERSONAL,
        "teams_activity_id": "1485983408511",
        "teams_tenant_id": TENANT,
        "teams_user_id": MEGAN,
        "teams_bot_id": BOT,
        "teams_conversation_type": "personal",
    }


def test_the_bots_mention_is_removed_from_a_channel_message() -> None:
    message = only_message(fixture("channel_mention"))

    assert message.content.text == "where is my order?"
    assert message.conversation_key == THREAD  # one conversation per thread and user
    assert message.user_id == "3e0a1b6c-8b1d-4c1e-9f3a-7d2c5e8f9a01"
    assert message.extra["teams_conversation_type"] == "channel"
    assert message.extra["teams_tenant_id"] == TENANT
    # 7 fractional digits (.NET's) read to the microsecond.
    assert message.sent_at == datetime(2017, 10, 29, 0, 51, 5, 990815, tzinfo=UTC)


def test_other_mentions_keep_their_names_without_tags() -> None:
    body = document("channel_mention")
    body["text"] = "<at>Teams TestBot</at> ask <at>Pranav Smith</at>  about it"
    body["entities"].append(
        {
            "type": "mention",
            "mentioned": {"id": "29:08q2j2o3jc09au90eucae", "name": "Pranav Smith"},
            "text": "<at>Pranav Smith</at>",
        }
    )

    assert only_message(json.dumps(body).encode()).content.text == "ask Pranav Smith about it"


def test_a_bare_mention_is_skipped() -> None:
    body = document("channel_mention")
    body["text"] = "<at>Teams TestBot</at>"

    parsed = parse_activity(json.dumps(body).encode())

    assert parsed.messages == ()
    (reason,) = parsed.skipped
    assert "mention" in reason


def test_files_and_images_are_media_with_the_text_on_the_first() -> None:
    parsed = parse_activity(fixture("file_attachments"))
    first, image, document_ = parsed.messages
    base = f"{PERSONAL}/1632474074231"

    assert first.platform_message_id == base
    assert first.content == MessageContent(
        type=MessageType.FILE,
        text="Here is the invoice and a photo of the parcel",
        media=MediaContent(
            url="https://contoso.sharepoint.com/personal/meganb_contoso_com/Documents/"
            "Microsoft%20Teams%20Chat%20Files/invoice.pdf",
            type="application/pdf",
            alt_text="invoice.pdf",
        ),
    )
    assert first.kind == "message.file"
    assert first.extra["teams_file_type"] == "pdf"
    # The pre-authenticated download URL is a credential: not kept anywhere.
    assert "tempauth" not in repr(parsed)

    assert image.platform_message_id == f"{base}#2"
    assert image.content.type is MessageType.IMAGE
    assert image.content.media is not None
    assert image.content.media.type == "image/png"
    assert image.content.text == ""
    assert image.reply_to_platform_id == ""

    # A .docx is no type the content model takes: a placeholder, answered politely.
    assert document_.platform_message_id == f"{base}#3"
    assert not document_.supported
    assert document_.content == MessageContent.of_text(
        "[unsupported Teams message: message.file (docx file)]"
    )


def test_an_image_of_unknown_format_is_unsupported() -> None:
    body = document("file_attachments")
    body["text"] = ""
    body["attachments"] = [
        {"contentType": "image/*", "contentUrl": "https://smba.trafficmanager.net/x/views/original"}
    ]

    message = only_message(json.dumps(body).encode())

    assert not message.supported
    assert message.content.text == "[unsupported Teams message: message.image (image/*)]"


def test_a_card_submission_is_text_with_the_submitted_data_as_payload() -> None:
    message = only_message(fixture("card_submit"))

    payload = '{"comment":"Please deliver after 5pm","dueDate":"2021-10-01"}'
    assert message.content == MessageContent.of_text(payload)
    assert message.extra["reply_payload"] == payload
    assert message.kind == "message.value"
    assert message.reply_to_platform_id == "1632474074231"  # the card's message


def test_a_message_back_keeps_its_text_and_value() -> None:
    message = only_message(fixture("message_back"))

    assert message.content.text == "User just clicked the MessageBack button"
    assert message.extra["reply_payload"] == '{"property":"propertyValue"}'
    assert message.user_id == "29:102jd210jd010icsoaeclaejcoa9ue09u"  # no aadObjectId
    assert message.extra["teams_tenant_id"] == "bec8e231-67ad-484e-87f4-3e5438390a77"


def test_our_own_buttons_payload_comes_back_as_it_was() -> None:
    body = document("message_back")
    body["text"] = "Large"
    body["value"] = {"payload": "SIZE_L"}

    message = only_message(json.dumps(body).encode())

    assert (message.content.text, message.extra["reply_payload"]) == ("Large", "SIZE_L")


def test_a_submission_too_large_for_a_payload_is_a_placeholder() -> None:
    body = document("card_submit")
    body["value"] = {"essay": "x" * 5000}

    message = only_message(json.dumps(body).encode())

    assert not message.supported
    assert "reply_payload" not in message.extra


def test_a_message_from_the_bot_itself_is_skipped() -> None:
    body = document("personal_message")
    body["from"] = {"id": BOT, "name": "Teams TestBot"}

    parsed = parse_activity(json.dumps(body).encode())

    assert parsed.messages == ()
    assert parsed.skipped == ("message: from the bot itself",)


def test_members_added_is_skipped_naming_the_members() -> None:
    parsed = parse_activity(fixture("members_added"))

    assert parsed.messages == ()
    assert parsed.skipped == (
        f"conversationUpdate (teamMemberAdded): membership only; added {BOT}",
    )


def test_typing_is_skipped() -> None:
    parsed = parse_activity(fixture("typing"))

    assert parsed.messages == ()
    assert parsed.skipped == ("typing: not a message",)


def test_every_fixture_is_covered() -> None:
    tested = {
        "personal_message",
        "channel_mention",
        "file_attachments",
        "card_submit",
        "message_back",
        "members_added",
        "typing",
    }
    assert {path.stem for path in FIXTURES.glob("*.json")} == tested


def test_a_long_text_is_cut_to_the_content_limit() -> None:
    body = document("personal_message")
    body["text"] = "x" * (MAX_TEXT_LENGTH + 10)

    message = only_message(json.dumps(body).encode())

    assert len(message.content.text) == MAX_TEXT_LENGTH
    assert message.extra["teams_text_truncated"] == "true"


def test_the_same_activity_id_in_two_conversations_is_two_messages() -> None:
    one = platform_message_id("a:conversation-one", "1485983408511")
    two = platform_message_id("a:conversation-two", "1485983408511")
    long = platform_message_id("a:" + "x" * 400, "1485983408511")

    assert one != two
    assert len(long) <= 255 - 8
    assert long.endswith("/1485983408511")


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda body: body.pop("id"), "id"),
        (lambda body: body["conversation"].pop("id"), "conversation.id"),
        (lambda body: body.update(recipient="bot"), "recipient"),
        (lambda body: body.update(timestamp="yesterday"), "timestamp"),
        (lambda body: body.update(timestamp="2017-02-01T21:10:07"), "timestamp"),
        (lambda body: body.pop("serviceUrl"), "serviceUrl"),
        (lambda body: body.update(attachments={"contentType": "image/png"}), "attachments"),
    ],
)
def test_a_malformed_message_names_the_path(change: Any, path: str) -> None:
    body = document("personal_message")
    change(body)

    with pytest.raises(InvalidArgument) as raised:
        parse_activity(json.dumps(body).encode())

    assert raised.value.reason == WEBHOOK_PAYLOAD_INVALID
    assert [v.field for v in raised.value.violations] == [path]


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"type": 1}', b"NaN"])
def test_what_is_not_an_activity_is_invalid(body: bytes) -> None:
    with pytest.raises(InvalidArgument):
        parse_activity(body)


def _call(body: bytes) -> WebhookCall:
    return WebhookCall(tenant_id="t", channel=Channel.TEAMS, body=body, content_type="")


async def test_the_inbox_key_is_the_activity_in_its_conversation() -> None:
    async with httpx.AsyncClient() as http:
        inbound = TeamsInbound(ConnectorKeys("https://invalid.example", http=http))
        first = inbound.dedup_key(_call(fixture("personal_message")))
        # The same activity, re-serialized by a redelivery: the same key.
        again = inbound.dedup_key(_call(json.dumps(document("personal_message")).encode()))
        other = document("personal_message")
        other["conversation"]["id"] = "a:another"
        elsewhere = inbound.dedup_key(_call(json.dumps(other).encode()))

        assert first == again != elsewhere
        assert first.startswith("activity:")
        assert inbound.dedup_key(_call(b"junk")) == body_dedup_key(b"junk")
        assert inbound.acknowledgement(_call(b"{}")) == (b"", "text/plain")
        assert inbound.channel is Channel.TEAMS
