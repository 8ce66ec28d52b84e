"""The Security Hub over gRPC (chatbot.security.v1.SecurityHubService), at
SECURITY_HUB_URL.

One long-lived channel per process, plaintext or TLS (SECURITY_HUB_TLS,
SECURITY_HUB_CA_FILE), as for the MCP engine. Every call carries a deadline
(SECURITY_HUB_TIMEOUT_MS); whatever keeps an answer from arriving in time
(the hub down or unreachable, slow past the deadline, any error status)
raises Unavailable (reason SECURITY_HUB_UNAVAILABLE): the call it was for
fails closed. The contract asks the hub to say "invalid" and "not allowed"
in its answers, never with an error status.
"""

from __future__ import annotations

import logging

import grpc
from chatbot.security.v1 import security_hub_pb2 as pb
from chatbot.security.v1 import security_hub_pb2_grpc

from adapters.grpc_channels import client_channel
from chat_service.domain.errors import Unavailable
from chat_service.ports import PermissionDecision, TokenValidation

log = logging.getLogger(__name__)

SECURITY_HUB_UNAVAILABLE = "SECURITY_HUB_UNAVAILABLE"

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # The deadline is short: a retry behind our back would only eat it.
    ("grpc.enable_retries", 0),
]


# An error status or a missed deadline (RpcError), or a channel that cannot
# take the call at all (closed at shutdown: grpc.aio's UsageError).
_NO_ANSWER = (grpc.RpcError, grpc.aio.BaseError)


class GrpcSecurityHub:
    """`tls`: callers' bearer tokens travel to the hub encrypted, and only to
    a hub whose certificate `root_certificates` (PEM; None: the system's
    roots) vouch for."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float,
        tls: bool = False,
        root_certificates: bytes | None = None,
    ) -> None:
        self._channel = client_channel(
            target,
            options=CHANNEL_OPTIONS,
            tls=tls,
            root_certificates=root_certificates,
            whose="the Security Hub's",
        )
        self._stub = security_hub_pb2_grpc.SecurityHubServiceStub(self._channel)
        self._timeout = timeout

    async def validate_token(self, token: str) -> TokenValidation:
        try:
            response: pb.ValidateTokenResponse = await self._stub.ValidateToken(
                pb.ValidateTokenRequest(token=token), timeout=self._timeout
            )
        except _NO_ANSWER as error:
            raise _unavailable("ValidateToken", error) from None
        expires_at = None
        if response.HasField("expires_at"):
            expires_at = response.expires_at.seconds + response.expires_at.nanos / 1e9
        return TokenValidation(
            valid=response.valid,
            tenant_id=response.tenant_id,
            subject=response.subject,
            scopes=frozenset(scope for scope in response.scopes if scope),
            expires_at=expires_at,
            reason=response.reason,
        )

    async def check_permission(
        self, *, subject: str, tenant_id: str, permission: str, resource: str
    ) -> PermissionDecision:
        request = pb.CheckPermissionRequest(
            subject=subject, tenant_id=tenant_id, permission=permission, resource=resource
        )
        try:
            response: pb.CheckPermissionResponse = await self._stub.CheckPermission(
                request, timeout=self._timeout
            )
        except _NO_ANSWER as error:
            raise _unavailable("CheckPermission", error) from None
        return PermissionDecision(allowed=response.allowed, reason=response.reason)

    async def close(self) -> None:
        await self._channel.close(grace=None)


def _unavailable(call: str, error: Exception) -> Unavailable:
    # The hub's own words stay in the log: they may describe its insides.
    if isinstance(error, grpc.aio.AioRpcError):
        log.warning("Security Hub %s failed: %s %s", call, error.code().name, error.details())
    else:
        log.warning("Security Hub %s failed: %s", call, error)
    return Unavailable(
        "the Security Hub cannot answer right now; try again",
        reason=SECURITY_HUB_UNAVAILABLE,
        retry_after=1.0,
    )
