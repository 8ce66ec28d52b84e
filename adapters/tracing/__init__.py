"""Traces over OTLP (OpenTelemetry), off unless an endpoint is configured:
the Tracer port (tracer.py), the SDK set up and shut down (provider.py),
the engine's calls as client spans (engine.py), lock waits (locks.py), and the W3C trace context
passed on to the MCP engine and the platforms' HTTP APIs (propagation.py,
http.py). The gRPC server's spans are grpc_api/tracing_interceptor.py's."""

from adapters.tracing.engine import TracedEngine
from adapters.tracing.http import HttpTracing
from adapters.tracing.locks import TracedLocks
from adapters.tracing.propagation import trace_headers
from adapters.tracing.provider import TracingSettings, open_tracer_provider, shut_down
from adapters.tracing.tracer import OtelTracer

__all__ = [
    "HttpTracing",
    "OtelTracer",
    "TracedEngine",
    "TracedLocks",
    "TracingSettings",
    "open_tracer_provider",
    "shut_down",
    "trace_headers",
]
