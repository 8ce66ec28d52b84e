"""What the platforms' HTTP clients share (graph_api.py, slack_api.py,
teams_send.py's ConnectorApi; twilio_api.py can use it the same way):

- `HttpApi`: one httpx.AsyncClient per platform (one connection pool, so one
  platform's outage cannot exhaust another's connections) that never
  follows a redirect (a bearer token or password must never go to a host
  the configuration does not name) and asks for JSON. Its `_send` turns a
  timeout or a connection failure into a retryable DeliveryError naming
  the platform and the error's type only (never the URL, which may carry
  ids, nor the request). With `tracing`, each request is a client span
  whose trace context the platform gets (adapters/tracing/http.py).
- `retry_after`: the `Retry-After` header (RFC 9110 10.2.3: seconds or an
  HTTP date), bounded.
- `json_object`: an answer's JSON object, or None.
- `redact`: a platform's text as a dead letter or a log line may keep it.

What a failed answer MEANS (retryable or not, after how long) stays with
each platform: their error bodies and codes have nothing in common.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx

from adapters.tracing.http import NO_HTTP_TRACING, HttpTracing
from chat_service.ports import DeliveryError

# Long enough for a platform on a bad day, short enough that the delivery
# queue's own attempt timeout (30 s, pipeline/delivery.py) never fires first.
DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
# Whatever a platform asks, a wait past this is not honoured as such: the
# queue's own backoff and attempts decide, and a dead letter can be retried.
MAX_RETRY_AFTER = 3600.0
# How much of a platform's error text a dead letter keeps.
MAX_REASON_LENGTH = 200

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class HttpApi:
    """A platform's HTTP API client. Subclasses name the platform as error
    texts should (`platform = "the Graph API"`) and add its calls."""

    platform: ClassVar[str]

    def __init__(
        self,
        base_url: str = "",
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        tracing: HttpTracing = NO_HTTP_TRACING,
    ) -> None:
        self._tracing = tracing
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/" if base_url else "",
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            transport=transport,
            # Never follow a redirect with the credentials to another host.
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )

    async def _send(self, method: str, url: str, **request: Any) -> httpx.Response:
        """The platform's answer, whatever its status; DeliveryError
        (retryable) when there is none."""
        with unreachable_as_delivery_error(self.platform):
            return await self._tracing.request(self._client, method, url, **request)

    async def aclose(self) -> None:
        await self._client.aclose()


@contextlib.contextmanager
def unreachable_as_delivery_error(platform: str) -> Iterator[None]:
    """A call that got no answer (timed out; refused, reset, a protocol
    error) as a retryable DeliveryError: the platform may well have done
    nothing. The reason names `platform` and the error's type only."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise DeliveryError(
            f"{platform} did not answer in time ({type(error).__name__})", retryable=True
        ) from None
    except httpx.RequestError as error:
        raise DeliveryError(
            f"{platform} could not be reached ({type(error).__name__})", retryable=True
        ) from None


def bearer(token: str) -> dict[str, str]:
    """The OAuth bearer header: tokens go in a header, never in a URL (so
    never in httpx's request log, a proxy's access log or an exception)."""
    return {"Authorization": f"Bearer {token}"}


def retry_after(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """The `Retry-After` wait in seconds (a number of seconds, or an HTTP
    date), at least 0 and at most MAX_RETRY_AFTER; None when absent or not
    understood."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    seconds = _number(value)
    if seconds is None:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return bounded_wait(seconds)


def bounded_wait(seconds: float) -> float:
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's JSON object; None for anything else (not JSON, not
    UTF-8, an array...)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def redact(text: str, *secrets: str, patterns: Iterable[re.Pattern[str]] = ()) -> str:
    """A platform's text as a dead letter or a log may keep it: no secret
    (nor anything matching `patterns`, what a platform's tokens look like),
    no control characters, at most MAX_REASON_LENGTH characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    for pattern in patterns:
        text = pattern.sub("[redacted]", text)
    text = _CONTROL.sub(" ", text).strip()
    if len(text) > MAX_REASON_LENGTH:
        text = text[: MAX_REASON_LENGTH - 1] + "…"
    return text


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
