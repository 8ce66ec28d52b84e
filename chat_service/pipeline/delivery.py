"""Delivery of stored replies to their channel, off the caller's path.

Replies are stored PENDING first and delivered afterwards, so a crash can
never leave a delivered message that is not stored: the store is the
durable queue. Channels whose clients read the store directly (the web
widget) are delivered by storing: their replies are stored SENT and never
queued. Each conversation has its own queue in memory, worked by one task
at a time, so a conversation's messages reach the platform in sequence
order while conversations proceed in parallel. None of this ever blocks
SendMessage.

A failed attempt the channel says may be retried waits, then tries again:
as long as the platform asked (DeliveryError.retry_after, its Retry-After
or throttling answer) when it did, else an exponential backoff with full
jitter (a random wait up to the growing bound, so that replies failed
together do not come back together). A permanent failure (bad recipient,
policy) ends at once. After the last attempt the message is FAILED, and its
`message.delivery_updated` event (metadata `dead_letter: true` and the
`error`) is the dead letter, which RetryDelivery (retry_delivery.py) can
queue again. A sent message is recorded SENT together with the platform's
id for it, which the platform's status callbacks name.

On start-up `resume_pending` queues the replies a crash (or a stop cut
short) left PENDING in the store. A reply the platform took just before a
crash, whose SENT was not recorded yet, is sent again: platforms take no
idempotency key for outbound messages, so that window cannot be closed.
Nor does the store lease deliveries to a process: where several instances
share a store, one that starts also queues the replies another instance
still has queued (waiting out a retry), which may then be sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from itertools import groupby
from typing import TypeVar

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
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    attempts: int = 4
    first_backoff: float = 0.5
    max_backoff: float = 30.0
    # A platform call that takes longer is a failed attempt (retried).
    attempt_timeout: float = 30.0
    # The longest a platform's Retry-After may hold a conversation's queue.
    # A platform asking for longer gets the reply dead-lettered at once
    # (retrying sooner than asked would only be refused again); an operator
    # re-queues it with RetryDelivery once the platform takes messages again.
    max_retry_after: float = 900.0
    # Pending replies read per page at start-up (resume_pending).
    resume_page: int = 200

    def backoff(self, attempt: int, jitter: float) -> float:
        """The wait after failed attempt `attempt` (from 1): full jitter, a
        `jitter` (uniform in [0, 1)) share of the exponential bound."""
        bound = min(self.max_backoff, self.first_backoff * 2 ** (attempt - 1))
        return float(bound * jitter)

    def throttled_wait(self, retry_after: float, jitter: float) -> float | None:
        """The wait a platform's `retry_after` asks for, at least that (plus
        up to a tenth more, so that replies throttled together spread out),
        within max_retry_after; None when it asks for longer than that."""
        if retry_after > self.max_retry_after:
            return None
        return min(self.max_retry_after, max(0.0, retry_after) * (1 + 0.1 * jitter))


# A message as the queue knows it: (tenant_id, message_id).
_Key = tuple[str, str]
_T = TypeVar("_T")


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
        jitter: Callable[[], float] = random.random,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """`jitter` (uniform in [0, 1)) and `sleep` are the randomness and the
        waiting of retries, replaceable in tests."""
        self._store = store
        self._delivered_by_storing = frozenset(delivered_by_storing)
        self._senders = dict(senders)
        self._clock = clock
        self._policy = policy
        self._listeners = list(listeners)
        self._jitter = jitter
        self._sleep = sleep
        self._queues: dict[str, deque[tuple[Conversation, Message]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        # Queued or being delivered, so that no message is queued twice.
        self._queued: set[_Key] = set()
        self._closing = False

    def subscribe(self, listener: DeliveryListener) -> None:
        self._listeners.append(listener)

    def initial_status(self, channel: Channel) -> DeliveryStatus:
        """What a reply on `channel` is stored as: SENT where storing it is
        delivering it (the web widget reads its conversation), PENDING where a
        platform still has to take it."""
        if channel in self._delivered_by_storing:
            return DeliveryStatus.SENT
        return DeliveryStatus.PENDING

    def submit(self, conversation: Conversation, messages: Iterable[Message]) -> int:
        """Queues the stored PENDING `messages` of `conversation` for delivery,
        after what the conversation already has queued; a message already
        queued (or being delivered) is not queued again. Returns how many
        were queued. Once the queue is closing nothing is: those messages
        stay PENDING in the store, for the next start."""
        if conversation.channel in self._delivered_by_storing:
            return 0
        fresh = [m for m in messages if (m.tenant_id, m.message_id) not in self._queued]
        if not fresh:
            return 0
        if self._closing:
            log.info("not queueing %d replies: delivery is closing", len(fresh))
            return 0
        key = f"{conversation.tenant_id}/{conversation.conversation_id}"
        queue = self._queues.setdefault(key, deque())
        for message in fresh:
            self._queued.add((message.tenant_id, message.message_id))
            queue.append((conversation, message))
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._work(key), name=f"deliver {key}")
        return len(fresh)

    def resubmit(self, conversation: Conversation, message: Message) -> None:
        """Queues a dead letter that was just made PENDING again in the store
        (RetryDelivery), telling the listeners of its new status first."""
        self._notify(message, DeliveryStatus.PENDING)
        self.submit(conversation, (message,))

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
        """Queue nothing more (resume_pending stops too), finish what is
        queued within `timeout`, then cancel the rest (those messages stay
        PENDING in the store, and are resumed at the next start)."""
        self._closing = True
        if not await self.wait_idle(timeout):
            for task in list(self._workers.values()):
                task.cancel()
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    # ------------------------------------------------------------ recovery

    async def resume_pending(self) -> None:
        """Queues every reply the store holds PENDING from before this call
        (of every tenant; a crash left them undelivered), each conversation's
        in sequence order, once. Replies stored from now on are this
        process's own, queued as they are stored. Meant to run once at
        start-up, in the background: it waits out a store outage, and
        stops when the queue closes."""
        try:
            resumed = await self._resume_before(self._clock.now())
        except Exception:
            log.exception("resuming pending deliveries failed; they stay PENDING")
            return
        if resumed:
            log.info("resumed %d pending deliveries", resumed)

    async def _resume_before(self, cutoff: datetime) -> int:
        resumed = 0
        after: tuple[datetime, str] | None = None
        # Replies created in the same instant (one answer's several replies)
        # are queued together, sorted by sequence: their ids need not sort
        # as their sequences do, and a page may end among them.
        instant: list[Message] = []
        while not self._closing:
            page = await self._retrying(
                partial(
                    self._store.list_pending_deliveries,
                    limit=self._policy.resume_page,
                    after=after,
                )
            )
            earlier = [message for message in page if message.created_at < cutoff]
            for message in earlier:
                if instant and message.created_at != instant[0].created_at:
                    resumed += await self._resume_instant(instant)
                    instant = []
                instant.append(message)
            if len(earlier) < self._policy.resume_page:
                break
            after = (page[-1].created_at, page[-1].message_id)
        if instant and not self._closing:
            resumed += await self._resume_instant(instant)
        return resumed

    async def _resume_instant(self, messages: Sequence[Message]) -> int:
        def conversation_of(message: Message) -> tuple[str, str]:
            return (message.tenant_id, message.conversation_id)

        ordered = sorted(messages, key=lambda m: (conversation_of(m), m.sequence))
        resumed = 0
        for (tenant_id, conversation_id), group in groupby(ordered, key=conversation_of):
            replies = list(group)
            conversation = await self._retrying(
                partial(self._store.get_conversation, tenant_id, conversation_id)
            )
            if conversation is None:
                log.warning(
                    "%d pending replies of conversation %s left as they are: it is gone",
                    len(replies),
                    conversation_id,
                )
                continue
            resumed += self.submit(conversation, replies)
        return resumed

    async def _retrying(self, read: Callable[[], Awaitable[_T]]) -> _T:
        """`read()`, again after a backoff while the store is unavailable."""
        attempt = 0
        while True:
            try:
                return await read()
            except StoreUnavailable:
                attempt += 1
                if self._closing:
                    raise
                log.warning("store unavailable while resuming deliveries; retrying")
                await self._sleep(self._policy.backoff(attempt, self._jitter()))

    # ------------------------------------------------------------ delivery

    async def _work(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                conversation, message = queue[0]
                try:
                    await self._deliver(conversation, message)
                except Exception:
                    # A bug: the message stays PENDING (resumed at the next
                    # start); the conversation's next ones still go.
                    log.exception("delivery of %s failed unexpectedly", message.message_id)
                finally:
                    queue.popleft()
                    self._queued.discard((message.tenant_id, message.message_id))
        finally:
            del self._workers[key]
            if not queue:
                del self._queues[key]
            else:  # cancelled: what is left stays PENDING in the store
                for _, message in queue:
                    self._queued.discard((message.tenant_id, message.message_id))
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
                wait = self._wait_after(error, attempt)
                log.warning(
                    "delivery of %s failed (attempt %d/%d%s): %s",
                    message.message_id,
                    attempt,
                    self._policy.attempts,
                    ", giving up" if wait is None else f", again in {wait:.3g}s",
                    error,
                )
                if wait is None:
                    await self._record(
                        conversation, message, DeliveryStatus.FAILED, _dead_letter(error, attempt)
                    )
                    return
                await self._sleep(wait)
            else:
                await self._record(
                    conversation,
                    message,
                    DeliveryStatus.SENT,
                    {"platform_message_id": receipt.platform_message_id}
                    if receipt.platform_message_id
                    else {},
                    platform_message_id=receipt.platform_message_id,
                )
                return

    def _wait_after(self, error: DeliveryError, attempt: int) -> float | None:
        """How long to wait before the next attempt; None to give up."""
        if not error.retryable or attempt >= self._policy.attempts:
            return None
        if error.retry_after is not None:
            return self._policy.throttled_wait(error.retry_after, self._jitter())
        return self._policy.backoff(attempt, self._jitter())

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
        *,
        platform_message_id: str = "",
    ) -> None:
        """Records the outcome, trying again (a few times) while the store is
        unavailable: a SENT left unrecorded is sent again at the next start."""
        event = delivery_updated(conversation, message, status, self._clock.now(), metadata)
        attempt = 1
        while True:
            try:
                moved = await self._store.update_delivery_status(
                    message.tenant_id,
                    message.message_id,
                    status,
                    event,
                    platform_message_id=platform_message_id,
                )
            except StoreUnavailable:
                if attempt == self._policy.attempts:
                    # The message stays PENDING in the store, and is resumed
                    # (so sent again) at the next start.
                    log.error(
                        "could not record delivery status %s of %s", status, message.message_id
                    )
                    return
                await self._sleep(self._policy.backoff(attempt, self._jitter()))
                attempt += 1
            else:
                if moved:
                    self._notify(message, status)
                return

    def _notify(self, message: Message, status: DeliveryStatus) -> None:
        for listener in self._listeners:
            try:
                listener(message, status)
            except Exception:
                log.exception("delivery listener failed")


def _dead_letter(error: DeliveryError, attempts: int) -> JsonObject:
    """The dead letter's metadata: why it failed, after how many attempts
    (and the platform's last Retry-After, when it gave one)."""
    metadata: dict[str, bool | int | float | str] = {
        "error": str(error),
        "attempts": attempts,
        "dead_letter": True,
    }
    if error.retry_after is not None:
        metadata["retry_after"] = error.retry_after
    return metadata
