"""Suite-wide rules.

A skipped or xfailed test is not a passing one: the run fails if any test
was skipped, and the summary says how many ran.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.tracing import Traces

# Fixtures that start real servers (Redis, MongoDB, Kafka) on free ports.
pytest_plugins = ["tests.support.redis", "tests.support.kafka", "tests.support.mongo"]

_not_run: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _not_run.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _not_run and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    passed = len(terminalreporter.stats.get("passed", []))
    if _not_run:
        terminalreporter.write_line(
            f"FAILED: {len(_not_run)} test(s) skipped or xfailed; every test must run:",
            red=True,
        )
        for nodeid in _not_run:
            terminalreporter.write_line(f"  {nodeid}", red=True)
    else:
        terminalreporter.write_line(f"all {passed} tests ran; none skipped", green=True)


@pytest.fixture
def traces() -> Iterator[Traces]:
    """Spans read back from the SDK's in-memory exporter (tests/support/tracing.py)."""
    traces = Traces.start()
    yield traces
    traces.provider.shutdown()
