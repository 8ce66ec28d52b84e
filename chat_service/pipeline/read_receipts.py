"""Read receipts: a reader has seen everything up to a sequence."""

from __future__ import annotations

from collections.abc import Callable

from chat_service.domain.enums import DeliveryStatus, MessageRole
from chat_service.domain.errors import InvalidArgument, conversation_not_found
from chat_service.domain.model import Message
from chat_service.pipeline.errors import port_errors
from chat_service.pipeline.events import delivery_updated
from chat_service.ports import Clock, ConversationStore

_PAGE = 100


class MarkRead:
    """Moves the conversation's outbound messages up to a sequence to READ.

    Receipts only move forward, so the walk goes backwards from the sequence
    and stops at the first outbound message already READ: everything before
    it was marked by an earlier receipt. A receipt costs what it marks, not
    the length of the conversation.
    """

    def __init__(
        self,
        *,
        store: ConversationStore,
        clock: Clock,
        on_change: Callable[[Message, DeliveryStatus], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_change = on_change

    async def __call__(
        self, tenant_id: str, conversation_id: str, through_sequence: int, *, field: str
    ) -> int:
        """Returns how many messages became READ."""
        with port_errors():
            conversation = await self._store.get_conversation(tenant_id, conversation_id)
            if conversation is None:
                raise conversation_not_found(conversation_id)
            if not 1 <= through_sequence <= conversation.last_sequence:
                raise InvalidArgument.of(
                    field,
                    f"must be between 1 and the conversation's last sequence "
                    f"({conversation.last_sequence}), got {through_sequence}",
                )
            marked = 0
            before = through_sequence + 1
            while True:
                page = await self._store.list_messages(
                    tenant_id, conversation_id, limit=_PAGE, after_sequence=before, descending=True
                )
                for message in page:
                    if message.role is MessageRole.USER:
                        continue
                    if message.delivery_status is DeliveryStatus.READ:
                        return marked
                    if not message.delivery_status.can_advance_to(DeliveryStatus.READ):
                        continue  # FAILED stays FAILED
                    event = delivery_updated(
                        conversation, message, DeliveryStatus.READ, self._clock.now()
                    )
                    if await self._store.update_delivery_status(
                        tenant_id, message.message_id, DeliveryStatus.READ, event
                    ):
                        marked += 1
                        self._on_change(message, DeliveryStatus.READ)
                if len(page) < _PAGE:
                    return marked
                before = page[-1].sequence
