"""TeamsInbound.verify against the Bot Connector emulator: the real key
fetching (OpenID metadata, then the JWKS it names) over HTTP with httpx,
tokens signed by the emulator's RSA keys (tests/support/emulators/
bot_connector.py). Only the candidate connections are built here."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from adapters.channels.bot_framework import ConnectorKeys
from adapters.channels.teams import (
    WEBHOOK_ENDORSEMENT_MISSING,
    WEBHOOK_SERVICE_URL_MISMATCH,
    TeamsInbound,
)
from chat_service.domain.enums import Channel
from chat_service.domain.errors import PermissionDenied, Unauthenticated, Unavailable
from chat_service.domain.webhooks import WebhookCall
from chat_service.ports import OpenedConnection
from tests.support.emulators.bot_connector import BotConnectorEmulator, make_key
from tests.support.emulators.senders import opened_connection

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "teams"
APP_ID = "c9e8c047-2a74-40a2-b28a-b162d5f5327c"  # the fixtures' bot
OTHER_APP = "0b5e3a43-7c1d-4d2e-9f60-1a2b3c4d5e6f"


def connection(app_id: str, connection_id: str) -> OpenedConnection:
    return opened_connection(
        Channel.TEAMS,
        app_id,
        {"app_password": "pw"},
        connection_id,
        public={"app_id": app_id},
        tenant_id="tenant-1",
    )


MINE = connection(APP_ID, "conn-mine")
OTHER = connection(OTHER_APP, "conn-other")


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    emulator: BotConnectorEmulator
    keys: ConnectorKeys
    inbound: TeamsInbound
    clock: Clock

    def activity(self, service_url: str | None = None, **changes: Any) -> bytes:
        body: dict[str, Any] = json.loads((FIXTURES / "personal_message.json").read_bytes())
        body["serviceUrl"] = self.emulator.service_url if service_url is None else service_url
        body.update(changes)
        return json.dumps(body).encode()

    def call(self, token: str | None, body: bytes | None = None) -> WebhookCall:
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        return WebhookCall(
            tenant_id="tenant-1",
            channel=Channel.TEAMS,
            body=self.activity() if body is None else body,
            content_type="application/json",
            headers=headers,
        )

    async def verify(
        self,
        token: str | None,
        body: bytes | None = None,
        candidates: tuple[OpenedConnection, ...] = (MINE, OTHER),
    ) -> list[str]:
        verified = await self.inbound.verify(self.call(token, body), candidates)
        return [c.connection.connection_id for c in verified]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    emulator = await BotConnectorEmulator().start()
    clock = Clock()
    async with httpx.AsyncClient() as http:
        keys = ConnectorKeys(emulator.metadata_url, http=http, monotonic=clock)
        try:
            yield Rig(emulator, keys, TeamsInbound(keys), clock)
        finally:
            await emulator.stop()


async def test_a_token_for_the_bot_verifies_that_connection_only(rig: Rig) -> None:
    assert await rig.verify(rig.emulator.mint(APP_ID)) == ["conn-mine"]
    assert (rig.emulator.metadata_fetches, rig.emulator.key_fetches) == (1, 1)
    # The keys are kept: the next activity costs no fetch.
    assert await rig.verify(rig.emulator.mint(OTHER_APP)) == ["conn-other"]
    assert rig.emulator.metadata_fetches == 1


async def test_the_audience_is_compared_without_case(rig: Rig) -> None:
    assert await rig.verify(rig.emulator.mint(APP_ID.upper())) == ["conn-mine"]


async def test_a_token_for_another_bot_is_refused_as_for_no_bot_at_all(rig: Rig) -> None:
    token = rig.emulator.mint("11111111-2222-3333-4444-555555555555")
    with pytest.raises(Unauthenticated) as other_bot:
        await rig.verify(token)
    with pytest.raises(Unauthenticated) as no_connection:
        await rig.verify(rig.emulator.mint(APP_ID), candidates=())

    assert other_bot.value.message == no_connection.value.message
    assert other_bot.value.reason == "WEBHOOK_SIGNATURE_INVALID"


async def test_another_issuer_is_refused(rig: Rig) -> None:
    token = rig.emulator.mint(
        APP_ID, issuer="https://sts.windows.net/d6d49420-f39b-4df7-a1dc-d59a935871db/"
    )
    with pytest.raises(Unauthenticated, match="not issued by the Bot Connector"):
        await rig.verify(token)


async def test_expiry_is_judged_with_five_minutes_of_skew(rig: Rig) -> None:
    now = time.time()
    late = rig.emulator.mint(APP_ID, issued_at=now - 3600 - 240)  # expired 4 minutes ago
    assert await rig.verify(late) == ["conn-mine"]

    too_late = rig.emulator.mint(APP_ID, issued_at=now - 3600 - 360)  # 6 minutes ago
    with pytest.raises(Unauthenticated, match="expired"):
        await rig.verify(too_late)


async def test_a_token_from_the_future_is_refused(rig: Rig) -> None:
    token = rig.emulator.mint(APP_ID, issued_at=time.time() + 900)
    with pytest.raises(Unauthenticated, match="not valid yet"):
        await rig.verify(token)


async def test_the_service_url_claim_must_be_the_activitys(rig: Rig) -> None:
    token = rig.emulator.mint(APP_ID)
    elsewhere = rig.activity(service_url="https://attacker.example/")

    with pytest.raises(PermissionDenied) as raised:
        await rig.verify(token, elsewhere)
    assert raised.value.reason == WEBHOOK_SERVICE_URL_MISMATCH

    without_claim = rig.emulator.mint(APP_ID, claims={"serviceurl": None})
    with pytest.raises(PermissionDenied):
        await rig.verify(without_claim)
    # The documentation's spelling of the claim is read as well.
    respelled = rig.emulator.mint(
        APP_ID, claims={"serviceurl": None, "serviceUrl": rig.emulator.service_url}
    )
    assert await rig.verify(respelled) == ["conn-mine"]


async def test_a_body_that_is_not_an_activity_fails_the_service_url_check(rig: Rig) -> None:
    with pytest.raises(PermissionDenied):
        await rig.verify(rig.emulator.mint(APP_ID), b"not json")


async def test_an_unknown_key_id_refreshes_the_keys_and_finds_a_rotated_key(rig: Rig) -> None:
    assert await rig.verify(rig.emulator.mint(APP_ID)) == ["conn-mine"]
    rotated = rig.emulator.rotate(retire_old=True)
    rig.clock.now += 61  # past the refresh rate limit

    assert await rig.verify(rig.emulator.mint(APP_ID, key=rotated)) == ["conn-mine"]
    assert rig.emulator.metadata_fetches == 2


async def test_unknown_key_ids_refresh_at_most_once_a_minute(rig: Rig) -> None:
    assert await rig.verify(rig.emulator.mint(APP_ID)) == ["conn-mine"]
    for _ in range(5):
        unknown = rig.emulator.mint(APP_ID, key=make_key())
        with pytest.raises(Unauthenticated, match="does not publish"):
            await rig.verify(unknown)
    # Within a minute of the first fetch: none of them fetched again.
    assert rig.emulator.metadata_fetches == 1

    rotated = rig.emulator.rotate()
    with pytest.raises(Unauthenticated):  # still within the minute
        await rig.verify(rig.emulator.mint(APP_ID, key=rotated))
    rig.clock.now += 61
    assert await rig.verify(rig.emulator.mint(APP_ID, key=rotated)) == ["conn-mine"]
    assert rig.emulator.metadata_fetches == 2


async def test_keys_older_than_a_day_are_fetched_again(rig: Rig) -> None:
    await rig.verify(rig.emulator.mint(APP_ID))
    rig.clock.now += 24 * 3600
    await rig.verify(rig.emulator.mint(APP_ID))
    assert rig.emulator.metadata_fetches == 2


async def test_a_token_forged_with_another_key_under_a_published_kid_is_refused(rig: Rig) -> None:
    forged = rig.emulator.foreign_key(kid=rig.emulator.current_key.kid)
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        await rig.verify(rig.emulator.mint(APP_ID, key=forged))


async def test_a_key_not_endorsed_for_msteams_is_refused(rig: Rig) -> None:
    webchat_only = make_key(endorsements=("webchat",))
    rig.emulator.publish(webchat_only)

    with pytest.raises(PermissionDenied) as raised:
        await rig.verify(rig.emulator.mint(APP_ID, key=webchat_only))
    assert raised.value.reason == WEBHOOK_ENDORSEMENT_MISSING


async def test_an_hmac_token_is_refused_whatever_it_is_signed_with(rig: Rig) -> None:
    kid = rig.emulator.current_key.kid
    await rig.verify(rig.emulator.mint(APP_ID))  # keys loaded
    claims = jwt.decode(rig.emulator.mint(APP_ID), options={"verify_signature": False})
    token = jwt.encode(
        claims, "a-guessable-secret-of-32-bytes!!", algorithm="HS256", headers={"kid": kid}
    )
    with pytest.raises(Unauthenticated, match="algorithm"):
        await rig.verify(token)


@pytest.mark.parametrize(
    "header",
    [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-jwt", "Bearer " + "x" * 20_000],
)
async def test_what_is_not_a_bearer_jwt_is_unauthenticated(rig: Rig, header: str | None) -> None:
    call = rig.call(None)
    if header is not None:
        call = WebhookCall(
            tenant_id=call.tenant_id,
            channel=call.channel,
            body=call.body,
            content_type=call.content_type,
            headers={"authorization": header},
        )
    with pytest.raises(Unauthenticated):
        await rig.inbound.verify(call, (MINE,))


async def test_keys_that_cannot_be_fetched_make_the_call_retryable() -> None:
    emulator = await BotConnectorEmulator().start()
    token = emulator.mint(APP_ID)
    body = json.loads((FIXTURES / "personal_message.json").read_bytes())
    body["serviceUrl"] = emulator.service_url
    await emulator.stop()  # nothing answers there any more
    async with httpx.AsyncClient() as http:
        inbound = TeamsInbound(ConnectorKeys(emulator.metadata_url, http=http))
        call = WebhookCall(
            tenant_id="t",
            channel=Channel.TEAMS,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers={"authorization": f"Bearer {token}"},
        )
        with pytest.raises(Unavailable):
            await inbound.verify(call, (MINE,))
