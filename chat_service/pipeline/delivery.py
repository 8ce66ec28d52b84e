"""Delivery of stored replies to their channel, off the caller's path.

Replies are stored PENDING first and delivered afterwards, so a crash can
never leave a delivered message that is not stored. Channels whose clients
read the store directly (the web widget) are delivered by storing: their
replies are stored SENT and never queued. Each conversation has
its own queue, worked by one task at a time, so a conversation's messages
reach the platform in sequence order while conversations proceed in
parallel. A failed attempt is retried with exponential backoff when the
channel says it may be; after the last attempt the message is FAILED and
its `message.delivery_updated` event (metadata `dead_letter: true`) is the
dead letter. None of this ever blocks SendMessage.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.events import delivery_updated
from chat_service.domain.model import Conversation, JsonObject, Message
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConversationStore,
    DeliveryError,
    DeliveryReceipt,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

DeliveryListener = Callable[[Message, DeliveryStatus], None]


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    attempts: int = 4
    first_backoff: float = 0.5
    max_backoff: float = 30.0
    # A platform call that takes longer is a failed attempt (retried).
    attempt_timeout: float = 30.0

    def backoff(self, attempt: int) -> float:
        return float(min(self.max_backoff, self.first_backoff * 2 ** (attempt - 1)))


class DeliveryQueue:
    def __init__(
        self,
        *,
        store: ConversationStore,
        senders: Mapping[Channel, ChannelSender],
        clock: Clock,
        policy: DeliveryPolicy = DeliveryPolicy(),
        listeners: Iterable[DeliveryListener] = (),
        delivered_by_storing: Iterable[Channel] = (),
    ) -> None:
        self._store = store
        self._delivered_by_storing = frozenset(delivered_by_storing)
        self._senders = dict(senders)
        self._clock = clock
        self._policy = policy
        self._listeners = list(listeners)
        self._queues: dict[str, deque[tuple[Conversation, Message]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}

    def subscribe(self, listener: DeliveryListener) -> None:
        self._listeners.append(listener)

    def initial_status(self, channel: Channel) -> DeliveryStatus:
        """What a reply on `channel` is stored as: SENT where storing it is
        delivering it (the web widget reads its conversation), PENDING where a
        platform still has to take it."""
        if channel in self._delivered_by_storing:
            return DeliveryStatus.SENT
        return DeliveryStatus.PENDING

    def submit(self, conversation: Conversation, messages: Iterable[Message]) -> None:
        if conversation.channel in self._delivered_by_storing:
            return
        key = f"{conversation.tenant_id}/{conversation.conversation_id}"
        queue = self._queues.setdefault(key, deque())
        queue.extend((conversation, message) for message in messages)
        if queue and key not in self._workers:
            self._workers[key] = asyncio.create_task(self._work(key), name=f"deliver {key}")

    @property
    def pending(self) -> int:
        return sum(len(queue) for queue in self._queues.values()) + len(self._workers)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued delivery is done; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while self._workers:
                    await asyncio.gather(*self._workers.values(), return_exceptions=True)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> None:
        """Finish what is queued within `timeout`, then cancel the rest (those
        messages stay PENDING in the store)."""
        if not await self.wait_idle(timeout):
            for task in list(self._workers.values()):
                task.cancel()
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def _work(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                conversation, message = queue[0]
                await self._deliver(conversation, message)
                queue.popleft()
        finally:
            del self._workers[key]
            if not queue:
                del self._queues[key]

    async def _deliver(self, conversation: Conversation, message: Message) -> None:
        sender = self._senders.get(conversation.channel)
        for attempt in range(1, self._policy.attempts + 1):
            try:
                if sender is None:
                    raise DeliveryError(
                        f"no connector for channel {conversation.channel.value}", retryable=False
                    )
                receipt = await self._attempt(sender, conversation, message)
            except DeliveryError as error:
                final = not error.retryable or attempt == self._policy.attempts
                log.warning(
                    "delivery of %s failed (attempt %d/%d%s): %s",
                    message.message_id,
                    attempt,
                    self._policy.attempts,
                    ", giving up" if final else "",
                    error,
                )
                if final:
                    await self._record(
                        conversation,
                        message,
                        DeliveryStatus.FAILED,
                        {"error": str(error), "attempts": attempt, "dead_letter": True},
                    )
                    return
                await asyncio.sleep(self._policy.backoff(attempt))
            else:
                metadata: JsonObject = (
                    {"platform_message_id": receipt.platform_message_id}
                    if receipt.platform_message_id
                    else {}
                )
                await self._record(conversation, message, DeliveryStatus.SENT, metadata)
                return

    async def _attempt(
        self, sender: ChannelSender, conversation: Conversation, message: Message
    ) -> DeliveryReceipt:
        """One call to the platform; whatever goes wrong is a DeliveryError, so a
        connector's bug or a hung platform cannot stall the conversation's queue."""
        try:
            async with asyncio.timeout(self._policy.attempt_timeout):
                return await sender.send(conversation, message)
        except DeliveryError:
            raise
        except TimeoutError:
            raise DeliveryError(
                f"no answer within {self._policy.attempt_timeout:g}s", retryable=True
            ) from None
        except Exception as error:
            log.exception("channel connector failed on %s", message.message_id)
            raise DeliveryError(
                f"connector error: {type(error).__name__}", retryable=True
            ) from error

    async def _record(
        self,
        conversation: Conversation,
        message: Message,
        status: DeliveryStatus,
        metadata: JsonObject,
    ) -> None:
        event = delivery_updated(conversation, message, status, self._clock.now(), metadata)
        try:
            moved = await self._store.update_delivery_status(
                message.tenant_id, message.message_id, status, event
            )
        except StoreUnavailable:
            # The message stays PENDING in the store; it was handed over (or
            # failed) all the same. Nothing else to do until the store is back.
            log.error("could not record delivery status %s of %s", status, message.message_id)
            return
        if moved:
            for listener in self._listeners:
                try:
                    listener(message, status)
                except Exception:
                    log.exception("delivery listener failed")
