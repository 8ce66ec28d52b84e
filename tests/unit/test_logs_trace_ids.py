"""Log lines name the trace they were written in (chat_service/logs.py):
trace_id and span_id in JSON lines and at the end of text lines, read in
the context that logged; nothing of the kind outside a trace."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from chat_service.logs import configure_logging
from tests.support.tracing import Traces


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_json_line_in_a_span_carries_its_ids(
    root_logging: None, traces: Traces, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json", "chat-service")
    log = logging.getLogger("chat_service.test")
    log.info("outside")
    with traces.tracer.otel.start_as_current_span("call") as span:
        log.info("inside")
    context = span.get_span_context()

    outside, inside = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert "trace_id" not in outside
    assert "span_id" not in outside
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert inside["message"] == "inside"


def test_a_text_line_in_a_span_ends_with_its_ids(
    root_logging: None, traces: Traces, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "text", "chat-service")
    log = logging.getLogger("chat_service.test")
    log.warning("outside")
    with traces.tracer.otel.start_as_current_span("call") as span:
        log.warning("inside")
    context = span.get_span_context()

    outside, inside = capsys.readouterr().err.splitlines()
    assert outside.endswith("chat_service.test: outside")
    assert inside.endswith(
        f"chat_service.test: inside [trace_id={context.trace_id:032x} "
        f"span_id={context.span_id:016x}]"
    )
