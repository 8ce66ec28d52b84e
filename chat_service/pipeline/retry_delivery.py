"""RetryDelivery: an operator queues a dead-lettered reply for delivery again.

A reply whose delivery failed for good (FAILED, its `message.delivery_updated`
event the dead letter) stays so until someone decides the cause is gone:
the platform took messages again, the connection's token was renewed. This
moves it back to PENDING, the one backward move of a delivery status, with
its event (metadata `requeued: true`), then hands it to the delivery queue,
which retries it as any new reply.
"""

from __future__ import annotations

from chat_service.domain.enums import DeliveryStatus
from chat_service.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from chat_service.domain.events import delivery_updated
from chat_service.domain.identifiers import identifier_problem
from chat_service.domain.model import Message
from chat_service.pipeline.delivery import DeliveryQueue
from chat_service.pipeline.errors import port_errors
from chat_service.ports import Clock, ConversationStore

# Reply ids are the inbound id (up to 128 characters) with a suffix
# (domain.turns.reply_message_id), so the bound is looser than an inbound id's.
MAX_RETRY_MESSAGE_ID_LENGTH = 255

NOT_DEAD_LETTERED = "NOT_DEAD_LETTERED"


class RetryDelivery:
    def __init__(self, *, store: ConversationStore, delivery: DeliveryQueue, clock: Clock) -> None:
        self._store = store
        self._delivery = delivery
        self._clock = clock

    async def __call__(self, tenant_id: str, message_id: str) -> Message:
        """The message, PENDING again and queued. InvalidArgument for a
        malformed id, NotFound when the tenant has no such message,
        FailedPrecondition (NOT_DEAD_LETTERED) unless it is an outbound
        message whose delivery failed."""
        if not message_id:
            raise InvalidArgument.of("message_id", "is required")
        if problem := identifier_problem(message_id, maximum=MAX_RETRY_MESSAGE_ID_LENGTH):
            raise InvalidArgument.of("message_id", problem)
        with port_errors():
            message = await self._store.get_message(tenant_id, message_id)
            if message is None:
                raise _not_found(message_id)
            _check_dead_letter(message)
            conversation = await self._store.get_conversation(tenant_id, message.conversation_id)
            if conversation is None:  # messages are never without theirs
                raise _not_found(message_id)
            event = delivery_updated(
                conversation,
                message,
                DeliveryStatus.PENDING,
                self._clock.now(),
                {"requeued": True},
            )
            requeued = await self._store.requeue_delivery(tenant_id, message_id, event)
        if requeued is None:
            # Requeued by a concurrent call meanwhile (or gone): the same
            # answer as if it had come second.
            raise _not_dead_lettered(message_id, "it is no longer FAILED")
        self._delivery.resubmit(conversation, requeued)
        return requeued


def _check_dead_letter(message: Message) -> None:
    if not message.is_outbound:
        raise _not_dead_lettered(message.message_id, "it is an inbound message")
    if message.delivery_status is not DeliveryStatus.FAILED:
        raise _not_dead_lettered(
            message.message_id, f"its delivery is {message.delivery_status.value}, not failed"
        )


def _not_found(message_id: str) -> NotFound:
    # The same answer whether it does not exist or is another tenant's.
    return NotFound(
        f"message {message_id!r} not found",
        reason="MESSAGE_NOT_FOUND",
        metadata={"message_id": message_id},
    )


def _not_dead_lettered(message_id: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"message {message_id!r} is not a dead letter: {why}",
        reason=NOT_DEAD_LETTERED,
        metadata={"message_id": message_id},
    )
