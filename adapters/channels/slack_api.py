"""Slack's Web API over HTTP: the client the Slack sender posts with.

- `SlackWebApi`: an http_api.HttpApi on SLACK_API_BASE_URL
  (https://slack.com/api, or a local emulator in tests). Methods are POSTed
  as JSON (`Content-type: application/json; charset=utf-8`) with the bot
  token as an OAuth bearer header, as Slack documents for write methods
  (https://docs.slack.dev/apis/web-api/#posting_json): the token stays out
  of every URL and body, so out of logs and exception texts.
- `slack_error`: the ONE place a failed call becomes a DeliveryError. Slack
  answers most errors with HTTP 200 and `{"ok": false, "error": "<code>"}`
  (same page, "Evaluating responses"); rate limits with HTTP 429, a
  `Retry-After` header in seconds and `ratelimited`
  (https://docs.slack.dev/apis/web-api/rate-limits). Throttling and
  Slack's own temporary failures are retryable, 5xx and timeouts too;
  every other error code is permanent, with the code as the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from adapters.channels.http_api import HttpApi, bearer, json_object, retry_after
from chat_service.ports import DeliveryError

# The wait when a throttled answer names none: chat.postMessage allows about
# one message per second per channel (rate-limits page, "Posting messages").
DEFAULT_THROTTLE_WAIT = 1.0

# Throttled: `ratelimited` with HTTP 429 (rate-limits page); `rate_limited`
# is chat.postMessage's own "Application has posted too many messages"
# (https://docs.slack.dev/reference/methods/chat.postMessage, "Errors").
THROTTLED = frozenset({"ratelimited", "rate_limited"})
# Slack's own temporary failures (the Web API's common errors): try again.
TRANSIENT = frozenset(
    {
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",  # "temporarily paused while the workspace migrates"
    }
)
# Every other code is permanent: the token or the place is wrong until
# someone acts (channel_not_found, not_in_channel, is_archived, invalid_auth,
# not_authed, account_inactive, token_revoked, missing_scope, msg_too_long,
# invalid_blocks...), and the code is the dead letter's reason.
_ERROR_CODE = re.compile(r"[a-z0-9_]{1,64}")


class SlackWebApi(HttpApi):
    """One Slack Web API client (one connection pool) for the process."""

    platform = "Slack"

    async def call(self, method: str, payload: Mapping[str, Any], *, token: str) -> dict[str, Any]:
        """POST `payload` as JSON to the Web API `method` ("chat.postMessage");
        Slack's answer when `ok` is true. Raises DeliveryError otherwise."""
        if not token:
            raise DeliveryError("the connection has no bot token", retryable=False)
        response = await self._send(
            "POST",
            method,
            json=dict(payload),
            headers=bearer(token) | {"Content-Type": "application/json; charset=utf-8"},
        )
        body = json_object(response)
        if response.status_code == 200 and body is not None and body.get("ok") is True:
            return body
        raise slack_error(response, body)


def slack_error(response: httpx.Response, body: Mapping[str, Any] | None = None) -> DeliveryError:
    """What a failed Web API answer means for the delivery."""
    status = response.status_code
    if body is None:
        body = json_object(response)
    code = _error_code(body)
    wait = retry_after(response.headers)
    if status == 429 or code in THROTTLED:
        return DeliveryError(
            f"throttled by Slack: {code or f'HTTP {status}'}",
            retryable=True,
            retry_after=wait if wait is not None else DEFAULT_THROTTLE_WAIT,
        )
    if code in TRANSIENT:
        return DeliveryError(f"Slack error: {code}", retryable=True, retry_after=wait)
    if status >= 500:
        return DeliveryError(
            f"Slack answered HTTP {status}" + (f": {code}" if code else ""),
            retryable=True,
            retry_after=wait,
        )
    if status == 200 and code:
        return DeliveryError(f"Slack error: {code}", retryable=False)
    if status == 200:
        # Slack may have posted the message: retrying could post it twice.
        return DeliveryError("Slack answered HTTP 200 without `ok: true`", retryable=False)
    return DeliveryError(
        f"Slack answered HTTP {status}" + (f": {code}" if code else ""), retryable=False
    )


def _error_code(body: Mapping[str, Any] | None) -> str:
    """Slack's error code, only when it looks like one (it is quoted in a
    dead letter: never free text from the answer)."""
    code = body.get("error") if body is not None else None
    if isinstance(code, str) and _ERROR_CODE.fullmatch(code):
        return code
    return ""
