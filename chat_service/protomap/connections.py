"""Mapping of ChannelConnection, both ways.

From a request: the platform message set in the `platform` oneof decides
the channel; its fields split into public ones and secrets as
domain.connections.PLATFORMS says. Only values that are set (non-empty:
proto3 strings have no presence) are taken, so an update's empty mask can
mean "what the request sets". Output-only fields are ignored.

To a response: secrets never (not even sealed), their fingerprints instead.
"""

from __future__ import annotations

from typing import Any

from chatbot.chat.v1 import channel_connections_pb2

from chat_service.domain.connections import (
    PLATFORM_BY_NAME,
    PLATFORMS,
    ChannelConnection,
    ConnectionFields,
    webhook_path,
)
from chat_service.domain.enums import Channel
from chat_service.domain.errors import InvalidArgument
from chat_service.protomap.enums import channel_from_proto, channel_to_proto
from chat_service.protomap.wellknown import datetime_to_timestamp


def connection_fields_from_proto(
    proto: channel_connections_pb2.ChannelConnection,
    *,
    channel_if_unset: Channel | None = None,
    prefix: str = "connection",
) -> ConnectionFields:
    """The request's connection as domain input. Without a platform message
    the fields are `channel_if_unset`'s (an update's own platform), or, when
    that is None too (a create), InvalidArgument naming `prefix`."""
    chosen = proto.WhichOneof("platform")
    channel = PLATFORM_BY_NAME[chosen] if chosen is not None else channel_if_unset
    if channel is None:
        raise InvalidArgument.of(
            prefix, "set one of " + ", ".join(spec.name for spec in PLATFORMS.values())
        )
    # Output only, but a create may state it: then it must agree.
    if proto.channel and chosen is not None and channel_from_proto(proto.channel) is not channel:
        raise InvalidArgument.of(
            f"{prefix}.channel", f"must be unset or name the platform set ({chosen})"
        )
    public: dict[str, str] = {}
    secrets: dict[str, str] = {}
    if chosen is not None:
        spec = PLATFORMS[channel]
        message: Any = getattr(proto, chosen)
        for name, _, _ in spec.public:
            if value := getattr(message, name):
                public[name] = value
        for name in spec.secrets:
            if value := getattr(message, name):
                secrets[name] = value
    return ConnectionFields(
        channel=channel,
        display_name=proto.display_name,
        webhook_url=proto.webhook_url,
        public=public,
        secrets=secrets,
    )


def connection_to_proto(connection: ChannelConnection) -> channel_connections_pb2.ChannelConnection:
    """The stored connection as the API shows it: no secret, sealed or not."""
    proto = channel_connections_pb2.ChannelConnection(
        connection_id=connection.connection_id,
        channel=channel_to_proto(connection.channel),
        display_name=connection.display_name,
        webhook_url=connection.webhook_url,
        webhook_path=webhook_path(connection.tenant_id, connection.channel),
        create_time=datetime_to_timestamp(connection.created_at),
        update_time=datetime_to_timestamp(connection.updated_at),
        secret_fingerprints=dict(connection.fingerprints),
    )
    spec = connection.spec
    platform: Any = getattr(proto, spec.name)
    platform.SetInParent()  # selects the oneof even were every public field empty
    for name, _, _ in spec.public:
        setattr(platform, name, connection.public.get(name, ""))
    return proto
