"""Logging set-up: plain text for people, JSON lines for log pipelines.

A line logged while a trace is current (the call's span when tracing is
on, adapters/tracing/) carries its trace and span ids: `trace_id` and
`span_id` in JSON, ` [trace_id=... span_id=...]` at the end in text.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from opentelemetry import trace


class TraceIds(logging.Filter):
    """Sets `trace_id` and `span_id` on each record: the current span's (hex,
    as W3C traceparent writes them), or "" outside a trace. A filter, so that
    they are read in the thread and context that logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        trace_id = span_id = shown = ""
        if context.is_valid:
            trace_id = format(context.trace_id, "032x")
            span_id = format(context.span_id, "016x")
            shown = f" [trace_id={trace_id} span_id={span_id}]"
        record.__dict__.update(trace_id=trace_id, span_id=span_id, trace=shown)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            entry["trace_id"] = trace_id
            entry["span_id"] = getattr(record, "span_id", "")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    level: str, fmt: str, service_name: str, *, worker: int | None = None
) -> None:
    """`worker`: the index of a `serve --workers N` process, in every line it logs."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        name = service_name if worker is None else f"{service_name}[worker-{worker}]"
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s%(trace)s")
        )
    handler.addFilter(TraceIds())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
