"""Ids a caller chooses or passes back: the rules every RPC applies to them.

Message and conversation ids are keys (of idempotency, of locks, in URLs),
so they take a small alphabet; end users' and platforms' ids are the
platforms' own, so any text is taken but control characters, which no
platform issues and which break keys, logs and exports.
"""

from __future__ import annotations

import re
import unicodedata

MAX_MESSAGE_ID_LENGTH = 128
MAX_CONVERSATION_ID_LENGTH = 128
MESSAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@-]+")
MAX_USER_ID_LENGTH = 255
MAX_SESSION_ID_LENGTH = 255


def conversation_id_problem(conversation_id: str) -> str | None:
    """Why a given conversation id cannot be one this service issued (they
    are UUIDs), or None. Checked before the id is used as a lock key."""
    if len(conversation_id) > MAX_CONVERSATION_ID_LENGTH:
        return (
            f"must be at most {MAX_CONVERSATION_ID_LENGTH} characters, got {len(conversation_id)}"
        )
    if not MESSAGE_ID_PATTERN.fullmatch(conversation_id):
        return "must contain only letters, digits and . _ : @ -"
    return None


def identifier_problem(value: str, *, maximum: int) -> str | None:
    """Why a caller-chosen id (user_id, session_id, a platform's ids) cannot
    be taken, or None: too long, or holding a control character (NUL and
    its kin break keys, logs and exports, and no platform issues them)."""
    if len(value) > maximum:
        return f"must be at most {maximum} characters, got {len(value)}"
    if has_control(value):
        return "must not contain control characters"
    return None


def has_control(value: str) -> bool:
    """Whether `value` holds a control character (Unicode category Cc)."""
    return any(unicodedata.category(ch) == "Cc" for ch in value)
