"""SMS inbound (adapters/channels/sms.py) on Twilio's documented parameter
sets (tests/fixtures/webhooks/sms): incoming SMS and MMS, status
callbacks, the STOP/START/HELP keywords and the opt-out they record, the
inbox key, and the empty TwiML answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest

from adapters.channels.sms import (
    KEYWORD_FIELD,
    SmsInbound,
    keyword_of,
    parse_sms_webhook,
)
from adapters.channels.twilio import SIGNATURE_HEADER, parse_form, sign
from chat_service.domain.connections import ChannelConnection
from chat_service.domain.enums import Channel, DeliveryStatus, MessageType
from chat_service.domain.errors import InvalidArgument, PermissionDenied
from chat_service.domain.webhooks import WebhookCall
from chat_service.ports import OpenedConnection
from tests.fakes import InMemoryChannelStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "sms"
AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OURS, USER = "+14155550100", "+14155551234"
URL = "https://edge.example/v1/webhooks/acme/sms"
TOKEN = "f" * 32


class _Clock:
    def now(self) -> datetime:
        return AT


def body(name: str) -> bytes:
    return (FIXTURES / f"{name}.form").read_bytes()


def call(raw: bytes, *, received_at: datetime | None = AT, signed_for: str = URL) -> WebhookCall:
    return WebhookCall(
        tenant_id="acme",
        channel=Channel.SMS,
        body=raw,
        content_type="application/x-www-form-urlencoded",
        headers={SIGNATURE_HEADER: sign(signed_for, TOKEN, parse_form(raw))},
        original_path="/v1/webhooks/acme/sms",
        received_at=received_at,
    )


def opened(webhook_url: str = URL, token: str = TOKEN) -> OpenedConnection:
    connection = ChannelConnection(
        connection_id="conn-sms",
        tenant_id="acme",
        channel=Channel.SMS,
        account_id=OURS,
        display_name="",
        webhook_url=webhook_url,
        public={"account_sid": "AC0123456789abcdef0123456789abcdef", "phone_number": OURS},
        secrets={},
        fingerprints={},
        created_at=AT,
        updated_at=AT,
    )
    return OpenedConnection(connection, {"auth_token": token})


@pytest.fixture
def store() -> InMemoryChannelStore:
    return InMemoryChannelStore()


@pytest.fixture
def sms(store: InMemoryChannelStore) -> SmsInbound:
    return SmsInbound(opt_outs=store, clock=_Clock())


# ---------------------------------------------------------------- messages


def test_an_incoming_sms_is_one_text_message_from_the_user_to_our_number() -> None:
    parsed = parse_sms_webhook(body("incoming_sms"), AT)

    (message,) = parsed.messages
    assert parsed.statuses == ()
    assert message.platform_message_id == "SM1f0e8ae6ade43cb3c0ce4525424e404f"
    assert message.account_id == OURS
    assert message.user_id == USER
    assert message.sent_at == AT
    assert message.content.type is MessageType.TEXT
    assert message.content.text == "Hello! Is the shop open today? 😀"
    assert message.kind == "sms"
    assert KEYWORD_FIELD not in message.extra


def test_an_mms_is_its_text_with_the_image() -> None:
    (message,) = parse_sms_webhook(body("incoming_mms"), AT).messages

    assert message.kind == "mms"
    assert message.content.type is MessageType.IMAGE
    assert message.content.text == "Here is the receipt"
    assert message.content.media is not None
    assert message.content.media.type == "image/jpeg"
    assert message.content.media.url.startswith("https://api.twilio.com/2010-04-01/Accounts/")


def test_each_further_media_is_a_message_of_its_own_in_order() -> None:
    first, second = parse_sms_webhook(body("incoming_mms_two_media"), AT).messages

    assert first.platform_message_id == "MM00000000000000000000000000000002"
    assert second.platform_message_id == "MM00000000000000000000000000000002:1"
    assert first.content.type is MessageType.IMAGE
    # A vCard: mapped as a file, which the SMS channel's rules refuse later
    # (the inbox worker stores a placeholder and answers politely).
    assert second.content.type is MessageType.FILE
    assert second.content.media is not None
    assert second.content.media.type == "text/vcard"
    assert first.content.text == second.content.text == ""


def test_an_empty_sms_is_stored_as_unsupported() -> None:
    raw = body("incoming_sms").replace(b"Body=Hello", b"Body=&X=Hello")

    (message,) = parse_sms_webhook(raw, AT).messages

    assert message.supported is False
    assert "empty" in message.content.text


# ---------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("name", "status", "error"),
    [
        ("status_sent", DeliveryStatus.SENT, ""),
        ("status_delivered", DeliveryStatus.DELIVERED, ""),
        ("status_read", DeliveryStatus.READ, ""),
        ("status_undelivered", DeliveryStatus.FAILED, "ErrorCode: 30003"),
        ("status_failed", DeliveryStatus.FAILED, "ErrorCode: 30008"),
    ],
)
def test_a_status_callback_names_our_message_and_its_status(
    name: str, status: DeliveryStatus, error: str
) -> None:
    parsed = parse_sms_webhook(body(name), AT)

    (report,) = parsed.statuses
    assert parsed.messages == ()
    assert report.platform_message_ids == ("SM00000000000000000000000000000010",)
    assert report.account_id == OURS  # the reply's From: our number
    assert report.status is status
    assert report.error == error


def test_a_status_the_service_does_not_map_is_skipped() -> None:
    raw = body("status_sent").replace(b"Status=sent", b"Status=partially_delivered")

    parsed = parse_sms_webhook(raw, AT)

    assert parsed.messages == ()
    assert parsed.statuses == ()
    assert parsed.skipped


# ---------------------------------------------------------------- keywords


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("STOP", "stop"),
        ("Stop", "stop"),
        (" stop. ", "stop"),
        ("stopall", "stop"),
        ("UNSUBSCRIBE", "stop"),
        ("cancel", "stop"),
        ("End", "stop"),
        ("quit!", "stop"),
        ("revoke", "stop"),
        ("OPTOUT", "stop"),
        ("START", "start"),
        ("yes", "start"),
        ("unstop", "start"),
        ("HELP", "help"),
        ("info", "help"),
        ("stop that", ""),
        ("please stop", ""),
        ("stopp", ""),
        ("", ""),
    ],
)
def test_keywords_are_twilios_whole_body_case_insensitive(text: str, keyword: str) -> None:
    assert keyword_of(text) == keyword


@pytest.mark.parametrize(
    ("name", "keyword"),
    [("incoming_stop", "stop"), ("incoming_start", "start"), ("incoming_help", "help")],
)
def test_a_keyword_message_is_still_a_message_marked_with_its_keyword(
    name: str, keyword: str
) -> None:
    (message,) = parse_sms_webhook(body(name), AT).messages

    assert message.extra[KEYWORD_FIELD] == keyword
    assert message.supported


async def test_stop_opts_the_number_out_of_the_connection_until_start(
    sms: SmsInbound, store: InMemoryChannelStore
) -> None:
    connection = opened()
    (stop,) = sms.parse(call(body("incoming_stop"))).messages
    (start,) = sms.parse(
        call(body("incoming_start"), received_at=AT + timedelta(minutes=1))
    ).messages
    (help_,) = sms.parse(
        call(body("incoming_help"), received_at=AT + timedelta(minutes=2))
    ).messages

    await sms.apply("acme", connection, stop)
    stopped = await store.is_opted_out("acme", "conn-sms", USER)
    await sms.apply("acme", connection, help_)  # help changes nothing
    still = await store.is_opted_out("acme", "conn-sms", USER)
    await sms.apply("acme", connection, start)
    # The STOP delivery retried late does not undo the newer START.
    await sms.apply("acme", connection, stop)

    assert (stopped, still) == (True, True)
    assert await store.is_opted_out("acme", "conn-sms", USER) is False


async def test_an_ordinary_message_records_nothing(
    sms: SmsInbound, store: InMemoryChannelStore
) -> None:
    (message,) = sms.parse(call(body("incoming_sms"))).messages

    await sms.apply("acme", opened(), message)

    assert store._opt_outs == {}


# ------------------------------------------------------------ verification


async def test_a_signed_call_verifies_for_the_connection_with_its_url(sms: SmsInbound) -> None:
    connection = opened()

    assert await sms.verify(call(body("incoming_sms")), [connection]) == [connection]


async def test_failures_are_403s(sms: SmsInbound) -> None:
    unsigned = call(body("incoming_sms"), signed_for="https://edge.example/other")

    with pytest.raises(PermissionDenied):
        await sms.verify(unsigned, [opened()])
    with pytest.raises(PermissionDenied):
        await sms.verify(call(body("incoming_sms")), [opened(webhook_url="")])
    with pytest.raises(PermissionDenied):
        await sms.verify(call(body("incoming_sms")), [])


# ------------------------------------------------------- inbox and answer


def test_the_inbox_key_is_the_message_sid_or_the_sid_and_status(sms: SmsInbound) -> None:
    assert sms.dedup_key(call(body("incoming_sms"))) == (
        "message:SM1f0e8ae6ade43cb3c0ce4525424e404f"
    )
    sent = sms.dedup_key(call(body("status_sent")))
    delivered = sms.dedup_key(call(body("status_delivered")))
    assert sent == "status:SM00000000000000000000000000000010:sent"
    assert delivered == "status:SM00000000000000000000000000000010:delivered"


def test_the_answer_is_empty_twiml(sms: SmsInbound) -> None:
    answer, content_type = sms.acknowledgement(call(body("incoming_sms")))

    assert content_type == "text/xml"
    assert answer == b'<?xml version="1.0" encoding="UTF-8"?><Response/>'


def test_without_a_received_time_the_clock_dates_the_message(sms: SmsInbound) -> None:
    (message,) = sms.parse(call(body("incoming_sms"), received_at=None)).messages

    assert message.sent_at == AT


# ------------------------------------------------------------------- junk


def _form(**fields: str) -> bytes:
    base = {
        "MessageSid": "SM" + "a" * 32,
        "From": USER,
        "To": OURS,
        "Body": "hi",
        "NumMedia": "0",
    }
    return urlencode({**base, **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (_form(MessageSid="nope"), "body.MessageSid"),
        (_form(From=""), "body.From"),
        (_form(To=""), "body.To"),
        (_form(NumMedia="11"), "body.NumMedia"),
        (_form(NumMedia="x"), "body.NumMedia"),
        (_form(NumMedia="1"), "body.MediaUrl0"),
        (
            _form(NumMedia="1", MediaUrl0="ftp://x/y", MediaContentType0="image/png"),
            "body.MediaUrl0",
        ),
        (
            _form(NumMedia="1", MediaUrl0="https://x/y", MediaContentType0="png"),
            "body.MediaContentType0",
        ),
        (_form(MessageStatus="failed", ErrorCode="oops"), "body.ErrorCode"),
        (_form() + b"&Body=again", "body.Body"),
        (b"\xff", "body"),
    ],
)
def test_a_body_twilio_does_not_send_is_an_invalid_argument(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_sms_webhook(raw, AT)

    assert refused.value.violations[0].field == field
