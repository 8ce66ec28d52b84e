"""What the platform told about a sent message, as each store records it in
the message's channel metadata (ConversationStore.update_delivery_status):
the platform's id for it, and `channel_data` merged into additional_data
(SMS: the segment count and encoding the carrier bills).

Both stores keep the rest of the channel metadata as it is: SQLite merges
the patch with json_patch, MongoDB sets each dotted path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ChannelData = Mapping[str, str | int | bool]


def sent_metadata_patch(
    platform_message_id: str, channel_data: ChannelData | None
) -> dict[str, Any]:
    """The RFC 7396 merge patch of the channel metadata document; empty when
    there is nothing to record."""
    patch: dict[str, Any] = {}
    if platform_message_id:
        patch["platform_message_id"] = platform_message_id
    if channel_data:
        patch["additional_data"] = {_checked(key): value for key, value in channel_data.items()}
    return patch


def sent_metadata_paths(
    platform_message_id: str, channel_data: ChannelData | None
) -> dict[str, Any]:
    """The same as dotted paths for MongoDB's $set."""
    patch = sent_metadata_patch(platform_message_id, channel_data)
    paths = {
        f"channel_metadata.additional_data.{key}": value
        for key, value in patch.pop("additional_data", {}).items()
    }
    paths.update((f"channel_metadata.{key}", value) for key, value in patch.items())
    return paths


def _checked(key: str) -> str:
    # The keys come from the channel connectors, never from a caller; a key
    # that is not a plain name would address another path in MongoDB.
    if not key or "." in key or key.startswith("$"):
        raise ValueError(f"channel data key {key!r} is not a plain name")
    return key
