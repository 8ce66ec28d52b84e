"""How a failed Graph API answer becomes a DeliveryError
(adapters/channels/graph_api.delivery_error), and the pacing rule; the same
answers from a real server are tested in tests/integration/test_*_send.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from adapters.channels.graph_api import GraphApi, delivery_error, retry_after
from adapters.channels.outbound import Pacer
from chat_service.ports import DeliveryError
from tests.support.emulators.graph_api import graph_error_body
from tests.support.emulators.senders import FakeTime
from tests.support.net import free_port

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def _answer(
    status: int, code: int | None = None, message: str = "", **headers: str
) -> httpx.Response:
    body = graph_error_body(code, message) if code is not None else None
    return httpx.Response(
        status,
        content=json.dumps(body).encode() if body is not None else b"oops",
        headers=headers,
        request=httpx.Request("POST", "https://graph.example/v23.0/1/messages"),
    )


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80007, 130429, 131056])
def test_throttling_codes_are_retryable_with_a_wait(code: int) -> None:
    error = delivery_error(_answer(400, code, f"(#{code}) limit"), now=NOW)
    assert error.retryable
    assert error.retry_after is not None
    assert error.retry_after > 0


@pytest.mark.parametrize(
    ("code", "title"),
    [
        (100, "Invalid parameter"),
        (190, "Invalid OAuth access token"),
        (10, "Permission denied"),
        (200, "Permission error"),
        (131026, "Message Undeliverable."),
        (131047, "Re-engagement message"),
        (131051, "Unsupported message type"),
        (551, "This person isn't available right now"),
    ],
)
def test_permanent_codes_fail_with_code_and_title(code: int, title: str) -> None:
    error = delivery_error(_answer(400, code, f"(#{code}) {title}"), now=NOW)
    assert not error.retryable
    assert str(error) == f"{code}: {title}"


def test_an_empty_title_is_the_documented_one() -> None:
    assert str(delivery_error(_answer(400, 131047, ""), now=NOW)) == (
        "131047: Re-engagement message"
    )


def test_a_permanent_code_stays_permanent_behind_a_5xx() -> None:
    # Graph API answers some capability errors (code 3) with HTTP 500.
    assert not delivery_error(_answer(500, 3, "(#3) API Method"), now=NOW).retryable
    assert delivery_error(_answer(500, 999_999, "new"), now=NOW).retryable
    assert delivery_error(_answer(503), now=NOW).retryable  # no Graph body at all


def test_a_429_is_throttling_whatever_its_body() -> None:
    error = delivery_error(_answer(429), now=NOW)
    assert error.retryable
    assert error.retry_after == 1.0


def test_retry_after_in_seconds_or_as_a_date_and_bounded() -> None:
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert retry_after(httpx.Headers({"Retry-After": "2.5"}), now=NOW) == 2.5
    assert retry_after(httpx.Headers({"Retry-After": later}), now=NOW) == 90.0
    assert retry_after(httpx.Headers({"Retry-After": "-3"}), now=NOW) == 0.0
    assert retry_after(httpx.Headers({"Retry-After": "99999999"}), now=NOW) == 3600.0
    assert retry_after(httpx.Headers({"Retry-After": "soon"}), now=NOW) is None
    assert retry_after(httpx.Headers({"X-Business-Use-Case-Usage": "not json"}), now=NOW) is None


def test_any_token_in_metas_text_is_redacted() -> None:
    token = "EAAGsecretsecretsecretsecret12345"
    echoed = _answer(401, 190, f"Malformed access token {token}")
    assert token not in str(delivery_error(echoed, token=token, now=NOW))
    # Even a token this call did not send (another connection's).
    assert "EAAB" not in str(delivery_error(_answer(400, 190, "bad EAAB" + "x" * 30), now=NOW))


async def test_the_pacer_spaces_calls_per_key() -> None:
    time = FakeTime()
    pacer = Pacer(2.0, monotonic=time.monotonic, sleep=time.sleep)
    for _ in range(3):
        await pacer.wait("A")
    assert time.sleeps == [0.5, 0.5]
    time.now += 10  # idle: the next call goes at once
    await pacer.wait("A")
    assert time.sleeps == [0.5, 0.5]


def test_the_pacer_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(0)


async def test_an_unreachable_graph_api_is_retryable() -> None:
    api = GraphApi(f"http://127.0.0.1:{free_port()}/v23.0", timeout=2.0)
    try:
        with pytest.raises(DeliveryError, match="could not be reached") as caught:
            await api.post("1/messages", {}, token="t")
        assert caught.value.retryable
    finally:
        await api.aclose()


async def test_no_token_fails_before_any_call() -> None:
    api = GraphApi("http://127.0.0.1:9/v23.0")
    try:
        with pytest.raises(DeliveryError, match="no access token") as caught:
            await api.post("1/messages", {}, token="")
        assert not caught.value.retryable
    finally:
        await api.aclose()
