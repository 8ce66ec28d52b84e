"""The inbox worker: acknowledged webhooks turned into stored, answered
messages and into delivery statuses, at least once, after the platform got
its answer.

A background loop like the outbox relay's (batch_loop.py): it claims the
oldest due deliveries under a lease, parses each body with its platform's
parser (the one that checked it at the edge), and

- hands every end-user message to SendMessage, as an InboundMessage whose
  id derives from the platform's message id (a redelivered wamid or mid is
  one message with one reply: SendMessage is idempotent by id), whose
  session is the (connection, platform user) pair (the conversation goes on
  while it is open and recent), and whose channel metadata names the
  connection (`additional_data.connection_id`: what replies are sent
  through) and the platform's ids. The connection is the one of the tenant
  whose account id (phone_number_id, page id) the message names; a message
  for an account with no connection is skipped and counted.
- answers what it cannot read politely: a type the service does not map,
  or one that does not pass the channel's validation (a MIME type the
  content model does not take), is stored as a placeholder text and gets
  UNSUPPORTED_REPLY instead of the engine's answer (canned_replies.py).
- moves delivery statuses forward only (the store refuses backward moves),
  with a `message.delivery_updated` event and the same listeners the
  delivery queue notifies (streams and watches see it): named platform ids
  through `find_by_platform_id`; watermarks (Messenger receipts) over the
  user's recent conversations on that account, every outbound message
  handed to the platform (not PENDING) and created up to the watermark.
  Ids of no message of ours are counted and ignored.

Messages of one platform user are handled in order, one at a time; users
are handled concurrently (up to `concurrency`). Errors: what may pass
(store or coordination unavailable, a busy conversation: UNAVAILABLE,
ABORTED) sends the delivery back to the inbox for a later attempt, with
exponential backoff, and after `max_attempts` to the dead letters, with its
reason; a message the pipeline refuses (INVALID_ARGUMENT, ...) is logged,
counted and skipped, so a delivery never loops for ever. A later message of
the same user waits for an earlier one that must be retried, in its batch
and in later ones (waiting never counts toward giving up). That holds
within a process: two processes claiming one user's deliveries at once can
still store them out of order while one waits to be retried.

Crash safety: a delivery is finished only after all of it was handled; a
worker that dies leaves its claims to expire (`lease_seconds`), then the
next worker (or this slot restarted: the same owner id takes its own
claims straight back) handles them again, idempotently.

Processed deliveries are kept for deduplication, then pruned after
INBOX_RETENTION_HOURS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Protocol

from chat_service.domain.content import MessageContent
from chat_service.domain.content_limits import MAX_TEXT_LENGTH
from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.errors import Aborted, ChatError, InvalidArgument, Unavailable
from chat_service.domain.events import delivery_updated
from chat_service.domain.model import (
    ChannelMetadata,
    Conversation,
    InboundMessage,
    JsonObject,
    Message,
)
from chat_service.domain.validation import validate_inbound
from chat_service.domain.webhooks import (
    UNSUPPORTED_REPLY,
    ParsedWebhook,
    PlatformMessage,
    PlatformStatus,
    WebhookCall,
    inbound_message_id,
    session_of,
)
from chat_service.pipeline.batch_loop import drain_with_retention
from chat_service.pipeline.canned_replies import CannedReplies
from chat_service.pipeline.errors import port_errors
from chat_service.pipeline.send_message import SendOutcome
from chat_service.ports import (
    Clock,
    ConnectionDirectory,
    ConversationQuery,
    ConversationStore,
    InboundChannel,
    InboundMessageEffects,
    NoTracer,
    OpenedConnection,
    StoreUnavailable,
    Tracer,
    WebhookDelivery,
    WebhookInbox,
)

log = logging.getLogger(__name__)

# A watermark receipt looks at this many of the user's newest conversations
# on the channel, reading their messages this many at a time.
WATERMARK_CONVERSATIONS = 10
_PAGE = 100
# As placeholders name them (the adapters' own placeholders do the same).
_PLATFORM_NAMES = {
    Channel.WHATSAPP: "WhatsApp",
    Channel.MESSENGER: "Messenger",
    Channel.SLACK: "Slack",
    Channel.TEAMS: "Teams",
    Channel.SMS: "SMS",
    Channel.VOICE: "voice",
}


class SendsMessages(Protocol):
    """SendMessage, as the worker calls it."""

    async def __call__(self, inbound: InboundMessage, *, field_prefix: str = "") -> SendOutcome: ...


DeliveryListener = Callable[[Message, DeliveryStatus], None]


@dataclass(frozen=True, slots=True)
class InboxSettings:
    batch_size: int = 20
    # Longer than a batch takes (a user's messages are answered one after
    # the other, each within the engine's deadline); a worker that outlives
    # it only makes another repeat idempotent work.
    lease_seconds: float = 120.0
    idle_poll_seconds: float = 1.0
    max_backoff_seconds: float = 5.0  # of the loop itself, when claiming fails
    concurrency: int = 16  # platform users handled at once
    max_attempts: int = 12
    # A status naming no message of ours is looked at this many times (the
    # retries' first delays: 1 s, 2 s) before it is counted and ignored.
    unknown_status_attempts: int = 3
    first_retry_seconds: float = 1.0
    max_retry_seconds: float = 300.0  # 12 attempts span about half an hour
    retention: timedelta = timedelta(hours=168)
    prune_interval_seconds: float = 60.0
    prune_batch_size: int = 1_000

    def retry_delay(self, attempts: int) -> float:
        return float(min(self.max_retry_seconds, self.first_retry_seconds * 2 ** (attempts - 1)))


@dataclass
class InboxStats:
    """What the worker did since it started (for operators and tests)."""

    deliveries: int = 0  # finished
    messages: int = 0  # handed to SendMessage
    unsupported: int = 0  # of which answered with UNSUPPORTED_REPLY
    refused: int = 0  # refused by the pipeline: logged and skipped
    no_connection: int = 0  # for an account the tenant has no connection for
    statuses: int = 0  # delivery statuses moved forward
    unknown_statuses: int = 0  # naming no outbound message of ours
    retries: int = 0  # deliveries sent back for a later attempt
    dead_letters: int = 0


class _Retry(Exception):
    """Handling must be tried again later (the delivery goes back to the inbox)."""

    def __init__(
        self, reason: str, retry_after: float | None = None, *, waiting: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after or 0.0
        # Only waits behind an earlier message of the same user: never a
        # reason to give up on this delivery.
        self.waiting = waiting


@dataclass(eq=False)
class _Job:
    """One claimed delivery and how its handling went."""

    delivery: WebhookDelivery
    parsed: ParsedWebhook = field(default_factory=ParsedWebhook)
    dead: str = ""  # a reason to give up on it at once
    retry: _Retry | None = None

    def must_retry(self, retry: _Retry) -> None:
        if self.retry is None:
            self.retry = retry


class InboxWorker:
    def __init__(
        self,
        *,
        inbox: WebhookInbox,
        inbound: Mapping[Channel, InboundChannel],
        directory: ConnectionDirectory,
        store: ConversationStore,
        send_message: SendsMessages,
        canned: CannedReplies,
        clock: Clock,
        owner: str,
        listeners: Sequence[DeliveryListener] = (),
        settings: InboxSettings = InboxSettings(),
        tracer: Tracer | None = None,
    ) -> None:
        self._tracer = tracer or NoTracer()
        self._inbox = inbox
        self._inbound = dict(inbound)
        self._directory = directory
        self._store = store
        self._send = send_message
        self._canned = canned
        self._clock = clock
        self.owner = owner
        self._listeners = list(listeners)
        self._settings = settings
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.stats = InboxStats()
        # Platform users whose earlier delivery waits to be tried again, and
        # its position: their later deliveries wait behind it, so a user's
        # messages are stored in the order they came (in this process).
        self._held: dict[_UserKey, int] = {}

    def wake(self) -> None:
        """A delivery was stored: look at the inbox now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Before cancelling run(): its loops end even if a cancellation is lost."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Handles deliveries, and prunes processed ones, until stopped."""
        await drain_with_retention(
            name="webhook inbox",
            step=self.process_once,
            prune=self.prune_once,
            wake=self._wake,
            stop=self._stop,
            timings=self._settings,
            log=log,
            quiet_errors=(StoreUnavailable,),
        )

    async def prune_once(self) -> int:
        return await self._inbox.prune(
            processed_before=self._clock.now() - self._settings.retention,
            limit=self._settings.prune_batch_size,
        )

    async def process_once(self) -> int:
        """Claims one batch and handles it; returns how many deliveries it claimed."""
        settings = self._settings
        deliveries = await self._inbox.claim(
            self.owner,
            now=self._clock.now(),
            limit=settings.batch_size,
            lease_seconds=settings.lease_seconds,
        )
        if not deliveries:
            return 0
        jobs = [self._parsed(delivery) for delivery in deliveries]
        gate = asyncio.Semaphore(settings.concurrency)
        async with asyncio.TaskGroup() as group:
            for user, items in _by_user(jobs).items():
                group.create_task(self._user_messages(user, items, gate))
            for job in jobs:
                if job.parsed.statuses:
                    group.create_task(self._statuses(job, gate))
        for job in jobs:
            await self._settle(job)
        return len(deliveries)

    # ------------------------------------------------------------ parsing

    def _parsed(self, delivery: WebhookDelivery) -> _Job:
        job = _Job(delivery)
        adapter = self._inbound.get(delivery.channel)
        if adapter is None:
            # Stored by a process that takes this platform (a newer version,
            # during a rolling deploy): one of those may handle it later.
            job.must_retry(_Retry(f"no {delivery.channel.value} inbound channel in this process"))
            return job
        call = WebhookCall(
            tenant_id=delivery.tenant_id,
            channel=delivery.channel,
            body=delivery.body,
            content_type=delivery.content_type,
            headers=delivery.headers,
            received_at=delivery.received_at,
        )
        try:
            job.parsed = adapter.parse(call)
        except ChatError as error:  # it parsed at the edge: a parser changed since
            job.dead = f"the body no longer parses: {error.message}"
        except Exception as error:
            log.exception(
                "the %s parser failed on delivery %d", delivery.channel, delivery.position
            )
            job.dead = f"the parser failed: {type(error).__name__}"
        return job

    # ----------------------------------------------------------- messages

    async def _user_messages(
        self,
        user: _UserKey,
        items: Sequence[tuple[_Job, PlatformMessage]],
        gate: asyncio.Semaphore,
    ) -> None:
        """One platform user's messages of the batch, in order; after one
        that must be retried, the later ones wait too (their order holds),
        in this batch and in later ones until it went through."""
        async with gate:
            waiting: _Retry | None = None
            held_by = self._held.get(user)
            for job, message in items:
                position = job.delivery.position
                if waiting is None and held_by is not None and position > held_by:
                    waiting = _Retry(f"delivery {held_by} of the same user goes first")
                if waiting is not None:
                    job.must_retry(
                        _Retry(f"after an earlier message: {waiting.reason}", waiting=True)
                    )
                    continue
                try:
                    await self._message(job.delivery, message)
                except _Retry as retry:
                    job.must_retry(retry)
                    waiting = retry
                except Exception as error:
                    log.exception(
                        "webhook message %s of delivery %d failed",
                        message.platform_message_id,
                        position,
                    )
                    waiting = _Retry(f"unexpected error: {type(error).__name__}")
                    job.must_retry(waiting)
                else:
                    if held_by == position:
                        held_by = None  # the one they waited for went through
                    continue
                self._held[user] = min(position, self._held.get(user, position))

    async def _message(self, delivery: WebhookDelivery, message: PlatformMessage) -> None:
        # A trace of its own (the webhook's call ended at the inbox): the
        # message's steps, its engine call and its reply's delivery in it.
        with self._tracer.span(
            "chat.inbox.message",
            {
                "chat.channel": delivery.channel.value,
                "chat.tenant_id": delivery.tenant_id,
                "chat.inbox.position": delivery.position,
            },
        ):
            await self._handle_message(delivery, message)

    async def _handle_message(self, delivery: WebhookDelivery, message: PlatformMessage) -> None:
        connection = await self._connection(delivery, message.account_id)
        if connection is None:
            self.stats.no_connection += 1
            log.warning(
                "%s message for account %s of tenant %s: no connection; skipped",
                delivery.channel.value,
                message.account_id,
                delivery.tenant_id,
            )
            return
        effects = self._inbound.get(delivery.channel)
        if isinstance(effects, InboundMessageEffects):
            # Before SendMessage: a reply to the message already sees it
            # (SMS: no reply goes to a number that just sent STOP).
            try:
                with port_errors():
                    await effects.apply(delivery.tenant_id, connection, message)
            except Unavailable as error:
                raise _Retry(f"{error.reason}: {error.message}", error.retry_after) from None
        inbound = inbound_of(delivery, message, connection.connection.connection_id)
        supported = message.supported
        if supported:
            try:
                validate_inbound(inbound)
            except InvalidArgument as error:
                # The channel's rules refuse what the platform sent (a type
                # or MIME type the content model does not take): stored as
                # a placeholder and answered politely, like an unmapped type.
                inbound = unsupported(inbound, delivery.channel, message, error)
                supported = False
        canned = (
            nullcontext()
            if supported
            else self._canned.answering(
                inbound.tenant_id, inbound.message_id, MessageContent.of_text(UNSUPPORTED_REPLY)
            )
        )
        try:
            with canned:
                await self._send(inbound)
        except (Unavailable, Aborted) as error:
            raise _Retry(f"{error.reason}: {error.message}", error.retry_after) from None
        except ChatError as error:
            self.stats.refused += 1
            log.warning(
                "%s message %s of tenant %s refused by the pipeline (%s: %s); skipped",
                delivery.channel.value,
                inbound.message_id,
                delivery.tenant_id,
                error.reason,
                error.message,
            )
            return
        self.stats.messages += 1
        if not supported:
            self.stats.unsupported += 1

    async def _connection(
        self, delivery: WebhookDelivery, account_id: str
    ) -> OpenedConnection | None:
        """The tenant's connection for the account (the directory caches
        them; a miss reads the store again before the message is skipped, as
        the connection may have been made by another process since)."""
        for fresh in (False, True):
            try:
                with port_errors():
                    opened = await self._directory.for_channel(
                        delivery.tenant_id, delivery.channel, fresh=fresh
                    )
            except Unavailable as error:
                raise _Retry(
                    f"connections unavailable: {error.message}", error.retry_after
                ) from None
            found = next((o for o in opened if o.connection.account_id == account_id), None)
            if found is not None:
                return found
        return None

    # ----------------------------------------------------------- statuses

    async def _statuses(self, job: _Job, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                for status in job.parsed.statuses:
                    await self._status(job.delivery, status)
            except _Retry as retry:
                job.must_retry(retry)
            except (StoreUnavailable, Unavailable) as error:
                job.must_retry(_Retry(f"store unavailable: {error}"))
            except Exception as error:
                log.exception("statuses of delivery %d failed", job.delivery.position)
                job.must_retry(_Retry(f"unexpected error: {type(error).__name__}"))

    async def _status(self, delivery: WebhookDelivery, status: PlatformStatus) -> None:
        tenant_id, channel = delivery.tenant_id, delivery.channel
        for platform_id in status.platform_message_ids:
            message = await self._store.find_by_platform_id(tenant_id, channel, platform_id)
            if message is None:
                if delivery.attempts < self._settings.unknown_status_attempts:
                    # The platform may report a message before our SENT (with
                    # its id) is recorded: look again shortly (the rest of
                    # the delivery is idempotent: statuses only move forward).
                    raise _Retry(f"{channel.value} status for a message not recorded yet")
                self.stats.unknown_statuses += 1
                log.info("%s status for unknown message %s; ignored", channel.value, platform_id)
                continue
            found = await self._store.get_conversation(tenant_id, message.conversation_id)
            if found is not None:
                await self._advance(found, message, status)
        if status.watermark:
            await self._watermark(delivery, status)

    async def _watermark(self, delivery: WebhookDelivery, status: PlatformStatus) -> None:
        conversations = await self._store.list_conversations(
            delivery.tenant_id,
            ConversationQuery(user_id=status.user_id, channel=delivery.channel),
            limit=WATERMARK_CONVERSATIONS,
        )
        covered = False
        for conversation in conversations:
            workspace = conversation.channel_metadata.workspace_id
            if workspace and workspace != status.account_id:
                continue  # the same user id on another page
            covered = await self._through_watermark(conversation, status) or covered
        if not covered:
            # Nothing of ours was sent to this user before the watermark.
            self.stats.unknown_statuses += 1

    async def _through_watermark(self, conversation: Conversation, status: PlatformStatus) -> bool:
        """Moves the outbound messages created up to the watermark, newest
        first, until one that an earlier receipt moved already. Whether the
        watermark covers any message handed to the platform."""
        covered = False
        before: int | None = None
        while True:
            page = await self._store.list_messages(
                conversation.tenant_id,
                conversation.conversation_id,
                limit=_PAGE,
                after_sequence=before,
                descending=True,
            )
            for message in page:
                current = message.delivery_status
                if not message.is_outbound or message.created_at > status.at:
                    continue
                # Not yet handed to the platform (PENDING) the watermark
                # cannot cover; FAILED stays FAILED.
                if current in (DeliveryStatus.PENDING, DeliveryStatus.FAILED):
                    continue
                covered = True
                if not current.can_advance_to(status.status):
                    return covered  # this one, and those before it, are there already
                await self._advance(conversation, message, status)
            if len(page) < _PAGE:
                return covered
            before = page[-1].sequence

    async def _advance(
        self, conversation: Conversation, message: Message, status: PlatformStatus
    ) -> int:
        if not message.delivery_status.can_advance_to(status.status):
            return 0
        metadata: JsonObject = {"source": "platform"}
        if status.error:
            metadata = {**metadata, "error": status.error}
        event = delivery_updated(conversation, message, status.status, self._clock.now(), metadata)
        moved = await self._store.update_delivery_status(
            message.tenant_id, message.message_id, status.status, event
        )
        if not moved:
            return 0
        self.stats.statuses += 1
        for listener in self._listeners:
            try:
                listener(message, status.status)
            except Exception:
                log.exception("delivery listener failed")
        return 1

    # ------------------------------------------------------------ settling

    async def _settle(self, job: _Job) -> None:
        delivery, settings = job.delivery, self._settings
        position = delivery.position
        retry = job.retry
        if retry is not None and not retry.waiting and delivery.attempts >= settings.max_attempts:
            job.dead = f"gave up after {delivery.attempts} attempts: {retry.reason}"
        if job.dead or retry is None:
            # Done with (or given up): its users' later deliveries go on.
            for user in [u for u, held in self._held.items() if held == position]:
                del self._held[user]
        if job.dead:
            self.stats.dead_letters += 1
            log.error(
                "%s webhook delivery %d of tenant %s dead-lettered: %s",
                delivery.channel.value,
                position,
                delivery.tenant_id,
                job.dead,
            )
            await self._inbox.dead_letter(
                self.owner, position, now=self._clock.now(), error=job.dead
            )
        elif job.retry is not None:
            self.stats.retries += 1
            delay = max(settings.retry_delay(delivery.attempts), job.retry.retry_after)
            log.warning(
                "%s webhook delivery %d (attempt %d): %s; again in %.1fs",
                delivery.channel.value,
                position,
                delivery.attempts,
                job.retry.reason,
                delay,
            )
            await self._inbox.retry_later(
                self.owner,
                position,
                not_before=self._clock.now() + timedelta(seconds=delay),
                error=job.retry.reason,
            )
        else:
            self.stats.deliveries += 1
            await self._inbox.finish(self.owner, position, now=self._clock.now())


# --------------------------------------------------------------- helpers


def inbound_of(
    delivery: WebhookDelivery, message: PlatformMessage, connection_id: str
) -> InboundMessage:
    """The platform's message as SendMessage takes it: the same every time
    the same message comes (what makes a redelivery one message)."""
    channel = delivery.channel
    additional: dict[str, str | bool] = {"connection_id": connection_id, **message.extra}
    if message.kind:
        additional["kind"] = message.kind
    if message.user_name:
        additional["user_name"] = message.user_name
    if message.reply_to_platform_id:
        additional["reply_to_platform_id"] = message.reply_to_platform_id
    content = message.content
    if len(content.text) > MAX_TEXT_LENGTH:
        # Platforms take longer texts from users (WhatsApp up to 65,536
        # characters) than the service keeps: the user's words are kept, cut
        # at the limit and marked, rather than refused as unreadable.
        content = replace(content, text=content.text[:MAX_TEXT_LENGTH])
        additional["truncated_from"] = str(len(message.content.text))
    if not message.supported:
        additional["unsupported"] = True
    return InboundMessage(
        tenant_id=delivery.tenant_id,
        message_id=inbound_message_id(channel, message.platform_message_id),
        conversation_id="",
        user_id=message.user_id,
        channel=channel,
        content=content,
        session_id=session_of(connection_id, message.user_id, message.conversation_key),
        timestamp=message.sent_at,
        channel_metadata=ChannelMetadata(
            platform_message_id=message.platform_message_id,
            platform_user_id=message.user_id,
            thread_id=message.thread_id,
            workspace_id=message.account_id,
            additional_data=additional,
        ),
        from_platform=True,
    )


def unsupported(
    inbound: InboundMessage, channel: Channel, message: PlatformMessage, refusal: InvalidArgument
) -> InboundMessage:
    """`inbound` as a placeholder text, with why the channel refused it."""
    kind = message.kind or (message.content.type.value if message.content.type else "message")
    why = "; ".join(f"{v.field}: {v.description}" for v in refusal.violations)[:500]
    metadata = inbound.channel_metadata
    additional = {**metadata.additional_data, "unsupported": True, "unsupported_reason": why}
    return replace(
        inbound,
        content=MessageContent.of_text(
            f"[unsupported {_PLATFORM_NAMES.get(channel, channel.value)} message: {kind}]"
        ),
        channel_metadata=replace(metadata, additional_data=additional),
    )


# (tenant, channel, account id, platform user)
_UserKey = tuple[str, Channel, str, str]


def _by_user(jobs: Sequence[_Job]) -> dict[_UserKey, list[tuple[_Job, PlatformMessage]]]:
    """The batch's messages per platform user, in arrival order."""
    groups: dict[_UserKey, list[tuple[_Job, PlatformMessage]]] = {}
    for job in jobs:
        if job.dead:
            continue
        delivery = job.delivery
        for message in job.parsed.messages:
            key = (delivery.tenant_id, delivery.channel, message.account_id, message.user_id)
            groups.setdefault(key, []).append((job, message))
    return groups
