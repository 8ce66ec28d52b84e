"""ExportConversation: a conversation's messages, streamed from the store.

Also the rule that keeps a CSV export from running as a spreadsheet's
formulas (spreadsheet_safe); the encoding itself is the gRPC layer's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from chat_service.domain.errors import InvalidArgument, conversation_not_found
from chat_service.domain.identifiers import conversation_id_problem
from chat_service.domain.model import Conversation, Message
from chat_service.pipeline.errors import port_errors
from chat_service.ports import ConversationStore


class ExportConversation:
    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def open(
        self, tenant_id: str, conversation_id: str
    ) -> tuple[Conversation, AsyncIterator[Message]]:
        """The conversation, and its messages up to its last sequence now (a
        snapshot), read from the store in batches as they are consumed."""
        problem = conversation_id_problem(conversation_id)
        if problem:
            raise InvalidArgument.of("conversation_id", problem)
        with port_errors():
            conversation = await self._store.get_conversation(tenant_id, conversation_id)
        if conversation is None:
            raise conversation_not_found(conversation_id)
        return conversation, self._messages(conversation)

    async def _messages(self, conversation: Conversation) -> AsyncIterator[Message]:
        with port_errors():
            async for message in self._store.iter_messages(
                conversation.tenant_id,
                conversation.conversation_id,
                through_sequence=conversation.last_sequence,
            ):
                yield message


# What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A CSV cell that a spreadsheet shows as text, never runs as a formula.

    As OWASP advises, a cell starting with = + - @ tab or carriage return
    gets a leading single quote, which spreadsheets hide and which marks the
    cell as text; a reader that is not a spreadsheet sees the quote. Every
    other cell is left as it is.
    """
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell
