"""MessageContent <-> its stored document (serialization's shape).

Named apart because content is stored on its own too (SQLite's content
column, an idempotency record's engine response).
"""

from __future__ import annotations

from typing import Any

from chat_service.domain.content import MessageContent
from chat_service.domain.serialization import Document, from_document, to_document


def content_to_dict(content: MessageContent) -> Document:
    return to_document(content)


def content_from_dict(data: Any) -> MessageContent:
    return from_document(MessageContent, data)
