"""The Tracer port (chat_service/ports.py) with an OpenTelemetry tracer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from chat_service.ports import SpanAttributes, SpanValue

INSTRUMENTATION = "chat_service"


class _OtelSpan:
    __slots__ = ("_span", "failed")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self.failed = False

    def set(self, key: str, value: SpanValue) -> None:
        self._span.set_attribute(key, value)

    def fail(self, description: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, description))
        self.failed = True


class OtelTracer:
    """Tracer: spans of `provider`'s tracer, the pipeline's steps INTERNAL."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.otel = provider.get_tracer(INSTRUMENTATION)

    def span(
        self, name: str, attributes: SpanAttributes | None = None, *, origin: object = None
    ) -> AbstractContextManager[_OtelSpan]:
        parent = origin if isinstance(origin, otel_context.Context) else None
        return self._span(name, attributes, parent)

    @contextmanager
    def _span(
        self, name: str, attributes: SpanAttributes | None, parent: otel_context.Context | None
    ) -> Iterator[_OtelSpan]:
        with self.otel.start_as_current_span(
            name,
            context=parent,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            step = _OtelSpan(span)
            try:
                yield step
            except Exception as error:
                if not step.failed:
                    # The type only: an exception's text may quote user input.
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise

    def capture(self) -> object:
        if not trace.get_current_span().get_span_context().is_valid:
            return None
        return otel_context.get_current()
