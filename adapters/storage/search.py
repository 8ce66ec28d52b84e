"""The text search of ListConversations, as both stores run it: a plain
substring test of the query's search form against each message's, both
computed here with the domain's search_key (NFC, casefolded), so that
"Straße" finds "STRASSE" on every store. The databases fold only ASCII,
so the form is computed in Python and stored beside the message."""

from __future__ import annotations

from chat_service.domain.model import Message
from chat_service.domain.text import search_key


def message_search_text(message: Message) -> str:
    """What a message is stored with for the search to match."""
    return search_key(message.content.text)


def query_search_text(search_query: str) -> str:
    """What is looked for in message_search_text."""
    return search_key(search_query)
