"""A real Security Hub gRPC server for tests (chatbot.security.v1), whose
answers the test steers and whose calls it counts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from chatbot.security.v1 import security_hub_pb2 as pb
from chatbot.security.v1 import security_hub_pb2_grpc

from tests.support.grpc_stub_server import serving


@dataclass(frozen=True)
class Identity:
    tenant_id: str
    subject: str
    scopes: tuple[str, ...]
    expires_at: float | None  # epoch seconds; None: the hub does not say


@dataclass
class HubBehaviour:
    """The tokens the hub knows, the permissions it grants, how it fails,
    and the calls it received."""

    identities: dict[str, Identity] = field(default_factory=dict)
    # (subject, tenant, permission): granted on every resource.
    grants: set[tuple[str, str, str]] = field(default_factory=set)
    delay: float = 0.0
    fail_with: grpc.StatusCode | None = None
    validations: list[str] = field(default_factory=list)
    checks: list[pb.CheckPermissionRequest] = field(default_factory=list)

    def issue(
        self,
        tenant_id: str,
        *,
        subject: str = "tester",
        scopes: Iterable[str] = ("chat:read", "chat:write"),
        ttl: float | None = 3600,
        grant: Iterable[str] | None = None,
    ) -> str:
        """A token the hub knows (an opaque string, not a JWT); by default
        its subject is granted the token's scopes."""
        token = f"hub-{uuid.uuid4().hex}"
        expires_at = None if ttl is None else time.time() + ttl
        self.identities[token] = Identity(tenant_id, subject, tuple(scopes), expires_at)
        for permission in scopes if grant is None else grant:
            self.grants.add((subject, tenant_id, permission))
        return token

    def reset(self) -> None:
        self.identities.clear()
        self.grants.clear()
        self.delay, self.fail_with = 0.0, None
        self.validations.clear()
        self.checks.clear()


class _Hub(security_hub_pb2_grpc.SecurityHubServiceServicer):
    def __init__(self, behaviour: HubBehaviour) -> None:
        self.behaviour = behaviour

    async def _misbehave(self, context: Any) -> None:
        if self.behaviour.delay:
            await asyncio.sleep(self.behaviour.delay)
        if self.behaviour.fail_with is not None:
            await context.abort(self.behaviour.fail_with, "hub told to fail")

    async def ValidateToken(
        self, request: pb.ValidateTokenRequest, context: Any
    ) -> pb.ValidateTokenResponse:
        self.behaviour.validations.append(request.token)
        await self._misbehave(context)
        identity = self.behaviour.identities.get(request.token)
        if identity is None:
            return pb.ValidateTokenResponse(valid=False, reason="unknown token")
        response = pb.ValidateTokenResponse(
            valid=True,
            tenant_id=identity.tenant_id,
            subject=identity.subject,
            scopes=identity.scopes,
        )
        if identity.expires_at is not None:
            response.expires_at.FromNanoseconds(int(identity.expires_at * 1e9))
        return response

    async def CheckPermission(
        self, request: pb.CheckPermissionRequest, context: Any
    ) -> pb.CheckPermissionResponse:
        self.behaviour.checks.append(request)
        await self._misbehave(context)
        if (request.subject, request.tenant_id, request.permission) in self.behaviour.grants:
            return pb.CheckPermissionResponse(allowed=True)
        return pb.CheckPermissionResponse(
            allowed=False, reason=f"{request.permission} is not granted to {request.subject}"
        )


@asynccontextmanager
async def running_security_hub(
    port: int, *, credentials: grpc.ServerCredentials | None = None
) -> AsyncIterator[HubBehaviour]:
    """A Security Hub on 127.0.0.1:port; TLS with `credentials`."""
    behaviour = HubBehaviour()
    async with serving(
        lambda server: security_hub_pb2_grpc.add_SecurityHubServiceServicer_to_server(
            _Hub(behaviour), server
        ),
        port,
        credentials,
    ):
        yield behaviour
