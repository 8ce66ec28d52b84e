"""Run a grpc.aio method handler, of any of the four kinds, inside a scope.

The server interceptors (tracing, metrics, error translation,
authentication; WrappingInterceptor is their base) do their work
by wrapping the handler's behaviour rather than in `intercept_service`:
the scope then runs in the task that runs the handler, so a context
variable it sets is the handler's, and whatever the handler raises passes
through it, for streaming handlers too, while they iterate.

A scope is an async context manager made per call from the call's
ServicerContext. Request deserializers and response serializers are kept.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from chat_service.domain.errors import InvalidArgument

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


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A server interceptor that runs the calls of the methods it covers
    inside scopes of its own: subclasses say how in `wrap`.

    A method's handler is wrapped once, on its first call, not on every
    call: a scope depends on the method alone (what a call brings, its
    metadata, reaches the scope through its context). Kept by method and
    checked by the handler's identity; only methods a handler serves get
    here, a fixed set. Methods no handler serves are left to grpc
    (UNIMPLEMENTED), never wrapped: their names come from the caller.
    """

    def __init__(self) -> None:
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` of `method` ("/package.Service/Method") as this
        interceptor runs it (`handler` itself for a method it leaves alone)."""
        raise NotImplementedError

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
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


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


# ------------------------------------------------------- undecodable requests


class _Undecodable:
    """What a request that protobuf could not parse becomes."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def refusing_undecodable(
    handler: grpc.RpcMethodHandler[Any, Any],
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler, with a request that cannot be parsed (truncated,
    nested past protobuf's depth limit, ...) refused as INVALID_ARGUMENT.

    grpc answers a deserializer's exception with UNKNOWN and the exception's
    text; here the deserializer hands back a marker instead, and the
    behaviour raises a ChatError for the error interceptor to translate.
    """
    deserialize = handler.request_deserializer
    if deserialize is None:
        return handler

    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as error:
            return _Undecodable(error)

    def check(request: Any) -> Any:
        if isinstance(request, _Undecodable):
            raise InvalidArgument.of("request", "is not a valid protobuf message of this method")
        return request

    async def checked(requests: AsyncIterable[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            yield check(request)

    replaced = handler._replace(request_deserializer=tolerant)  # type: ignore[attr-defined]
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary
        return replaced._replace(  # type: ignore[no-any-return]
            unary_unary=lambda request, context: inner_uu(check(request), context)
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream
        return replaced._replace(  # type: ignore[no-any-return]
            unary_stream=lambda request, context: inner_us(check(request), context)
        )
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary
        return replaced._replace(  # type: ignore[no-any-return]
            stream_unary=lambda requests, context: inner_su(checked(requests), context),  # type: ignore[arg-type]
        )
    if handler.stream_stream is not None:
        inner_ss = handler.stream_stream
        return replaced._replace(  # type: ignore[no-any-return]
            stream_stream=lambda requests, context: inner_ss(checked(requests), context),  # type: ignore[arg-type]
        )
    return handler
