"""Slack webhooks (documented payloads under tests/fixtures/webhooks/slack):
the v0 signature and its replay window, the payloads as platform messages,
and HandleWebhook with the Slack adapter (the in-memory core of
tests/builders.build_core: what is stored and what Slack gets back)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from adapters.channels.meta import WEBHOOK_PAYLOAD_INVALID, WEBHOOK_SIGNATURE_INVALID
from adapters.channels.slack import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_TIMESTAMP_STALE,
    SlackInbound,
    parse_webhook,
    sign,
    verify_signature,
)
from chat_service.domain.connections import ConnectionFields
from chat_service.domain.content import MediaContent, MessageContent
from chat_service.domain.enums import Channel, MessageType
from chat_service.domain.errors import InvalidArgument, Unauthenticated
from chat_service.domain.webhooks import PlatformMessage, WebhookCall, body_dedup_key
from chat_service.ports import OpenedConnection
from tests.builders import TENANT, build_core
from tests.fakes import InMemoryChannelStore, SteppingClock
from tests.support.emulators.senders import SettableClock, opened_connection

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "slack"
TEAM = "T123ABC456"
USER = "U123ABC456"
CHANNEL = "C123ABC456"
SECRET = "slack-signing-secret"
NOW = datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC)
FORM = "application/x-www-form-urlencoded"


def raw(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def form_body(name: str) -> bytes:
    """What Slack posts for an interactivity payload: `payload=<JSON>`, URL-encoded."""
    return b"payload=" + quote(raw(name).decode(), safe="").encode()


def at(ts: str) -> datetime:
    return datetime.fromtimestamp(float(ts), UTC)


def slack_connection(
    secret: str = SECRET, team: str = TEAM, cid: str = "conn-1"
) -> OpenedConnection:
    opened = opened_connection(
        Channel.SLACK, team, {"signing_secret": secret, "bot_token": "xoxb-1"}, cid
    )
    connection = dataclasses.replace(opened.connection, public={"team_id": team})
    return OpenedConnection(connection=connection, secrets=opened.secrets)


def call(
    body: bytes, headers: dict[str, str], content_type: str = "application/json"
) -> WebhookCall:
    return WebhookCall(
        tenant_id=TENANT,
        channel=Channel.SLACK,
        body=body,
        content_type=content_type,
        headers=headers,
    )


def signed(body: bytes, *, secret: str = SECRET, when: datetime = NOW) -> dict[str, str]:
    timestamp = str(int(when.timestamp()))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(body, secret, timestamp)}


def inbound(now: datetime = NOW) -> SlackInbound:
    return SlackInbound(clock=SettableClock(now))


# ---------------------------------------------------------------- signature


def test_the_documented_example_verifies() -> None:
    example = json.loads(raw("signature_example"))
    body = example["body"].encode()
    assert sign(body, example["signing_secret"], example["timestamp"]) == example["signature"]
    verify_signature(body, example["timestamp"], example["signature"], example["signing_secret"])


async def test_the_documented_example_verifies_through_the_adapter_at_its_time() -> None:
    example = json.loads(raw("signature_example"))
    headers = {TIMESTAMP_HEADER: example["timestamp"], SIGNATURE_HEADER: example["signature"]}
    sent_at = datetime.fromtimestamp(int(example["timestamp"]), UTC)
    candidate = slack_connection(example["signing_secret"])
    the_call = call(example["body"].encode(), headers, FORM)

    assert await inbound(sent_at + timedelta(minutes=4)).verify(the_call, [candidate]) == [
        candidate
    ]
    # The same request six minutes later is a replay.
    with pytest.raises(Unauthenticated) as raised:
        await inbound(sent_at + timedelta(minutes=6)).verify(the_call, [candidate])
    assert raised.value.reason == WEBHOOK_TIMESTAMP_STALE


@pytest.mark.parametrize("skew", [-300, 300, 0, 120])
async def test_a_timestamp_within_five_minutes_passes(skew: int) -> None:
    body = raw("message_channel")
    headers = signed(body, when=NOW + timedelta(seconds=skew))
    assert len(await inbound().verify(call(body, headers), [slack_connection()])) == 1


@pytest.mark.parametrize("skew", [-301, 301, -86_400, 10**9])
async def test_a_timestamp_past_five_minutes_either_way_is_refused(skew: int) -> None:
    body = raw("message_channel")
    headers = signed(body, when=NOW + timedelta(seconds=skew))
    with pytest.raises(Unauthenticated) as raised:
        await inbound().verify(call(body, headers), [slack_connection()])
    assert raised.value.reason == WEBHOOK_TIMESTAMP_STALE


async def test_a_tampered_body_a_moved_timestamp_or_another_secret_is_refused() -> None:
    body = raw("message_channel")
    headers = signed(body)
    tampered = body.replace(b"Live long", b"Live short")
    moved = headers | {TIMESTAMP_HEADER: str(int(NOW.timestamp()) + 1)}
    for the_call, candidates in (
        (call(tampered, headers), [slack_connection()]),
        (call(body, moved), [slack_connection()]),
        (call(body, headers), [slack_connection("another-apps-secret")]),
        (call(body, headers), [slack_connection("")]),  # an empty secret signs nothing
    ):
        with pytest.raises(Unauthenticated) as raised:
            await inbound().verify(the_call, candidates)
        assert raised.value.reason == WEBHOOK_SIGNATURE_INVALID
        assert raised.value.message == "the X-Slack-Signature signature does not match the body"


async def test_a_tenant_without_connections_gets_the_same_refusal() -> None:
    body = raw("message_channel")
    headers = signed(body, secret="guess")
    with pytest.raises(Unauthenticated) as nobody:
        await inbound().verify(call(body, headers), [])
    with pytest.raises(Unauthenticated) as wrong:
        await inbound().verify(call(body, headers), [slack_connection()])
    assert (nobody.value.reason, nobody.value.message) == (wrong.value.reason, wrong.value.message)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {TIMESTAMP_HEADER: "1749416383"},  # no signature
        {SIGNATURE_HEADER: "v0=" + "0" * 64},  # no timestamp
        {TIMESTAMP_HEADER: "soon", SIGNATURE_HEADER: "v0=" + "0" * 64},
        {TIMESTAMP_HEADER: "1749416383", SIGNATURE_HEADER: "v1=" + "0" * 64},
        {TIMESTAMP_HEADER: "1749416383", SIGNATURE_HEADER: "v0=" + "0" * 63},
        {TIMESTAMP_HEADER: "1749416383", SIGNATURE_HEADER: "v0=" + "g" * 64},
        {TIMESTAMP_HEADER: "1749416383", SIGNATURE_HEADER: "sha256=" + "0" * 64},
    ],
)
async def test_missing_or_malformed_headers_are_unauthenticated(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthenticated) as raised:
        await inbound().verify(call(raw("message_channel"), headers), [slack_connection()])
    assert raised.value.reason == WEBHOOK_SIGNATURE_INVALID


async def test_only_the_connections_whose_secret_signed_are_verified() -> None:
    body = raw("message_channel")
    ours, same_app, other = (
        slack_connection(cid="a"),
        slack_connection(team="T0OTHERWS", cid="b"),  # one app in two workspaces
        slack_connection("other-secret", team="T0THIRDWS", cid="c"),
    )
    verified = await inbound().verify(call(body, signed(body)), [ours, other, same_app])
    assert verified == [ours, same_app]


# ------------------------------------------------------------------ parsing

BOT = "U0LAN0Z89"
SKIPPED = {
    "message_bot_message": "a bot's message",
    "message_own_bot": "a bot's message",
    "message_changed": "subtype 'message_changed' is not a user's new message",
    "message_deleted": "subtype 'message_deleted' is not a user's new message",
}


def channel_message(ts: str, text: str, **changes: Any) -> PlatformMessage:
    """A user's message at the top of the channel: a thread of its own."""
    thread = changes.pop("thread", ts)
    extra = {"slack_channel": CHANNEL, "slack_ts": ts, "slack_thread_ts": thread}
    return PlatformMessage(
        account_id=TEAM,
        platform_message_id=f"{CHANNEL}:{ts}",
        user_id=USER,
        sent_at=at(ts),
        content=MessageContent.of_text(text),
        kind="message",
        thread_id=thread,
        conversation_key=f"{CHANNEL}/{thread}",
        extra=extra | changes.pop("extra", {}),
        **changes,
    )


def only_messages(name: str, content_type: str = "application/json") -> tuple[PlatformMessage, ...]:
    body = form_body(name) if content_type == FORM else raw(name)
    parsed = parse_webhook(body, content_type)
    assert parsed.skipped == ()
    return parsed.messages


def test_a_channel_message_opens_a_thread_of_its_own() -> None:
    assert only_messages("message_channel") == (
        channel_message("1355517523.000005", "Live long and prospect."),
    )


def test_a_dm_is_one_conversation_answered_in_place_with_slacks_escapes_undone() -> None:
    (message,) = only_messages("message_im")
    assert message == PlatformMessage(
        account_id=TEAM,
        platform_message_id="D024BE91L:1355517523.000005",
        user_id=USER,
        sent_at=at("1355517523.000005"),
        content=MessageContent.of_text("Hello hello can you hear me? <3 & more"),
        kind="message",
        thread_id="1355517523.000005",
        conversation_key="D024BE91L",
        extra={
            "slack_channel": "D024BE91L",
            "slack_ts": "1355517523.000005",
            "slack_thread_ts": "",  # the reply goes to the DM itself
        },
    )


def test_a_thread_reply_continues_the_threads_conversation() -> None:
    root = "1482960137.003543"
    assert only_messages("message_thread_reply") == (
        channel_message(
            "1483125339.000186",
            "Is there another in the series?",
            thread=root,
            reply_to_platform_id=f"{CHANNEL}:{root}",
        ),
    )


def test_each_shared_file_is_a_media_message() -> None:
    ts = "1531763342.000100"
    gif, docx = only_messages("message_file_share")
    assert gif.platform_message_id == f"{CHANNEL}:{ts}"
    assert docx.platform_message_id == f"{CHANNEL}:{ts}:1"
    assert gif.content == MessageContent(
        type=MessageType.IMAGE,
        text="Here are the screenshots",
        media=MediaContent(
            url="https://files.slack.com/files-pri/T123ABC456-F0S43PZDF/tedair.gif",
            type="image/gif",
            size_bytes=137531,
            alt_text="tedair.gif",
        ),
    )
    # A type the content model does not take: left to the worker's check
    # (placeholder and polite reply), with what it was kept.
    assert docx.content.type is MessageType.FILE
    assert docx.content.text == ""
    assert docx.supported
    assert docx.extra["mime_type"] == (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    )
    assert {gif.kind, docx.kind} == {"file_share"}
    assert gif.conversation_key == docx.conversation_key == f"{CHANNEL}/{ts}"


@pytest.mark.parametrize("name", sorted(SKIPPED))
def test_bots_own_and_hidden_messages_are_skipped(name: str) -> None:
    parsed = parse_webhook(raw(name), "application/json")
    assert parsed.messages == ()
    [skip] = parsed.skipped
    assert (skip.path, skip.reason) == ("event", SKIPPED[name])


def test_a_message_by_the_bot_user_without_bot_id_is_skipped_too() -> None:
    document = json.loads(raw("message_own_bot"))
    for key in ("bot_id", "bot_profile", "app_id"):
        del document["event"][key]
    parsed = parse_webhook(json.dumps(document).encode(), "application/json")
    assert parsed.messages == ()
    assert [skip.reason for skip in parsed.skipped] == ["the bot's own message"]


def test_an_app_mention_and_its_message_event_are_the_same_message() -> None:
    (mention,) = only_messages("app_mention")
    (message,) = only_messages("message_mention")
    assert mention == message
    # The leading mention of the bot is how the user addressed it, not what they said.
    assert mention.content.text == "What is the hour of the pearl?"


def test_a_clicked_button_is_a_text_answer_with_its_value() -> None:
    (answer,) = only_messages("block_actions", FORM)
    thread = "1548261200.000100"
    assert answer == PlatformMessage(
        account_id=TEAM,
        platform_message_id=f"{CHANNEL}:action:1548426417.840180",
        user_id=USER,
        sent_at=at("1548426417.840180"),
        content=MessageContent.of_text("Large"),
        kind="block_actions",
        user_name="jtorrance",
        thread_id=thread,
        conversation_key=f"{CHANNEL}/{thread}",  # the thread the bot asked in
        reply_to_platform_id=f"{CHANNEL}:1548261231.000200",
        extra={
            "slack_channel": CHANNEL,
            "slack_ts": "1548426417.840180",
            "slack_thread_ts": thread,
            "reply_payload": "SIZE_L",
            "slack_action_id": "qr-1",
        },
    )


def test_a_link_button_click_is_skipped() -> None:
    document = json.loads(raw("block_actions"))
    document["actions"][0]["url"] = "https://example.com/sizes"
    body = b"payload=" + quote(json.dumps(document)).encode()
    parsed = parse_webhook(body, FORM)
    assert parsed.messages == ()
    assert [skip.reason for skip in parsed.skipped] == ["a link button (Slack opened the link)"]


def test_url_verification_carries_its_challenge_and_no_message() -> None:
    parsed = parse_webhook(raw("url_verification"), "application/json")
    assert (parsed.kind, parsed.challenge, parsed.messages) == (
        "url_verification",
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
        (),
    )
    answer = inbound().acknowledgement(call(raw("url_verification"), {}))
    assert answer == (
        b'{"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}',
        "application/json",
    )
    assert inbound().acknowledgement(call(raw("message_channel"), {})) == (b"", "text/plain")


def test_the_inbox_key_is_the_event_id_else_the_body() -> None:
    adapter = inbound()
    assert adapter.dedup_key(call(raw("message_channel"), {})) == "event:Ev123ABC456"
    body = form_body("block_actions")
    assert adapter.dedup_key(call(body, {}, FORM)) == body_dedup_key(body)


def test_every_fixture_is_covered() -> None:
    covered = {
        "url_verification",
        "message_channel",
        "message_im",
        "message_thread_reply",
        "message_file_share",
        "app_mention",
        "message_mention",
        "block_actions",
        "signature_example",
        *SKIPPED,
    }
    assert {path.stem for path in FIXTURES.glob("*.json")} == covered


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b"not json", "application/json", "body"),
        (b"[]", "application/json", "body"),
        (b'{"type": "event_callback"}', "application/json", "event_id"),
        (b"payload=%7B", FORM, "payload"),
        (b"text=hello", FORM, "payload"),  # a slash command: no payload
        (b"payload=%7B%7D&payload=%7B%7D", FORM, "payload"),
        (b"\xff\xfe", FORM, "body"),
        (b'{"type": "url_verification", "challenge": ""}', "application/json", "challenge"),
    ],
)
def test_junk_is_invalid_argument_naming_where(body: bytes, content_type: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_webhook(body, content_type)
    assert raised.value.reason == WEBHOOK_PAYLOAD_INVALID
    assert [v.field for v in raised.value.violations] == [field]


def test_a_message_whose_ts_is_not_slacks_is_invalid() -> None:
    document = json.loads(raw("message_channel"))
    document["event"]["ts"] = "yesterday"
    with pytest.raises(InvalidArgument) as raised:
        parse_webhook(json.dumps(document).encode(), "application/json")
    assert [v.field for v in raised.value.violations] == ["event.ts"]


# ------------------------------------------------- through HandleWebhook


async def test_handle_webhook_answers_the_challenge_and_stores_only_user_messages() -> None:
    channels = InMemoryChannelStore()
    clock = SteppingClock(NOW)
    core = build_core(
        channels=channels,
        clock=clock,
        inbound={Channel.SLACK: SlackInbound(clock=SettableClock(NOW))},
    )
    await core.connections.create(
        TENANT,
        ConnectionFields(
            channel=Channel.SLACK,
            public={"team_id": TEAM},
            secrets={"signing_secret": SECRET, "bot_token": "xoxb-test"},
        ),
        request_id="",
        actor="test",
    )

    async def post(body: bytes, content_type: str = "application/json", **headers: str) -> Any:
        return await core.handle_webhook(
            tenant_id=TENANT,
            platform="slack",
            body=body,
            content_type=content_type,
            headers=signed(body) | headers,
        )

    challenge = await post(raw("url_verification"))
    assert json.loads(challenge.body) == {
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    }
    assert challenge.content_type == "application/json"
    for name in SKIPPED:
        assert (await post(raw(name))).body == b""
    message = raw("message_channel")
    await post(message)
    await post(message, **{"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"})
    await post(form_body("block_actions"), FORM)

    stored = await channels.claim("test", now=NOW, limit=10, lease_seconds=30)
    assert [d.dedup_key for d in stored] == [
        "event:Ev123ABC456",
        body_dedup_key(form_body("block_actions")),
    ]
    assert stored[1].content_type == FORM  # the worker parses the form again
    # A forged url_verification gets no challenge.
    with pytest.raises(Unauthenticated):
        await core.handle_webhook(
            tenant_id=TENANT,
            platform="slack",
            body=raw("url_verification"),
            content_type="application/json",
            headers=signed(raw("url_verification"), secret="forged"),
        )
