"""The platforms' HTTP calls, traced (adapters/tracing/http.py through
adapters/channels/http_api.py), against a real local HTTP server: a CLIENT
span per request whose trace context the server receives, its status
recorded, and no URL query (where a platform may take a token) in it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web
from opentelemetry.trace import SpanKind, StatusCode

from adapters.channels.http_api import HttpApi
from adapters.tracing import HttpTracing
from adapters.tracing.propagation import W3C
from chat_service.ports import DeliveryError
from tests.support.emulators import EmulatorServer
from tests.support.net import free_port
from tests.support.tracing import Traces, span_id, trace_id, traceparent_ids

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Probe(HttpApi):
    platform = "the probe platform"

    async def post_item(self, path: str) -> httpx.Response:
        return await self._send("POST", path, json={"a": 1}, headers={"Authorization": "Bearer t"})


@dataclass
class Platform:
    """A local HTTP server answering `status`, recording each request's headers."""

    url: str
    status: int = 200
    seen: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    found = Platform(url="")

    async def answer(request: web.Request) -> web.Response:
        found.seen.append(dict(request.headers))
        return web.json_response({"ok": found.status < 400}, status=found.status)

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server = EmulatorServer(app)
    await server.start()
    found.url = f"{server.origin}/api"
    try:
        yield found
    finally:
        await server.stop()


async def test_a_request_is_a_client_span_the_platform_is_told_of(
    platform: Platform, traces: Traces
) -> None:
    probe = Probe(platform.url, tracing=HttpTracing(traces.tracer.otel, "probe"))
    # Under a caller's trace whose tracestate (vendor data) is not the platform's.
    caller = W3C.extract({"traceparent": CALLER, "tracestate": "vendor=internal"})
    with traces.tracer.otel.start_as_current_span("delivery", context=caller) as parent:
        response = await probe.post_item("v2/items?access_token=s3cret")
    await probe.aclose()
    assert response.status_code == 200

    span = traces.one("POST")
    assert span.kind is SpanKind.CLIENT
    assert trace_id(span) == parent.get_span_context().trace_id
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": int(platform.url.split(":")[2].split("/")[0]),
        "url.full": f"{platform.url}/v2/items",
        "chat.platform": "probe",
        "http.response.status_code": 200,
    }
    assert span.status.status_code is StatusCode.UNSET
    [headers] = platform.seen
    assert traceparent_ids(headers["traceparent"]) == (trace_id(span), span_id(span))
    assert headers["Authorization"] == "Bearer t"  # the request's own headers kept
    assert "tracestate" not in {name.lower() for name in headers}


async def test_a_refusal_marks_the_span_an_error(platform: Platform, traces: Traces) -> None:
    platform.status = 503
    probe = Probe(platform.url, tracing=HttpTracing(traces.tracer.otel, "probe"))
    response = await probe.post_item("v2/items")
    await probe.aclose()
    assert response.status_code == 503

    span = traces.one("POST")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 503
    assert span.attributes["error.type"] == "503"


async def test_an_unreachable_platform_is_an_error_span_and_a_delivery_error(
    traces: Traces,
) -> None:
    probe = Probe(
        f"http://127.0.0.1:{free_port()}/api", tracing=HttpTracing(traces.tracer.otel, "probe")
    )
    with pytest.raises(DeliveryError) as failed:
        await probe.post_item("v2/items")
    await probe.aclose()
    assert failed.value.retryable

    span = traces.one("POST")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "ConnectError"


async def test_an_untraced_client_sends_no_trace_context(
    platform: Platform, traces: Traces
) -> None:
    probe = Probe(platform.url)  # tracing off: the default
    with traces.tracer.otel.start_as_current_span("delivery"):
        await probe.post_item("v2/items")
    await probe.aclose()

    [headers] = platform.seen
    assert "traceparent" not in {name.lower() for name in headers}
    assert traces.names() == ["delivery"]
