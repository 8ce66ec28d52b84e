"""X-Twilio-Signature (adapters/channels/twilio.py): Twilio's documented
vectors, sorted and repeated parameters, the default-port variants, the
bodySHA256 variant for JSON bodies, and what must not verify. Also the
TwiML helpers H12's voice channel builds on."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from adapters.channels.twilio import (
    EMPTY_TWIML,
    SIGNATURE_HEADER,
    TwilioSignatures,
    compute_signature,
    gather,
    parse_form,
    say,
    sign,
    signed_url,
    twiml,
    url_variants,
    url_with_body_hash,
    verify_signature,
)
from chat_service.domain.connections import ChannelConnection
from chat_service.domain.enums import Channel
from chat_service.domain.errors import InvalidArgument, PermissionDenied
from chat_service.domain.webhooks import WebhookCall
from chat_service.ports import OpenedConnection

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "sms"
EXAMPLE: dict[str, Any] = json.loads((FIXTURES / "signature_example.json").read_text())
TOKEN = EXAMPLE["auth_token"]
URL = EXAMPLE["url"]
PARAMS: dict[str, str] = EXAMPLE["params"]
FORM = urlencode(PARAMS).encode()
T0 = datetime(2025, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------- the vectors


def test_the_documented_example_signs_as_twilio_says() -> None:
    assert sign(URL, TOKEN, PARAMS) == EXAMPLE["signature"]
    verify_signature(URL, FORM, EXAMPLE["signature"], TOKEN)


def test_parameters_are_sorted_by_name_whatever_order_they_came_in() -> None:
    shuffled = urlencode(list(reversed(PARAMS.items()))).encode()

    verify_signature(URL, shuffled, EXAMPLE["signature"], TOKEN)


def test_a_repeated_parameter_is_sorted_by_value_too() -> None:
    pairs = [tuple(pair) for pair in EXAMPLE["repeated_params"]]

    assert compute_signature(URL, pairs, TOKEN) == EXAMPLE["repeated_signature"]
    verify_signature(URL, urlencode(pairs).encode(), EXAMPLE["repeated_signature"], TOKEN)


def test_values_are_signed_decoded_and_blank_ones_count() -> None:
    body = b"Body=&From=%2B14155551234&Text=caf%C3%A9+ol%C3%A9"
    expected = compute_signature(
        URL, [("Body", ""), ("From", "+14155551234"), ("Text", "café olé")], TOKEN
    )

    verify_signature(URL, body, expected, TOKEN)
    with pytest.raises(PermissionDenied):
        verify_signature(
            URL, body, compute_signature(URL, [("From", "+14155551234")], TOKEN), TOKEN
        )


@pytest.mark.parametrize(
    ("configured", "signature"),
    [
        (URL, "signature_with_port_443"),  # Twilio signed https://...:443/
        (URL.replace(".com", ".com:443"), "signature"),  # configured with :443, signed without
        (URL.replace("https", "http"), "http_signature_with_port_80"),
    ],
)
def test_the_default_port_may_be_in_the_signed_url_or_not(configured: str, signature: str) -> None:
    verify_signature(configured, FORM, EXAMPLE[signature], TOKEN)


def test_a_port_that_is_not_the_default_is_part_of_the_url() -> None:
    assert url_variants("https://edge.example:8443/hook") == ("https://edge.example:8443/hook",)
    with pytest.raises(PermissionDenied):
        verify_signature(URL.replace(".com", ".com:8443"), FORM, EXAMPLE["signature"], TOKEN)


def test_a_json_body_is_signed_through_its_hash_in_the_url() -> None:
    body = EXAMPLE["json_body"].encode()
    url = url_with_body_hash(URL, body)

    assert url.endswith("&bodySHA256=" + EXAMPLE["json_body_sha256"])
    verify_signature(url, body, EXAMPLE["json_signature"], TOKEN)
    assert sign(url, TOKEN) == EXAMPLE["json_signature"]


def test_a_json_body_that_is_not_the_one_hashed_is_refused() -> None:
    body = EXAMPLE["json_body"].encode()
    url = url_with_body_hash(URL, body)

    with pytest.raises(PermissionDenied, match="bodySHA256"):
        verify_signature(url, body + b" ", EXAMPLE["json_signature"], TOKEN)


# ----------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("url", "body", "header", "token"),
    [
        (URL, FORM.replace(b"1234", b"1235"), EXAMPLE["signature"], TOKEN),  # tampered body
        (URL.replace("foo=1", "foo=2"), FORM, EXAMPLE["signature"], TOKEN),  # other query
        (URL.replace("myapp", "other"), FORM, EXAMPLE["signature"], TOKEN),  # other path
        (URL, FORM, EXAMPLE["signature"], "54321"),  # another account's token
        (URL, FORM, EXAMPLE["signature"], ""),  # no token configured
        ("", FORM, EXAMPLE["signature"], TOKEN),  # no webhook_url
        (URL, FORM, None, TOKEN),  # no header
        (URL, FORM, "not base64!", TOKEN),
        (URL, FORM, "A" * 200, TOKEN),
        (URL, b"\xff\xfe", EXAMPLE["signature"], TOKEN),  # not a form
    ],
)
def test_what_twilio_did_not_sign_is_refused_with_a_403(
    url: str, body: bytes, header: str | None, token: str
) -> None:
    with pytest.raises(PermissionDenied) as refused:
        verify_signature(url, body, header, token)

    assert refused.value.reason == "WEBHOOK_SIGNATURE_INVALID"
    assert not token or token not in refused.value.message  # never the secret


# ---------------------------------------------------------- the URL checked


@pytest.mark.parametrize(
    ("webhook_url", "original_path", "expected"),
    [
        # The configured origin and the request's own path and query.
        (
            "https://edge.example/v1/webhooks/t/sms?key=abc",
            "/v1/webhooks/t/sms?key=abc&bodySHA256=00",
            "https://edge.example/v1/webhooks/t/sms?key=abc&bodySHA256=00",
        ),
        # The configured path, never the request's (test_review_issue12.py).
        ("https://edge.example:8443/v1/x", "/v1/y?z=1", "https://edge.example:8443/v1/x?z=1"),
        # No path from the edge: the configured URL as is.
        ("https://edge.example/v1/webhooks/t/sms", "", "https://edge.example/v1/webhooks/t/sms"),
        # A "path" that would change the host is not taken.
        ("https://edge.example/v1/x", "//evil.example/x", "https://edge.example/v1/x"),
        ("", "/v1/webhooks/t/sms", ""),
    ],
)
def test_the_url_checked(webhook_url: str, original_path: str, expected: str) -> None:
    assert signed_url(webhook_url, original_path) == expected


def _opened(connection_id: str, webhook_url: str, token: str) -> OpenedConnection:
    connection = ChannelConnection(
        connection_id=connection_id,
        tenant_id="acme",
        channel=Channel.SMS,
        account_id="+14155550100",
        display_name="",
        webhook_url=webhook_url,
        public={"account_sid": "AC" + "0" * 32, "phone_number": "+14155550100"},
        secrets={},
        fingerprints={},
        created_at=T0,
        updated_at=T0,
    )
    return OpenedConnection(connection, {"auth_token": token})


def _call(public_url: str, token: str, path: str) -> WebhookCall:
    return WebhookCall(
        tenant_id="acme",
        channel=Channel.SMS,
        body=FORM,
        content_type="application/x-www-form-urlencoded",
        headers={SIGNATURE_HEADER: sign(public_url, token, PARAMS)},
        original_path=path,
    )


def test_the_candidates_whose_token_signs_the_url_they_were_given_are_verified() -> None:
    url = "https://edge.example/v1/webhooks/acme/sms"
    mine = _opened("mine", url, "token-a")
    other_token = _opened("other-token", url, "token-b")
    no_url = _opened("no-url", "", "token-a")
    other_url = _opened("other-url", "https://elsewhere.example/v1/webhooks/acme/sms", "token-a")
    call = _call(url, "token-a", "/v1/webhooks/acme/sms")

    verified = TwilioSignatures().verify(call, [mine, other_token, no_url, other_url])

    assert verified == [mine]


def test_a_call_signed_for_another_tenants_path_does_not_verify() -> None:
    # Two tenants on one Twilio account: the same token. Replayed at acme's
    # path, the call Twilio signed for globex's URL is refused.
    mine = _opened("mine", "https://edge.example/v1/webhooks/acme/sms", "shared")
    call = _call("https://edge.example/v1/webhooks/globex/sms", "shared", "/v1/webhooks/acme/sms")

    with pytest.raises(PermissionDenied):
        TwilioSignatures().verify(call, [mine])


def test_no_candidate_is_the_same_refusal_as_a_wrong_signature() -> None:
    url = "https://edge.example/v1/webhooks/acme/sms"
    call = _call(url, "token-a", "/v1/webhooks/acme/sms")

    with pytest.raises(PermissionDenied) as nobody:
        TwilioSignatures().verify(call, [])
    with pytest.raises(PermissionDenied) as wrong:
        TwilioSignatures().verify(call, [_opened("c", url, "token-b")])

    assert nobody.value.message == wrong.value.message


# -------------------------------------------------------------------- forms


def test_a_form_keeps_blanks_and_order_and_refuses_bad_encoding() -> None:
    assert parse_form(b"b=2&a=&b=1") == (("b", "2"), ("a", ""), ("b", "1"))
    assert parse_form(b"") == ()
    for bad in (b"a=%ff", b"\xff=1", b"a=1&&b=2"):
        with pytest.raises(InvalidArgument):
            parse_form(bad)


# -------------------------------------------------------------------- TwiML


def test_empty_twiml_is_a_bare_response() -> None:
    assert twiml() == EMPTY_TWIML
    assert EMPTY_TWIML.endswith(b"<Response/>")


def test_say_and_gather_escape_what_they_carry() -> None:
    document = twiml(
        gather(
            say('Fish & "chips" <now>\x00', language="en-GB"),
            action="https://edge.example/v1/webhooks/acme/voice?a=1&b=2",
            timeout=5,
        )
    ).decode()

    assert document == (
        '<?xml version="1.0" encoding="UTF-8"?><Response>'
        '<Gather input="speech" action="https://edge.example/v1/webhooks/acme/voice?a=1&amp;b=2" '
        'method="POST" timeout="5" speechTimeout="auto">'
        '<Say language="en-GB">Fish &amp; "chips" &lt;now&gt;</Say></Gather></Response>'
    )


def test_a_signature_is_a_base64_hmac_sha1() -> None:
    assert len(base64.b64decode(sign(URL, TOKEN, PARAMS))) == 20
