"""Regressions found reviewing issue 10 (channels, part 1) that have no
better home: each failed before its fix."""

from __future__ import annotations

from chat_service.domain.connections import ConnectionFields
from chat_service.domain.enums import Channel


def test_a_connections_plain_secrets_stay_out_of_its_repr() -> None:
    # ConnectionFields carries the secrets in clear between the gRPC layer
    # and the use case; a repr (a traceback with locals, an assertion
    # message, a debug log) must not show them.
    fields = ConnectionFields(
        channel=Channel.WHATSAPP,
        public={"phone_number_id": "106540352242922"},
        secrets={"app_secret": "s3cr3t-app", "access_token": "EAAG-token"},
    )
    shown = repr(fields)
    assert "s3cr3t-app" not in shown
    assert "EAAG-token" not in shown
    assert "106540352242922" in shown  # the rest is still there to debug with
