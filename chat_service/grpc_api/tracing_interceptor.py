"""A SERVER span per RPC, as a grpc.aio server interceptor (on when
tracing is: OTEL_EXPORTER_OTLP_ENDPOINT).

The caller's W3C trace context (`traceparent`, `tracestate` metadata; the
Envoy edge passes HTTP headers on as metadata) makes the span its child;
without one, or with one that does not parse, the span starts a trace.
The span is current while the handler runs, so the pipeline's step spans,
the engine call and the log lines of the call belong to it. Named and
described as OpenTelemetry's RPC conventions say (`package.Service/Method`,
rpc.system/service/method, rpc.grpc.status_code); a status the server is
to blame for (UNKNOWN, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED,
UNIMPLEMENTED, DATA_LOSS) marks it an error. Streams are one span, from
their start to their status.

Installed outermost, like the metrics interceptor: refusals by the
authentication interceptor are traced too. Methods no handler serves are
left to grpc and not traced (their names come from the caller), nor are
health checks and reflection.
"""

from __future__ import annotations

import asyncio
from functools import partial
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from chat_service.grpc_api.handler_wrapping import (
    ServicerContext,
    WrappingInterceptor,
    wrap_method_handler,
)
from chat_service.grpc_api.metrics_interceptor import ended_with, split_method

_W3C = TraceContextTextMapPropagator()
_TRACE_KEYS = frozenset({"traceparent", "tracestate"})
_CODES_BY_NAME = {code.name: code.value[0] for code in grpc.StatusCode}
# OpenTelemetry's RPC conventions: the codes that are the server's fault.
SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
# Not traced: the probes (Kubernetes and Envoy check health every few
# seconds: a trace each would bury the calls) and grpcurl's reflection.
UNTRACED_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)


class TracingInterceptor(WrappingInterceptor):
    def __init__(self, tracer: trace.Tracer) -> None:
        super().__init__()
        self._tracer = tracer

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service, name = split_method(method)
        if service in UNTRACED_SERVICES:
            return handler
        return wrap_method_handler(handler, partial(_Traced, self._tracer, service, name))


def caller_context(metadata: Any) -> otel_context.Context:
    """The trace context the caller sent in `metadata` (an empty one when none)."""
    carrier = {
        key: value
        for key, value in (metadata or ())
        if key in _TRACE_KEYS and isinstance(value, str)
    }
    return _W3C.extract(carrier) if carrier else otel_context.Context()


class _Traced:
    """One call's span: started and made current on entry; its status set
    and ended on exit."""

    __slots__ = ("_context", "_method", "_service", "_span", "_task", "_token", "_tracer")

    def __init__(
        self, tracer: trace.Tracer, service: str, method: str, context: ServicerContext
    ) -> None:
        self._tracer = tracer
        self._service = service
        self._method = method
        self._context = context
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: object = None
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> None:
        self._span = self._tracer.start_span(
            f"{self._service}/{self._method}",
            context=caller_context(self._context.invocation_metadata()),
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": self._service,
                "rpc.method": self._method,
            },
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        self._task = asyncio.current_task()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            code = ended_with(kind, self._context)
            span.set_attribute("rpc.grpc.status_code", _CODES_BY_NAME.get(code, 2))
            if code in SERVER_ERRORS:
                # The code only: a status's details may quote the request.
                escaped = error is not None and not isinstance(error, grpc.aio.AbortError)
                described = f"{code}: {type(error).__name__}" if escaped else code
                span.set_status(Status(StatusCode.ERROR, described))
        finally:
            # A response stream cancelled while grpc.aio writes is closed
            # later, from another task: the attach was in the handler's task,
            # whose context ends with it; detaching there would fail.
            if asyncio.current_task() is self._task:
                otel_context.detach(self._token)  # type: ignore[arg-type]
            span.end()
