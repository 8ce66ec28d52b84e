"""Read receipts: a reader has seen everything up to a sequence."""

from __future__ import annotations

from collections.abc import Callable

from chat_service.domain.enums import DeliveryStatus
from chat_service.domain.errors import InvalidArgument
from chat_service.domain.events import delivery_updated
from chat_service.domain.model import Conversation, Message, conversation_of
from chat_service.pipeline.errors import port_errors
from chat_service.ports import Clock, ConversationStore

_PAGE = 100


class MarkRead:
    """Moves the conversation's outbound messages up to a sequence to READ.

    The READ messages of a conversation are kept a prefix of its outbound
    ones (FAILED aside, which stays FAILED): receipts mark in ascending
    order, so one that fails midway leaves a longer prefix and the next
    receipt carries on from there. That is what lets a receipt find where to
    start by walking back from its sequence to the newest READ message: it
    costs what it marks, not the length of the conversation.
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
            found = await self._store.get_conversation(tenant_id, conversation_id)
            conversation = conversation_of(tenant_id, conversation_id, found)
            if not 1 <= through_sequence <= conversation.last_sequence:
                raise InvalidArgument.of(
                    field,
                    f"must be between 1 and the conversation's last sequence "
                    f"({conversation.last_sequence}), got {through_sequence}",
                )
            start = await self._newest_read(conversation, through_sequence)
            if start == through_sequence:
                return 0
            return await self._mark(conversation, start, through_sequence)

    async def _newest_read(self, conversation: Conversation, through_sequence: int) -> int:
        """The sequence of the newest READ outbound message at or before
        `through_sequence` (0 if none): everything before it is marked."""
        before = through_sequence + 1
        while True:
            page = await self._store.list_messages(
                conversation.tenant_id,
                conversation.conversation_id,
                limit=_PAGE,
                after_sequence=before,
                descending=True,
            )
            for message in page:
                if message.is_outbound and message.delivery_status is DeliveryStatus.READ:
                    return message.sequence
            if len(page) < _PAGE:
                return 0
            before = page[-1].sequence

    async def _mark(self, conversation: Conversation, after: int, through_sequence: int) -> int:
        """Marks the outbound messages after `after` through `through_sequence`,
        oldest first. The store moves a status forward only, so a message
        that turned FAILED (or READ) since it was read here stays as it is."""
        marked = 0
        while after < through_sequence:
            page = await self._store.list_messages(
                conversation.tenant_id,
                conversation.conversation_id,
                limit=min(_PAGE, through_sequence - after),
                after_sequence=after,
            )
            for message in page:
                if message.sequence > through_sequence:
                    return marked
                after = message.sequence
                if not message.is_outbound or not message.delivery_status.can_advance_to(
                    DeliveryStatus.READ
                ):
                    continue  # FAILED stays FAILED
                event = delivery_updated(
                    conversation, message, DeliveryStatus.READ, self._clock.now()
                )
                if await self._store.update_delivery_status(
                    message.tenant_id, message.message_id, DeliveryStatus.READ, event
                ):
                    marked += 1
                    self._on_change(message, DeliveryStatus.READ)
            if not page:
                break
        return marked
