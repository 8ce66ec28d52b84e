"""The platforms' HTTP calls, traced: a CLIENT span per request (named and
described as OpenTelemetry's HTTP conventions say), whose W3C trace context
goes in the request's headers. Used by adapters/channels/http_api.py (every
delivery) and the Bot Framework token client.

The span keeps the URL without its query (where a platform may take a
token), and the status code; never a body. A client without tracing sends
exactly the request it was given."""

from __future__ import annotations

from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from adapters.tracing.propagation import trace_headers


class HttpTracing:
    """How `platform`'s client traces its requests (`tracer` None: not at all)."""

    def __init__(self, tracer: trace.Tracer | None, platform: str) -> None:
        self._tracer = tracer
        self._platform = platform

    async def request(
        self, client: httpx.AsyncClient, method: str, url: str, **request: Any
    ) -> httpx.Response:
        """client.request(method, url, **request), in a span when traced."""
        if self._tracer is None:
            return await client.request(method, url, **request)
        target = _target(client, url)
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "server.address": target.host,
            "url.full": str(target.copy_with(query=None, fragment=None)),
            "chat.platform": self._platform,
        }
        if target.port is not None:
            attributes["server.port"] = target.port
        with self._tracer.start_as_current_span(
            method,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            headers = dict(request.pop("headers", None) or {})
            # traceparent only: a caller's tracestate (vendor data, which
            # may come from outside through the edge) is not the platform's.
            traceparent = trace_headers().get("traceparent")
            if traceparent is not None:
                headers["traceparent"] = traceparent
            try:
                response = await client.request(method, url, headers=headers, **request)
            except BaseException as error:
                # The type only: an error's text may quote the URL.
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_attribute("error.type", str(response.status_code))
                span.set_status(Status(StatusCode.ERROR))
            return response


NO_HTTP_TRACING = HttpTracing(None, "")


def _target(client: httpx.AsyncClient, url: str) -> httpx.URL:
    """The URL the request goes to: `url`, resolved against the client's
    base URL when relative (as httpx does with a base ending in /)."""
    parsed = httpx.URL(url)
    if parsed.is_relative_url and str(client.base_url):
        parsed = client.base_url.join(url)
    return parsed.copy_with(username=None, password=None)
