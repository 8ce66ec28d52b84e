"""The ConnectionStore and WebhookInbox contracts, run against every
implementation: SQLite and MongoDB (nx-27017) beside their conversation
stores, as bootstrap wires them, and the in-memory fake of the unit tests.

To add an implementation, add a factory to FACTORIES; the tests stay as
they are. What only one store has to show (SQLite's durability and schema
migration, MongoDB's recovery from a change cut between its two writes)
follows the contract.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from pymongo.errors import AutoReconnect

from adapters.mongo import MongoStore
from adapters.mongo.channel_store import MongoChannelStore
from adapters.sqlite import SqliteStore
from adapters.sqlite.channel_store import SqliteChannelStore
from adapters.sqlite.connections import connect
from adapters.sqlite.schema import CHANNEL_TABLES, MIGRATIONS, SCHEMA_VERSION
from chat_service.domain.connections import AuditEntry, ChannelConnection
from chat_service.domain.enums import Channel
from chat_service.ports import (
    ConnectionExists,
    ConnectionStore,
    StoreUnavailable,
    VersionConflict,
    WebhookDelivery,
    WebhookInbox,
)
from tests.builders import OTHER_TENANT, T0, TENANT
from tests.fakes import InMemoryChannelStore


class ChannelStore(ConnectionStore, WebhookInbox, Protocol):
    """What each implementation is: both ports in one."""


@dataclass
class Opened:
    channels: ChannelStore
    close: Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


async def _memory(request: pytest.FixtureRequest) -> Opened:
    return Opened(InMemoryChannelStore(), _nothing)


async def _sqlite(request: pytest.FixtureRequest) -> Opened:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    store = await SqliteStore.open(tmp_path / "store" / "chat.db")
    return Opened(SqliteChannelStore(store), store.close)


async def _mongo(request: pytest.FixtureRequest) -> Opened:
    uri: str = request.getfixturevalue("mongo_uri")
    store = await MongoStore.open(uri)
    return Opened(MongoChannelStore(store), store.close)


FACTORIES: dict[str, Callable[[pytest.FixtureRequest], Awaitable[Opened]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "mongo": _mongo,
}


@pytest.fixture(params=list(FACTORIES))
async def channels(request: pytest.FixtureRequest) -> AsyncIterator[ChannelStore]:
    opened = await FACTORIES[request.param](request)
    yield opened.channels
    await opened.close()


# ------------------------------------------------------------------ helpers

# A header name with a dot and a detail key with one: MongoDB reads dots in
# field names as paths, so the stored shape must not use them as keys.
HEADERS = {"x-hub-signature-256": "sha256=ab", "x.odd.name": "1"}
# Bytes that are not UTF-8, escaped slashes, odd whitespace: kept as sent.
BODY = b'{"a":"caf\xc3\xa9 \\/x",\t"b":\xff\x00}\r\n'


def connection(
    connection_id: str = "conn-1",
    *,
    tenant_id: str = TENANT,
    channel: Channel = Channel.WHATSAPP,
    account_id: str = "1000",
    request_id: str = "",
    version: int = 1,
    at: datetime = T0,
) -> ChannelConnection:
    account_field = "phone_number_id" if channel is Channel.WHATSAPP else "page_id"
    return ChannelConnection(
        connection_id=connection_id,
        tenant_id=tenant_id,
        channel=channel,
        account_id=account_id,
        display_name="Support line ☎",
        webhook_url="https://hooks.example.com/wa",
        public={account_field: account_id},
        secrets={"app_secret": "v1.kid.sealed-app", "verify_token": "v1.kid.sealed-vt"},
        fingerprints={"app_secret": "fp-1", "verify_token": "fp-2"},
        created_at=at,
        updated_at=at,
        version=version,
        request_id=request_id,
        request_fingerprint="sha256:req" if request_id else "",
    )


def audit(
    of: ChannelConnection, action: str = "create", *, at: datetime | None = None
) -> AuditEntry:
    return AuditEntry(
        tenant_id=of.tenant_id,
        connection_id=of.connection_id,
        action=action,
        actor="admin@example.com",
        at=of.updated_at if at is None else at,
        changed_fields=("display_name", "whatsapp.app_secret") if action == "update" else (),
        detail={"fingerprint.app_secret": "fp-9"} if action == "update" else {},
    )


def changed(stored: ChannelConnection, **changes: Any) -> ChannelConnection:
    """`stored` one version on, as an update makes it."""
    at = stored.updated_at + timedelta(seconds=1)
    return dataclasses.replace(stored, version=stored.version + 1, updated_at=at, **changes)


async def create(channels: ChannelStore, new: ChannelConnection | None = None) -> ChannelConnection:
    new = new or connection()
    return await channels.create_connection(new, audit(new))


def delivery(
    dedup_key: str = "key-1",
    *,
    tenant_id: str = TENANT,
    channel: Channel = Channel.WHATSAPP,
    body: bytes = BODY,
) -> WebhookDelivery:
    return WebhookDelivery(
        tenant_id=tenant_id,
        channel=channel,
        dedup_key=dedup_key,
        body=body,
        content_type="application/json",
        received_at=T0,
        headers=HEADERS,
    )


def keys(deliveries: Any) -> list[str]:
    return [d.dedup_key for d in deliveries]


LATER = T0 + timedelta(minutes=5)


# ---------------------------------------------------------------- connections


async def test_a_created_connection_reads_back_equal(channels: ChannelStore) -> None:
    new = connection(request_id="req-1")

    returned = await channels.create_connection(new, audit(new))

    assert returned == new
    assert await channels.get_connection(TENANT, "conn-1") == new
    assert await channels.find_connection(TENANT, Channel.WHATSAPP, "1000") == new
    assert await channels.find_connection(TENANT, Channel.MESSENGER, "1000") is None
    assert await channels.find_connection(TENANT, Channel.WHATSAPP, "2000") is None
    assert await channels.get_connection(TENANT, "no-such-connection") is None


async def test_connections_list_in_id_order_by_pages_and_by_channel(
    channels: ChannelStore,
) -> None:
    for number in (3, 1, 5, 2, 4):
        channel = Channel.MESSENGER if number % 2 == 0 else Channel.WHATSAPP
        await create(
            channels, connection(f"conn-{number}", channel=channel, account_id=f"{number}00")
        )

    pages: list[list[str]] = []
    after = ""
    while page := await channels.list_connections(TENANT, channel=None, limit=2, after_id=after):
        pages.append([c.connection_id for c in page])
        after = page[-1].connection_id
    messenger = await channels.list_connections(TENANT, channel=Channel.MESSENGER, limit=10)
    later_whatsapp = await channels.list_connections(
        TENANT, channel=Channel.WHATSAPP, limit=10, after_id="conn-1"
    )

    assert pages == [["conn-1", "conn-2"], ["conn-3", "conn-4"], ["conn-5"]]
    assert [c.connection_id for c in messenger] == ["conn-2", "conn-4"]
    assert [c.connection_id for c in later_whatsapp] == ["conn-3", "conn-5"]
    with pytest.raises(ValueError, match="limit"):
        await channels.list_connections(TENANT, channel=None, limit=0)


async def test_an_update_replaces_the_connection_at_its_version(channels: ChannelStore) -> None:
    stored = await create(channels)
    second = changed(stored, display_name="Sales", secrets={"app_secret": "v1.kid.new"})

    await channels.update_connection(second, audit(second, "update"))
    third = changed(second, account_id="2000", public={"phone_number_id": "2000"})
    await channels.update_connection(third, audit(third, "update"))

    assert await channels.get_connection(TENANT, "conn-1") == third
    assert await channels.find_connection(TENANT, Channel.WHATSAPP, "2000") == third
    assert await channels.find_connection(TENANT, Channel.WHATSAPP, "1000") is None


async def test_a_stale_or_absent_connection_is_a_version_conflict_and_writes_nothing(
    channels: ChannelStore,
) -> None:
    stored = await create(channels)
    second = changed(stored, display_name="first writer")
    await channels.update_connection(second, audit(second, "update"))
    rival = changed(stored, display_name="second writer")  # also from version 1

    with pytest.raises(VersionConflict):
        await channels.update_connection(rival, audit(rival, "update"))
    ghost = changed(connection("conn-ghost", account_id="9000"))
    with pytest.raises(VersionConflict):
        await channels.update_connection(ghost, audit(ghost, "update"))

    assert await channels.get_connection(TENANT, "conn-1") == second
    assert await channels.get_connection(TENANT, "conn-ghost") is None
    assert len(await channels.list_audit(TENANT, limit=10)) == 2


async def test_a_deleted_connection_is_gone_and_deleting_it_again_is_false(
    channels: ChannelStore,
) -> None:
    stored = await create(channels)
    removal = audit(stored, "delete", at=LATER)

    assert await channels.delete_connection(TENANT, "conn-1", removal) is True
    assert await channels.delete_connection(TENANT, "conn-1", removal) is False

    assert await channels.get_connection(TENANT, "conn-1") is None
    assert await channels.find_connection(TENANT, Channel.WHATSAPP, "1000") is None
    assert await channels.list_connections(TENANT, channel=None, limit=10) == []
    assert [e.action for e in await channels.list_audit(TENANT, limit=10)] == [
        "delete",
        "create",
    ]
    # The account is free again.
    again = connection("conn-2")
    assert await channels.create_connection(again, audit(again)) == again


async def test_a_create_with_a_known_request_id_returns_the_first_and_writes_nothing(
    channels: ChannelStore,
) -> None:
    first = await create(channels, connection("conn-1", request_id="req-1"))
    retry = connection("conn-2", request_id="req-1", account_id="2000")

    assert await channels.create_connection(retry, audit(retry)) == first

    assert await channels.get_connection(TENANT, "conn-2") is None
    assert [e.connection_id for e in await channels.list_audit(TENANT, limit=10)] == ["conn-1"]
    # Request ids are per tenant, and connections without one never match.
    theirs = connection("conn-3", tenant_id=OTHER_TENANT, request_id="req-1")
    assert await channels.create_connection(theirs, audit(theirs)) == theirs
    plain = [connection(f"conn-{n}", account_id=f"{n}000") for n in (4, 5)]
    for each in plain:
        assert await channels.create_connection(each, audit(each)) == each


async def test_concurrent_creates_with_one_request_id_make_one_connection(
    channels: ChannelStore,
) -> None:
    attempts = [
        connection(f"conn-{n}", request_id="req-1", account_id=f"{n}000") for n in range(1, 5)
    ]

    results = await asyncio.gather(*(channels.create_connection(c, audit(c)) for c in attempts))

    assert len({r.connection_id for r in results}) == 1
    assert len(await channels.list_connections(TENANT, channel=None, limit=10)) == 1
    assert len(await channels.list_audit(TENANT, limit=10)) == 1


async def test_an_account_taken_by_another_connection_is_refused(channels: ChannelStore) -> None:
    await create(channels, connection("conn-1", account_id="1000"))
    other = await create(channels, connection("conn-2", account_id="2000"))

    duplicate = connection("conn-3", account_id="1000")
    with pytest.raises(ConnectionExists) as created:
        await channels.create_connection(duplicate, audit(duplicate))
    taking = changed(other, account_id="1000", public={"phone_number_id": "1000"})
    with pytest.raises(ConnectionExists) as updated:
        await channels.update_connection(taking, audit(taking, "update"))

    assert created.value.connection_id == "conn-1"
    assert updated.value.connection_id == "conn-1"
    assert await channels.get_connection(TENANT, "conn-3") is None
    assert await channels.get_connection(TENANT, "conn-2") == other
    assert len(await channels.list_audit(TENANT, limit=10)) == 2
    # The same account id on another platform, or of another tenant, is free.
    for free in (
        connection("conn-4", channel=Channel.MESSENGER, account_id="1000"),
        connection("conn-5", tenant_id=OTHER_TENANT, account_id="1000"),
    ):
        assert await channels.create_connection(free, audit(free)) == free


async def test_another_tenant_sees_nothing_and_changes_nothing(channels: ChannelStore) -> None:
    stored = await create(channels)

    assert await channels.get_connection(OTHER_TENANT, "conn-1") is None
    assert await channels.find_connection(OTHER_TENANT, Channel.WHATSAPP, "1000") is None
    assert await channels.list_connections(OTHER_TENANT, channel=None, limit=10) == []
    assert await channels.list_audit(OTHER_TENANT, limit=10) == []
    theirs = dataclasses.replace(changed(stored), tenant_id=OTHER_TENANT)
    with pytest.raises(VersionConflict):
        await channels.update_connection(theirs, audit(theirs, "update"))
    removal = dataclasses.replace(audit(stored, "delete"), tenant_id=OTHER_TENANT)
    assert await channels.delete_connection(OTHER_TENANT, "conn-1", removal) is False
    assert await channels.get_connection(TENANT, "conn-1") == stored


async def test_the_audit_log_is_newest_first_per_connection_and_bounded(
    channels: ChannelStore,
) -> None:
    one = await create(channels, connection("conn-1", account_id="1000"))
    two = await create(channels, connection("conn-2", account_id="2000"))
    one_v2 = changed(one)
    update = audit(one_v2, "update")
    await channels.update_connection(one_v2, update)
    # Written at the same time as the update: the later write is newer.
    removal = audit(two, "delete", at=one_v2.updated_at)
    await channels.delete_connection(TENANT, "conn-2", removal)

    log = await channels.list_audit(TENANT, limit=10)
    of_one = await channels.list_audit(TENANT, limit=10, connection_id="conn-1")
    newest = await channels.list_audit(TENANT, limit=1)

    assert log == [removal, update, audit(two), audit(one)]
    assert of_one == [update, audit(one)]
    assert newest == [removal]
    assert update.detail == {"fingerprint.app_secret": "fp-9"}  # kept as given


# --------------------------------------------------------------------- inbox


async def test_a_delivery_is_kept_once_per_key(channels: ChannelStore) -> None:
    assert await channels.put(delivery("key-1")) is True
    assert await channels.put(delivery("key-1", body=b"another body")) is False
    # The key is per tenant and platform.
    assert await channels.put(delivery("key-1", tenant_id=OTHER_TENANT)) is True
    assert await channels.put(delivery("key-1", channel=Channel.MESSENGER)) is True

    claimed = await channels.claim("worker", now=T0, limit=10, lease_seconds=30)

    assert len(claimed) == 3
    first = claimed[0]
    assert first == dataclasses.replace(delivery("key-1"), position=first.position, attempts=1)
    assert first.body == BODY
    assert dict(first.headers) == HEADERS
    assert [d.position for d in claimed] == sorted({d.position for d in claimed})


async def test_claims_are_oldest_first_and_bounded(channels: ChannelStore) -> None:
    for n in range(1, 6):
        await channels.put(delivery(f"key-{n}"))

    first = await channels.claim("worker", now=T0, limit=2, lease_seconds=30)
    rest = await channels.claim("other", now=T0, limit=10, lease_seconds=30)

    assert keys(first) == ["key-1", "key-2"]
    assert keys(rest) == ["key-3", "key-4", "key-5"]
    with pytest.raises(ValueError, match="limit"):
        await channels.claim("worker", now=T0, limit=0, lease_seconds=30)


async def test_a_leased_delivery_is_another_owners_only_once_its_lease_expires(
    channels: ChannelStore,
) -> None:
    await channels.put(delivery("key-1"))
    [taken] = await channels.claim("crashed", now=T0, limit=10, lease_seconds=30)

    during = await channels.claim(
        "rescuer", now=T0 + timedelta(seconds=29), limit=10, lease_seconds=30
    )
    after = await channels.claim(
        "rescuer", now=T0 + timedelta(seconds=31), limit=10, lease_seconds=30
    )
    # The first owner, back, no longer holds it: its finish changes nothing.
    await channels.finish("crashed", taken.position, now=T0 + timedelta(seconds=32))
    still = await channels.claim(
        "third", now=T0 + timedelta(seconds=62), limit=10, lease_seconds=30
    )

    assert taken.attempts == 1
    assert during == []
    assert keys(after) == ["key-1"]
    assert after[0].attempts == 2
    assert keys(still) == ["key-1"]
    assert still[0].attempts == 3


async def test_an_owner_claims_its_own_leases_again(channels: ChannelStore) -> None:
    await channels.put(delivery("key-1"))
    await channels.claim("worker", now=T0, limit=10, lease_seconds=30)

    again = await channels.claim(
        "worker", now=T0 + timedelta(seconds=1), limit=10, lease_seconds=30
    )

    assert keys(again) == ["key-1"]
    assert again[0].attempts == 2


async def test_concurrent_claimers_never_share_a_delivery(channels: ChannelStore) -> None:
    for n in range(1, 9):
        await channels.put(delivery(f"key-{n}"))

    claims = await asyncio.gather(
        *(channels.claim(f"worker-{w}", now=T0, limit=3, lease_seconds=30) for w in range(4))
    )

    taken = [key for claim in claims for key in keys(claim)]
    assert sorted(taken) == sorted(f"key-{n}" for n in range(1, 9))


async def test_a_delivery_retried_later_is_due_only_then(channels: ChannelStore) -> None:
    await channels.put(delivery("key-1"))
    [taken] = await channels.claim("worker", now=T0, limit=10, lease_seconds=30)

    await channels.retry_later(
        "worker", taken.position, not_before=T0 + timedelta(seconds=60), error="engine down"
    )
    early = await channels.claim(
        "other", now=T0 + timedelta(seconds=59), limit=10, lease_seconds=30
    )
    due = await channels.claim("other", now=T0 + timedelta(seconds=60), limit=10, lease_seconds=30)

    assert early == []
    assert keys(due) == ["key-1"]
    assert due[0].attempts == 2


async def test_a_finished_delivery_is_never_claimed_and_still_deduplicates(
    channels: ChannelStore,
) -> None:
    await channels.put(delivery("key-1"))
    await channels.put(delivery("key-2"))
    [one, two] = await channels.claim("worker", now=T0, limit=10, lease_seconds=30)

    await channels.finish("worker", one.position, now=T0)
    await channels.dead_letter("worker", two.position, now=T0, error="unparseable: " + "x" * 5000)

    assert await channels.claim("worker", now=LATER, limit=10, lease_seconds=30) == []
    assert await channels.put(delivery("key-1")) is False
    assert await channels.put(delivery("key-2")) is False


async def test_pruning_removes_processed_deliveries_oldest_first(channels: ChannelStore) -> None:
    for n in range(1, 5):
        await channels.put(delivery(f"key-{n}"))
    taken = await channels.claim("worker", now=T0, limit=10, lease_seconds=30)
    for seconds, each in zip((3, 1, 2), taken[:3], strict=True):
        await channels.finish("worker", each.position, now=T0 + timedelta(seconds=seconds))
    # key-4 stays unprocessed (leased): never pruned.

    assert await channels.prune(processed_before=T0 + timedelta(seconds=3), limit=1) == 1
    assert await channels.put(delivery("key-2")) is True  # key-2, finished first, is forgotten
    assert await channels.prune(processed_before=LATER, limit=10) == 2
    assert await channels.prune(processed_before=LATER, limit=10) == 0

    for key in ("key-1", "key-3"):
        assert await channels.put(delivery(key)) is True
    assert await channels.put(delivery("key-4")) is False
    reclaimed = await channels.claim(
        "worker", now=T0 + timedelta(seconds=5), limit=10, lease_seconds=30
    )
    assert keys(reclaimed) == ["key-4", "key-2", "key-1", "key-3"]


# --------------------------------------------------------------- opt-outs

USER = "+14155550100"


async def test_an_opt_out_holds_until_the_user_opts_in_again(channels: ChannelStore) -> None:
    assert await channels.is_opted_out(TENANT, "conn-1", USER) is False

    assert await channels.set_opt_out(TENANT, "conn-1", USER, True, T0) is True
    stopped = await channels.is_opted_out(TENANT, "conn-1", USER)
    assert await channels.set_opt_out(TENANT, "conn-1", USER, False, T0 + timedelta(seconds=1))

    assert stopped is True
    assert await channels.is_opted_out(TENANT, "conn-1", USER) is False


async def test_an_opt_out_is_per_tenant_connection_and_user(channels: ChannelStore) -> None:
    await channels.set_opt_out(TENANT, "conn-1", USER, True, T0)

    assert await channels.is_opted_out(TENANT, "conn-1", USER) is True
    assert await channels.is_opted_out(TENANT, "conn-2", USER) is False
    assert await channels.is_opted_out(TENANT, "conn-1", "+14155550199") is False
    assert await channels.is_opted_out(OTHER_TENANT, "conn-1", USER) is False


async def test_an_older_keyword_does_not_undo_a_newer_one(channels: ChannelStore) -> None:
    # START at T0 + 5 s was recorded; the STOP of T0, retried late, comes after.
    await channels.set_opt_out(TENANT, "conn-1", USER, False, T0 + timedelta(seconds=5))

    late = await channels.set_opt_out(TENANT, "conn-1", USER, True, T0)
    again = await channels.set_opt_out(TENANT, "conn-1", USER, False, T0 + timedelta(seconds=5))

    assert late is False
    assert again is True  # the same keyword once more: idempotent
    assert await channels.is_opted_out(TENANT, "conn-1", USER) is False


async def test_concurrent_first_opt_outs_leave_one_record(channels: ChannelStore) -> None:
    results = await asyncio.gather(
        *(
            channels.set_opt_out(TENANT, "conn-1", USER, True, T0 + timedelta(seconds=n))
            for n in range(5)
        )
    )

    assert any(results)
    assert await channels.is_opted_out(TENANT, "conn-1", USER) is True


# ------------------------------------------------------------- SQLite only


async def test_sqlite_keeps_connections_and_unprocessed_deliveries_across_reopening(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chat.db"
    store = await SqliteStore.open(path, synchronous="FULL")
    channels = SqliteChannelStore(store)
    stored = await create(channels)
    for n in range(1, 4):
        await channels.put(delivery(f"key-{n}"))
    done, leased = await channels.claim("before-crash", now=T0, limit=2, lease_seconds=30)
    await channels.finish("before-crash", done.position, now=T0)
    await store.close()

    reopened = await SqliteStore.open(path)
    try:
        again = SqliteChannelStore(reopened)
        assert await again.get_connection(TENANT, "conn-1") == stored
        assert await again.list_audit(TENANT, limit=10) == [audit(stored)]
        claimed = await again.claim(
            "after-restart", now=T0 + timedelta(seconds=31), limit=10, lease_seconds=30
        )
        assert keys(claimed) == ["key-2", "key-3"]
        assert claimed[0] == dataclasses.replace(leased, attempts=2)
        assert await again.put(delivery("key-1")) is False
    finally:
        await reopened.close()


async def test_a_sqlite_file_from_before_the_channel_tables_opens_with_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    before = MIGRATIONS.index(CHANNEL_TABLES)
    with closing(connect(path, busy_timeout=1)) as old:
        for migration in MIGRATIONS[:before]:
            for statement in migration:
                old.execute(statement)
        old.execute(f"PRAGMA user_version = {before}")

    store = await SqliteStore.open(path)
    try:
        channels = SqliteChannelStore(store)
        assert await create(channels) == connection()
        assert await channels.put(delivery()) is True
    finally:
        await store.close()

    with closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_sqlite_channel_store_is_closed_with_its_store(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "chat.db")
    channels = SqliteChannelStore(store)
    await store.close()

    with pytest.raises(StoreUnavailable):
        await channels.put(delivery())
    with pytest.raises(StoreUnavailable):
        await channels.get_connection(TENANT, "conn-1")


# ------------------------------------------------------------ MongoDB only


@pytest.fixture
async def mongo_channels(mongo_uri: str) -> AsyncIterator[MongoChannelStore]:
    store = await MongoStore.open(mongo_uri)
    yield MongoChannelStore(store)
    await store.close()


async def test_mongo_an_audit_entry_not_yet_copied_out_is_in_the_log_at_once(
    mongo_channels: MongoChannelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def died_before_copying(*args: Any, **kwargs: Any) -> None:
        return None  # the process died right after the change's own write

    with monkeypatch.context() as cut:
        cut.setattr(MongoChannelStore, "_copy_out", died_before_copying)
        stored = await create(mongo_channels)

    assert await mongo_channels.list_audit(TENANT, limit=10) == [audit(stored)]
    # The next change copies the left-over entry out before putting its own
    # in its place: neither is lost nor doubled.
    second = changed(stored)
    await mongo_channels.update_connection(second, audit(second, "update"))
    assert await mongo_channels.list_audit(TENANT, limit=10) == [
        audit(second, "update"),
        audit(stored),
    ]


async def test_mongo_a_deletion_cut_before_its_document_went_is_finished_later(
    mongo_channels: MongoChannelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def connection_lost(*args: Any, **kwargs: Any) -> None:
        raise AutoReconnect("connection lost")  # right after the deletion mark

    stored = await create(mongo_channels, connection(request_id="req-1"))
    removal = audit(stored, "delete", at=LATER)
    with monkeypatch.context() as cut:
        cut.setattr(MongoChannelStore, "_finish_deletion", connection_lost)
        assert await mongo_channels.delete_connection(TENANT, "conn-1", removal) is True

    assert await mongo_channels.get_connection(TENANT, "conn-1") is None
    assert await mongo_channels.find_connection(TENANT, Channel.WHATSAPP, "1000") is None
    assert await mongo_channels.list_connections(TENANT, channel=None, limit=10) == []
    assert await mongo_channels.list_audit(TENANT, limit=10) == [removal, audit(stored)]
    assert await mongo_channels.delete_connection(TENANT, "conn-1", removal) is False
    # The mark still holds the account and the request id: a create meeting
    # it finishes the deletion, then succeeds.
    again = connection("conn-2", request_id="req-1")
    assert await mongo_channels.create_connection(again, audit(again)) == again
    assert await mongo_channels.list_audit(TENANT, limit=10) == [
        removal,
        audit(again),
        audit(stored),
    ]
