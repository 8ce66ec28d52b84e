"""The webhook edge: a platform's call checked, stored durably, answered at once.

HandleWebhook, in this order:
  the platform named in the path (INVALID_ARGUMENT if unknown) and the body
  size (INVALID_ARGUMENT past MAX_WEBHOOK_BODY_BYTES) -> the tenant's
  connections for that platform (ConnectionDirectory, cached) -> the
  platform's signature over the raw bytes, tried with each connection's
  secret, BEFORE anything is parsed (UNAUTHENTICATED, nothing stored; a
  tenant without connections gets the very same answer, so a webhook URL
  does not tell whether its tenant exists) -> the body parsed once, to
  refuse junk before acknowledging it (INVALID_ARGUMENT, nothing stored) ->
  the inbox (durable, deduplicated; skipped when the body holds nothing to
  process, as Slack's url_verification) -> the platform's acknowledgement.

The messages and statuses inside are processed afterwards by the inbox
worker (inbox_worker.py), so a slow bot never makes the platform time out
and a crash after the answer loses nothing. The exception is a platform
that waits for the bot's words in the answer itself (a phone call: a
SynchronousChannel): after the same checks it is answered by AnswerCall
(voice_calls.py), which stores the turn and its reply first.

VerifyWebhook answers a platform's subscription handshake (Meta's GET with
`hub.challenge`): the challenge comes back when the token is one of the
tenant's connections'; anything else is PERMISSION_DENIED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from chat_service.domain.connections import PLATFORMS, platform_of
from chat_service.domain.enums import Channel
from chat_service.domain.errors import (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unimplemented,
)
from chat_service.domain.identifiers import MAX_USER_ID_LENGTH, identifier_problem
from chat_service.domain.webhooks import ParsedWebhook, WebhookCall
from chat_service.pipeline.errors import port_errors
from chat_service.ports import (
    Clock,
    ConnectionDirectory,
    InboundChannel,
    OpenedConnection,
    SynchronousChannel,
    WebhookDelivery,
    WebhookHandshake,
    WebhookInbox,
)

log = logging.getLogger(__name__)

# Meta: "Webhooks payloads can be up to 3MB"
# (https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/components).
# Below the server's 4 MiB gRPC message limit, so this check is what a
# larger body meets, with its own answer.
MAX_WEBHOOK_BODY_BYTES = 3 * 1024 * 1024

WEBHOOK_BODY_TOO_LARGE = "WEBHOOK_BODY_TOO_LARGE"
# The reason every platform adapter gives a signature that does not verify.
WEBHOOK_SIGNATURE_INVALID = "WEBHOOK_SIGNATURE_INVALID"
WEBHOOK_PLATFORM_UNKNOWN = "WEBHOOK_PLATFORM_UNKNOWN"
WEBHOOK_PLATFORM_NOT_SUPPORTED = "WEBHOOK_PLATFORM_NOT_SUPPORTED"


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """What the platform gets back (an HttpBody)."""

    body: bytes
    content_type: str


class AnswersCalls(Protocol):
    """AnswerCall (voice_calls.py), as HandleWebhook hands it a verified call."""

    async def __call__(
        self,
        call: WebhookCall,
        adapter: SynchronousChannel,
        verified: Sequence[OpenedConnection],
    ) -> tuple[bytes, str]: ...


class HandleWebhook:
    def __init__(
        self,
        *,
        inbound: Mapping[Channel, InboundChannel],
        directory: ConnectionDirectory,
        inbox: WebhookInbox,
        clock: Clock,
        on_stored: Callable[[], None] = lambda: None,
        calls: AnswersCalls | None = None,
    ) -> None:
        self._inbound = dict(inbound)
        self._directory = directory
        self._inbox = inbox
        self._clock = clock
        self._on_stored = on_stored  # the inbox worker's wake-up
        self._calls = calls  # synchronous platforms' answers (voice_calls.py)

    async def __call__(
        self,
        *,
        tenant_id: str,
        platform: str,
        body: bytes,
        content_type: str = "",
        headers: Mapping[str, str] | None = None,
        original_path: str = "",
    ) -> WebhookAnswer:
        channel, adapter = _platform(platform, self._inbound)
        _check_tenant(tenant_id)
        if len(body) > MAX_WEBHOOK_BODY_BYTES:
            raise InvalidArgument.of(
                "body",
                f"must be at most {MAX_WEBHOOK_BODY_BYTES} bytes, got {len(body)}",
                reason=WEBHOOK_BODY_TOO_LARGE,
            )
        call = WebhookCall(
            tenant_id=tenant_id,
            channel=channel,
            body=body,
            content_type=content_type,
            headers=dict(headers or {}),
            original_path=original_path,
        )
        with port_errors():
            candidates = await self._directory.for_channel(tenant_id, channel)
        verified = await adapter.verify(call, candidates)
        parsed = adapter.parse(call)
        _check_accounts(parsed, candidates, verified)
        if isinstance(adapter, SynchronousChannel):
            # A phone call waits for the bot's words in this very answer:
            # stored and answered now (voice_calls.py), not through the inbox.
            if self._calls is None:
                raise Unimplemented(
                    f"{channel.value} calls are not answered here",
                    reason=WEBHOOK_PLATFORM_NOT_SUPPORTED,
                )
            body_out, type_out = await self._calls(call, adapter, verified)
            return WebhookAnswer(body_out, type_out)
        if not parsed.messages and not parsed.statuses:
            # Nothing for the worker: a handshake answered here and now
            # (Slack's url_verification gets its challenge back), or only
            # events deliberately skipped (a bot's own message). Stored,
            # it would only be claimed and finished.
            log.debug("%s webhook for tenant %s: nothing to process", channel.value, tenant_id)
            body_out, type_out = adapter.acknowledgement(call)
            return WebhookAnswer(body_out, type_out)
        delivery = WebhookDelivery(
            tenant_id=tenant_id,
            channel=channel,
            dedup_key=adapter.dedup_key(call),
            body=body,
            content_type=content_type,
            received_at=self._clock.now(),
        )
        with port_errors():
            new = await self._inbox.put(delivery)
        if new:
            self._on_stored()
        else:
            log.info("%s webhook for tenant %s: already in the inbox", channel.value, tenant_id)
        body_out, type_out = adapter.acknowledgement(call)
        return WebhookAnswer(body_out, type_out)


class VerifyWebhook:
    def __init__(
        self, *, inbound: Mapping[Channel, InboundChannel], directory: ConnectionDirectory
    ) -> None:
        self._handshakes = {
            channel: adapter
            for channel, adapter in inbound.items()
            if isinstance(adapter, WebhookHandshake)
        }
        self._directory = directory

    async def __call__(
        self, *, tenant_id: str, platform: str, mode: str, verify_token: str, challenge: str
    ) -> WebhookAnswer:
        channel = platform_of(platform)
        if channel is None:
            raise _unknown_platform(platform)
        handshake = self._handshakes.get(channel)
        if handshake is None:
            raise PermissionDenied(
                f"{platform} webhooks have no verification handshake",
                reason=WEBHOOK_PLATFORM_NOT_SUPPORTED,
            )
        _check_tenant(tenant_id)
        with port_errors():
            candidates = await self._directory.for_channel(tenant_id, channel)
        answer = handshake.answer_handshake(mode, verify_token, challenge, candidates)
        return WebhookAnswer(answer.encode(), "text/plain")


def _platform(
    platform: str, inbound: Mapping[Channel, InboundChannel]
) -> tuple[Channel, InboundChannel]:
    channel = platform_of(platform)
    if channel is None:
        raise _unknown_platform(platform)
    adapter = inbound.get(channel)
    if adapter is None:
        raise Unimplemented(
            f"{platform} webhooks are not supported yet", reason=WEBHOOK_PLATFORM_NOT_SUPPORTED
        )
    return channel, adapter


def _unknown_platform(platform: str) -> InvalidArgument:
    names = ", ".join(spec.name for spec in PLATFORMS.values())
    return InvalidArgument.of(
        "platform",
        f"must be one of {names}, got {platform[:40]!r}",
        reason=WEBHOOK_PLATFORM_UNKNOWN,
    )


def _check_tenant(tenant_id: str) -> None:
    # Shape only: whether the tenant exists is never told (see the module doc).
    problem = (
        "is required"
        if not tenant_id
        else identifier_problem(tenant_id, maximum=MAX_USER_ID_LENGTH)
    )
    if problem:
        raise InvalidArgument.of("tenant_id", problem)


def _check_accounts(
    parsed: ParsedWebhook,
    candidates: Sequence[OpenedConnection],
    verified: Sequence[OpenedConnection],
) -> None:
    """A body signed with one connection's secret speaks only for the
    accounts of connections with that secret: naming the account of a
    connection whose secret did not sign it is refused as unsigned. Accounts
    of no connection at all pass: the worker skips and counts them."""
    signed = {opened.connection.account_id for opened in verified}
    others = {opened.connection.account_id for opened in candidates} - signed
    named = {m.account_id for m in parsed.messages} | {s.account_id for s in parsed.statuses}
    if named & others:
        raise Unauthenticated(
            "the signature does not authenticate every account the body names",
            reason=WEBHOOK_SIGNATURE_INVALID,
        )
