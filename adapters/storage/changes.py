"""The checks both stores make on what they are given, and the conflicts
they answer in the same words."""

from __future__ import annotations

from chat_service.ports import ConversationChange, VersionConflict


def check_change(change: ConversationChange) -> None:
    """A change moves its conversation one version on (the optimistic check
    itself, against the stored version, is each store's conditional write)."""
    if change.conversation.version != change.expected_version + 1:
        raise ValueError("the new conversation version must be expected_version + 1")


def positive_limit(limit: int) -> int:
    # SQLite reads a negative LIMIT, MongoDB a limit of 0, as "no limit":
    # refuse both instead.
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    return limit


def already_exists(conversation_id: str) -> VersionConflict:
    """A creation (expected_version 0) found the conversation there."""
    return VersionConflict(f"conversation {conversation_id!r} already exists")


def stale_version(
    conversation_id: str, expected_version: int, fencing_token: int | None
) -> VersionConflict:
    """An update's conditional write matched nothing: the stored version is
    another, or a writer under a newer lock (a higher fencing token) wrote it."""
    return VersionConflict(
        f"conversation {conversation_id!r} is not at version {expected_version}, "
        f"or was written under a newer lock than fencing token {fencing_token}"
    )
