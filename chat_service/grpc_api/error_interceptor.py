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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
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
    refusing_undecodable,
    wrap_method_handler,
)

logger = logging.getLogger(__name__)


class ErrorTranslationInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """`domain` is the ErrorInfo domain of the statuses (the service's name)."""

    def __init__(self, *, domain: str) -> None:
        self._domain = domain

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return wrap_method_handler(
            refusing_undecodable(handler), partial(self._translated, handler_call_details.method)
        )

    @asynccontextmanager
    async def _translated(self, method: str, context: ServicerContext) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise  # the status is already chosen
        except ChatError as error:
            await abort_with_error(context, error, domain=self._domain)
        except NotImplementedError:
            await abort_with_status(context, unimplemented_status(domain=self._domain))
        except Exception:
            logger.exception("unexpected error in %s", method)
            await abort_with_status(context, internal_error_status(domain=self._domain))
