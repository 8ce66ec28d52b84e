"""Counts and times every RPC, as a grpc.aio server interceptor: started,
handled by status code, and the handling time (the Metrics port; names
and labels go-grpc-prometheus's, see adapters/metrics/prometheus.py).

Install it first (outermost), before the ErrorTranslationInterceptor: it
then sees the status the caller gets, also for calls the AuthInterceptor
refuses (UNAUTHENTICATED, RESOURCE_EXHAUSTED). Streams count once, from
their start to their status (a stream the client cancels ends CANCELLED,
one past the client's deadline DEADLINE_EXCEEDED).
Methods no handler serves are left to grpc (UNIMPLEMENTED) and not counted:
their names come from the caller and would be unbounded labels.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from types import TracebackType
from typing import Any

import grpc

from chat_service.grpc_api.handler_wrapping import (
    ServicerContext,
    WrappingInterceptor,
    wrap_method_handler,
)
from chat_service.ports import Metrics

_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def rpc_kind(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    """go-grpc-prometheus's grpc_type of a handler."""
    if handler.unary_unary is not None:
        return "unary"
    if handler.unary_stream is not None:
        return "server_stream"
    if handler.stream_unary is not None:
        return "client_stream"
    return "bidi_stream"


def split_method(method: str) -> tuple[str, str]:
    """("package.Service", "Method") of "/package.Service/Method"."""
    service, _, name = method.removeprefix("/").rpartition("/")
    return service, name


def status_name(code: Any) -> str:
    """The name of a status as ServicerContext.code() gives it (a StatusCode,
    its integer, or None: not set, which ends the call OK)."""
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    found = _CODES_BY_VALUE.get(code)
    return found.name if found is not None else "UNKNOWN"


# The server's deadline is the client's, counted from when the call arrived:
# it runs out later than the client's by the time the call took to arrive
# (more on a loaded machine). A client whose deadline passed cancels the call,
# so the cancel can reach the handler while the server's own deadline is
# still that much ahead.
_DEADLINE_SKEW_SECONDS = 0.5


def _past_deadline(context: ServicerContext) -> bool:
    """Whether the call had a deadline and it has passed, as the client saw
    it (time_remaining() is None without one, and never below 0)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= _DEADLINE_SKEW_SECONDS


def ended_with(kind: type[BaseException] | None, context: ServicerContext) -> str:
    """The status (its name) a call ends with, from how its handler ended:
    normally or by abort (the code it set), cancelled, or by an exception."""
    if kind is None or issubclass(kind, grpc.aio.AbortError):
        return status_name(context.code())
    if issubclass(kind, (asyncio.CancelledError, GeneratorExit)):
        # The caller went away (a stream closed from its side), or its
        # deadline passed: grpc cancels the handler either way, and the
        # caller gets DEADLINE_EXCEEDED for the latter.
        return "DEADLINE_EXCEEDED" if _past_deadline(context) else "CANCELLED"
    # grpc answers an exception that escaped every interceptor so.
    return "UNKNOWN"


class MetricsInterceptor(WrappingInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service, name = split_method(method)
        return wrap_method_handler(
            handler, partial(_Measured, self._metrics, service, name, rpc_kind(handler))
        )


class _Measured:
    """One call's scope: started on entry; handled, with the status the
    call ends with, on exit. A class rather than @asynccontextmanager: it
    runs on every call, and this is half the cost."""

    __slots__ = ("_context", "_kind", "_method", "_metrics", "_service", "_started")

    def __init__(
        self, metrics: Metrics, service: str, method: str, kind: str, context: ServicerContext
    ) -> None:
        self._metrics = metrics
        self._service = service
        self._method = method
        self._kind = kind
        self._context = context
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._metrics.rpc_started(self._service, self._method, self._kind)
        self._started = time.monotonic()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        code = ended_with(kind, self._context)
        elapsed = time.monotonic() - self._started
        self._metrics.rpc_handled(self._service, self._method, self._kind, code, elapsed)
