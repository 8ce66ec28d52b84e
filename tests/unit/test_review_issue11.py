"""Regressions found reviewing issue 11 (Slack and Teams): each failed
before its fix. The edge-level consequences (INTERNAL answers, a poisoned
inbox) are shown against the real server in tests/e2e/test_review_issue11.py;
these pin the adapters' part."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.channels.bot_framework import (
    KEYS_MAX_AGE_SECONDS,
    ConnectorKeys,
    service_url_problem,
)
from adapters.channels.teams import TeamsInbound, parse_activity
from chat_service.domain.enums import Channel
from chat_service.domain.errors import InvalidArgument, Unavailable
from chat_service.domain.webhooks import WebhookCall
from tests.support.emulators.bot_connector import BotConnectorEmulator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "teams"
APP_ID = "c9e8c047-2a74-40a2-b28a-b162d5f5327c"  # the fixtures' bot


def activity(name: str = "personal_message", **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_bytes())
    document.update(changes)
    return document


def encoded(document: dict[str, Any]) -> bytes:
    # json.dumps writes a lone surrogate as its \\udXXX escape, as a JSON
    # encoder in a browser does for half an emoji cut by an input's maxLength.
    return json.dumps(document).encode()


def teams_call(body: bytes) -> WebhookCall:
    return WebhookCall("tenant-1", Channel.TEAMS, body, "application/json")


def utf8_clean(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


# ------------------------------------------------- Teams: lone surrogates


def test_the_teams_inbox_key_of_an_activity_with_a_lone_surrogate_is_computed() -> None:
    # Was: UnicodeEncodeError out of dedup_key, so HandleWebhook answered
    # INTERNAL (and the Bot Connector retried) for a verified activity.
    document = activity()
    document["conversation"]["id"] = "a:half-an-emoji-\ud83d"
    for body in (encoded(document), encoded(activity(id="1485983408511\udc00"))):
        key = TeamsInbound(None).dedup_key(teams_call(body))  # type: ignore[arg-type]
        assert key.startswith("activity:")


@pytest.mark.parametrize(
    "value",
    [
        {"comment": "cut in half: \ud83d"},  # an Adaptive Card input
        {"payload": "choice-\udc00"},  # our own messageBack button's payload
        "plain \ud83d value",
    ],
)
def test_a_card_submission_with_a_lone_surrogate_becomes_valid_text(value: object) -> None:
    # Was: the value went into reply_payload (and, with no text, into the
    # message text) as it was: every store refuses to encode it, so the
    # message was retried for some twenty minutes, holding the user's later
    # messages back, then dead-lettered.
    parsed = parse_activity(encoded(activity("card_submit", value=value, text="")))
    (message,) = parsed.messages
    assert utf8_clean(message.content.text)
    assert all(utf8_clean(v) for v in message.extra.values())
    assert "\ufffd" in message.extra["reply_payload"]


# ------------------------------------------------------- Teams: timestamps


@pytest.mark.parametrize(
    "timestamp",
    ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"],
)
def test_a_timestamp_that_is_no_utc_time_is_refused(timestamp: str) -> None:
    # Was: kept with its offset; its UTC time lies past datetime's range, so
    # the SQLite store wrote a message no read could load again (INTERNAL on
    # every read of the conversation) and MongoDB's writes failed for ever.
    with pytest.raises(InvalidArgument) as raised:
        parse_activity(encoded(activity(timestamp=timestamp)))
    assert raised.value.violations[0].field == "timestamp"


def test_a_timestamp_with_an_offset_is_kept_in_utc() -> None:
    (message,) = parse_activity(
        encoded(activity(timestamp="2017-02-01T13:10:07.437-08:00"))
    ).messages
    assert message.sent_at.utcoffset() == timedelta(0)
    assert message.sent_at.isoformat() == "2017-02-01T21:10:07.437000+00:00"


# -------------------------------------------------- Teams: the serviceUrl


@pytest.mark.parametrize(
    "service_url",
    [
        # urlsplit drops tabs and newlines before it reads the host; httpx
        # refuses the URL (InvalidURL, not a DeliveryError: each attempt was
        # retried as a "connector error" before the reply failed).
        "https://evil.example\t.botframework.com/",
        "https://smba.trafficmanager.net\n/amer/",
        # Hosts no DNS name or URL parser agrees on.
        "https://evil.example%2f.botframework.com/",
        "https://evil.example\\.botframework.com/",
        "https://evil.example;.botframework.com/",
        "https://smba.trafficmanager.net /amer/",
    ],
)
def test_a_service_url_that_parsers_read_differently_is_refused(service_url: str) -> None:
    assert service_url_problem(service_url, allow_loopback=False) is not None


@pytest.mark.parametrize(
    "service_url",
    [
        "https://smba.trafficmanager.net/amer/",
        "https://smba.trafficmanager.net/emea/",
        "https://europe.webchat.botframework.com/",
        "https://smba.infra.gcc.teams.microsoft.com/",
    ],
)
def test_the_bot_connectors_service_urls_still_pass(service_url: str) -> None:
    assert service_url_problem(service_url, allow_loopback=False) is None


# ------------------------------------------ Teams: fetching the signing keys


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def emulator() -> AsyncIterator[BotConnectorEmulator]:
    started = await BotConnectorEmulator().start()
    try:
        yield started
    finally:
        await started.stop()


async def test_keys_that_cannot_be_fetched_are_not_fetched_for_every_call(
    emulator: BotConnectorEmulator,
) -> None:
    # Was: with no keys yet and the metadata unreachable, every webhook call
    # (forged ones too: any RS256 header with a kid) made its own fetch, one
    # after the other under the lock, each up to the 10 s timeout.
    clock = Clock()
    url = emulator.metadata_url
    await emulator.stop()
    async with httpx.AsyncClient() as http:
        keys = ConnectorKeys(url, http=http, monotonic=clock)
        results = await asyncio.gather(
            *(keys.lookup("kid") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(result, Unavailable) for result in results)
        with pytest.raises(Unavailable):
            await keys.lookup("kid")
        assert keys.fetches == 1
        clock.now += 10  # past the Unavailable's retry_after: worth a new try
        with pytest.raises(Unavailable):
            await keys.lookup("kid")
        assert keys.fetches == 2


async def test_old_keys_that_cannot_be_refreshed_are_not_refreshed_for_every_call(
    emulator: BotConnectorEmulator,
) -> None:
    # Was: once the keys were a day old, a failing refresh was tried again by
    # every call (the age check had no rate limit), each waiting for the last.
    clock = Clock()
    async with httpx.AsyncClient() as http:
        keys = ConnectorKeys(emulator.metadata_url, http=http, monotonic=clock)
        kid = emulator.current_key.kid
        await keys.lookup(kid)
        clock.now += KEYS_MAX_AGE_SECONDS
        await emulator.stop()
        for _ in range(5):
            _, key = await keys.lookup(kid)
            assert key is not None  # the old keys still verify
        assert keys.fetches == 2
