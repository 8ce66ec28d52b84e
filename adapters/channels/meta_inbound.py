"""The webhook side WhatsApp and Messenger share (both are Meta webhooks):
the signature check against the tenant's connections, the GET handshake,
the inbox key and the empty 200 Meta expects.

- Signature: `X-Hub-Signature-256` (gRPC metadata `x-hub-signature-256`,
  forwarded by Envoy) over the raw body, HMAC-SHA256 keyed by each
  candidate connection's `app_secret`, compared in constant time
  (meta.verify_signature;
  https://developers.facebook.com/docs/graph-api/webhooks/getting-started/,
  "Validating Payloads"). Each distinct app secret among the candidates
  is tried once (the numbers or pages of one Meta app share it: a body
  costs one HMAC per app, not per connection), and a tenant with no
  connection costs one HMAC as well, so the answer and the HMAC work do not
  tell whether the tenant exists (its connections' cached or uncached
  lookup still may).
- Handshake: `hub.mode=subscribe` and a candidate's `verify_token`
  (meta.verify_subscription; same page, "Verification Requests").
- Meta names no delivery id, so the inbox key is the body's hash; messages
  are deduplicated again downstream by their own ids (wamid, mid).
- Meta wants a 200 quickly and reads nothing from its body.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from adapters.channels.meta import (
    SIGNATURE_HEADER,
    WEBHOOK_SIGNATURE_INVALID,
    verify_signature,
    verify_subscription,
)
from chat_service.domain.connections import PLATFORMS
from chat_service.domain.enums import Channel
from chat_service.domain.errors import PermissionDenied, Unauthenticated
from chat_service.domain.webhooks import WebhookCall, body_dedup_key
from chat_service.ports import OpenedConnection

APP_SECRET = "app_secret"  # noqa: S105 (the name of the connection's field)
_NO_MATCH = "the X-Hub-Signature-256 signature does not match the body"


class MetaWebhooks:
    """The Meta half of an InboundChannel (and its WebhookHandshake);
    WhatsAppInbound and MessengerInbound add their parsers."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._handshake_field = PLATFORMS[channel].handshake_field
        # Signs nothing anybody knows: what a tenant without connections is
        # checked against, so that it costs the same HMAC as one with them.
        self._decoy_secret = secrets.token_hex(32)

    @property
    def channel(self) -> Channel:
        return self._channel

    async def verify(
        self, call: WebhookCall, candidates: Sequence[OpenedConnection]
    ) -> Sequence[OpenedConnection]:
        header = call.headers.get(SIGNATURE_HEADER)
        # The decoy's refusal is the answer when no candidate signs the body:
        # the missing or malformed header, else "does not match", the same
        # words whoever the tenant is (checked over no bytes: the words only).
        try:
            verify_signature(b"", header, self._decoy_secret)
            refusal = Unauthenticated(_NO_MATCH, reason=WEBHOOK_SIGNATURE_INVALID)
        except Unauthenticated as error:
            refusal = error
        by_secret: dict[str, list[OpenedConnection]] = {}
        for candidate in candidates:
            by_secret.setdefault(candidate.secrets.get(APP_SECRET, ""), []).append(candidate)
        if not by_secret:
            _signs(call.body, header, self._decoy_secret)  # the HMAC a connection costs
            raise refusal
        verified = [
            connection
            for secret, connections in by_secret.items()
            if _signs(call.body, header, secret)
            for connection in connections
        ]
        if not verified:
            raise refusal
        return verified

    def answer_handshake(
        self, mode: str, verify_token: str, challenge: str, candidates: Sequence[OpenedConnection]
    ) -> str:
        for candidate in candidates:
            expected = candidate.secrets.get(self._handshake_field, "")
            try:
                return verify_subscription(mode, verify_token, challenge, expected)
            except PermissionDenied:
                continue
        # No candidate's token: refused as a wrong mode or token is (an empty
        # expected token matches nothing), whether or not the tenant exists.
        return verify_subscription(mode, verify_token, challenge, "")

    def dedup_key(self, call: WebhookCall) -> str:
        return body_dedup_key(call.body)

    def acknowledgement(self, call: WebhookCall) -> tuple[bytes, str]:
        return b"", "text/plain"


def _signs(body: bytes, header: str | None, app_secret: str) -> bool:
    try:
        verify_signature(body, header, app_secret)
    except Unauthenticated:
        return False
    return True
