"""A real OTLP/gRPC trace receiver for tests: the TraceService an
OpenTelemetry collector serves (opentelemetry-proto's), on a loopback
port, recording every span it is sent with its resource, for assertions.
Point a service at it with OTEL_EXPORTER_OTLP_ENDPOINT=`endpoint`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.support.grpc_stub_server import serving

AttributeValue = str | bool | int | float | None


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One exported span; ids in lower-case hex, as W3C traceparent writes
    them ("" for no parent)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: Span.SpanKind.ValueType
    attributes: Mapping[str, AttributeValue]
    status: Status.StatusCode.ValueType
    resource: Mapping[str, AttributeValue]
    scope: str


class TraceCollector:
    """What the receiver has been sent, in arrival order."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []

    def record(self, request: pb.ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            attributes=_attributes(span.attributes),
                            status=span.status.code,
                            resource=resource,
                            scope=scope_spans.scope.name,
                        )
                    )

    def in_trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    async def wait_for(
        self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = 15.0
    ) -> list[ReceivedSpan]:
        """Polls until `done` holds for the spans received so far (the
        service exports in batches, in the background); all of them."""
        deadline = time.monotonic() + timeout
        while not done(self.spans):
            if time.monotonic() > deadline:
                names = [(s.name, s.trace_id) for s in self.spans]
                raise AssertionError(f"spans not received within {timeout}s; got {names}")
            await asyncio.sleep(0.05)
        return list(self.spans)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: TraceCollector) -> None:
        self._collector = collector

    async def Export(
        self, request: pb.ExportTraceServiceRequest, context: Any
    ) -> pb.ExportTraceServiceResponse:
        self._collector.record(request)
        return pb.ExportTraceServiceResponse()


@asynccontextmanager
async def running_collector(port: int) -> AsyncIterator[TraceCollector]:
    """A trace receiver on 127.0.0.1:port (plaintext: http://) until the block ends."""
    collector = TraceCollector()
    async with serving(
        lambda server: trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(collector), server
        ),
        port,
    ):
        yield collector


def _attributes(pairs: Any) -> dict[str, AttributeValue]:
    found: dict[str, AttributeValue] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        found[pair.key] = _value(pair.value)
    return found


def _value(value: AnyValue) -> AttributeValue:
    kind = value.WhichOneof("value")
    if kind in {"string_value", "bool_value", "int_value", "double_value"}:
        scalar: AttributeValue = getattr(value, kind)
        return scalar
    return None  # arrays, maps and bytes: the service sets none
