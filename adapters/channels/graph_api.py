"""Meta's Graph API over HTTP: the one client WhatsApp and Messenger send with.

- `GraphApi`: an http_api.HttpApi on META_GRAPH_API_BASE_URL (the real
  Graph API with a pinned version, or a local emulator in tests), the access
  token given per call as an OAuth bearer header. The Cloud API documents
  the header (https://developers.facebook.com/documentation/business-messaging/whatsapp/messages/send-messages);
  the Send API's examples pass `access_token` as a parameter, which Graph
  API takes either way: the header keeps the token out of every URL, so out
  of httpx's request log, proxies' access logs and exception texts.
- `delivery_error`: the ONE place a failed call becomes a DeliveryError,
  retryable or not, with the platform's wait when it gives one. Error codes
  from https://developers.facebook.com/docs/graph-api/guides/error-handling
  (Graph API), https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes
  (WhatsApp Cloud API) and https://developers.facebook.com/docs/messenger-platform/error-codes
  (Messenger Platform).
- `retry_after`: Retry-After, else Meta's X-Business-Use-Case-Usage.

No token ever reaches a log line or an exception: the classification quotes
only Meta's error code and title, with any token that Meta's text might
echo (old "Malformed access token ..." answers did) redacted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from adapters.channels import http_api
from adapters.channels.http_api import HttpApi, bearer, bounded_wait, json_object, redact
from chat_service.ports import DeliveryError

# Throttling: the call may succeed later. Each with the wait to use when the
# answer names none (Retry-After, X-Business-Use-Case-Usage).
THROTTLING_BACKOFF: Mapping[int, float] = {
    # Graph API "API Too Many Calls", "API User Too Many Calls", "Page
    # request limit reached": rolling one-hour windows
    # (https://developers.facebook.com/docs/graph-api/overview/rate-limiting/).
    4: 60.0,
    17: 60.0,
    32: 60.0,
    # "Calls to this API have exceeded the rate limit" (Messenger error codes).
    613: 60.0,
    # WhatsApp Business Account rate limit (WhatsApp error codes, "Throttling errors").
    80007: 60.0,
    # Cloud API throughput reached: 80 mps by default per number
    # (https://developers.facebook.com/documentation/business-messaging/whatsapp/throughput).
    130429: 1.0,
    # Pair rate limit: too many messages to the same user in a short time;
    # roughly one message every 6 seconds per pair (same throughput page).
    131056: 6.0,
}

# Temporary failures Meta asks to retry (no wait named).
TRANSIENT_CODES = frozenset(
    {
        1,  # "API Unknown": possibly a temporary issue due to downtime (Graph API)
        2,  # "API Service": temporary issue due to downtime (Graph API)
        1200,  # "Temporary send message failure. Please try again later." (Messenger)
        131000,  # "Something went wrong" (WhatsApp; retry documented)
        131016,  # "Service unavailable" (WhatsApp)
        133004,  # "Server temporarily unavailable" (WhatsApp)
    }
)

# Documented permanent errors, with their titles for answers whose message
# is empty. Any other error code is permanent too unless the HTTP status
# says otherwise (5xx, 429).
PERMANENT_TITLES: Mapping[int, str] = {
    0: "AuthException",
    3: "API Method",
    10: "Permission denied",  # Messenger 10/2018278: outside the allowed window
    100: "Invalid parameter",
    190: "Access token has expired",
    200: "Permission error",
    368: "Temporarily blocked for policies violations",
    551: "This person isn't available right now",  # Messenger
    131008: "Required parameter is missing",
    131009: "Parameter value is not valid",
    131021: "Recipient cannot be sender",
    131026: "Message undeliverable",
    131030: "Recipient phone number not in allowed list",
    131031: "Business account locked",
    131047: "Re-engagement message",  # more than 24 hours since the user's last message
    131051: "Unsupported message type",
    131052: "Media download error",
    131053: "Media upload error",
}

_TITLE_PREFIX = re.compile(r"^\(#\d+\)\s*")
# Graph API access tokens: "EAA..." (user, page, system user) among others;
# any long run of token characters in an error text is treated as one.
_TOKENISH = re.compile(r"\bEA[A-Za-z0-9]{20,}\b")


class GraphApi(HttpApi):
    """One platform's Graph API client (one connection pool per platform, so
    that one platform's outage cannot exhaust another's connections)."""

    platform = "the Graph API"

    async def post(self, path: str, payload: Mapping[str, Any], *, token: str) -> dict[str, Any]:
        """POST `payload` as JSON to `path` (relative to the base URL); the
        answer's JSON object. Raises DeliveryError for anything else."""
        return await self._call("POST", path, token=token, payload=payload)

    async def get(self, path: str, *, token: str) -> dict[str, Any]:
        return await self._call("GET", path, token=token)

    async def _call(
        self, method: str, path: str, *, token: str, payload: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        if not token:
            raise DeliveryError("the connection has no access token", retryable=False)
        response = await self._send(method, path.lstrip("/"), json=payload, headers=bearer(token))
        if response.is_success:
            body = json_object(response)
            if body is None:
                # Meta took the call: retrying could send the message twice.
                raise DeliveryError(
                    f"the Graph API answered HTTP {response.status_code} without a JSON object",
                    retryable=False,
                )
            return body
        raise delivery_error(response, token=token)


def path_segment(value: str) -> str:
    """An id as one URL path segment (ids are digits; quoted all the same,
    so a stored value can never reach another endpoint)."""
    return quote(value, safe="")


# ----------------------------------------------------------- classification


@dataclass(frozen=True, slots=True)
class GraphError:
    """The `error` object of a Graph API answer."""

    code: int | None
    subcode: int | None
    title: str

    def describe(self, status: int) -> str:
        if self.code is None:
            return f"HTTP {status}" + (f": {self.title}" if self.title else "")
        text = f"{self.code}: {self.title or PERMANENT_TITLES.get(self.code, 'error')}"
        return text + (f" (subcode {self.subcode})" if self.subcode else "")


def delivery_error(
    response: httpx.Response, *, token: str = "", now: datetime | None = None
) -> DeliveryError:
    """What a failed Graph API answer means for the delivery: retryable
    (throttled, temporary, 5xx) with the wait Meta names, or permanent with
    "code: title" as the reason."""
    error = graph_error(response, token=token)
    status = response.status_code
    detail = error.describe(status)
    wait = retry_after(response.headers, now=now)
    code = error.code
    if code in THROTTLING_BACKOFF or status == 429:  # a 429 is throttling, whatever the code
        default = THROTTLING_BACKOFF.get(code, 1.0) if code is not None else 1.0
        return DeliveryError(
            f"throttled by the Graph API: {detail}",
            retryable=True,
            retry_after=wait if wait is not None else default,
        )
    if code in TRANSIENT_CODES:
        return DeliveryError(detail, retryable=True, retry_after=wait)
    if status >= 500 and (code is None or code not in PERMANENT_TITLES):
        return DeliveryError(detail, retryable=True, retry_after=wait)
    return DeliveryError(detail, retryable=False)


def graph_error(response: httpx.Response, *, token: str = "") -> GraphError:
    body = json_object(response)
    raw = body.get("error") if body is not None else None
    if not isinstance(raw, dict):
        return GraphError(code=None, subcode=None, title=response.reason_phrase)
    message = raw.get("message")
    title = _TITLE_PREFIX.sub("", message) if isinstance(message, str) else ""
    return GraphError(
        code=_integer(raw.get("code")),
        subcode=_integer(raw.get("error_subcode")),
        title=redact(title, token, patterns=(_TOKENISH,)),
    )


def retry_after(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """The wait the answer asks for, in seconds: `Retry-After` (seconds or an
    HTTP date, RFC 9110 10.2.3), else the longest
    `estimated_time_to_regain_access` (minutes) of `X-Business-Use-Case-Usage`
    (https://developers.facebook.com/docs/graph-api/overview/rate-limiting/);
    None when neither names one."""
    wait = http_api.retry_after(headers, now=now)
    if wait is not None:
        return wait
    minutes = _regain_access_minutes(headers.get("x-business-use-case-usage", ""))
    if minutes:
        return bounded_wait(minutes * 60.0)
    return None


def _regain_access_minutes(header: str) -> float:
    """{"<business id>": [{"type": ..., "estimated_time_to_regain_access": 5}, ...]}"""
    if not header:
        return 0.0
    try:
        usage = json.loads(header)
    except ValueError:
        return 0.0
    longest = 0.0
    if isinstance(usage, dict):
        for entries in usage.values():
            for entry in entries if isinstance(entries, list) else ():
                if isinstance(entry, dict):
                    minutes = entry.get("estimated_time_to_regain_access")
                    if isinstance(minutes, (int, float)) and math.isfinite(minutes):
                        longest = max(longest, float(minutes))
    return longest


def _integer(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():  # "131056" seen in the wild
        return int(value)
    return None
