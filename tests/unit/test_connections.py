"""Channel connections through the core (tests/builders.build_core, fakes):
the admin use cases and the cached directory of opened connections."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta

import pytest

from adapters.secrets import AesGcmSecretBox
from chat_service.domain.connections import (
    AuditEntry,
    ChannelConnection,
    ConnectionFields,
    secret_context,
)
from chat_service.domain.enums import Channel
from chat_service.domain.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from chat_service.pipeline.connections import (
    CONNECTION_ID_PATTERN,
    NEGATIVE_TTL_SECONDS,
    CachedConnections,
    ChannelConnections,
    FieldsFor,
)
from chat_service.ports import SecretUnreadable, VersionConflict
from chat_service.wiring import Services
from tests.builders import CORE_SETTINGS, OTHER_TENANT, T0, TENANT, build_core, make_secret_box
from tests.fakes import InMemoryChannelStore, SteppingClock

ACTOR = "admin@example.com"
TTL = timedelta(seconds=CORE_SETTINGS.channel_cache_seconds)


class CountingStore(InMemoryChannelStore):
    """The fake store, counting reads, failing the next updates on request,
    and holding list reads at a gate when one is set."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.conflicts = 0
        self.gate: asyncio.Event | None = None
        self.held: asyncio.Queue[None] = asyncio.Queue()  # one item per read held

    async def get_connection(self, tenant_id: str, connection_id: str) -> ChannelConnection | None:
        self.reads += 1
        return await super().get_connection(tenant_id, connection_id)

    async def list_connections(
        self, tenant_id: str, *, channel: Channel | None, limit: int, after_id: str = ""
    ) -> Sequence[ChannelConnection]:
        self.reads += 1
        found = await super().list_connections(
            tenant_id, channel=channel, limit=limit, after_id=after_id
        )
        if self.gate is not None:  # what it read is held back until the gate opens
            self.held.put_nowait(None)
            await self.gate.wait()
        return found

    async def update_connection(self, connection: ChannelConnection, audit: AuditEntry) -> None:
        if self.conflicts:
            self.conflicts -= 1
            raise VersionConflict("changed meanwhile")
        await super().update_connection(connection, audit)

    def everything_stored(self) -> str:
        """All the store holds, as text (to look for plaintext in it)."""
        return repr(self.__dict__)


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock(T0)


@pytest.fixture
def core(store: CountingStore, clock: SteppingClock) -> Services:
    return build_core(channels=store, clock=clock)


@pytest.fixture
def connections(core: Services) -> ChannelConnections:
    return core.connections


@pytest.fixture
def directory(core: Services) -> CachedConnections:
    return core.directory


def _secret(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex}"


def whatsapp(
    phone_number_id: str = "106540352242922",
    *,
    display_name: str = "Support number",
    webhook_url: str = "",
) -> ConnectionFields:
    return ConnectionFields(
        channel=Channel.WHATSAPP,
        display_name=display_name,
        webhook_url=webhook_url,
        public={"phone_number_id": phone_number_id},
        secrets={
            "app_secret": _secret("app"),
            "verify_token": _secret("verify"),
            "access_token": _secret("access"),
        },
    )


def messenger(page_id: str = "1234567890") -> ConnectionFields:
    return ConnectionFields(
        channel=Channel.MESSENGER,
        public={"page_id": page_id},
        secrets={
            "app_secret": _secret("app"),
            "verify_token": _secret("verify"),
            "page_access_token": _secret("page"),
        },
    )


async def _create(
    connections: ChannelConnections,
    fields: ConnectionFields | None = None,
    *,
    tenant: str = TENANT,
    request_id: str = "",
) -> ChannelConnection:
    return await connections.create(
        tenant, fields or whatsapp(), request_id=request_id, actor=ACTOR
    )


def _only(fields: ConnectionFields) -> FieldsFor:
    """An update's fields_for that ignores the stored platform."""
    return lambda _channel: fields


# ------------------------------------------------------------------ create


async def test_create_seals_every_secret_and_shows_only_fingerprints(
    connections: ChannelConnections, store: CountingStore
) -> None:
    fields = whatsapp()

    created = await _create(connections, fields)

    assert CONNECTION_ID_PATTERN.fullmatch(created.connection_id)
    assert (created.channel, created.account_id) == (Channel.WHATSAPP, "106540352242922")
    assert created.public == {"phone_number_id": "106540352242922"}
    box = make_secret_box()
    assert created.fingerprints == {
        name: box.fingerprint(value) for name, value in fields.secrets.items()
    }
    # At rest: nothing in the store is a plaintext secret...
    stored = store.everything_stored()
    for value in fields.secrets.values():
        assert value not in stored
    # ...and each sealed value opens only as the field it was sealed for.
    for name, value in fields.secrets.items():
        context = secret_context(TENANT, created.connection_id, name)
        assert box.open(created.secrets[name], context=context) == value
    with pytest.raises(SecretUnreadable):
        box.open(
            created.secrets["app_secret"],
            context=secret_context(TENANT, created.connection_id, "access_token"),
        )


async def test_create_writes_an_audit_entry_without_values(
    connections: ChannelConnections, store: CountingStore
) -> None:
    fields = whatsapp(webhook_url="https://hooks.example.com/wa")

    created = await _create(connections, fields)

    [entry] = await store.list_audit(TENANT, limit=10)
    assert (entry.action, entry.actor, entry.connection_id) == (
        "create",
        ACTOR,
        created.connection_id,
    )
    assert entry.changed_fields == (
        "display_name",
        "webhook_url",
        "whatsapp.phone_number_id",
        "whatsapp.app_secret",
        "whatsapp.verify_token",
        "whatsapp.access_token",
    )
    written = repr(entry)
    assert not any(value in written for value in fields.secrets.values())
    assert entry.detail["fingerprint.access_token"] == created.fingerprints["access_token"]


async def test_changes_are_logged_by_field_name_only(
    connections: ChannelConnections, caplog: pytest.LogCaptureFixture
) -> None:
    fields = whatsapp()
    with caplog.at_level(logging.INFO, logger="chat_service.pipeline.connections"):
        created = await _create(connections, fields)
        rotated = {"access_token": _secret("rotated")}
        await connections.update(
            TENANT,
            created.connection_id,
            _only(ConnectionFields(Channel.WHATSAPP, secrets=rotated)),
            ["whatsapp.access_token"],
            actor=ACTOR,
        )

    logged = caplog.text
    assert f"create: tenant {TENANT}, connection {created.connection_id}" in logged
    assert "fields [whatsapp.access_token]" in logged
    for value in [*fields.secrets.values(), rotated["access_token"]]:
        assert value not in logged


async def test_a_retried_create_returns_the_first_connection(
    connections: ChannelConnections, store: CountingStore
) -> None:
    fields = whatsapp()

    first = await _create(connections, fields, request_id="req-1")
    again = await _create(connections, fields, request_id="req-1")

    assert again == first
    assert len(await store.list_audit(TENANT, limit=10)) == 1


async def test_a_request_id_reused_for_another_connection_is_refused(
    connections: ChannelConnections,
) -> None:
    fields = whatsapp()
    await _create(connections, fields, request_id="req-1")
    # Only a secret differs: it counts (by its fingerprint).
    other = dataclasses.replace(fields, secrets={**fields.secrets, "access_token": "another"})

    with pytest.raises(InvalidArgument) as refused:
        await _create(connections, other, request_id="req-1")

    assert refused.value.reason == "REQUEST_ID_REUSED"
    assert [v.field for v in refused.value.violations] == ["request_id"]


async def test_request_ids_are_per_tenant(connections: ChannelConnections) -> None:
    ours = await _create(connections, request_id="req-1")
    theirs = await _create(connections, tenant=OTHER_TENANT, request_id="req-1")

    assert ours.connection_id != theirs.connection_id


async def test_a_second_connection_for_one_account_already_exists(
    connections: ChannelConnections,
) -> None:
    first = await _create(connections)

    with pytest.raises(AlreadyExists) as exists:
        await _create(connections, whatsapp(display_name="again"))

    assert exists.value.reason == "CONNECTION_EXISTS"
    assert exists.value.metadata == {"connection_id": first.connection_id}


async def test_create_names_every_bad_field(connections: ChannelConnections) -> None:
    fields = whatsapp(phone_number_id="+1 555")
    fields = dataclasses.replace(
        fields, secrets={k: v for k, v in fields.secrets.items() if k != "app_secret"}
    )

    with pytest.raises(InvalidArgument) as refused:
        await _create(connections, fields, request_id="bad id")

    assert {v.field for v in refused.value.violations} == {
        "request_id",
        "connection.whatsapp.phone_number_id",
        "connection.whatsapp.app_secret",
    }


# ------------------------------------------------------------ get and list


async def test_get_answers_only_the_tenants_own(connections: ChannelConnections) -> None:
    created = await _create(connections)

    assert await connections.get(TENANT, created.connection_id) == created
    with pytest.raises(NotFound) as missing:
        await connections.get(OTHER_TENANT, created.connection_id)
    assert missing.value.reason == "CONNECTION_NOT_FOUND"
    with pytest.raises(InvalidArgument):
        await connections.get(TENANT, "not-an-id")


async def test_list_pages_through_every_connection_in_id_order(
    connections: ChannelConnections,
) -> None:
    made = [await _create(connections, whatsapp(str(1000 + n))) for n in range(5)]
    await _create(connections, messenger())
    await _create(connections, whatsapp("2000"), tenant=OTHER_TENANT)

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await connections.list_connections(
            TENANT, channel=Channel.WHATSAPP, page_size=2, page_token=token
        )
        pages += 1
        seen.extend(c.connection_id for c in page.items)
        token = page.next_page_token
        if not token:
            break

    assert seen == sorted(c.connection_id for c in made)
    assert pages == 3


async def test_a_page_token_is_bound_to_its_tenant_and_filter(
    connections: ChannelConnections,
) -> None:
    for n in range(3):
        await _create(connections, whatsapp(str(1000 + n)))
    page = await connections.list_connections(TENANT, channel=None, page_size=1, page_token="")

    for tenant, channel in ((OTHER_TENANT, None), (TENANT, Channel.WHATSAPP)):
        with pytest.raises(InvalidArgument) as refused:
            await connections.list_connections(
                tenant, channel=channel, page_size=1, page_token=page.next_page_token
            )
        assert [v.field for v in refused.value.violations] == ["page_token"]
    with pytest.raises(InvalidArgument):
        await connections.list_connections(TENANT, channel=None, page_size=-1, page_token="")


# ------------------------------------------------------------------ update


async def test_an_update_rotates_one_secret(
    connections: ChannelConnections, store: CountingStore
) -> None:
    fields = whatsapp()
    created = await _create(connections, fields)
    rotated = _secret("rotated")

    updated = await connections.update(
        TENANT,
        created.connection_id,
        _only(ConnectionFields(Channel.WHATSAPP, secrets={"access_token": rotated})),
        [],  # empty: every field the request sets
        actor=ACTOR,
    )

    assert updated.version == created.version + 1
    assert updated.fingerprints["access_token"] != created.fingerprints["access_token"]
    assert updated.fingerprints["access_token"] == make_secret_box().fingerprint(rotated)
    assert {k: v for k, v in updated.fingerprints.items() if k != "access_token"} == {
        k: v for k, v in created.fingerprints.items() if k != "access_token"
    }
    assert updated.display_name == created.display_name
    assert await store.get_connection(TENANT, created.connection_id) == updated
    assert rotated not in store.everything_stored()
    latest = (await store.list_audit(TENANT, limit=1))[0]
    assert (latest.action, latest.changed_fields) == ("update", ("whatsapp.access_token",))
    assert rotated not in repr(latest)


async def test_an_update_without_a_platform_changes_the_named_fields(
    connections: ChannelConnections,
) -> None:
    created = await _create(connections)
    asked: list[Channel] = []

    def fields_for(channel: Channel) -> ConnectionFields:
        asked.append(channel)
        return ConnectionFields(channel, display_name="", webhook_url="https://x.example/h")

    updated = await connections.update(
        TENANT, created.connection_id, fields_for, ["display_name", "webhook_url"], actor=ACTOR
    )

    assert asked == [Channel.WHATSAPP]
    assert (updated.display_name, updated.webhook_url) == ("", "https://x.example/h")
    assert updated.secrets == created.secrets


@pytest.mark.parametrize(
    ("fields", "mask", "field"),
    [
        # Another platform's field in the mask.
        (ConnectionFields(Channel.WHATSAPP), ["messenger.page_id"], "update_mask"),
        # An output-only field.
        (ConnectionFields(Channel.WHATSAPP), ["connection_id"], "update_mask"),
        # A masked platform field left empty.
        (
            ConnectionFields(Channel.WHATSAPP),
            ["whatsapp.app_secret"],
            "connection.whatsapp.app_secret",
        ),
        # Nothing masked, nothing set.
        (ConnectionFields(Channel.WHATSAPP), [], "update_mask"),
        # The platform cannot change.
        (messenger(), [], "connection.messenger"),
    ],
)
async def test_an_update_refuses_what_it_cannot_apply(
    connections: ChannelConnections,
    store: CountingStore,
    fields: ConnectionFields,
    mask: list[str],
    field: str,
) -> None:
    created = await _create(connections)

    with pytest.raises(InvalidArgument) as refused:
        await connections.update(TENANT, created.connection_id, _only(fields), mask, actor=ACTOR)

    assert field in [v.field for v in refused.value.violations]
    assert await store.get_connection(TENANT, created.connection_id) == created


async def test_an_update_to_another_connections_account_already_exists(
    connections: ChannelConnections,
) -> None:
    first = await _create(connections, whatsapp("1000"))
    second = await _create(connections, whatsapp("2000"))

    with pytest.raises(AlreadyExists) as exists:
        await connections.update(
            TENANT,
            second.connection_id,
            _only(whatsapp("1000")),
            ["whatsapp.phone_number_id"],
            actor=ACTOR,
        )
    assert exists.value.metadata == {"connection_id": first.connection_id}


async def test_an_update_retries_once_after_a_concurrent_change(
    connections: ChannelConnections, store: CountingStore
) -> None:
    created = await _create(connections)
    change = _only(ConnectionFields(Channel.WHATSAPP, display_name="renamed"))

    store.conflicts = 1
    updated = await connections.update(TENANT, created.connection_id, change, [], actor=ACTOR)
    assert updated.display_name == "renamed"

    store.conflicts = 2
    with pytest.raises(Aborted) as aborted:
        await connections.update(TENANT, created.connection_id, change, [], actor=ACTOR)
    assert aborted.value.reason == "CONNECTION_CHANGED"


async def test_an_update_of_another_tenants_connection_is_not_found(
    connections: ChannelConnections,
) -> None:
    created = await _create(connections)

    with pytest.raises(NotFound):
        await connections.update(
            OTHER_TENANT,
            created.connection_id,
            _only(ConnectionFields(Channel.WHATSAPP, display_name="mine now")),
            [],
            actor=ACTOR,
        )


# ------------------------------------------------------------------ delete


async def test_delete_removes_it_once_and_audits(
    connections: ChannelConnections, store: CountingStore
) -> None:
    created = await _create(connections)

    with pytest.raises(NotFound):
        await connections.delete(OTHER_TENANT, created.connection_id, actor=ACTOR)
    await connections.delete(TENANT, created.connection_id, actor=ACTOR)
    with pytest.raises(NotFound):
        await connections.delete(TENANT, created.connection_id, actor=ACTOR)

    assert await store.get_connection(TENANT, created.connection_id) is None
    assert [e.action for e in await store.list_audit(TENANT, limit=10)] == ["delete", "create"]


# ------------------------------------------------------------- the cache


async def test_the_directory_opens_secrets_and_caches_them(
    connections: ChannelConnections, directory: CachedConnections, store: CountingStore
) -> None:
    fields = whatsapp()
    created = await _create(connections, fields)
    await _create(connections, messenger())

    [found] = await directory.for_channel(TENANT, Channel.WHATSAPP)
    assert found.connection.connection_id == created.connection_id
    assert found.secrets == fields.secrets
    opened = await directory.opened(TENANT, created.connection_id)
    assert opened is not None
    assert opened.secrets == fields.secrets
    assert fields.secrets["app_secret"] not in repr(opened)

    reads = store.reads
    await directory.for_channel(TENANT, Channel.WHATSAPP)
    await directory.opened(TENANT, created.connection_id)
    assert store.reads == reads


async def test_entries_expire_after_the_ttl(
    connections: ChannelConnections,
    directory: CachedConnections,
    store: CountingStore,
    clock: SteppingClock,
) -> None:
    created = await _create(connections)
    await directory.opened(TENANT, created.connection_id)
    reads = store.reads

    clock.advance(TTL / 2)
    await directory.opened(TENANT, created.connection_id)
    assert store.reads == reads
    clock.advance(TTL / 2)
    await directory.opened(TENANT, created.connection_id)
    assert store.reads == reads + 1


async def test_this_processs_changes_take_effect_at_once(
    connections: ChannelConnections, directory: CachedConnections
) -> None:
    # Nothing yet: that answer is cached too...
    assert await directory.for_channel(TENANT, Channel.WHATSAPP) == ()
    created = await _create(connections)
    # ...but a connection made here is usable here at once.
    [found] = await directory.for_channel(TENANT, Channel.WHATSAPP)
    assert found.connection.connection_id == created.connection_id

    rotated = _secret("rotated")
    await connections.update(
        TENANT,
        created.connection_id,
        _only(ConnectionFields(Channel.WHATSAPP, secrets={"access_token": rotated})),
        [],
        actor=ACTOR,
    )
    opened = await directory.opened(TENANT, created.connection_id)
    assert opened is not None
    assert opened.secrets["access_token"] == rotated

    await connections.delete(TENANT, created.connection_id, actor=ACTOR)
    assert await directory.opened(TENANT, created.connection_id) is None
    assert await directory.for_channel(TENANT, Channel.WHATSAPP) == ()


async def test_another_processs_changes_take_effect_within_the_ttl(
    directory: CachedConnections, store: CountingStore, clock: SteppingClock
) -> None:
    # Another process: its own core on the same store, its own cache.
    elsewhere = build_core(channels=store, clock=clock).connections
    assert await directory.for_channel(TENANT, Channel.WHATSAPP) == ()

    created = await _create(elsewhere)
    assert await directory.for_channel(TENANT, Channel.WHATSAPP) == ()  # still cached
    clock.advance(timedelta(seconds=NEGATIVE_TTL_SECONDS))
    [found] = await directory.for_channel(TENANT, Channel.WHATSAPP)  # an empty answer: briefly
    assert found.connection.connection_id == created.connection_id

    await elsewhere.delete(TENANT, created.connection_id, actor=ACTOR)
    assert len(await directory.for_channel(TENANT, Channel.WHATSAPP)) == 1
    clock.advance(TTL)
    assert await directory.for_channel(TENANT, Channel.WHATSAPP) == ()


async def test_a_connection_whose_secret_does_not_open_is_unusable(
    connections: ChannelConnections,
    directory: CachedConnections,
    store: CountingStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = await _create(connections, whatsapp("1000"))
    bad = await _create(connections, whatsapp("2000"))
    # Sealed with a key this process's keyring does not hold.
    foreign = AesGcmSecretBox([("gone", bytes(32))])
    sealed = foreign.seal("x", context=secret_context(TENANT, bad.connection_id, "access_token"))
    store._connections[(TENANT, bad.connection_id)] = dataclasses.replace(
        bad, secrets={**bad.secrets, "access_token": sealed}
    )

    with caplog.at_level(logging.ERROR):
        found = await directory.for_channel(TENANT, Channel.WHATSAPP)
        assert await directory.opened(TENANT, bad.connection_id) is None

    assert [o.connection.connection_id for o in found] == [good.connection_id]
    assert bad.connection_id in caplog.text
    assert "access_token" in caplog.text
    assert "'gone'" in caplog.text  # the key id, which says what to put back


async def test_the_cache_is_bounded(store: CountingStore, clock: SteppingClock) -> None:
    directory = CachedConnections(
        store=store, box=make_secret_box(), clock=clock, ttl_seconds=300, max_entries=2
    )
    for tenant in ("t1", "t2", "t3"):
        await directory.for_channel(tenant, Channel.WHATSAPP)
    reads = store.reads

    await directory.for_channel("t3", Channel.WHATSAPP)
    await directory.for_channel("t2", Channel.WHATSAPP)
    assert store.reads == reads
    await directory.for_channel("t1", Channel.WHATSAPP)  # the least recently used: gone
    assert store.reads == reads + 1
    assert len(directory._entries) == 2


async def test_concurrent_misses_share_one_read(
    connections: ChannelConnections, directory: CachedConnections, store: CountingStore
) -> None:
    await _create(connections)
    reads = store.reads

    answers = await asyncio.gather(
        *(directory.for_channel(TENANT, Channel.WHATSAPP) for _ in range(10))
    )

    assert store.reads == reads + 1
    assert all(len(answer) == 1 for answer in answers)


async def test_a_read_overtaken_by_a_change_is_not_cached(
    connections: ChannelConnections, directory: CachedConnections, store: CountingStore
) -> None:
    store.gate = asyncio.Event()
    stale = asyncio.create_task(directory.for_channel(TENANT, Channel.WHATSAPP))
    async with asyncio.timeout(5):
        await store.held.get()
    created = await _create(connections)  # commits after the read, before its answer
    store.gate.set()
    assert await stale == ()
    store.gate = None

    [found] = await directory.for_channel(TENANT, Channel.WHATSAPP)
    assert found.connection.connection_id == created.connection_id


async def test_a_call_after_a_change_does_not_join_a_read_from_before(
    connections: ChannelConnections, directory: CachedConnections, store: CountingStore
) -> None:
    store.gate = asyncio.Event()
    stale = asyncio.create_task(directory.for_channel(TENANT, Channel.WHATSAPP))
    async with asyncio.timeout(5):
        await store.held.get()
    created = await _create(connections)
    fresh = asyncio.create_task(directory.for_channel(TENANT, Channel.WHATSAPP))
    async with asyncio.timeout(5):
        await store.held.get()  # a read of its own
    store.gate.set()

    assert await stale == ()
    [found] = await fresh
    assert found.connection.connection_id == created.connection_id


async def test_junk_connection_ids_are_not_looked_up(
    directory: CachedConnections, store: CountingStore
) -> None:
    assert await directory.opened(TENANT, "../../etc") is None
    assert store.reads == 0
