"""Prometheus metrics: the real service with METRICS_PORT, real gRPC calls,
then /metrics scraped over HTTP and its values checked."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.requests import send_request
from tests.support.channel_e2e import eventually
from tests.support.grpc_client import bearer
from tests.support.net import free_port
from tests.support.service import ServiceProcess

SERVICE = "chatbot.chat.v1.ChatService"
SEND = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "SendMessage"}
LIST = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "ListConversations"}
WATCH = {"grpc_type": "server_stream", "grpc_service": SERVICE, "grpc_method": "WatchConversations"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return content_type, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 for a series not there yet (as Prometheus's absent counter)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scraped_until(port: int, done: Callable[[Samples], bool]) -> Samples:
    """/metrics once `done` holds of it (what the service does after a call
    returns, a delivery or a stream's end, comes a little later)."""

    async def samples() -> Samples:
        return (await asyncio.to_thread(scrape, port))[1]

    return await eventually(samples, done)


async def refused(call: Awaitable[object]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


async def test_calls_are_counted_by_code_and_timed(fresh_service: ServiceProcess) -> None:
    metrics_port = free_port()
    fresh_service.extra_env.update(
        {"METRICS_PORT": str(metrics_port), "RATE_LIMIT_TENANTS": "limited=0.001:1"}
    )
    fresh_service.start()
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        auth = bearer(fresh_service.token("acme"))

        sent = await stub.SendMessage(send_request(), metadata=auth)
        assert await refused(stub.SendMessage(send_request(user_id=""), metadata=auth)) is (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        assert await refused(stub.SendMessage(send_request())) is (grpc.StatusCode.UNAUTHENTICATED)
        limited = bearer(fresh_service.token("limited"))
        await stub.ListConversations(pb.ListConversationsRequest(), metadata=limited)
        assert await refused(
            stub.ListConversations(pb.ListConversationsRequest(), metadata=limited)
        ) is (grpc.StatusCode.RESOURCE_EXHAUSTED)
        listed = await stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=sent.conversation_id), metadata=auth
        )
        replies = sum(m.role != resources_pb2.MESSAGE_ROLE_USER for m in listed.messages)
        # Any path a caller makes up: UNIMPLEMENTED, and no series of its own.
        made_up = channel.unary_unary(f"/{SERVICE}/MadeUp-by-a-caller", None, None)
        assert await refused(made_up(b"", metadata=auth)) is grpc.StatusCode.UNIMPLEMENTED

    content_type, samples = await asyncio.to_thread(scrape, metrics_port)

    assert content_type.startswith("text/plain")
    assert value(samples, "grpc_server_started_total", **SEND) == 3
    handled = "grpc_server_handled_total"
    assert value(samples, handled, **SEND, grpc_code="OK") == 1
    assert value(samples, handled, **SEND, grpc_code="INVALID_ARGUMENT") == 1
    assert value(samples, handled, **SEND, grpc_code="UNAUTHENTICATED") == 1
    assert value(samples, handled, **LIST, grpc_code="OK") == 1
    assert value(samples, handled, **LIST, grpc_code="RESOURCE_EXHAUSTED") == 1
    assert value(samples, "grpc_server_handling_seconds_count", **SEND) == 3
    assert value(samples, "grpc_server_handling_seconds_bucket", **SEND, le="+Inf") == 3
    assert value(samples, "chat_rate_limited_total") == 1
    # Only the accepted message is stored, and answered by the engine.
    assert replies >= 1
    assert value(samples, "chat_messages_total", channel="web", direction="in") == 1
    assert value(samples, "chat_messages_total", channel="web", direction="out") == replies
    assert value(samples, "chat_engine_request_seconds_count", engine="builtin", outcome="ok") == 1
    assert not [labels for _, labels in samples if ("grpc_method", "MadeUp-by-a-caller") in labels]


async def test_deliveries_and_watches_are_counted(fresh_service: ServiceProcess) -> None:
    metrics_port = free_port()
    fresh_service.extra_env["METRICS_PORT"] = str(metrics_port)
    fresh_service.start()
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        auth = bearer(fresh_service.token("acme"))
        watch = stub.WatchConversations(pb.WatchConversationsRequest(), metadata=auth)
        opened = await scraped_until(
            metrics_port, lambda s: value(s, "chat_open_streams", kind="watches") == 1
        )
        assert value(opened, "chat_open_streams", kind="watches") == 1
        assert value(opened, "grpc_server_started_total", **WATCH) == 1

        # No WhatsApp connection: the reply cannot be delivered, and is dead-lettered.
        await stub.SendMessage(send_request(channel=resources_pb2.CHANNEL_WHATSAPP), metadata=auth)
        dead = "chat_delivery_dead_lettered_total"
        delivered = await scraped_until(
            metrics_port, lambda s: value(s, dead, channel="whatsapp") == 1
        )
        watch.cancel()
        # The status is recorded as the call ends, the watch closes as its
        # handler unwinds: either may show first.
        ended = await scraped_until(
            metrics_port,
            lambda s: (
                value(s, "grpc_server_handled_total", **WATCH, grpc_code="CANCELLED") == 1
                and value(s, "chat_open_streams", kind="watches") == 0
            ),
        )

    attempts = "chat_delivery_attempts_total"
    assert value(delivered, dead, channel="whatsapp") == 1
    assert value(delivered, attempts, channel="whatsapp", outcome="sent") == 0
    failed = value(delivered, attempts, channel="whatsapp", outcome="failed")
    assert failed >= 1
    # Every failed attempt but the last is retried.
    assert value(delivered, "chat_delivery_retries_total", channel="whatsapp") == failed - 1
    assert value(delivered, "chat_messages_total", channel="whatsapp", direction="in") == 1
    assert value(delivered, "chat_messages_total", channel="whatsapp", direction="out") >= 1
    assert value(ended, "grpc_server_handled_total", **WATCH, grpc_code="CANCELLED") == 1
    assert value(ended, "chat_open_streams", kind="watches") == 0


async def test_an_engine_that_cannot_be_reached_counts_a_fallback(
    fresh_service: ServiceProcess,
) -> None:
    metrics_port = free_port()
    # A port nothing listens on: every engine call fails UNAVAILABLE at once.
    fresh_service.extra_env.update(
        {"METRICS_PORT": str(metrics_port), "MCP_ENGINE_URL": f"127.0.0.1:{free_port()}"}
    )
    fresh_service.start()
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        await stub.SendMessage(send_request(), metadata=bearer(fresh_service.token("acme")))

    _, samples = await asyncio.to_thread(scrape, metrics_port)

    engine = "chat_engine_request_seconds_count"
    assert value(samples, engine, engine="mcp", outcome="unavailable") == 1
    assert value(samples, engine, engine="mcp", outcome="ok") == 0
    assert value(samples, "chat_engine_fallbacks_total", reason="unavailable") == 1
    assert value(samples, "chat_messages_total", channel="web", direction="out") >= 1


async def test_lock_waits_and_the_outbox_lag_are_recorded(fresh_service: ServiceProcess) -> None:
    metrics_port = free_port()
    fresh_service.extra_env["METRICS_PORT"] = str(metrics_port)
    fresh_service.start()
    _, started = await asyncio.to_thread(scrape, metrics_port)
    sends = 3
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        auth = bearer(fresh_service.token("acme"))
        for _ in range(sends):
            await stub.SendMessage(send_request(), metadata=auth)

    # The embedded default publishes to the log: wait for the relay to have
    # published every received message, then for its last batch's lag.
    for _ in range(200):
        if fresh_service.logs().count("event message.received ") == sends:
            break
        await asyncio.sleep(0.05)
    assert fresh_service.logs().count("event message.received ") == sends
    published = await scraped_until(metrics_port, lambda s: value(s, "chat_outbox_lag_events") == 0)

    assert ("chat_outbox_lag_events", frozenset()) in started
    assert ("chat_outbox_lag_events", frozenset()) in published
    assert value(published, "chat_outbox_lag_events") == 0
    # Each SendMessage holds its conversation's lock once; none waited too long.
    assert value(published, "chat_lock_wait_seconds_count", outcome="acquired") == sends
    assert value(published, "chat_lock_wait_seconds_count", outcome="timeout") == 0


async def test_a_listed_tenant_has_series_of_its_own_and_the_rest_are_other(
    fresh_service: ServiceProcess,
) -> None:
    metrics_port = free_port()
    fresh_service.extra_env.update(
        {
            "METRICS_PORT": str(metrics_port),
            "METRICS_TENANT_LABELS": "acme",
            # acme's third call and globex's second are refused.
            "RATE_LIMIT_TENANTS": "acme=0.001:2,globex=0.001:1",
        }
    )
    fresh_service.start()
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        acme = bearer(fresh_service.token("acme"))
        globex = bearer(fresh_service.token("globex"))
        for _ in range(2):
            await stub.SendMessage(send_request(), metadata=acme)
        assert await refused(stub.SendMessage(send_request(), metadata=acme)) is (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        # No WhatsApp connection: globex's reply is dead-lettered.
        whatsapp = send_request(channel=resources_pb2.CHANNEL_WHATSAPP)
        await stub.SendMessage(whatsapp, metadata=globex)
        assert await refused(stub.SendMessage(send_request(), metadata=globex)) is (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )

    dead = "chat_delivery_dead_lettered_total"
    samples = await scraped_until(
        metrics_port, lambda s: value(s, dead, channel="whatsapp", tenant="other") == 1
    )

    messages = "chat_messages_total"
    assert value(samples, messages, channel="web", direction="in", tenant="acme") == 2
    assert value(samples, messages, channel="web", direction="out", tenant="acme") >= 2
    assert value(samples, messages, channel="whatsapp", direction="in", tenant="other") == 1
    assert value(samples, messages, channel="whatsapp", direction="out", tenant="other") >= 1
    assert value(samples, "chat_rate_limited_total", tenant="acme") == 1
    assert value(samples, "chat_rate_limited_total", tenant="other") == 1
    assert value(samples, dead, channel="whatsapp", tenant="other") == 1
    assert value(samples, dead, channel="whatsapp", tenant="acme") == 0
    # The tenant is the listed one or "other" (globex has no series of its
    # own), the per-tenant metrics have no series without it, and the RPCs'
    # (go-grpc-prometheus's labels) have no tenant.
    tenants = {dict(labels).get("tenant") for name, labels in samples if name.startswith("chat_")}
    assert {"acme", "other"} <= tenants <= {"acme", "other", None}
    assert value(samples, messages, channel="web", direction="in") == 0
    assert value(samples, "chat_rate_limited_total") == 0
    assert not [labels for name, labels in samples if "tenant" in dict(labels) and "grpc" in name]
