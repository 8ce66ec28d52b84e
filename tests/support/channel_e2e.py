"""What the channel end-to-end modules share (tests/e2e/test_webhooks.py,
test_channels_through_edge.py, test_slack.py, test_teams.py and the review
modules; SMS and voice can use it the same way):

- for a module's fixtures: a service pointed at a platform emulator (its
  `service_environment`) with a channel secrets key of its own
  (`running_service`), the real Envoy edge
  in front of it (`running_edge`), a gRPC stub to it (`service_stub`) and
  an HTTP client through the edge (`edge_client`);
- the user's conversation read back, over gRPC (`messages_over_grpc`) or
  through the edge as HTTP/JSON (`messages_over_http`), and the checks a
  poll waits for (`answered`, `answered_over_http`);
- `eventually`: a poll for what the service does in the background (the
  inbox worker, the delivery), after the platform's call was answered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import httpx
import pytest
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from tests.support.envoy import EnvoyEdge, build_edge_descriptor
from tests.support.service import ServiceProcess, ServiceStore

if TYPE_CHECKING:
    from tests.e2e.requests import TenantClient

T = TypeVar("T")
JsonMessage = dict[str, Any]  # a Message in the JSON mapping, as Envoy returns it


# ----------------------------------------------------------------- fixtures


def channel_secrets_key(label: str = "e2e") -> str:
    """A fresh CHANNEL_SECRETS_KEY: a service in a production shape (the
    MongoDB pass) refuses to make a development key of its own."""
    return f"{label}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


@contextlib.contextmanager
def running_service(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    environment: Mapping[str, str],
    store: ServiceStore,
) -> Iterator[ServiceProcess]:
    """A service on a data directory of its own (`name`), with `environment`
    (the emulator's URLs) and a channel secrets key of its own unless
    `environment` names one, stopped when the block ends."""
    environment = {"CHANNEL_SECRETS_KEY": channel_secrets_key()} | dict(environment)
    process = ServiceProcess(tmp_path_factory.mktemp(name), environment, store=store)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def running_edge(
    tmp_path_factory: pytest.TempPathFactory, name: str, upstream: ServiceProcess
) -> Iterator[EnvoyEdge]:
    """The real Envoy edge (deploy/envoy/envoy.yaml) in front of `upstream`."""
    directory = tmp_path_factory.mktemp(name)
    envoy = EnvoyEdge(
        directory / "envoy",
        upstream=upstream.address,
        descriptor=build_edge_descriptor(directory),
    )
    envoy.start()
    try:
        yield envoy
    finally:
        envoy.stop()


@contextlib.asynccontextmanager
async def service_stub(
    process: ServiceProcess,
) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    """A gRPC stub to `process` (for a module's tests: one channel)."""
    async with grpc.aio.insecure_channel(process.address) as channel:
        yield chat_service_pb2_grpc.ChatServiceStub(channel)


def edge_client(edge: EnvoyEdge) -> httpx.AsyncClient:
    """An HTTP client of the edge. Async, so that an emulator on the test's
    event loop answers the service while a test waits for Envoy."""
    return httpx.AsyncClient(base_url=edge.url, timeout=15)


# ------------------------------------------------------------ read back


async def messages_over_grpc(
    client: TenantClient, channel: resources_pb2.Channel.ValueType, user: str
) -> list[resources_pb2.Message]:
    """The user's conversation on `channel`, oldest message first (the tests
    give each user one conversation)."""
    listed = await client.list_conversations(channel=channel, user_id=user)
    if not listed.conversations:
        return []
    (conversation,) = listed.conversations
    page = await client.list_messages(conversation.conversation_id, page_size=100)
    return list(page.messages)


async def messages_over_http(
    http: httpx.AsyncClient, auth: Mapping[str, str], channel: str, user: str
) -> list[JsonMessage]:
    """The same through the edge: ListConversations and ListMessages over
    HTTP/JSON (`channel` as the JSON mapping names it, "CHANNEL_TEAMS")."""
    listed = await http.get(
        "/v1/conversations", params={"channel": channel, "user_id": user}, headers=auth
    )
    assert listed.status_code == 200, listed.text
    conversations = listed.json()["conversations"]
    if not conversations:
        return []
    (conversation,) = conversations
    page = await http.get(
        f"/v1/conversations/{conversation['conversation_id']}/messages",
        params={"page_size": 100},
        headers=auth,
    )
    assert page.status_code == 200, page.text
    messages: list[JsonMessage] = page.json()["messages"]
    return messages


def answered(count: int) -> Callable[[Sequence[resources_pb2.Message]], bool]:
    """`count` messages, the last one a reply handed to the platform (or
    failed): no longer pending."""

    def check(messages: Sequence[resources_pb2.Message]) -> bool:
        return (
            len(messages) == count
            and messages[-1].role == resources_pb2.MESSAGE_ROLE_BOT
            and messages[-1].delivery_status != resources_pb2.DELIVERY_STATUS_PENDING
        )

    return check


def answered_over_http(
    count: int, status: str | None = None
) -> Callable[[Sequence[JsonMessage]], bool]:
    """`answered` for HTTP/JSON messages; with `status`, the reply's
    delivery status must be that one ("DELIVERY_STATUS_SENT")."""

    def check(messages: Sequence[JsonMessage]) -> bool:
        if len(messages) != count or messages[-1]["role"] != "MESSAGE_ROLE_BOT":
            return False
        delivery = str(messages[-1]["delivery_status"])
        return delivery == status if status is not None else delivery != "DELIVERY_STATUS_PENDING"

    return check


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 15.0
) -> T:
    """Polls `probe` until `done` holds for what it returns (the inbox worker
    and the delivery run in the background, after the call was answered)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s; last seen: {value!r}")
        await asyncio.sleep(0.05)
