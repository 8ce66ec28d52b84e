"""Twilio's REST API over HTTP: the client the SMS sender posts with.

- `TwilioApi`: an http_api.HttpApi on TWILIO_API_BASE_URL
  (https://api.twilio.com, or a local emulator in tests): no redirects
  followed, timeouts and connection failures retryable.
- `TwilioApi.create_message`: `POST {TWILIO_API_BASE_URL}/2010-04-01/
  Accounts/{AccountSid}/Messages.json`, form-encoded, HTTP basic auth with
  the account SID and its auth token
  (https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource,
  https://www.twilio.com/docs/usage/requests-to-twilio). The token travels
  in the Authorization header only: never in a URL, a body or a message.
  201 Created carries the Message resource (`sid`, `status`, `num_segments`).
- `twilio_error`: the ONE place a failed call becomes a DeliveryError.
  Errors come as JSON `{"code", "message", "more_info", "status"}`
  (https://www.twilio.com/docs/usage/twilios-response#response-formats-exceptions).
  429 and code 20429 (too many requests,
  https://www.twilio.com/docs/api/errors/20429), 14107 (send rate
  exceeded), 21611 (the number's queue is full), 63017 (the account's rate)
  and 5xx are retried, after `Retry-After` when Twilio gives one;
  timeouts and connection failures too. Everything else is permanent, with
  the code and what it means (the codes below) as the reason: Twilio's
  own `message` is not quoted, as it repeats the phone numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import httpx

from adapters.channels.http_api import HttpApi, json_object, retry_after
from chat_service.ports import DeliveryError

API_VERSION = "2010-04-01"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
DEFAULT_THROTTLE_WAIT = 1.0  # Twilio's 20429 names no wait of its own

TOO_MANY_REQUESTS = 20429
RATE_EXCEEDED = 14107
# The From number's queue holds 10 hours of messages already
# (https://www.twilio.com/docs/api/errors/21611): it drains at the number's
# rate, so a later attempt goes through (waiting a while first).
QUEUE_FULL = 21611
QUEUE_FULL_WAIT = 60.0
# The account's (and subaccounts') 2,000 messages a second
# (https://www.twilio.com/docs/api/errors/63017).
ACCOUNT_RATE_EXCEEDED = 63017
RETRYABLE_CODES = frozenset({TOO_MANY_REQUESTS, RATE_EXCEEDED, QUEUE_FULL, ACCOUNT_RATE_EXCEEDED})
# What the usual permanent codes mean (https://www.twilio.com/docs/api/errors/<code>).
KNOWN_CODES: Mapping[int, str] = {
    20003: "authentication failed (account SID or auth token)",
    20404: "the account or resource was not found",
    21211: "invalid 'To' phone number",
    21408: "permission to send to this region is not enabled",
    21602: "the message has no body",
    21606: "the 'From' number cannot send this message",
    21610: "the recipient has unsubscribed (replied STOP)",
    21611: "the 'From' number's message queue is full",
    21612: "the 'To' number cannot be reached from the 'From' number",
    21614: "the 'To' number is not a mobile number",
    21617: "the body exceeds 1600 characters",
    21620: "invalid media URL",
    21623: "too many media URLs",
    21659: "the 'From' number is not a Twilio number of the account",
}
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")


class TwilioApi(HttpApi):
    """One Twilio REST client (one connection pool) for the process."""

    platform = "Twilio"

    async def create_message(
        self, account_sid: str, auth_token: str, form: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        """Creates a Message resource with `form` (To, From, Body,
        MediaUrl...); Twilio's answer. DeliveryError when it is refused."""
        if _ACCOUNT_SID.fullmatch(account_sid) is None:
            raise DeliveryError("the connection's account_sid is not a Twilio SID", retryable=False)
        if not auth_token:
            raise DeliveryError("the connection has no auth token", retryable=False)
        response = await self._send(
            "POST",
            f"{API_VERSION}/Accounts/{account_sid}/Messages.json",
            content=urlencode(list(form)).encode(),  # MediaUrl may repeat
            headers={"Content-Type": FORM_CONTENT_TYPE},
            auth=(account_sid, auth_token),
        )
        body = json_object(response)
        if response.status_code in (200, 201) and body is not None:
            return body
        raise twilio_error(response, body)


def twilio_error(response: httpx.Response, body: Mapping[str, Any] | None = None) -> DeliveryError:
    """What a failed REST answer means for the delivery."""
    status = response.status_code
    if body is None:
        body = json_object(response)
    code = _error_code(body)
    wait = retry_after(response.headers)
    told = f"Twilio error {code}" if code else f"Twilio answered HTTP {status}"
    if code in KNOWN_CODES:
        told += f": {KNOWN_CODES[code]}"
    if status == 429 or code in RETRYABLE_CODES:
        default_wait = QUEUE_FULL_WAIT if code == QUEUE_FULL else DEFAULT_THROTTLE_WAIT
        return DeliveryError(
            f"throttled by Twilio: {told}",
            retryable=True,
            retry_after=wait if wait is not None else default_wait,
        )
    if status >= 500:
        return DeliveryError(told, retryable=True, retry_after=wait)
    if status in (200, 201):
        # Twilio may have taken the message: retrying could send it twice.
        return DeliveryError("Twilio answered without a Message resource", retryable=False)
    return DeliveryError(told + (f" (HTTP {status})" if code else ""), retryable=False)


def _error_code(body: Mapping[str, Any] | None) -> int:
    code = body.get("code") if body is not None else None
    if isinstance(code, bool):
        return 0
    if isinstance(code, int) and 0 < code < 1_000_000:
        return code
    if isinstance(code, str) and code.isdigit() and len(code) <= 6:
        return int(code)
    return 0
