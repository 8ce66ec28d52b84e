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

Several processes share the store (replicas, a rolling deploy), so a
reply is leased to the process delivering it (ConversationStore.
claim_delivery, owner: the process's id, unique among live ones). The queue
claims a reply before every attempt, renews the claim every third of a
lease while it waits to retry (however long the platform's Retry-After),
and keeps the replies queued behind it in its conversation claimed too, so
another process neither sends them nor sends them out of order. A claim
refused means another process delivers the reply: it leaves this queue
silently. Recording SENT or FAILED ends the lease; a closing queue releases
what it could not finish, for another process to take at once.

`resume_pending` queues the replies PENDING in the store that no live
process holds: those a crash (or a stop cut short) left, whether this
process's earlier life (same owner id: its leases are its own at once) or
another's whose lease ran out. It runs at start-up and then every
`sweep_seconds` (`run_sweeps`), so a process that died mid-delivery has its
replies taken over by a live one within about a lease and a sweep. It
leaves replies created within the last lease to the process that stored
them, which claims them (or ones queued behind) within that time.

A reply the platform took just before its process died, whose SENT was not
recorded yet, is sent again by the one that takes it over: platforms take
no idempotency key for outbound messages, so that window cannot be closed.
Likewise a process stalled longer than a lease in the middle of an attempt
(the attempt timeout is well within one) may find its reply sent twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from itertools import groupby
from typing import TypeVar

from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.events import delivery_updated
from chat_service.domain.model import ChannelMetadata, Conversation, JsonObject, Message
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConversationStore,
    DeliveryClaimant,
    DeliveryError,
    DeliveryReceipt,
    Metrics,
    NoMetrics,
    NoTracer,
    StoreUnavailable,
    Tracer,
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
    # Pending replies read per page by resume_pending.
    resume_page: int = 200
    # How long a claim holds a reply for this process. Claimed before each
    # attempt, renewed every third of it while a retry waits: longer than an
    # attempt (attempt_timeout), with room for the store's answers. A
    # process that dies keeps its replies from the others this long at most.
    lease_seconds: float = 60.0
    # How often resume_pending looks for replies no live process holds.
    sweep_seconds: float = 30.0
    # The most a closing queue spends releasing the leases it still holds.
    release_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.lease_seconds <= self.attempt_timeout:
            raise ValueError("the delivery lease must outlast an attempt (attempt_timeout)")
        if self.sweep_seconds <= 0:
            raise ValueError("sweep_seconds must be positive")

    @property
    def renew_every(self) -> float:
        """How often a held lease is renewed: a third of it."""
        return self.lease_seconds / 3

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


@dataclass(frozen=True, slots=True, eq=False)
class _Queued:
    """A reply in its conversation's queue, with where the trace of the call
    that queued it was (its delivery's span continues it; None: untraced)."""

    conversation: Conversation
    message: Message
    origin: object = None

    @property
    def key(self) -> _Key:
        return (self.message.tenant_id, self.message.message_id)


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
        owner: str | None = None,
        jitter: Callable[[], float] = random.random,
        sleep: Sleep = asyncio.sleep,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """`owner`: this process's id in delivery leases, unique among live
        processes sharing the store and best kept across restarts (wiring
        passes bootstrap.relay_owner); None: a random one. `jitter` (uniform
        in [0, 1)) and `sleep` are the randomness and the waiting of retries,
        replaceable in tests."""
        self._store = store
        self._owner = owner or f"delivery-{uuid.uuid4().hex}"
        self._delivered_by_storing = frozenset(delivered_by_storing)
        self._senders = dict(senders)
        self._clock = clock
        self._policy = policy
        self._listeners = list(listeners)
        self._jitter = jitter
        self._sleep = sleep
        self._metrics = metrics or NoMetrics()
        self._tracer = tracer or NoTracer()
        self._queues: dict[str, deque[_Queued]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        # Queued or being delivered, so that no message is queued twice.
        self._queued: set[_Key] = set()
        # Leased to this process: when the lease was last taken (clock time).
        self._leased: dict[_Key, datetime] = {}
        self._closing = False
        self._stop = asyncio.Event()  # set by close: ends run_sweeps

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
        origin = self._tracer.capture()
        for message in fresh:
            self._queued.add((message.tenant_id, message.message_id))
            queue.append(_Queued(conversation, message, origin))
        if key not in self._workers:
            # In a context of its own: the conversation's worker outlives the
            # call that started it and delivers later calls' messages too
            # (each continues its own call's trace: _Queued.origin).
            self._workers[key] = asyncio.create_task(
                self._work(key), name=f"deliver {key}", context=contextvars.Context()
            )
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

    @property
    def owner(self) -> str:
        return self._owner

    async def close(self, timeout: float) -> None:
        """Queue nothing more (resume_pending and run_sweeps stop too),
        finish what is queued within `timeout`, then cancel the rest: those
        messages stay PENDING in the store, their leases released (within
        release_timeout, best effort) for another process to take at once."""
        self._closing = True
        self._stop.set()
        if not await self.wait_idle(timeout):
            for task in list(self._workers.values()):
                task.cancel()
            await asyncio.gather(*self._workers.values(), return_exceptions=True)
        await self._release_leases()

    async def _release_leases(self) -> None:
        held, self._leased = list(self._leased), {}
        if not held:
            return
        try:
            async with asyncio.timeout(self._policy.release_timeout):
                await asyncio.gather(
                    *(self._store.release_delivery(t, m, self._owner) for t, m in held)
                )
        except Exception as error:  # best effort: they run out within a lease anyway
            log.warning("could not release %d delivery leases: %s", len(held), error)

    # ------------------------------------------------------------ recovery

    async def run_sweeps(self) -> None:
        """resume_pending now, then every sweep_seconds, until close (or
        cancellation)."""
        while not self._stop.is_set():
            await self.resume_pending()
            try:
                async with asyncio.timeout(self._policy.sweep_seconds):
                    await self._stop.wait()
            except TimeoutError:
                pass

    async def resume_pending(self) -> None:
        """Queues the replies the store holds PENDING (of every tenant) that
        no live process holds a lease on, each conversation's in sequence
        order, once: those a crash left, or whose process stopped or died
        before delivering them. Not those created within the last lease
        (their process claims them meanwhile). It waits out a store outage,
        and stops when the queue closes."""
        now = self._clock.now()
        cutoff = now - timedelta(seconds=self._policy.lease_seconds)
        try:
            resumed = await self._resume_before(cutoff, DeliveryClaimant(self._owner, now))
        except Exception:
            log.exception("resuming pending deliveries failed; they stay PENDING")
            return
        if resumed:
            log.info("resumed %d pending deliveries", resumed)

    async def _resume_before(self, cutoff: datetime, claimant: DeliveryClaimant) -> int:
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
                    claimable_by=claimant,
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
            # This process's own (queued, leased): nothing to read for them.
            replies = [m for m in group if (m.tenant_id, m.message_id) not in self._queued]
            if not replies:
                continue
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
                head = queue[0]
                conversation, message, held = head.conversation, head.message, head.key
                try:
                    with self._tracer.span(
                        "chat.deliver",
                        {
                            "chat.channel": conversation.channel.value,
                            "chat.tenant_id": message.tenant_id,
                            "chat.conversation_id": message.conversation_id,
                            "chat.message_id": message.message_id,
                        },
                        origin=head.origin,
                    ):
                        await self._deliver(queue, conversation, message)
                    # Recorded (which ended its lease), or another's.
                    self._leased.pop(held, None)
                except Exception:
                    # A bug: the message stays PENDING, for a later sweep
                    # once its lease runs out; the conversation's next ones
                    # still go.
                    log.exception("delivery of %s failed unexpectedly", message.message_id)
                finally:
                    # (Cancelled: it stays in _leased, released by close.)
                    queue.popleft()
                    self._queued.discard(held)
        finally:
            del self._workers[key]
            if not queue:
                del self._queues[key]
            else:  # cancelled: what is left stays PENDING in the store
                for item in queue:
                    self._queued.discard(item.key)
                del self._queues[key]

    async def _deliver(
        self,
        queue: deque[_Queued],
        conversation: Conversation,
        message: Message,
    ) -> None:
        """Delivers `message`, the head of its conversation's `queue`."""
        sender = self._senders.get(conversation.channel)
        for attempt in range(1, self._policy.attempts + 1):
            if not await self._hold(queue):
                log.debug("%s is delivered by another process", message.message_id)
                return
            try:
                if sender is None:
                    raise DeliveryError(
                        f"no connector for channel {conversation.channel.value}", retryable=False
                    )
                receipt = await self._attempt(sender, conversation, message)
            except DeliveryError as error:
                wait = self._wait_after(error, attempt)
                self._metrics.delivery(conversation.tenant_id, conversation.channel, "failed")
                self._metrics.delivery(
                    conversation.tenant_id,
                    conversation.channel,
                    "dead_lettered" if wait is None else "retried",
                )
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
                if not await self._wait_holding(queue, wait):
                    log.debug("%s was taken over by another process", message.message_id)
                    return
            else:
                self._metrics.delivery(conversation.tenant_id, conversation.channel, "sent")
                await self._record(
                    conversation,
                    message,
                    DeliveryStatus.SENT,
                    _sent_metadata(receipt),
                    platform_message_id=receipt.platform_message_id,
                    channel_data=receipt.metadata,
                )
                return

    async def _wait_holding(self, queue: deque[_Queued], wait: float) -> bool:
        """Waits `wait` seconds holding the leases of `queue`, renewed every
        third of a lease; False as soon as its head is no longer ours."""
        remaining = wait
        while True:
            if not await self._hold(queue):
                return False
            step = min(remaining, self._policy.renew_every)
            await self._sleep(step)
            remaining -= step
            if remaining <= 0:
                return True

    async def _hold(self, queue: deque[_Queued]) -> bool:
        """Claims (renews) the head of a conversation's queue, and the replies
        queued behind it whose lease is not fresh (taken within the last
        third of a lease), so that no other process sends them, nor sends
        them before the head. A follower another process holds leaves the
        queue. Returns whether the head is this process's to deliver."""
        head, *behind = list(queue)
        fresh_since = self._clock.now() - timedelta(seconds=self._policy.renew_every)

        def fresh(message: Message) -> bool:
            taken = self._leased.get((message.tenant_id, message.message_id))
            return taken is not None and taken > fresh_since

        stale = [item for item in behind if not fresh(item.message)]
        held = await asyncio.gather(*(self._claim(item.message) for item in (head, *stale)))
        for item, ours in zip(stale, held[1:], strict=True):
            if not ours and item in queue:
                log.debug("%s is delivered by another process", item.message.message_id)
                queue.remove(item)
                self._queued.discard(item.key)
        return held[0]

    async def _claim(self, message: Message) -> bool:
        """Claims `message` for this process, again after a backoff while the
        store is unavailable (never sending unclaimed); False when another
        process holds it, it is no longer PENDING, or the queue is closing
        while the store is out."""
        key = (message.tenant_id, message.message_id)
        attempt = 0
        while True:
            now = self._clock.now()
            try:
                ours = await self._store.claim_delivery(
                    message.tenant_id,
                    message.message_id,
                    self._owner,
                    now=now,
                    lease_seconds=self._policy.lease_seconds,
                )
            except StoreUnavailable:
                attempt += 1
                if self._closing:
                    return False
                log.warning("store unavailable while claiming %s; retrying", message.message_id)
                await self._sleep(self._policy.backoff(attempt, self._jitter()))
                continue
            if ours:
                self._leased[key] = now
            else:
                self._leased.pop(key, None)
            return ours

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
            with self._tracer.span("chat.deliver.attempt") as span:
                try:
                    async with asyncio.timeout(self._policy.attempt_timeout):
                        return await sender.send(conversation, message)
                except DeliveryError as error:
                    span.set("chat.delivery.retryable", error.retryable)
                    span.fail(str(error))
                    raise
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
        channel_data: Mapping[str, str | int | bool] | None = None,
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
                    channel_data=channel_data,
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
                    if platform_message_id or channel_data:
                        message = replace(
                            message,
                            channel_metadata=_with_sent(
                                message.channel_metadata, platform_message_id, channel_data
                            ),
                        )
                    self._notify(message, status)
                return

    def _notify(self, message: Message, status: DeliveryStatus) -> None:
        for listener in self._listeners:
            try:
                listener(message, status)
            except Exception:
                log.exception("delivery listener failed")


def _with_sent(
    metadata: ChannelMetadata,
    platform_message_id: str,
    channel_data: Mapping[str, str | int | bool] | None,
) -> ChannelMetadata:
    """The channel metadata as update_delivery_status recorded it."""
    if platform_message_id:
        metadata = replace(metadata, platform_message_id=platform_message_id)
    if channel_data:
        metadata = replace(metadata, additional_data={**metadata.additional_data, **channel_data})
    return metadata


def _sent_metadata(receipt: DeliveryReceipt) -> JsonObject:
    """The SENT event's metadata: the platform's id for the message and
    what else the channel reported (receipt.metadata)."""
    metadata: dict[str, str | int | bool] = dict(receipt.metadata)
    if receipt.platform_message_id:
        metadata["platform_message_id"] = receipt.platform_message_id
    return metadata


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
