"""Authentication and authorization by the Security Hub (adapters/
security_hub/ behind chat_service/hub_auth.py), against a real gRPC stub of
the hub: its answers, its outages, the deadline, and the cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio

from adapters.security_hub import GrpcSecurityHub
from adapters.security_hub.grpc_hub import SECURITY_HUB_UNAVAILABLE
from chat_service.auth import (
    SCOPE_ADMIN,
    SCOPE_WRITE,
    TENANT_CLAIM_INVALID,
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    Principal,
)
from chat_service.domain.errors import PermissionDenied, Unauthenticated, Unavailable
from chat_service.hub_auth import SECURITY_HUB_DENIED, HubAuthenticator
from tests.support.net import free_port
from tests.support.security_hub_server import HubBehaviour, running_security_hub
from tests.support.tls import self_signed

SEND = "/chatbot.chat.v1.ChatService/SendMessage"
STREAM = "/chatbot.chat.v1.ChatService/StreamConversation"
DELETE = "/chatbot.chat.v1.ChatService/DeleteChannelConnection"
# Generous: a loaded machine must not turn an answer into a missed deadline.
DEADLINE = 5.0
# For the calls meant to miss it.
SHORT_DEADLINE = 0.3


@dataclass
class Setup:
    hub: HubBehaviour
    client: GrpcSecurityHub
    port: int

    def authenticator(self, cache_seconds: float = 30.0) -> HubAuthenticator:
        return HubAuthenticator(self.client, cache_seconds=cache_seconds)


@pytest_asyncio.fixture
async def setup() -> AsyncIterator[Setup]:
    port = free_port()
    async with running_security_hub(port) as hub:
        client = GrpcSecurityHub(f"127.0.0.1:{port}", timeout=DEADLINE)
        try:
            yield Setup(hub, client, port)
        finally:
            await client.close()


async def test_an_allowed_call(setup: Setup) -> None:
    token = setup.hub.issue("tenant-a", subject="alice", scopes=[SCOPE_WRITE])
    auth = setup.authenticator()

    principal = await auth.authenticate(token)
    await auth.authorize(principal, SCOPE_WRITE, SEND)

    assert principal.tenant_id == "tenant-a"
    assert principal.subject == "alice"
    assert principal.scopes == {SCOPE_WRITE}
    assert principal.valid_until is not None
    assert principal.valid_until > time.time() + 3000
    [check] = setup.hub.checks
    assert (check.subject, check.tenant_id, check.permission, check.resource) == (
        "alice",
        "tenant-a",
        SCOPE_WRITE,
        SEND,
    )


async def test_a_denied_call_is_permission_denied_with_the_hubs_reason(setup: Setup) -> None:
    token = setup.hub.issue("tenant-a", subject="bob", scopes=[SCOPE_WRITE])
    auth = setup.authenticator()
    principal = await auth.authenticate(token)

    with pytest.raises(PermissionDenied) as raised:
        await auth.authorize(principal, SCOPE_ADMIN, DELETE)

    assert raised.value.reason == SECURITY_HUB_DENIED
    assert "chat:admin is not granted to bob" in raised.value.message
    assert raised.value.metadata == {"required_scope": SCOPE_ADMIN}


async def test_an_invalid_token_is_unauthenticated(setup: Setup) -> None:
    with pytest.raises(Unauthenticated) as raised:
        await setup.authenticator().authenticate("hub-unknown-token")
    assert raised.value.reason == TOKEN_INVALID
    assert "hub-unknown-token" not in raised.value.message
    assert setup.hub.checks == []


async def test_an_expired_token_and_a_bad_tenant_are_unauthenticated(setup: Setup) -> None:
    auth = setup.authenticator()
    expired = setup.hub.issue("tenant-a", ttl=-5)
    with pytest.raises(Unauthenticated) as raised:
        await auth.authenticate(expired)
    assert raised.value.reason == TOKEN_EXPIRED

    odd_tenant = setup.hub.issue("tenant/../other")
    with pytest.raises(Unauthenticated) as raised:
        await auth.authenticate(odd_tenant)
    assert raised.value.reason == TENANT_CLAIM_INVALID


@pytest.mark.parametrize(
    "status", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN]
)
async def test_a_failing_hub_fails_closed(setup: Setup, status: grpc.StatusCode) -> None:
    token = setup.hub.issue("tenant-a")
    auth = setup.authenticator()
    setup.hub.fail_with = status
    with pytest.raises(Unavailable) as raised:
        await auth.authenticate(token)
    assert raised.value.reason == SECURITY_HUB_UNAVAILABLE
    assert "told to fail" not in raised.value.message

    setup.hub.fail_with = None
    principal = await auth.authenticate(token)
    setup.hub.fail_with = status
    with pytest.raises(Unavailable):
        await auth.authorize(principal, SCOPE_WRITE, SEND)


async def test_a_hub_slower_than_the_deadline_fails_closed(setup: Setup) -> None:
    token = setup.hub.issue("tenant-a")
    client = GrpcSecurityHub(f"127.0.0.1:{setup.port}", timeout=SHORT_DEADLINE)
    setup.hub.delay = 60  # cut short when the hub stops
    try:
        with pytest.raises(Unavailable) as raised:
            await HubAuthenticator(client).authenticate(token)
    finally:
        await client.close()
    assert raised.value.reason == SECURITY_HUB_UNAVAILABLE
    assert setup.hub.validations == [token]


async def test_a_hub_that_is_down_fails_closed() -> None:
    client = GrpcSecurityHub(f"127.0.0.1:{free_port()}", timeout=SHORT_DEADLINE)
    try:
        with pytest.raises(Unavailable) as raised:
            await HubAuthenticator(client).authenticate("hub-anything")
        assert raised.value.reason == SECURITY_HUB_UNAVAILABLE
    finally:
        await client.close()


async def test_answers_are_cached(setup: Setup) -> None:
    token = setup.hub.issue("tenant-a", subject="alice", scopes=[SCOPE_WRITE])
    auth = setup.authenticator()
    for _ in range(5):
        principal = await auth.authenticate(token)
        await auth.authorize(principal, SCOPE_WRITE, SEND)
        with pytest.raises(PermissionDenied):
            await auth.authorize(principal, SCOPE_ADMIN, DELETE)
    with pytest.raises(Unauthenticated):
        await auth.authenticate("hub-unknown")
    with pytest.raises(Unauthenticated):
        await auth.authenticate("hub-unknown")

    assert setup.hub.validations == [token, "hub-unknown"]
    assert len(setup.hub.checks) == 2

    # Cached: the hub's outage goes unnoticed while the answers last.
    setup.hub.fail_with = grpc.StatusCode.UNAVAILABLE
    await auth.authorize(await auth.authenticate(token), SCOPE_WRITE, SEND)


async def test_concurrent_callers_share_one_hub_call(setup: Setup) -> None:
    token = setup.hub.issue("tenant-a")
    auth = setup.authenticator()
    setup.hub.delay = 0.05
    principals = await asyncio.gather(*(auth.authenticate(token) for _ in range(20)))
    assert {p.tenant_id for p in principals} == {"tenant-a"}
    assert setup.hub.validations == [token]


async def test_without_a_cache_every_call_asks(setup: Setup) -> None:
    token = setup.hub.issue("tenant-a")
    auth = setup.authenticator(cache_seconds=0)
    for _ in range(3):
        await auth.authenticate(token)
    assert setup.hub.validations == [token] * 3


async def test_a_cached_validation_never_outlives_the_token(setup: Setup) -> None:
    token = setup.hub.issue("tenant-a", ttl=10)  # ends well within the cache's 30 s
    now = [time.time()]
    auth = HubAuthenticator(setup.client, cache_seconds=30, clock=lambda: now[0])
    principal: Principal = await auth.authenticate(token)
    assert principal.valid_until is not None

    now[0] = principal.valid_until - 0.5
    assert await auth.authenticate(token) is principal
    assert setup.hub.validations == [token]

    # Past the token's end (not the cache's): the hub is asked again, and
    # its answer (the same expiry) is now in the past.
    now[0] = principal.valid_until + 0.5
    with pytest.raises(Unauthenticated) as raised:
        await auth.authenticate(token)
    assert raised.value.reason == TOKEN_EXPIRED
    assert setup.hub.validations == [token, token]


async def test_a_closed_channel_fails_closed_as_unavailable() -> None:
    # At shutdown the channel closes while calls may still come in: they
    # must be refused as UNAVAILABLE, not crash (INTERNAL).
    client = GrpcSecurityHub(f"127.0.0.1:{free_port()}", timeout=DEADLINE)
    await client.close()
    with pytest.raises(Unavailable) as raised:
        await HubAuthenticator(client).authenticate("hub-anything")
    assert raised.value.reason == SECURITY_HUB_UNAVAILABLE
    with pytest.raises(Unavailable):
        await client.check_permission(
            subject="alice", tenant_id="tenant-a", permission=SCOPE_WRITE, resource=SEND
        )


async def test_a_flood_of_bad_tokens_does_not_push_out_the_good_ones(setup: Setup) -> None:
    token = setup.hub.issue("tenant-a")
    auth = HubAuthenticator(setup.client, cache_seconds=30, cache_size=4)
    await auth.authenticate(token)
    for n in range(10):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(f"hub-forged-{n}")
    await auth.authenticate(token)
    assert setup.hub.validations.count(token) == 1


async def test_a_permission_answer_is_for_one_caller_and_one_method(setup: Setup) -> None:
    alice = setup.hub.issue("tenant-a", subject="alice", scopes=[SCOPE_WRITE])
    bob = setup.hub.issue("tenant-a", subject="bob", scopes=[SCOPE_WRITE], grant=[])
    other_tenant = setup.hub.issue("tenant-b", subject="alice", scopes=[SCOPE_WRITE], grant=[])
    auth = setup.authenticator()
    await auth.authorize(await auth.authenticate(alice), SCOPE_WRITE, SEND)

    # The same scope for another method, another subject, another tenant:
    # each asked of the hub, none allowed by alice's answer.
    await auth.authorize(await auth.authenticate(alice), SCOPE_WRITE, STREAM)
    for token in (bob, other_tenant):
        with pytest.raises(PermissionDenied):
            await auth.authorize(await auth.authenticate(token), SCOPE_WRITE, SEND)
    assert [(c.subject, c.tenant_id, c.resource) for c in setup.hub.checks] == [
        ("alice", "tenant-a", SEND),
        ("alice", "tenant-a", STREAM),
        ("bob", "tenant-a", SEND),
        ("alice", "tenant-b", SEND),
    ]


async def test_over_tls_the_hub_is_asked_only_when_its_certificate_is_trusted() -> None:
    # Callers' bearer tokens travel to the hub: never in the clear, never to
    # a hub the configured CA did not vouch for.
    certificate, stranger = self_signed(), self_signed()
    port = free_port()
    credentials = grpc.ssl_server_credentials([(certificate.key_pem, certificate.cert_pem)])
    async with running_security_hub(port, credentials=credentials) as hub:
        token = hub.issue("tenant-a")
        trusting = GrpcSecurityHub(
            f"localhost:{port}", timeout=DEADLINE, tls=True, root_certificates=certificate.cert_pem
        )
        try:
            assert (await HubAuthenticator(trusting).authenticate(token)).tenant_id == "tenant-a"
        finally:
            await trusting.close()
        assert hub.validations == [token]

        for wary in (
            GrpcSecurityHub(
                f"localhost:{port}", timeout=DEADLINE, tls=True, root_certificates=stranger.cert_pem
            ),
            GrpcSecurityHub(f"localhost:{port}", timeout=DEADLINE),  # plaintext
        ):
            try:
                with pytest.raises(Unavailable):
                    await HubAuthenticator(wary).authenticate(token)
            finally:
                await wary.close()
        assert hub.validations == [token]


def test_a_ca_file_without_a_certificate_is_refused() -> None:
    with pytest.raises(ValueError, match="no PEM certificate"):
        GrpcSecurityHub("localhost:9", timeout=DEADLINE, tls=True, root_certificates=b"junk")
