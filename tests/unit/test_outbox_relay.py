"""The outbox relay's settings, owner id and retention loop (the store
behaviour under them is in tests/integration/test_store_contract.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from chat_service.bootstrap import relay_owner
from chat_service.config import ConfigError, Settings
from chat_service.domain.events import OutboxEntry
from chat_service.pipeline.outbox_relay import OutboxRelay, RelaySettings
from chat_service.pipeline.watch import EventTail
from chat_service.ports import EventsPruned
from chat_service.wiring import relay_settings
from tests.builders import create_change, make_conversation, make_event, update_change
from tests.fakes import InMemoryStore


class _Publisher:
    def __init__(self) -> None:
        self.published: list[OutboxEntry] = []

    async def publish(self, entries: Sequence[OutboxEntry]) -> None:
        self.published.extend(entries)

    async def close(self) -> None:
        return


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.moment = now

    def now(self) -> datetime:
        return self.moment


def test_retention_and_kafka_durability_settings_are_read() -> None:
    defaults = Settings.from_env({})
    assert defaults.outbox_retention_hours == 168
    assert defaults.outbox_retention_max_rows == 1_000_000
    assert defaults.kafka_min_insync_replicas == 2
    assert defaults.kafka_replication_factor is None

    settings = Settings.from_env(
        {
            "OUTBOX_RETENTION_HOURS": "24",
            "OUTBOX_RETENTION_MAX_ROWS": "5000",
            "OUTBOX_PRUNE_INTERVAL_SECONDS": "5",
            "OUTBOX_RELAY_ID": "pod-7",
            "KAFKA_REPLICATION_FACTOR": "3",
            "KAFKA_MIN_INSYNC_REPLICAS": "3",
        }
    )
    relay = relay_settings(settings)
    assert relay.retention == timedelta(hours=24)
    assert relay.retention_max_rows == 5000
    assert relay.prune_interval_seconds == 5
    assert relay_owner(settings) == "pod-7"
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 3)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"OUTBOX_RETENTION_HOURS": "0"}, "OUTBOX_RETENTION_HOURS"),
        ({"OUTBOX_RETENTION_MAX_ROWS": "0"}, "OUTBOX_RETENTION_MAX_ROWS"),
        ({"OUTBOX_PRUNE_INTERVAL_SECONDS": "soon"}, "OUTBOX_PRUNE_INTERVAL_SECONDS"),
        ({"KAFKA_REPLICATION_FACTOR": "0"}, "KAFKA_REPLICATION_FACTOR"),
        ({"KAFKA_MIN_INSYNC_REPLICAS": "0"}, "KAFKA_MIN_INSYNC_REPLICAS"),
        # acks=all could never be met: every publish would fail.
        (
            {"KAFKA_REPLICATION_FACTOR": "1", "KAFKA_MIN_INSYNC_REPLICAS": "2"},
            "KAFKA_MIN_INSYNC_REPLICAS",
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


def test_a_restarted_process_keeps_its_relay_owner_id() -> None:
    # Before: a random id per start, so a crashed process's lease held every
    # tenant's events back for its whole length after the restart.
    settings = Settings.from_env({"SERVICE_PORT": "8001"})
    assert relay_owner(settings) == relay_owner(Settings.from_env({"SERVICE_PORT": "8001"}))
    assert relay_owner(settings) == f"{socket.gethostname()}:8001"
    # Another slot on the host (another port) is another owner.
    assert relay_owner(Settings.from_env({"SERVICE_PORT": "8002"})) != relay_owner(settings)
    # Any free port: nothing stable to go by.
    any_port = Settings.from_env({"SERVICE_PORT": "0"})
    assert relay_owner(any_port) != relay_owner(any_port)


class _PruneWatcher(InMemoryStore):
    """Tells when pruning has gone all the way (a round that pruned nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[int] = []
        self.caught_up = asyncio.Event()

    async def prune_outbox(self, *, published_before: datetime, keep_last: int, limit: int) -> int:
        pruned = await super().prune_outbox(
            published_before=published_before, keep_last=keep_last, limit=limit
        )
        self.rounds.append(pruned)
        if pruned == 0 and any(self.rounds):
            self.caught_up.set()
        return pruned


async def test_the_relay_prunes_published_rows_past_retention_in_batches() -> None:
    store = _PruneWatcher()
    conversation = make_conversation()
    events = [make_event(conversation) for _ in range(5)]
    await store.write(create_change(conversation, events=events))
    clock = _Clock(datetime.now(UTC))
    settings = RelaySettings(
        retention=timedelta(hours=1),
        retention_max_rows=1_000,
        prune_batch_size=2,
        prune_interval_seconds=0.01,
    )
    publisher = _Publisher()
    relay = OutboxRelay(store, publisher, settings, owner="relay", clock=clock)
    assert await relay.publish_once() == 5
    assert await relay.prune_once() == 0  # published just now: kept

    clock.moment += timedelta(hours=2)
    running = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(store.caught_up.wait(), 5)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    # Batches of two, one after the other, until nothing is left to prune.
    assert store.rounds[:5] == [0, 2, 2, 1, 0]
    with pytest.raises(EventsPruned):
        await store.read_events(after_position=0, limit=100)
    assert await store.read_events(after_position=5, limit=100) == []
    assert await store.last_event_position() == 5
    assert [entry.event for entry in publisher.published] == events


async def test_an_event_tail_behind_the_retention_goes_on_from_what_is_left() -> None:
    # A process stalled for longer than the retention: its tail must not
    # fail on every poll (freezing every live watch), but read on.
    store = InMemoryStore()
    conversation = make_conversation()
    events = [make_event(conversation) for _ in range(4)]
    await store.write(create_change(conversation, events=events))
    tail = EventTail(store)
    seen: list[OutboxEntry] = []
    tail.subscribe(conversation.tenant_id, seen.append)
    relay = OutboxRelay(store, _Publisher(), owner="relay")
    assert await relay.publish_once() == 4
    assert (
        await store.prune_outbox(
            published_before=datetime(2000, 1, 1, tzinfo=UTC), keep_last=1, limit=10
        )
        == 3
    )
    later = make_event(conversation)
    await store.write(update_change(create_change(conversation).conversation, events=[later]))

    await tail.follow_once()  # skips what was pruned
    await tail.follow_once()

    assert [entry.event for entry in seen] == [events[3], later]
