"""Authentication and authorization of every RPC, as a grpc.aio server interceptor.

For each call it reads `authorization: Bearer <token>`, has the
Authenticator (the JWT verifier, with its own keys or a JWKS, or the
Security Hub) say who the caller is, checks that an `x-tenant-id` entry (if
sent) names the token's tenant, has the Authenticator check that the caller
may use the method's scope, lets the optional `admit` hook (the
per-tenant rate limit) refuse the call, and then runs the handler with the
caller available as `current_principal()`. Failures end the call with the
rich status of errors.py.

Health checks, server reflection and the platform webhooks (which carry the
platform's own signature) need no token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from types import TracebackType
from typing import Any, TypeAlias

import grpc

from chat_service.auth import (
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    TOKEN_INVALID,
    TOKEN_MISSING,
    Authenticator,
    Principal,
)
from chat_service.domain.errors import ChatError, PermissionDenied, Unauthenticated
from chat_service.grpc_api.errors import abort_with_error
from chat_service.grpc_api.handler_wrapping import (
    ServicerContext,
    WrappingInterceptor,
    wrap_method_handler,
)

logger = logging.getLogger(__name__)

CHAT_SERVICE = "chatbot.chat.v1.ChatService"
TENANT_HEADER = "x-tenant-id"
TENANT_MISMATCH = "TENANT_MISMATCH"

PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
# Authenticated by the platform's signature over the body instead.
PUBLIC_METHODS = frozenset({f"/{CHAT_SERVICE}/HandleWebhook", f"/{CHAT_SERVICE}/VerifyWebhook"})
# A method missing here needs chat:write: a new RPC is closed until classified.
REQUIRED_SCOPES: Mapping[str, str] = {
    f"/{CHAT_SERVICE}/GetConversation": SCOPE_READ,
    f"/{CHAT_SERVICE}/ListConversations": SCOPE_READ,
    f"/{CHAT_SERVICE}/ListMessages": SCOPE_READ,
    f"/{CHAT_SERVICE}/ExportConversation": SCOPE_READ,
    f"/{CHAT_SERVICE}/WatchConversations": SCOPE_READ,
    f"/{CHAT_SERVICE}/SendMessage": SCOPE_WRITE,
    f"/{CHAT_SERVICE}/UpdateConversationStatus": SCOPE_WRITE,
    f"/{CHAT_SERVICE}/StreamConversation": SCOPE_WRITE,
    f"/{CHAT_SERVICE}/CreateChannelConnection": SCOPE_ADMIN,
    f"/{CHAT_SERVICE}/GetChannelConnection": SCOPE_ADMIN,
    f"/{CHAT_SERVICE}/ListChannelConnections": SCOPE_ADMIN,
    f"/{CHAT_SERVICE}/UpdateChannelConnection": SCOPE_ADMIN,
    f"/{CHAT_SERVICE}/DeleteChannelConnection": SCOPE_ADMIN,
    f"/{CHAT_SERVICE}/RetryDelivery": SCOPE_ADMIN,
}

# Called with the caller and the full method name once the call is
# authenticated; raises a ChatError (ResourceExhausted, say) to refuse it.
Admit: TypeAlias = Callable[[Principal, str], Awaitable[None]]
Metadata: TypeAlias = Sequence[tuple[str, str | bytes]]

# Set for the duration of a call. grpc.aio runs every call in a task of its
# own, and a task works on a copy of the context, so the binding ends with
# the call and is never seen by another one.
_principal: ContextVar[Principal] = ContextVar("chat_service.principal")


def current_principal() -> Principal:
    """The authenticated caller of the RPC being handled."""
    try:
        return _principal.get()
    except LookupError:
        # A bug, not a client error: a public method asked, or the
        # interceptor is not installed. Fails closed (INTERNAL).
        raise RuntimeError("no authenticated caller in this context") from None


@contextmanager
def bound_principal(principal: Principal) -> Iterator[Principal]:
    """Make `principal` the current one within the block (for direct calls and tests)."""
    token = _principal.set(principal)
    try:
        yield principal
    finally:
        _principal.reset(token)


def is_public_method(method: str) -> bool:
    """Whether `method` ("/package.Service/Method") needs no token."""
    service = method.removeprefix("/").partition("/")[0]
    return service in PUBLIC_SERVICES or method in PUBLIC_METHODS


def required_scope(method: str) -> str:
    return REQUIRED_SCOPES.get(method, SCOPE_WRITE)


class AuthInterceptor(WrappingInterceptor):
    """Authenticates each non-public call; see the module's docstring.

    `domain` is the ErrorInfo domain of its errors (the service's name).
    """

    def __init__(self, verifier: Authenticator, *, domain: str, admit: Admit | None = None) -> None:
        super().__init__()
        self._verifier = verifier
        self._domain = domain
        self._admit = admit

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if is_public_method(method):
            return handler
        return wrap_method_handler(handler, partial(_Authenticated, self, method))

    async def admit_call(self, method: str, context: ServicerContext) -> None:
        """Authenticates (and admits) the call, binding its caller; aborts it
        with the refusal's status otherwise."""
        metadata = tuple(context.invocation_metadata() or ())
        try:
            principal = await self.authenticate(method, metadata)
            if self._admit is not None:
                await self._admit(principal, method)
        except ChatError as error:
            logger.debug("refused %s: %s", method, error.reason)
            await abort_with_error(context, error, domain=self._domain)
        _principal.set(principal)

    async def authenticate(self, method: str, metadata: Metadata) -> Principal:
        """The caller of `method`, or Unauthenticated / PermissionDenied
        (Unavailable when the keys or the Security Hub cannot tell)."""
        principal = await self._verifier.authenticate(_bearer_token(metadata))
        claimed_tenants = _values(metadata, TENANT_HEADER)
        if any(tenant != principal.tenant_id for tenant in claimed_tenants):
            raise PermissionDenied(
                f"the {TENANT_HEADER} metadata names another tenant than the token",
                reason=TENANT_MISMATCH,
            )
        await self._verifier.authorize(principal, required_scope(method), method)
        return principal


class _Authenticated:
    """One call's scope: its caller authenticated on entry (a class rather
    than @asynccontextmanager: it runs on every call)."""

    __slots__ = ("_context", "_interceptor", "_method")

    def __init__(self, interceptor: AuthInterceptor, method: str, context: ServicerContext) -> None:
        self._interceptor = interceptor
        self._method = method
        self._context = context

    async def __aenter__(self) -> None:
        await self._interceptor.admit_call(self._method, self._context)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass


def _bearer_token(metadata: Metadata) -> str:
    values = _values(metadata, "authorization")
    if not values:
        raise Unauthenticated(
            "the authorization metadata must hold 'Bearer <token>'", reason=TOKEN_MISSING
        )
    if len(values) > 1:
        raise Unauthenticated("more than one authorization entry", reason=TOKEN_INVALID)
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 7235)
        raise Unauthenticated(
            "the authorization metadata must hold 'Bearer <token>'", reason=TOKEN_INVALID
        )
    if not token:
        raise Unauthenticated("the bearer token is empty", reason=TOKEN_MISSING)
    return token


def _values(metadata: Metadata, key: str) -> list[str]:
    # gRPC lower-cases metadata keys. Only -bin keys carry bytes; decoding
    # keeps a stray one comparable (and then simply not matching).
    return [
        value if isinstance(value, str) else value.decode("latin-1")
        for name, value in metadata
        if name == key
    ]
