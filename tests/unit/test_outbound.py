"""What every platform's sender shares (adapters/channels/outbound.py) and
what their HTTP clients share (adapters/channels/http_api.py), apart from
any one platform; each sender's use of them is tested against its emulator
in tests/integration/test_*_send.py."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from aiohttp import web

from adapters.channels.http_api import HttpApi, redact, retry_after
from adapters.channels.outbound import Answered, PartialSends, find_answered, open_connection
from chat_service.domain.enums import Channel, MessageRole
from chat_service.domain.model import Conversation, Message
from chat_service.ports import DeliveryError, OpenedConnection, SecretUnreadable, StoreUnavailable
from tests.builders import make_message
from tests.support.emulators import EmulatorServer
from tests.support.emulators.senders import (
    FakeDirectory,
    MessageShelf,
    failure,
    opened_connection,
    platform_conversation,
)
from tests.support.net import free_port

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
SLACK = opened_connection(
    Channel.SLACK, "T1", {"bot_token": "xoxb-1", "signing_secret": "s"}, public={"team_id": "T1"}
)


# ------------------------------------------------------------- connection


class BrokenDirectory(FakeDirectory):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self._error = error

    async def opened(self, tenant_id: str, connection_id: str) -> OpenedConnection | None:
        raise self._error


@pytest.mark.parametrize(
    ("directory", "connection_id", "secret", "reason", "retryable"),
    [
        (FakeDirectory(SLACK), "", "bot_token", "names no channel connection", False),
        (FakeDirectory(SLACK), "gone", "bot_token", "does not exist", False),
        (FakeDirectory(SLACK), "conn-1", "app_password", "has no app_password", False),
        (BrokenDirectory(StoreUnavailable("down")), "conn-1", "bot_token", "unavailable", True),
        (BrokenDirectory(SecretUnreadable("x")), "conn-1", "bot_token", "cannot be opened", False),
    ],
)
async def test_a_connection_that_cannot_serve_is_a_delivery_error(
    directory: FakeDirectory, connection_id: str, secret: str, reason: str, retryable: bool
) -> None:
    conversation = platform_conversation(Channel.SLACK, "U1", connection_id)
    error = await failure(open_connection(directory, conversation, Channel.SLACK, secret))
    assert reason in str(error)
    assert error.retryable is retryable


async def test_a_connection_of_another_platform_is_refused() -> None:
    conversation = platform_conversation(Channel.TEAMS, "U1")
    error = await failure(
        open_connection(FakeDirectory(SLACK), conversation, Channel.TEAMS, "bot_token")
    )
    assert str(error) == "channel connection conn-1 is a slack connection, not teams"
    assert not error.retryable


async def test_the_conversations_connection_is_opened() -> None:
    conversation = platform_conversation(Channel.SLACK, "U1")
    opened = await open_connection(FakeDirectory(SLACK), conversation, Channel.SLACK, "bot_token")
    assert opened.secrets["bot_token"] == "xoxb-1"


# --------------------------------------------------------------- answered


@dataclass(frozen=True)
class Talk:
    """A conversation: the user wrote twice, a bot reply names the first,
    an agent's message names none."""

    conversation: Conversation
    first: Message
    second: Message
    reply: Message
    agent: Message

    @classmethod
    def make(cls) -> Talk:
        conversation = platform_conversation(Channel.SLACK, "U1")
        first = make_message(conversation, 1, "first")
        second = make_message(conversation, 2, "second")
        reply = make_message(
            conversation, 3, role=MessageRole.BOT, reply_to_message_id=first.message_id
        )
        agent = make_message(conversation, 4, role=MessageRole.BOT)
        return cls(conversation, first, second, reply, agent)

    def shelf(self) -> MessageShelf:
        return MessageShelf(self.first, self.second, self.reply, self.agent)


async def test_the_named_message_is_the_one_answered_else_the_users_latest() -> None:
    talk = Talk.make()
    shelf = talk.shelf()

    named = await find_answered(shelf, talk.conversation, talk.reply)
    assert named == Answered(talk.first, named=True)

    latest = await find_answered(shelf, talk.conversation, talk.agent)
    assert latest == Answered(talk.second, named=False)

    # A named message the platform cannot use: the latest usable one.
    usable = await find_answered(shelf, talk.conversation, talk.reply, lambda m: m != talk.first)
    assert usable == Answered(talk.second, named=False)

    assert await find_answered(shelf, talk.conversation, talk.agent, lambda m: False) is None


async def test_a_named_message_of_another_conversation_is_not_the_one_answered() -> None:
    talk = Talk.make()
    elsewhere = dataclasses.replace(talk.first, conversation_id="conv-other")
    shelf = MessageShelf(elsewhere, talk.second, talk.reply)
    found = await find_answered(shelf, talk.conversation, talk.reply)
    assert found == Answered(talk.second, named=False)


async def test_a_store_outage_while_looking_is_retryable() -> None:
    talk = Talk.make()

    class DownShelf(MessageShelf):
        async def get_message(self, tenant_id: str, message_id: str) -> Message | None:
            raise StoreUnavailable("down")

    error = await failure(find_answered(DownShelf(), talk.conversation, talk.reply))
    assert error.retryable
    assert str(error) == "store unavailable: down"


# ---------------------------------------------------------- partial sends


async def test_a_retry_resumes_after_the_calls_already_made() -> None:
    reply = Talk.make().reply
    partial = PartialSends()
    made: list[str] = []
    fail_at = {"c"}

    async def call(part: str) -> str:
        if part in fail_at:
            raise DeliveryError("later call failed", retryable=True)
        made.append(part)
        return f"id-{part}"

    with pytest.raises(DeliveryError):
        await partial.send(reply, ["a", "b", "c"], call)
    fail_at.clear()
    assert await partial.send(reply, ["a", "b", "c"], call) == "id-c"
    assert made == ["a", "b", "c"]  # a and b once
    # Done: a new attempt (another delivery of the same reply) starts over.
    assert await partial.send(reply, ["a"], call) == "id-a"
    assert await partial.send(reply, [], call) == ""


async def test_only_the_most_recent_partial_sends_are_kept() -> None:
    talk = Talk.make()
    first, second = talk.reply, talk.agent
    partial = PartialSends(capacity=1)

    async def fail_second(part: str) -> str:
        if part == "2":
            raise DeliveryError("no", retryable=True)
        return part

    for message in (first, second):
        with pytest.raises(DeliveryError):
            await partial.send(message, ["1", "2"], fail_second)

    calls: list[str] = []

    async def record(part: str) -> str:
        calls.append(part)
        return part

    await partial.send(second, ["1", "2"], record)  # kept: resumes
    await partial.send(first, ["1", "2"], record)  # forgotten: from the start
    assert calls == ["2", "1", "2"]


# --------------------------------------------------------------- http_api


def test_retry_after_takes_seconds_or_a_date_bounded() -> None:
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert retry_after(httpx.Headers({"Retry-After": "2.5"}), now=NOW) == 2.5
    assert retry_after(httpx.Headers({"Retry-After": later}), now=NOW) == 90.0
    assert retry_after(httpx.Headers({"Retry-After": "-3"}), now=NOW) == 0.0
    assert retry_after(httpx.Headers({"Retry-After": "1e9"}), now=NOW) == 3600.0
    for unusable in ("soon", "nan", "inf", ""):
        assert retry_after(httpx.Headers({"Retry-After": unusable}), now=NOW) is None
    assert retry_after(httpx.Headers(), now=NOW) is None


def test_redact_removes_secrets_and_patterns_and_bounds_the_text() -> None:
    text = "token abc123 and EAAsecretsecretsecretsecret1\nnext"
    cleaned = redact(text, "abc123", "", patterns=(re.compile(r"EA[A-Za-z0-9]{20,}"),))
    assert cleaned == "token [redacted] and [redacted] next"
    assert len(redact("x" * 500)) == 200


class Echo(HttpApi):
    platform = "the Echo API"

    async def get(self, path: str) -> httpx.Response:
        return await self._send("GET", path)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[EmulatorServer]:
    """A real HTTP server: /late holds the call (until stop), /moved redirects."""

    async def late(request: web.Request) -> web.Response:
        await server.hold(30.0)
        return web.Response(text="late")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("https://elsewhere.example/")

    app = web.Application()
    app.router.add_get("/late", late)
    app.router.add_get("/moved", moved)
    server = EmulatorServer(app)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_no_answer_is_a_retryable_delivery_error_naming_the_platform() -> None:
    async with contextlib.aclosing(Echo(f"http://127.0.0.1:{free_port()}")) as refused:
        error = await failure(refused.get("x"))
    assert error.retryable
    assert str(error) == "the Echo API could not be reached (ConnectError)"

    async with (
        echo_server() as server,
        contextlib.aclosing(Echo(server.origin, timeout=0.2)) as api,
    ):
        error = await failure(api.get("late"))
    assert error.retryable
    assert str(error) == "the Echo API did not answer in time (ReadTimeout)"


async def test_redirects_are_not_followed() -> None:
    async with echo_server() as server, contextlib.aclosing(Echo(server.origin)) as api:
        response = await api.get("moved")
    assert response.status_code == 302
