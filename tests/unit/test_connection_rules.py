"""The pure rules of channel connections and webhook identities
(domain/connections.py, domain/webhooks.py)."""

from __future__ import annotations

import dataclasses

import pytest

from chat_service.domain.connections import (
    PLATFORMS,
    ChannelConnection,
    ConnectionFields,
    account_id_of,
    check_new,
    check_update,
    platform_of,
    secret_context,
    webhook_path,
)
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel
from chat_service.domain.errors import InvalidArgument
from chat_service.domain.identifiers import MAX_MESSAGE_ID_LENGTH, MESSAGE_ID_PATTERN
from chat_service.domain.model import ChannelMetadata, InboundMessage
from chat_service.domain.validation import validate_inbound
from chat_service.domain.webhooks import (
    body_dedup_key,
    inbound_message_id,
    reserved_metadata_key,
    session_of,
)
from tests.builders import T0

WHATSAPP = ConnectionFields(
    channel=Channel.WHATSAPP,
    display_name="Support",
    webhook_url="https://edge.example.com/v1/webhooks/t/whatsapp",
    public={"phone_number_id": "106540352242922"},
    secrets={"app_secret": "s3cret", "verify_token": "vt", "access_token": "EAAG"},
)


def _fields(exc: pytest.ExceptionInfo[InvalidArgument]) -> set[str]:
    return {v.field for v in exc.value.violations}


def test_every_platform_names_its_account_field_among_its_public_fields() -> None:
    for channel, spec in PLATFORMS.items():
        assert spec.account_field in {name for name, _, _ in spec.public}, channel
        assert platform_of(spec.name) is channel
        assert webhook_path("t1", channel) == f"/v1/webhooks/t1/{spec.name}"
    assert platform_of("web") is None


def test_a_complete_connection_passes() -> None:
    check_new(WHATSAPP)


def test_missing_and_malformed_fields_are_named_by_their_request_path() -> None:
    bad = ConnectionFields(
        channel=Channel.SMS,
        webhook_url="http://plain.example.com/hook",
        public={"account_sid": "AC123", "phone_number": "4155550100"},
        secrets={},
    )
    with pytest.raises(InvalidArgument) as exc:
        check_new(bad)
    assert _fields(exc) == {
        "connection.webhook_url",
        "connection.sms.account_sid",
        "connection.sms.phone_number",
        "connection.sms.auth_token",
    }


def test_no_platform_is_refused() -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_new(ConnectionFields(channel=Channel.WEB))
    assert _fields(exc) == {"connection"}


def test_control_characters_and_padding_in_secrets_are_refused() -> None:
    fields = ConnectionFields(
        channel=Channel.SLACK,
        public={"team_id": "T0123ABCD"},
        secrets={"signing_secret": " padded ", "bot_token": "xoxb\x00"},
    )
    with pytest.raises(InvalidArgument) as exc:
        check_new(fields)
    assert _fields(exc) == {"connection.slack.signing_secret", "connection.slack.bot_token"}


def _stored() -> ChannelConnection:
    return ChannelConnection(
        connection_id="cc_abc",
        tenant_id="t1",
        channel=Channel.WHATSAPP,
        account_id="106540352242922",
        display_name="Support",
        webhook_url="",
        public={"phone_number_id": "106540352242922"},
        secrets={"app_secret": "sealed1", "verify_token": "sealed2", "access_token": "sealed3"},
        fingerprints={"app_secret": "f1", "verify_token": "f2", "access_token": "f3"},
        created_at=T0,
        updated_at=T0,
    )


def test_an_update_applies_only_the_masked_paths() -> None:
    stored = _stored()
    update = ConnectionFields(
        channel=Channel.WHATSAPP,
        display_name="ignored: not in the mask",
        public={"phone_number_id": "999"},
        secrets={"access_token": "new"},
    )
    paths = ("whatsapp.phone_number_id", "whatsapp.access_token")
    check_update(stored, update, paths)
    changed = stored.changed(
        update,
        paths,
        sealed={"access_token": "sealed-new"},
        fingerprints={"access_token": "f9"},
        at=T0,
    )
    assert changed.display_name == "Support"
    assert changed.account_id == "999"
    assert changed.secrets["access_token"] == "sealed-new"
    assert changed.secrets["app_secret"] == "sealed1"
    assert changed.fingerprints["access_token"] == "f9"
    assert changed.version == stored.version + 1


def test_an_update_cannot_change_the_platform_nor_name_foreign_fields() -> None:
    stored = _stored()
    with pytest.raises(InvalidArgument) as exc:
        check_update(stored, ConnectionFields(channel=Channel.MESSENGER), ("messenger.page_id",))
    assert "connection.messenger" in _fields(exc)
    assert "update_mask" in _fields(exc)


def test_secret_contexts_differ_per_tenant_connection_and_field() -> None:
    contexts = {
        secret_context("t1", "cc_1", "app_secret"),
        secret_context("t2", "cc_1", "app_secret"),
        secret_context("t1", "cc_2", "app_secret"),
        secret_context("t1", "cc_1", "access_token"),
    }
    assert len(contexts) == 4


@pytest.mark.parametrize(
    "platform_id",
    [
        "m_1457764197618:41d102a3e1ae206a38",  # a Messenger mid fits as it is
        "wamid.HBgLMTY0NjcwNDM1OTUVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",  # base64: hashed
        "x" * 300,  # too long: hashed
    ],
)
def test_inbound_message_ids_are_stable_and_valid_message_ids(platform_id: str) -> None:
    first = inbound_message_id(Channel.WHATSAPP, platform_id)
    assert first == inbound_message_id(Channel.WHATSAPP, platform_id)
    assert len(first) <= MAX_MESSAGE_ID_LENGTH
    assert MESSAGE_ID_PATTERN.fullmatch(first)
    assert first != inbound_message_id(Channel.MESSENGER, platform_id)


def test_distinct_platform_ids_get_distinct_message_ids() -> None:
    a = inbound_message_id(Channel.WHATSAPP, "wamid.A=")
    b = inbound_message_id(Channel.WHATSAPP, "wamid.B=")
    assert a != b


def test_sessions_are_per_connection_and_user_and_bounded() -> None:
    assert session_of("cc_1", "u") != session_of("cc_2", "u")
    long_user = "u" * 255
    assert len(session_of("cc_1", long_user)) <= 255
    assert session_of("cc_1", long_user) != session_of("cc_1", long_user[:-1] + "v")


def test_sessions_in_a_platform_place_are_per_place_and_user() -> None:
    in_thread = session_of("cc_1", "U1", "C1/1700000000.000100")
    assert in_thread != session_of("cc_1", "U1")
    assert in_thread != session_of("cc_1", "U1", "C2/1700000000.000100")
    assert in_thread != session_of("cc_1", "U2", "C1/1700000000.000100")


def test_body_dedup_key_is_a_digest_of_the_exact_bytes() -> None:
    assert body_dedup_key(b'{"a":1}') == body_dedup_key(b'{"a":1}')
    assert body_dedup_key(b'{"a":1}') != body_dedup_key(b'{"a": 1}')


def test_a_teams_app_id_is_kept_lowercase_as_activities_name_it_lowered() -> None:
    fields = ConnectionFields(
        channel=Channel.TEAMS,
        public={"app_id": "0A1B2C3D-0000-4000-8000-00000000ABCD"},
        secrets={"app_password": "pw"},
    )
    check_new(fields)
    assert account_id_of(Channel.TEAMS, fields.public) == "0a1b2c3d-0000-4000-8000-00000000abcd"
    assert account_id_of(Channel.SLACK, {"team_id": "T0123ABCD"}) == "T0123ABCD"


@pytest.mark.parametrize(
    "key", ["connection_id", "slack_channel", "teams_service_url", "twilio_call_sid"]
)
def test_rpc_callers_cannot_set_the_metadata_replies_are_routed_by(key: str) -> None:
    """Else a chat:write caller could make the tenant's bot post into any Slack
    channel, Teams conversation or WhatsApp number its credentials reach."""
    message = InboundMessage(
        tenant_id="t1",
        message_id="m-1",
        conversation_id="",
        user_id="u1",
        channel=Channel.SLACK,
        content=MessageContent.of_text("hi"),
        channel_metadata=ChannelMetadata(additional_data={key: "x", "note": "fine"}),
    )
    with pytest.raises(InvalidArgument) as exc:
        validate_inbound(message)
    assert _fields(exc) == {"channel_metadata.additional_data"}
    # The webhook inbox, which read it from a verified call, may.
    validate_inbound(dataclasses.replace(message, from_platform=True))
    assert reserved_metadata_key({"note": "fine", "kind": "text"}) is None


@pytest.mark.parametrize("channel", [Channel.SMS, Channel.VOICE])
def test_twilio_connections_need_the_url_twilio_signs(channel: Channel) -> None:
    fields = ConnectionFields(
        channel=channel,
        public={"account_sid": "AC" + "0" * 32, "phone_number": "+14155550100"},
        secrets={"auth_token": "t"},
    )
    with pytest.raises(InvalidArgument) as exc:
        check_new(fields)
    assert _fields(exc) == {"connection.webhook_url"}
    check_new(dataclasses.replace(fields, webhook_url="https://edge.example.com/v1/webhooks/t/sms"))
