"""Channel connections end to end: the admin RPCs over real gRPC against the
real server (on each e2e store), with the scope they need, every platform's
create, and secrets that never come back and are never logged."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Mapping
from typing import Any

import bson
import grpc
import pytest
from chatbot.chat.v1 import channel_connections_pb2 as cc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import resources_pb2
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from pymongo import AsyncMongoClient

from chat_service.auth import SCOPE_READ, SCOPE_WRITE
from tests.e2e.requests import TenantClient, client_for, failure
from tests.support.service import MongoDatabases, ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONNECTION_ID = re.compile(r"cc_[a-z0-9]{24}")
FINGERPRINT = re.compile(r"hmac-sha256:[0-9a-f]{8}")

# Each platform: its oneof field, channel, message type, public fields, secret names.
PLATFORMS: Mapping[str, tuple[int, type[Message], Mapping[str, str], tuple[str, ...]]] = {
    "whatsapp": (
        resources_pb2.CHANNEL_WHATSAPP,
        cc.WhatsAppConnection,
        {"phone_number_id": "106540352242922"},
        ("app_secret", "verify_token", "access_token"),
    ),
    "messenger": (
        resources_pb2.CHANNEL_MESSENGER,
        cc.MessengerConnection,
        {"page_id": "1234567890"},
        ("app_secret", "verify_token", "page_access_token"),
    ),
    "slack": (
        resources_pb2.CHANNEL_SLACK,
        cc.SlackConnection,
        {"team_id": "T0123ABCD"},
        ("signing_secret", "bot_token"),
    ),
    "teams": (
        resources_pb2.CHANNEL_TEAMS,
        cc.TeamsConnection,
        {"app_id": "0b5e4c2a-7f7e-4b53-9d1c-3f2a1e0d9c8b"},
        ("app_password",),
    ),
    "sms": (
        resources_pb2.CHANNEL_SMS,
        cc.TwilioConnection,
        {"account_sid": "AC" + "0123456789abcdef" * 2, "phone_number": "+14155550100"},
        ("auth_token",),
    ),
    "voice": (
        resources_pb2.CHANNEL_VOICE,
        cc.TwilioConnection,
        {"account_sid": "AC" + "fedcba9876543210" * 2, "phone_number": "+14155550199"},
        ("auth_token",),
    ),
}


TWILIO = ("sms", "voice")


def secrets_for(platform: str) -> dict[str, str]:
    """Fresh secret values, unique enough to look for in responses and logs."""
    return {name: f"{name}-{uuid.uuid4().hex}" for name in PLATFORMS[platform][3]}


def connection(
    platform: str = "whatsapp",
    secrets: Mapping[str, str] | None = None,
    **public: str,
) -> cc.ChannelConnection:
    _, message_type, defaults, _ = PLATFORMS[platform]
    values = {**defaults, **public, **(secrets_for(platform) if secrets is None else secrets)}
    chosen: dict[str, Any] = {platform: message_type(**values)}
    # Twilio signs the URL it calls: SMS and voice connections need it.
    url = f"https://edge.example.com/v1/webhooks/t/{platform}" if platform in TWILIO else ""
    return cc.ChannelConnection(display_name=f"{platform} line", webhook_url=url, **chosen)


class Admin:
    """The connection RPCs as one tenant's token sees them."""

    def __init__(self, client: TenantClient) -> None:
        self.stub, self.tenant, self.metadata = client.stub, client.tenant, client.metadata

    async def create(
        self, proto: cc.ChannelConnection, request_id: str = ""
    ) -> cc.ChannelConnection:
        response = await self.stub.CreateChannelConnection(
            pb.CreateChannelConnectionRequest(connection=proto, request_id=request_id),
            metadata=self.metadata,
        )
        return response.connection

    async def get(self, connection_id: str) -> cc.ChannelConnection:
        response = await self.stub.GetChannelConnection(
            pb.GetChannelConnectionRequest(connection_id=connection_id), metadata=self.metadata
        )
        return response.connection

    async def list(self, **fields: Any) -> pb.ListChannelConnectionsResponse:
        return await self.stub.ListChannelConnections(
            pb.ListChannelConnectionsRequest(**fields), metadata=self.metadata
        )

    async def update(self, proto: cc.ChannelConnection, *paths: str) -> cc.ChannelConnection:
        response = await self.stub.UpdateChannelConnection(
            pb.UpdateChannelConnectionRequest(
                connection=proto, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
            ),
            metadata=self.metadata,
        )
        return response.connection

    async def delete(self, connection_id: str) -> None:
        await self.stub.DeleteChannelConnection(
            pb.DeleteChannelConnectionRequest(connection_id=connection_id), metadata=self.metadata
        )


@pytest.fixture
def admin(client: TenantClient) -> Admin:
    return Admin(client)


@pytest.fixture
def other(service: ServiceProcess, module_stub: Any, request: pytest.FixtureRequest) -> Admin:
    """Another tenant's admin."""
    return Admin(client_for(service, module_stub, f"other-{request.node.name}"))


async def _stored_bytes(service: ServiceProcess) -> bytes:
    """Everything the service's store holds, as bytes: its MongoDB
    database's documents, or the SQLite files of its data directory."""
    if isinstance(service.store, MongoDatabases):
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            service.store.uri_for(service.data_dir)
        )
        try:
            database = client.get_default_database()
            chunks = [
                bson.encode(document)
                for name in await database.list_collection_names()
                for document in await database[name].find().to_list()
            ]
        finally:
            await client.close()
        return b"".join(chunks)
    return b"".join(path.read_bytes() for path in service.data_dir.glob("*.sqlite3*"))


def _leaks(secrets: Mapping[str, str], *responses: Message) -> list[str]:
    """The secrets found in any of the responses' bytes."""
    wire = b"".join(response.SerializeToString() for response in responses)
    return [name for name, value in secrets.items() if value.encode() in wire]


# ------------------------------------------------------------------ create


@pytest.mark.parametrize("platform", list(PLATFORMS))
async def test_every_platform_is_created_and_read_back_without_secrets(
    admin: Admin, platform: str
) -> None:
    channel, _, public, secret_names = PLATFORMS[platform]
    secrets = secrets_for(platform)

    created = await admin.create(connection(platform, secrets), request_id=f"create-{platform}")

    assert CONNECTION_ID.fullmatch(created.connection_id)
    assert created.channel == channel
    assert created.webhook_path == f"/v1/webhooks/{admin.tenant}/{platform}"
    assert created.display_name == f"{platform} line"
    assert created.WhichOneof("platform") == platform
    shown = getattr(created, platform)
    assert {name: getattr(shown, name) for name in public} == public
    assert all(getattr(shown, name) == "" for name in secret_names)
    assert set(created.secret_fingerprints) == set(secret_names)
    assert all(FINGERPRINT.fullmatch(value) for value in created.secret_fingerprints.values())
    assert created.create_time.seconds > 0
    assert created.update_time == created.create_time

    read = await admin.get(created.connection_id)
    assert read == created
    listed = await admin.list()
    assert _leaks(secrets, created, read, listed) == []


async def test_the_admin_rpcs_need_the_admin_scope(
    admin: Admin, service: ServiceProcess, client: TenantClient
) -> None:
    created = await admin.create(connection())
    writer = client.with_scopes(service, SCOPE_READ, SCOPE_WRITE)
    stub, metadata = writer.stub, writer.metadata
    calls: dict[str, Awaitable[object]] = {
        "create": stub.CreateChannelConnection(
            pb.CreateChannelConnectionRequest(connection=connection()), metadata=metadata
        ),
        "get": stub.GetChannelConnection(
            pb.GetChannelConnectionRequest(connection_id=created.connection_id),
            metadata=metadata,
        ),
        "list": stub.ListChannelConnections(pb.ListChannelConnectionsRequest(), metadata=metadata),
        "update": stub.UpdateChannelConnection(
            pb.UpdateChannelConnectionRequest(
                connection=cc.ChannelConnection(
                    connection_id=created.connection_id, display_name="mine"
                )
            ),
            metadata=metadata,
        ),
        "delete": stub.DeleteChannelConnection(
            pb.DeleteChannelConnectionRequest(connection_id=created.connection_id),
            metadata=metadata,
        ),
        "retry": stub.RetryDelivery(pb.RetryDeliveryRequest(message_id="m-1"), metadata=metadata),
    }

    for name, call in calls.items():
        error = await failure(call)
        assert error.code == grpc.StatusCode.PERMISSION_DENIED, name
        assert error.reason == "INSUFFICIENT_SCOPE", name
        assert error.metadata == {"required_scope": "chat:admin"}, name
    assert await admin.get(created.connection_id) == created  # untouched


async def test_bad_fields_are_named_by_their_path(admin: Admin) -> None:
    secrets = secrets_for("whatsapp")
    del secrets["app_secret"]

    error = await failure(admin.create(connection("whatsapp", secrets, phone_number_id="x1")))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.fields) == {
        "connection.whatsapp.app_secret",
        "connection.whatsapp.phone_number_id",
    }
    no_platform = await failure(admin.create(cc.ChannelConnection(display_name="nothing")))
    assert no_platform.fields == ["connection"]
    wrong_channel = connection("sms")
    wrong_channel.channel = resources_pb2.CHANNEL_WHATSAPP
    assert (await failure(admin.create(wrong_channel))).fields == ["connection.channel"]
    bad_url = connection("voice")
    bad_url.webhook_url = "http://insecure.example.com/voice"
    assert (await failure(admin.create(bad_url))).fields == ["connection.webhook_url"]


async def test_one_account_is_one_connection(admin: Admin) -> None:
    first = await admin.create(connection())

    error = await failure(admin.create(connection()))  # the same phone_number_id

    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "CONNECTION_EXISTS"
    assert error.metadata == {"connection_id": first.connection_id}


async def test_a_retried_create_is_one_connection(admin: Admin) -> None:
    proto = connection()

    first = await admin.create(proto, request_id="req-42")
    again = await admin.create(proto, request_id="req-42")

    assert again == first
    assert len((await admin.list()).connections) == 1
    rotated = connection(phone_number_id="555")
    error = await failure(admin.create(rotated, request_id="req-42"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.fields) == ("REQUEST_ID_REUSED", ["request_id"])


async def test_another_tenants_connection_is_not_found(admin: Admin, other: Admin) -> None:
    created = await admin.create(connection())
    rename = cc.ChannelConnection(connection_id=created.connection_id, display_name="taken")

    for call in (
        other.get(created.connection_id),
        other.update(rename, "display_name"),
        other.delete(created.connection_id),
    ):
        error = await failure(call)
        assert error.code == grpc.StatusCode.NOT_FOUND
        assert error.reason == "CONNECTION_NOT_FOUND"
    assert (await other.list()).connections == []
    assert await admin.get(created.connection_id) == created


# ------------------------------------------------------------------- list


async def test_list_pages_through_a_tenants_connections(admin: Admin, other: Admin) -> None:
    made = [await admin.create(connection(phone_number_id=f"10{n}")) for n in range(5)]
    await admin.create(connection("messenger"))
    await other.create(connection())

    seen: list[str] = []
    token = ""
    for _ in range(3):
        page = await admin.list(
            page_size=2, page_token=token, channel=resources_pb2.CHANNEL_WHATSAPP
        )
        seen.extend(c.connection_id for c in page.connections)
        token = page.next_page_token
    assert token == ""
    assert seen == sorted(c.connection_id for c in made)

    everything = await admin.list(page_size=100)
    assert len(everything.connections) == 6
    assert everything.next_page_token == ""

    first = await admin.list(page_size=1)
    stolen = await failure(other.list(page_size=1, page_token=first.next_page_token))
    assert (stolen.code, stolen.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])
    unknown = await failure(admin.list(channel=99))
    assert unknown.fields == ["channel"]


# ----------------------------------------------------------------- update


async def test_an_update_rotates_a_secret_and_keeps_the_rest(admin: Admin) -> None:
    secrets = secrets_for("whatsapp")
    created = await admin.create(connection("whatsapp", secrets))
    new_token = f"rotated-{uuid.uuid4().hex}"

    rotated = await admin.update(
        cc.ChannelConnection(
            connection_id=created.connection_id,
            whatsapp=cc.WhatsAppConnection(access_token=new_token),
        ),
        "whatsapp.access_token",
    )

    old, new = created.secret_fingerprints, rotated.secret_fingerprints
    assert new["access_token"] != old["access_token"]
    assert FINGERPRINT.fullmatch(new["access_token"])
    assert {k: new[k] for k in ("app_secret", "verify_token")} == {
        k: old[k] for k in ("app_secret", "verify_token")
    }
    assert rotated.whatsapp.phone_number_id == created.whatsapp.phone_number_id
    assert rotated.display_name == created.display_name
    assert rotated.update_time.ToDatetime() > created.update_time.ToDatetime()
    assert rotated.create_time == created.create_time
    assert await admin.get(created.connection_id) == rotated
    assert _leaks({**secrets, "new": new_token}, rotated) == []

    # No platform message, an empty mask: what the request sets.
    renamed = await admin.update(
        cc.ChannelConnection(connection_id=created.connection_id, display_name="Sales")
    )
    assert renamed.display_name == "Sales"
    assert renamed.secret_fingerprints == rotated.secret_fingerprints


async def test_an_update_refuses_another_platform_and_unknown_paths(admin: Admin) -> None:
    created = await admin.create(connection())
    to_messenger = connection("messenger")
    to_messenger.connection_id = created.connection_id

    error = await failure(admin.update(to_messenger))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "connection.messenger" in error.fields
    unknown = await failure(
        admin.update(cc.ChannelConnection(connection_id=created.connection_id), "secrets")
    )
    assert unknown.fields == ["update_mask"]
    cleared = await failure(
        admin.update(
            cc.ChannelConnection(connection_id=created.connection_id), "whatsapp.app_secret"
        )
    )
    assert cleared.fields == ["connection.whatsapp.app_secret"]
    unnamed = await failure(admin.update(cc.ChannelConnection(display_name="which?")))
    assert unnamed.fields == ["connection.connection_id"]
    assert await admin.get(created.connection_id) == created


# ----------------------------------------------------------------- delete


async def test_delete_removes_the_connection(admin: Admin) -> None:
    created = await admin.create(connection())
    kept = await admin.create(connection("messenger"))

    await admin.delete(created.connection_id)

    assert (await failure(admin.get(created.connection_id))).code == grpc.StatusCode.NOT_FOUND
    assert (await failure(admin.delete(created.connection_id))).code == grpc.StatusCode.NOT_FOUND
    assert [c.connection_id for c in (await admin.list()).connections] == [kept.connection_id]
    # Its account is free again.
    again = await admin.create(connection())
    assert again.connection_id != created.connection_id


# ------------------------------------------------------------------- logs


async def test_secrets_are_never_stored_in_clear_nor_logged(
    admin: Admin, service: ServiceProcess
) -> None:
    secrets = secrets_for("whatsapp")
    account = str(uuid.uuid4().int)[:15]  # to find this connection's record by
    created = await admin.create(connection("whatsapp", secrets, phone_number_id=account))
    new_token = f"rotated-{uuid.uuid4().hex}"
    await admin.update(
        cc.ChannelConnection(
            connection_id=created.connection_id,
            whatsapp=cc.WhatsAppConnection(access_token=new_token),
        )
    )
    # ALREADY_EXISTS: a refused request's secrets are not logged either.
    await failure(admin.create(connection("whatsapp", secrets, phone_number_id=account)))

    # Stored sealed: the record is there (its account id is no secret).
    stored = await _stored_bytes(service)
    assert account.encode() in stored
    for value in [*secrets.values(), new_token]:
        assert value.encode() not in stored
    await admin.delete(created.connection_id)
    # The service logs each change (field names) as it answers it.
    logs = service.logs()
    assert f"channel connection delete: tenant {admin.tenant}, " in logs
    assert "fields [whatsapp.access_token]" in logs
    for value in [*secrets.values(), new_token]:
        assert value not in logs
