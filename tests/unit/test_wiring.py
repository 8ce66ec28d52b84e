"""The wiring production and the unit tests share (chat_service/wiring.py),
and bootstrap's choice of parts on the embedded defaults."""

from __future__ import annotations

import asyncio
from pathlib import Path

from adapters.engine.builtin import BuiltinEngine
from adapters.memory.locks import InProcessConversationLocks
from adapters.memory.log_publisher import LogPublisher
from adapters.memory.session_cache import InProcessSessionCache
from adapters.sqlite.store import SqliteStore
from chat_service.bootstrap import choose_parts
from chat_service.config import Settings
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.events import EventType
from chat_service.domain.model import InboundMessage
from chat_service.wiring import Lifecycle
from tests.builders import TENANT, build_core
from tests.fakes import InMemoryStore, RecordingSender


def _inbound(channel: Channel, text: str = "hello") -> InboundMessage:
    return InboundMessage(
        tenant_id=TENANT,
        message_id="",
        conversation_id="",
        user_id="user-1",
        channel=channel,
        content=MessageContent.of_text(text),
    )


async def _event_types(store: InMemoryStore) -> list[EventType]:
    entries = await store.read_events(after_position=0, limit=100)
    return [entry.event.event_type for entry in entries]


async def test_web_replies_are_delivered_by_storing_them() -> None:
    store, sender = InMemoryStore(), RecordingSender()
    core = build_core(store=store, senders={Channel.WEB: sender})

    result = (await core.send_message(_inbound(Channel.WEB))).result

    assert [reply.delivery_status for reply in result.replies] == [DeliveryStatus.SENT]
    assert core.delivery.pending == 0
    assert sender.attempts == 0  # a web connector, had there been one, is never called
    assert EventType.DELIVERY_UPDATED not in await _event_types(store)


async def test_platform_replies_go_through_their_sender() -> None:
    store, sender = InMemoryStore(), RecordingSender()
    core = build_core(store=store, senders={Channel.SMS: sender})

    result = (await core.send_message(_inbound(Channel.SMS))).result

    assert [reply.delivery_status for reply in result.replies] == [DeliveryStatus.PENDING]
    assert await core.delivery.wait_idle(1.0)
    assert sender.delivered == list(result.replies)
    assert (await _event_types(store))[-1] is EventType.DELIVERY_UPDATED


async def test_a_state_cache_given_is_fed_every_commit() -> None:
    cache = InProcessSessionCache()
    core = build_core(state_cache=cache)

    result = (await core.send_message(_inbound(Channel.WEB))).result
    await core.close(timeout=1.0)  # drains the feed

    cached = await cache.get_conversation_state(TENANT, result.conversation_id)
    assert cached is not None
    assert (cached.version, cached.state) == (2, result.state)


async def test_nothing_runs_until_started() -> None:
    before = asyncio.all_tasks()
    core = build_core()
    assert asyncio.all_tasks() == before
    await core.start()
    # The outbox relay, the event tail, the sweeps for pending deliveries no
    # live process holds (delivery.run_sweeps, until close), the webhook
    # inbox worker.
    assert len(asyncio.all_tasks()) == len(before) + 4
    await core.close(timeout=1.0)
    assert asyncio.all_tasks() == before


async def test_the_embedded_defaults(tmp_path: Path) -> None:
    life = Lifecycle()
    parts = await choose_parts(Settings(data_dir=tmp_path), life)
    try:
        assert isinstance(parts.store, SqliteStore)
        assert isinstance(parts.coordination.locks, InProcessConversationLocks)
        assert isinstance(parts.publisher, LogPublisher)
        assert isinstance(parts.engine, BuiltinEngine)
        assert parts.lifecycle is life
        # Nobody else could read a cache in this process: none is fed.
        assert parts.state_cache is None
        assert isinstance(parts.coordination.sessions, InProcessSessionCache)
    finally:
        for close in reversed(life.closers):
            await close()
