"""Meta's webhook signature (X-Hub-Signature-256 over the raw bytes) and GET handshake."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from adapters.channels.meta import (
    WEBHOOK_PAYLOAD_INVALID,
    WEBHOOK_SIGNATURE_INVALID,
    WEBHOOK_VERIFY_MODE_INVALID,
    WEBHOOK_VERIFY_TOKEN_MISMATCH,
    load_body,
    sign,
    verify_signature,
    verify_subscription,
)
from chat_service.domain.errors import InvalidArgument, PermissionDenied, Unauthenticated

SECRET = "app-secret-1"
# Non-ASCII, an escaped slash and odd whitespace: what a re-serializer changes.
RAW = b'{"object":"page",  "entry":[{"id":"1","text":"caf\xc3\xa9 \\/ \\u00e9"}]}\n'


def test_a_body_signed_with_the_app_secret_verifies() -> None:
    header = "sha256=" + hmac.new(SECRET.encode(), RAW, hashlib.sha256).hexdigest()
    assert sign(RAW, SECRET) == header
    verify_signature(RAW, header, SECRET)
    verify_signature(RAW, header.upper().replace("SHA256=", "sha256="), SECRET)  # hex case


def test_the_same_json_reserialized_fails() -> None:
    header = sign(RAW, SECRET)
    same_json = json.dumps(json.loads(RAW)).encode()
    assert json.loads(same_json) == json.loads(RAW)
    assert same_json != RAW
    with pytest.raises(Unauthenticated) as raised:
        verify_signature(same_json, header, SECRET)
    assert raised.value.reason == WEBHOOK_SIGNATURE_INVALID


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "sha1=" + "0" * 40,
        "sha256=",
        "sha256=" + "0" * 63,
        "sha256=" + "g" * 64,
        "sha256=" + "ab " * 21 + "a",  # bytes.fromhex would accept the spaces
        "sha256 = " + "0" * 64,
        "sha256=" + "é" * 64,
    ],
)
def test_a_missing_or_malformed_header_is_unauthenticated(header: str | None) -> None:
    with pytest.raises(Unauthenticated) as raised:
        verify_signature(RAW, header, SECRET)
    assert raised.value.reason == WEBHOOK_SIGNATURE_INVALID
    assert "X-Hub-Signature-256" in raised.value.message


def test_a_signature_made_with_another_secret_fails() -> None:
    with pytest.raises(Unauthenticated, match="does not match"):
        verify_signature(RAW, sign(RAW, "another-secret"), SECRET)


def test_an_unconfigured_secret_accepts_nothing() -> None:
    with pytest.raises(Unauthenticated, match="no app secret"):
        verify_signature(RAW, sign(RAW, ""), "")


def test_the_handshake_echoes_the_challenge() -> None:
    assert verify_subscription("subscribe", "tok-1", "1158201444", "tok-1") == "1158201444"


@pytest.mark.parametrize(
    ("mode", "token", "reason"),
    [
        ("subscribe", "tok-2", WEBHOOK_VERIFY_TOKEN_MISMATCH),
        ("subscribe", None, WEBHOOK_VERIFY_TOKEN_MISMATCH),
        ("subscribe", "", WEBHOOK_VERIFY_TOKEN_MISMATCH),
        ("subscribe", "tok-1é", WEBHOOK_VERIFY_TOKEN_MISMATCH),
        ("unsubscribe", "tok-1", WEBHOOK_VERIFY_MODE_INVALID),
        (None, "tok-1", WEBHOOK_VERIFY_MODE_INVALID),
    ],
)
def test_a_wrong_token_or_mode_is_permission_denied(
    mode: str | None, token: str | None, reason: str
) -> None:
    with pytest.raises(PermissionDenied) as raised:
        verify_subscription(mode, token, "1158201444", "tok-1")
    assert raised.value.reason == reason


def test_an_unconfigured_verify_token_matches_nothing() -> None:
    with pytest.raises(PermissionDenied):
        verify_subscription("subscribe", "", "1158201444", "")


@pytest.mark.parametrize("challenge", [None, "", "a b", "x" * 257, "<script>\n"])
def test_a_bad_challenge_is_invalid_argument(challenge: str | None) -> None:
    with pytest.raises(InvalidArgument) as raised:
        verify_subscription("subscribe", "tok-1", challenge, "tok-1")
    assert raised.value.violations[0].field == "hub.challenge"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"", "body"),
        (b"{not json", "body"),
        (b"\xff\xfe\xfa", "body"),
        (b"[" * 100_000 + b"]" * 100_000, "body"),
        (b'{"object": NaN}', "body"),
        (b"[]", "body"),
        (b'"page"', "body"),
        (b"{}", "object"),
        (b'{"object": "user"}', "object"),
        (b'{"object": 7}', "object"),
    ],
)
def test_a_body_that_is_not_the_expected_json_object_is_invalid_argument(
    raw: bytes, field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        load_body(raw, "page")
    assert raised.value.reason == WEBHOOK_PAYLOAD_INVALID
    assert raised.value.violations[0].field == field
