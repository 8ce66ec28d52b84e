"""Authentication and authorization by the platform's Security Hub
(SECURITY_HUB_URL), as the gRPC interceptor's Authenticator.

Each token goes to the hub's ValidateToken, and each call's permission to
its CheckPermission: the permission is the method's scope (chat:read,
chat:write, chat:admin, as auth_interceptor.REQUIRED_SCOPES has them) and
the resource the full method name, so the hub decides with the same words
the tokens' scopes use and may refine them per method. The scopes the hub
reports are kept on the Principal but decide nothing here.

Answers are remembered for `cache_seconds` (a token's validation never past
its expiry, a permission never past its token's), in bounded caches, the
refused tokens in one of their own (a flood of made-up tokens must not push
out the callers' answers); callers asking the same question at once share
one call. The hub's
failures (down, slow past the deadline, an error status) raise Unavailable
from the adapter: nothing is allowed without an answer (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from chat_service.auth import (
    TENANT_CLAIM_INVALID,
    TENANT_CLAIM_MISSING,
    TENANT_ID_PATTERN,
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    Principal,
    checked_token_digest,
)
from chat_service.domain.errors import PermissionDenied, Unauthenticated
from chat_service.ports import PermissionDecision, SecurityHub, TokenValidation

log = logging.getLogger(__name__)

SECURITY_HUB_DENIED = "SECURITY_HUB_DENIED"
CACHED_ANSWERS = 10_000
_MAX_REASON_LENGTH = 200

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _ExpiringCache(Generic[K, V]):
    """At most `size` entries, each until its own time; the least recently
    used go first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V, until: float, now: float) -> None:
        if until <= now:
            return
        self._entries.pop(key, None)
        while len(self._entries) >= self._size:
            self._entries.popitem(last=False)
        self._entries[key] = (value, until)


class _SharedCalls(Generic[K, V]):
    """One call per key at a time: who asks meanwhile awaits the same one.
    A caller that is cancelled leaves the call running for the others."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[V]] = {}

    async def call(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        self._running.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: all its callers may have gone


# A token's verdict: the caller, or the Unauthenticated error's (reason, message).
_Refusal = tuple[str, str]
_Verdict = Principal | _Refusal


class HubAuthenticator:
    """The Security Hub as Authenticator (see the module's docstring)."""

    def __init__(
        self,
        hub: SecurityHub,
        *,
        cache_seconds: float = 30.0,
        cache_size: int = CACHED_ANSWERS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hub = hub
        self._ttl = cache_seconds
        self._clock = clock
        self._tokens: _ExpiringCache[bytes, Principal] = _ExpiringCache(cache_size)
        # Apart: a flood of made-up tokens must not push the callers out.
        self._refusals: _ExpiringCache[bytes, _Refusal] = _ExpiringCache(cache_size)
        self._permissions: _ExpiringCache[tuple[str, ...], PermissionDecision] = _ExpiringCache(
            cache_size
        )
        self._validating: _SharedCalls[bytes, TokenValidation] = _SharedCalls()
        self._checking: _SharedCalls[tuple[str, ...], PermissionDecision] = _SharedCalls()

    async def authenticate(self, token: str) -> Principal:
        digest = checked_token_digest(token)
        now = self._clock()
        verdict: _Verdict | None = self._tokens.get(digest, now) or self._refusals.get(digest, now)
        if verdict is None:
            validation = await self._validating.call(
                digest, lambda: self._hub.validate_token(token)
            )
            now = self._clock()
            verdict = _verdict(validation, now)
            until = now + self._ttl
            if isinstance(verdict, Principal):
                if verdict.valid_until is not None:
                    until = min(until, verdict.valid_until)
                self._tokens.put(digest, verdict, until, now)
            else:
                self._refusals.put(digest, verdict, until, now)
        if isinstance(verdict, Principal):
            return verdict
        reason, message = verdict
        raise Unauthenticated(message, reason=reason)

    async def authorize(self, principal: Principal, scope: str, method: str) -> None:
        key = (principal.subject, principal.tenant_id, scope, method)
        decision = self._permissions.get(key, self._clock())
        if decision is None:
            decision = await self._checking.call(
                key,
                lambda: self._hub.check_permission(
                    subject=principal.subject,
                    tenant_id=principal.tenant_id,
                    permission=scope,
                    resource=method,
                ),
            )
            now = self._clock()
            until = now + self._ttl
            if principal.valid_until is not None:
                until = min(until, principal.valid_until)
            self._permissions.put(key, decision, until, now)
        if not decision.allowed:
            why = " ".join(decision.reason.split())[:_MAX_REASON_LENGTH]
            raise PermissionDenied(
                f"the Security Hub does not allow {scope!r} here" + (f": {why}" if why else ""),
                reason=SECURITY_HUB_DENIED,
                metadata={"required_scope": scope},
            )


def _verdict(validation: TokenValidation, now: float) -> _Verdict:
    if not validation.valid:
        log.debug("the Security Hub refused a token: %s", validation.reason)
        return TOKEN_INVALID, "the Security Hub does not accept the token"
    tenant_id = validation.tenant_id
    if not tenant_id:
        return TENANT_CLAIM_MISSING, "the Security Hub names no tenant for the token"
    if not TENANT_ID_PATTERN.fullmatch(tenant_id):
        # Tenant ids become parts of store keys: the same rule as a claim's.
        return TENANT_CLAIM_INVALID, "the Security Hub's tenant for the token is not a valid id"
    if validation.expires_at is not None and validation.expires_at <= now:
        return TOKEN_EXPIRED, "the token has expired"
    return Principal(
        tenant_id=tenant_id,
        subject=validation.subject,
        scopes=validation.scopes,
        valid_until=validation.expires_at,
    )
