"""The W3C trace context (`traceparent`, `tracestate`) of the current span,
for a call out: gRPC metadata to the MCP engine, headers to a platform.
Nothing when no span is current (tracing off): the calls then carry no
trace headers at all."""

from __future__ import annotations

from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

W3C = TraceContextTextMapPropagator()


def trace_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span; {} without one."""
    carrier: dict[str, str] = {}
    W3C.inject(carrier)
    return carrier
