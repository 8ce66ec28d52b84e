"""Turns what handlers raise into gRPC statuses, as a grpc.aio server interceptor.

A ChatError becomes its rich status (errors.to_status); NotImplementedError
(the generated servicer base class raises it) becomes UNIMPLEMENTED; any
other exception is logged with its traceback and becomes a generic
INTERNAL. Statuses a handler set itself with context.abort() pass
through. It covers streaming handlers too, including errors raised after
some responses were sent.

Install it first (outermost), before the AuthInterceptor:
`grpc.aio.server(interceptors=[ErrorTranslationInterceptor(...), AuthInterceptor(...)])`.
"""

from __future__ import annotations

import logging
from functools import partial
from types import TracebackType
from typing import Any

import grpc

from chat_service.domain.errors import ChatError
from chat_service.grpc_api.errors import (
    abort_with_error,
    abort_with_status,
    internal_error_status,
    unimplemented_status,
)
from chat_service.grpc_api.handler_wrapping import (
    ServicerContext,
    WrappingInterceptor,
    refusing_undecodable,
    wrap_method_handler,
)

logger = logging.getLogger(__name__)


class ErrorTranslationInterceptor(WrappingInterceptor):
    """`domain` is the ErrorInfo domain of the statuses (the service's name)."""

    def __init__(self, *, domain: str) -> None:
        super().__init__()
        self._domain = domain

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return wrap_method_handler(
            refusing_undecodable(handler), partial(_Translated, self._domain, method)
        )


class _Translated:
    """One call's scope: what escapes the handler becomes its status. A
    class rather than @asynccontextmanager: it runs on every call."""

    __slots__ = ("_context", "_domain", "_method")

    def __init__(self, domain: str, method: str, context: ServicerContext) -> None:
        self._domain = domain
        self._method = method
        self._context = context

    async def __aenter__(self) -> None:
        pass

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if error is None or isinstance(error, grpc.aio.AbortError):
            return  # the status is already chosen
        if isinstance(error, ChatError):
            await abort_with_error(self._context, error, domain=self._domain)
        elif isinstance(error, NotImplementedError):
            await abort_with_status(self._context, unimplemented_status(domain=self._domain))
        elif isinstance(error, Exception):
            logger.exception("unexpected error in %s", self._method, exc_info=error)
            await abort_with_status(self._context, internal_error_status(domain=self._domain))
        # Anything else (a cancellation) goes on as it is.
