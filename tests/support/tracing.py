"""Traces the tests read back: an SDK provider whose spans end up in the
SDK's in-memory exporter at once (a simple, not batching, processor), and
what the tests ask of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adapters.tracing import OtelTracer


@dataclass
class Traces:
    provider: TracerProvider
    exporter: InMemorySpanExporter
    tracer: OtelTracer

    @classmethod
    def start(cls) -> Traces:
        provider = TracerProvider()
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return cls(provider, exporter, OtelTracer(provider))

    def spans(self) -> Sequence[ReadableSpan]:
        return self.exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r} in {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return [span.name for span in self.spans()]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def traceparent_ids(header: str) -> tuple[int, int]:
    """(trace id, parent span id) of a W3C traceparent header."""
    version, trace, parent, flags = header.split("-")
    assert version == "00"
    assert len(trace) == 32
    assert len(parent) == 16
    assert len(flags) == 2
    return int(trace, 16), int(parent, 16)
