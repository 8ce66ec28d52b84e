"""Run a grpc.aio method handler, of any of the four kinds, inside a scope.

The server interceptors (authentication, error translation) do their work
by wrapping the handler's behaviour rather than in `intercept_service`:
the scope then runs in the task that runs the handler, so a context
variable it sets is the handler's, and whatever the handler raises passes
through it, for streaming handlers too, while they iterate.

A scope is an async context manager made per call from the call's
ServicerContext. Request deserializers and response serializers are kept.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any, TypeAlias

import grpc

ServicerContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]
CallScope: TypeAlias = Callable[[ServicerContext], AbstractAsyncContextManager[None]]
# A handler's behaviour: (request or request iterator, context) -> response(s).
# Loosely typed: grpc-stubs describe the synchronous server's handlers.
_Behaviour: TypeAlias = Callable[..., Any]


def wrap_method_handler(
    handler: grpc.RpcMethodHandler[Any, Any], scope: CallScope
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler, its behaviour running inside `scope(context)`."""
    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _single_response(handler.unary_unary, scope), **options
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _response_stream(handler.unary_stream, scope), **options
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _single_response(handler.stream_unary, scope), **options
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _response_stream(handler.stream_stream, scope), **options
        )
    return handler


def _single_response(behaviour: _Behaviour, scope: CallScope) -> _Behaviour:
    async def behaviour_in_scope(request: Any, context: ServicerContext) -> Any:
        async with scope(context):
            response = behaviour(request, context)
            # grpc.aio also accepts plain functions (the generated servicer
            # base class's UNIMPLEMENTED stubs are ones).
            if inspect.isawaitable(response):
                response = await response
            return response

    return behaviour_in_scope


def _response_stream(
    behaviour: _Behaviour, scope: CallScope
) -> Callable[[Any, ServicerContext], AsyncIterator[Any]]:
    async def behaviour_in_scope(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
        async with scope(context):
            responses = behaviour(request, context)
            if isinstance(responses, AsyncGenerator):
                # Closed here, in this task, if the call ends early.
                async with aclosing(responses):
                    async for response in responses:
                        yield response
            elif isinstance(responses, AsyncIterable):
                async for response in responses:
                    yield response
            elif inspect.isawaitable(responses):
                # A coroutine handler that writes with context.write().
                await responses
            else:
                for response in responses:
                    yield response

    return behaviour_in_scope
