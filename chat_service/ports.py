"""What the core needs from the outside world, stated as protocols.

Adapters (adapters/) implement these; bootstrap.py picks them and wiring.py
builds the core around them; unit tests wire the fakes in tests/fakes.py
(tests/builders.build_core). Nothing here knows gRPC, SQLite, MongoDB, Redis
or Kafka.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, TypeAlias, runtime_checkable

from chat_service.domain.calls import CallAnswer, CallEvent
from chat_service.domain.connections import AuditEntry, ChannelConnection
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, ConversationStatus, DeliveryStatus
from chat_service.domain.events import DomainEvent, OutboxEntry
from chat_service.domain.live import LiveEvent
from chat_service.domain.model import (
    Conversation,
    ConversationState,
    IdempotencyRecord,
    Message,
    ProcessingHints,
)
from chat_service.domain.webhooks import ParsedWebhook, PlatformMessage, WebhookCall

# --------------------------------------------------------------------- store


class StoreError(Exception):
    """Base of the errors a store raises."""


class StoreUnavailable(StoreError):
    """The store cannot be reached; the operation may be retried later."""


class VersionConflict(StoreError):
    """The conversation changed since it was read (its version moved on)."""


class StoreRejected(StoreError):
    """The store refused what it was given as more than it can hold (a
    document past its size limit: `too_large`) or as a value it cannot take
    (a field name, a pattern): the request is at fault, not the store, and
    the same request fails again. Nothing was written."""

    def __init__(self, detail: str, *, too_large: bool = False) -> None:
        super().__init__(detail)
        self.too_large = too_large


class EventsPruned(StoreError):
    """The event log no longer holds every event after the position asked
    for: retention pruned it through `pruned_through` (see prune_outbox)."""

    def __init__(self, after_position: int, pruned_through: int) -> None:
        super().__init__(
            f"events after position {after_position} were pruned (through {pruned_through})"
        )
        self.after_position = after_position
        self.pruned_through = pruned_through


class DuplicateMessage(StoreError):
    """A message with this (tenant, message_id) is already stored."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"message {message_id!r} already stored")
        self.message_id = message_id


@dataclass(frozen=True, slots=True)
class ConversationChange:
    """Everything one step of the pipeline writes, applied atomically.

    `conversation` is the new state. With `expected_version` 0 it is created
    (and must have version 1); otherwise the stored conversation must still
    have `expected_version`, and is replaced by `conversation` (whose version
    is expected_version + 1), else VersionConflict. `messages` are inserted
    (DuplicateMessage on a known (tenant, message_id) or (conversation,
    sequence)), `events` appended to the outbox in order, and `record`, when
    given, saved as the idempotency record of its message id.

    `fencing_token` is the token of the conversation lock the writer holds
    (None: written without the lock, e.g. a conversation being created). The
    store keeps the highest token that wrote and refuses (VersionConflict) a
    write with a lower one, so a writer that stalled past its lock lease can
    never write after the next holder did.
    """

    conversation: Conversation
    expected_version: int
    messages: tuple[Message, ...] = ()
    events: tuple[DomainEvent, ...] = ()
    record: IdempotencyRecord | None = None
    fencing_token: int | None = None


@dataclass(frozen=True, slots=True)
class ConversationQuery:
    """Filters of ListConversations; all of them are ANDed."""

    status: ConversationStatus | None = None
    channel: Channel | None = None
    user_id: str = ""
    start_time: datetime | None = None  # created_at >= start_time
    end_time: datetime | None = None  # created_at < end_time
    # Case-insensitive substring of any message text of the conversation.
    search_query: str = ""
    descending: bool = True


@dataclass(frozen=True, slots=True)
class ConversationCursor:
    """Position after the last conversation of a page: (created_at, id)."""

    created_at: datetime
    conversation_id: str


@dataclass(frozen=True, slots=True)
class DeliveryClaimant:
    """A delivery process (its owner id, unique among live processes) at
    `now` (its clock): list_pending_deliveries for it shows what
    claim_delivery would grant it."""

    owner: str
    now: datetime


class ConversationStore(Protocol):
    """Durable conversations, messages, idempotency records and the outbox.

    Every read is scoped by tenant: asking for another tenant's data returns
    nothing. Any method may raise StoreUnavailable.
    """

    async def get_conversation(
        self, tenant_id: str, conversation_id: str
    ) -> Conversation | None: ...

    async def list_conversations(
        self,
        tenant_id: str,
        query: ConversationQuery,
        *,
        limit: int,
        after: ConversationCursor | None = None,
    ) -> Sequence[Conversation]:
        """Ordered by (created_at, conversation_id), descending if query says so."""
        ...

    async def list_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        limit: int,
        after_sequence: int | None = None,
        descending: bool = False,
    ) -> Sequence[Message]:
        """By sequence. `after_sequence` is exclusive, in the list's direction
        (descending: sequences below it)."""
        ...

    def iter_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        after_sequence: int = 0,
        through_sequence: int | None = None,
    ) -> AsyncIterator[Message]:
        """Ascending by sequence, in (after_sequence, through_sequence], read in
        bounded batches so memory does not grow with the conversation."""
        ...

    async def get_message(self, tenant_id: str, message_id: str) -> Message | None: ...

    async def get_record(self, tenant_id: str, message_id: str) -> IdempotencyRecord | None: ...

    async def write(self, change: ConversationChange) -> None:
        """Apply a change atomically; VersionConflict or DuplicateMessage leave
        nothing written."""
        ...

    async def update_delivery_status(
        self,
        tenant_id: str,
        message_id: str,
        status: DeliveryStatus,
        event: DomainEvent | None = None,
        *,
        platform_message_id: str = "",
        channel_data: Mapping[str, str | int | bool] | None = None,
    ) -> bool:
        """Move a message's delivery status forward (never backwards; FAILED and
        READ are final), writing `event` with it. Returns whether it moved.
        A non-empty `platform_message_id` (the platform's id for the sent
        message) is recorded in the message's channel_metadata with it, and
        `channel_data` (what the platform call told, e.g. SMS segments) is
        merged into its channel_metadata.additional_data, in the same write
        and only if the status moved."""
        ...

    async def find_by_platform_id(
        self, tenant_id: str, channel: Channel, platform_message_id: str
    ) -> Message | None:
        """The outbound message the platform knows by this id (recorded by
        update_delivery_status), or None."""
        ...

    async def list_pending_deliveries(
        self,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
        claimable_by: DeliveryClaimant | None = None,
    ) -> Sequence[Message]:
        """Outbound messages (every tenant's) still PENDING, ordered by
        (created_at, message_id), after `after` (exclusive): what a crash
        left undelivered. With `claimable_by`, only those its owner may claim
        at its `now` (claim_delivery): unleased, on a lease that ran out, or
        on its own; not those another live process is delivering."""
        ...

    async def requeue_delivery(
        self, tenant_id: str, message_id: str, event: DomainEvent
    ) -> Message | None:
        """Moves a FAILED message back to PENDING (the one backward move, for
        an operator's RetryDelivery), writing `event`; the message as stored
        then, or None when there is no such FAILED message."""
        ...

    async def claim_delivery(
        self, tenant_id: str, message_id: str, owner: str, *, now: datetime, lease_seconds: float
    ) -> bool:
        """Leases a PENDING message's delivery to `owner` until `now` +
        `lease_seconds`, when it is free to `owner`: unleased, its lease ran
        out (ends at or before `now`), or `owner`'s already (renewed; so a
        process restarted under the same owner id takes its leases straight
        back). Returns whether `owner` holds it now; False when another owner
        holds it on a live lease, or the message is not PENDING (or there is
        none). One atomic write: of two claimants, one wins.

        Several processes share the store: each claims a reply before every
        attempt to send it and renews the claim while it waits to retry, so
        no two send it at once. Any move of the delivery status
        (update_delivery_status, requeue_delivery) ends the lease. Leases
        compare the callers' clocks: processes sharing a store must keep them
        in step (NTP), well within a lease."""
        ...

    async def release_delivery(self, tenant_id: str, message_id: str, owner: str) -> None:
        """Ends `owner`'s lease on the message, if `owner` holds it (else
        nothing): what a stopping process leaves is free to another at once."""
        ...

    async def claim_outbox(
        self, owner: str, *, limit: int, lease_seconds: float
    ) -> Sequence[OutboxEntry]:
        """The oldest unpublished events (at most `limit`), leased to `owner`
        for `lease_seconds`: a contiguous run from the oldest one, stopping
        at the first event another owner holds. Nothing while another owner
        holds the oldest one: one relay at a time publishes the head of the
        outbox, so events leave in outbox order (and a conversation's events
        in their order) however many relays run. Never past a position that
        read_events would not show yet (a lower one still being written).
        Rows `owner` itself holds are its own again at once (a relay
        restarted under the same owner id takes its lease straight over)."""
        ...

    async def mark_published(self, owner: str, positions: Sequence[int]) -> None: ...

    async def read_events(
        self, *, after_position: int, limit: int, tenant_id: str | None = None
    ) -> Sequence[OutboxEntry]:
        """The outbox read as the event log: entries after `after_position`,
        oldest first, published or not; only `tenant_id`'s when given. Positions
        become visible in increasing order (what live tails and resumable
        watches rely on). Raises EventsPruned when `after_position` is below
        what prune_outbox removed: the read would silently miss events."""
        ...

    async def last_event_position(self) -> int:
        """The position of the newest event (0 when there is none); never below
        what prune_outbox removed, even once every row is gone."""
        ...

    async def prune_outbox(self, *, published_before: datetime, keep_last: int, limit: int) -> int:
        """Retention: deletes published events from the head of the event log,
        oldest first, at most `limit` of them, each one published before
        `published_before` or more than `keep_last` positions behind the
        newest. It stops at the first event it may not delete (unpublished,
        or to be kept), so the log keeps no holes; and it records how far it
        went before deleting, so that read_events refuses (EventsPruned) a
        read that would miss what it deleted. Returns how many it deleted."""
        ...

    async def close(self) -> None: ...


# -------------------------------------------------------------- coordination


class LockTimeout(Exception):
    """The lock was not acquired in time."""


class CoordinationUnavailable(Exception):
    """The coordination backend (Redis) cannot be reached."""


@dataclass(frozen=True, slots=True)
class LockLease:
    """A held lock. `fencing_token` grows with every grant of the same key."""

    key: str
    fencing_token: int


class ConversationLocks(Protocol):
    def hold(
        self, tenant_id: str, conversation_id: str, *, timeout: float
    ) -> AbstractAsyncContextManager[LockLease]:
        """Hold the conversation's lock; waiters are served in arrival order.
        Raises LockTimeout when not granted within `timeout` seconds."""
        ...


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after: float = 0.0  # seconds until a token is available


class RateLimiter(Protocol):
    async def acquire(self, tenant_id: str, cost: int = 1) -> RateDecision: ...


# -------------------------------------------------------------------- engine


class EngineFailure(Exception):
    """The engine did not produce a usable reply. `reason`: "timeout",
    "unavailable" or "error"."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class EngineRequest:
    tenant_id: str
    conversation_id: str
    message_id: str
    user_id: str
    channel: Channel
    content: MessageContent
    context: ConversationState
    hints: ProcessingHints
    recent_messages: tuple[Message, ...]
    sequence: int


@dataclass(frozen=True, slots=True)
class ExpectedInput:
    slot: str = ""
    type: str = ""
    suggestions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EngineReply:
    contents: tuple[MessageContent, ...]
    state: ConversationState
    next_expected_inputs: tuple[ExpectedInput, ...] = ()
    confidence_scores: Mapping[str, float] = field(default_factory=dict)
    escalate: bool = False


class Engine(Protocol):
    """The bot engine. Raises EngineFailure; the caller bounds the time."""

    @property
    def name(self) -> str: ...

    @property
    def history_size(self) -> int:
        """How many earlier messages the engine wants with each request (0: none,
        so none are read)."""
        ...

    async def process(self, request: EngineRequest) -> EngineReply: ...


# ------------------------------------------------------------------ delivery


class DeliveryError(Exception):
    """A channel refused or failed a delivery. `retryable`: try again later;
    `retry_after`: not before this many seconds (the platform's Retry-After
    or throttling answer), else the queue's own backoff. `detail` is the
    reason recorded on the dead letter (no secret, no user text)."""

    def __init__(self, detail: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    platform_message_id: str = ""
    # What the platform call tells about the message, recorded on its SENT
    # delivery event beside the platform id (SMS: the segments and the
    # encoding of the text). Never a secret nor the user's text.
    metadata: Mapping[str, str | int | bool] = field(default_factory=dict)


class ChannelSender(Protocol):
    """Hands one stored outbound message to its channel's platform."""

    async def send(self, conversation: Conversation, message: Message) -> DeliveryReceipt: ...


# ---------------------------------------------------------------- channels


class ConnectionExists(StoreError):
    """The tenant already has a connection for this platform account."""

    def __init__(self, connection_id: str) -> None:
        super().__init__(f"connection {connection_id!r} has this account")
        self.connection_id = connection_id


class ConnectionStore(Protocol):
    """Tenants' channel connections (secrets sealed) and the audit log of
    their changes. Every read is scoped by tenant. Any method may raise
    StoreUnavailable."""

    async def create_connection(
        self, connection: ChannelConnection, audit: AuditEntry
    ) -> ChannelConnection:
        """Stores `connection` (version 1) and `audit` atomically and returns
        it. If the tenant has a connection created with the same non-empty
        `request_id`, returns that one and writes nothing (the caller compares
        request fingerprints). ConnectionExists if the tenant has another
        connection with the same (channel, account_id)."""
        ...

    async def get_connection(
        self, tenant_id: str, connection_id: str
    ) -> ChannelConnection | None: ...

    async def find_connection(
        self, tenant_id: str, channel: Channel, account_id: str
    ) -> ChannelConnection | None: ...

    async def list_connections(
        self, tenant_id: str, *, channel: Channel | None, limit: int, after_id: str = ""
    ) -> Sequence[ChannelConnection]:
        """Ascending by connection_id, after `after_id` (exclusive)."""
        ...

    async def update_connection(self, connection: ChannelConnection, audit: AuditEntry) -> None:
        """Replaces the stored connection, which must still have version
        `connection.version - 1` (else VersionConflict, also when it is gone),
        and appends `audit`, atomically. ConnectionExists if the new account
        id is another connection's."""
        ...

    async def delete_connection(
        self, tenant_id: str, connection_id: str, audit: AuditEntry
    ) -> bool:
        """Deletes it and appends `audit`; False (nothing written) if absent."""
        ...

    async def list_audit(
        self, tenant_id: str, *, limit: int, connection_id: str = ""
    ) -> Sequence[AuditEntry]:
        """Newest first; only `connection_id`'s entries when given."""
        ...

    async def set_opt_out(
        self, tenant_id: str, connection_id: str, user_id: str, opted_out: bool, at: datetime
    ) -> bool:
        """Records that the platform user asked to receive nothing more from
        the connection (SMS STOP: `opted_out`) or again (START), as of `at`.
        A record newer than `at` is kept (a late retry of an older keyword
        does not undo a newer one); returns whether this one was recorded."""
        ...

    async def is_opted_out(self, tenant_id: str, connection_id: str, user_id: str) -> bool:
        """Whether the user's latest keyword on the connection was an opt-out."""
        ...


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One verified platform webhook call, kept in the inbox until processed.

    The raw body is kept as received: the inbox worker parses it (the same
    pure parser that checked it at the edge), so one inbox serves every
    platform. `dedup_key` is the platform's id for the call (Slack's
    event_id, Twilio's MessageSid) or a hash of the body: a redelivered
    call is stored once. Messages inside are idempotent again downstream
    (their message ids derive from the platform's message ids).
    """

    tenant_id: str
    channel: Channel
    dedup_key: str
    body: bytes
    content_type: str
    received_at: datetime
    # What the parser needs later besides the body (never a signature).
    headers: Mapping[str, str] = field(default_factory=dict)
    position: int = 0  # assigned by the inbox
    attempts: int = 0  # processing attempts so far


class WebhookInbox(Protocol):
    """Durable store of acknowledged webhook calls. Any method may raise
    StoreUnavailable."""

    async def put(self, delivery: WebhookDelivery) -> bool:
        """Stores it durably unless (tenant, channel, dedup_key) is already
        in the inbox (processed or not); whether it was new."""
        ...

    async def claim(
        self, owner: str, *, now: datetime, limit: int, lease_seconds: float
    ) -> Sequence[WebhookDelivery]:
        """Oldest first, at most `limit` unprocessed deliveries that are due
        (`not_before` passed) and not leased to another owner, leased to
        `owner` for `lease_seconds` (a crashed worker's lease expires and
        another takes them over), each with `attempts` incremented."""
        ...

    async def finish(self, owner: str, position: int, *, now: datetime) -> None:
        """Marks it processed (kept for deduplication until pruned)."""
        ...

    async def retry_later(
        self, owner: str, position: int, *, not_before: datetime, error: str
    ) -> None:
        """Releases it to be claimed again after `not_before`."""
        ...

    async def dead_letter(self, owner: str, position: int, *, now: datetime, error: str) -> None:
        """Gives up on it: processed, with `error` kept for operators."""
        ...

    async def prune(self, *, processed_before: datetime, limit: int) -> int:
        """Deletes up to `limit` deliveries processed before the time; how many."""
        ...


@dataclass(frozen=True, slots=True)
class OpenedConnection:
    """A connection with its secrets opened: in memory only, never logged."""

    connection: ChannelConnection
    secrets: Mapping[str, str]

    def __repr__(self) -> str:  # never print a secret, even in a traceback
        return f"OpenedConnection({self.connection.connection_id})"


class ConnectionDirectory(Protocol):
    """Connections with their secrets opened, cached (CHANNEL_CACHE_SECONDS).
    A connection whose secrets cannot be opened is left out (as absent).
    Any method may raise StoreUnavailable (a miss reads the store)."""

    async def opened(self, tenant_id: str, connection_id: str) -> OpenedConnection | None: ...

    async def for_channel(
        self, tenant_id: str, channel: Channel, *, fresh: bool = False
    ) -> Sequence[OpenedConnection]:
        """The tenant's connections for one platform (webhook verification
        tries each: the signature is checked before the body names one).
        `fresh`: read the store rather than the cache (a connection made by
        another process within the cache's TTL), and cache what is read."""
        ...


class InboundChannel(Protocol):
    """A platform's webhook side: one per platform, in adapters/channels/."""

    @property
    def channel(self) -> Channel: ...

    async def verify(
        self, call: WebhookCall, candidates: Sequence[OpenedConnection]
    ) -> Sequence[OpenedConnection]:
        """The candidates whose secret authenticates `call`, checked over the
        raw bytes (constant time) before anything is parsed. Unauthenticated
        (or PermissionDenied, where the platform expects 403) when none does."""
        ...

    def parse(self, call: WebhookCall) -> ParsedWebhook:
        """A verified call's messages and statuses; InvalidArgument when the
        body is not the platform's documented shape. Pure and quick: it runs
        once at the edge (to refuse junk) and again in the inbox worker."""
        ...

    def dedup_key(self, call: WebhookCall) -> str:
        """The inbox key of `call` (domain.webhooks.body_dedup_key unless the
        platform names its deliveries)."""
        ...

    def acknowledgement(self, call: WebhookCall) -> tuple[bytes, str]:
        """What to answer the platform at once (body, content type)."""
        ...


@runtime_checkable
class InboundMessageEffects(Protocol):
    """What a platform user's message changes besides its conversation (SMS
    STOP and START: the user's opt-out), implemented by the InboundChannel
    of platforms that have such keywords. The inbox worker applies it
    before the message goes to SendMessage, so a reply to the message
    already sees the change; again when a delivery is retried (so it must
    be idempotent). May raise StoreUnavailable (the delivery is retried)."""

    async def apply(
        self, tenant_id: str, connection: OpenedConnection, message: PlatformMessage
    ) -> None: ...


@runtime_checkable
class WebhookHandshake(Protocol):
    """A platform's webhook subscription handshake (Meta's GET with
    `hub.challenge`), implemented by the InboundChannel of platforms that have one."""

    def answer_handshake(
        self, mode: str, verify_token: str, challenge: str, candidates: Sequence[OpenedConnection]
    ) -> str:
        """The challenge to echo when `verify_token` is one candidate's
        (compared in constant time); PermissionDenied otherwise, also when
        there is no candidate."""
        ...


@runtime_checkable
class SynchronousChannel(Protocol):
    """A platform that waits, in its webhook's own response, for what the
    bot says (a phone call), implemented by its InboundChannel: HandleWebhook
    answers such a call through the call use case (pipeline/voice_calls.py),
    which stores each utterance and its reply with SendMessage before
    answering, instead of through the inbox."""

    def call_event(self, call: WebhookCall) -> CallEvent:
        """What the verified `call` tells; InvalidArgument when it is not
        the platform's documented shape."""
        ...

    def render(self, answer: CallAnswer, connection: OpenedConnection) -> tuple[bytes, str]:
        """`answer` in the platform's language (body, content type); the
        next turn is listened for at `connection`'s webhook_url."""
        ...


# -------------------------------------------------------------------- events


class EventPublisher(Protocol):
    """Publishes outbox events (to Kafka in production). Returns only when
    every entry is acknowledged; raises if any may not be."""

    async def publish(self, entries: Sequence[OutboxEntry]) -> None: ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- live bus

LiveListener = Callable[[LiveEvent], None]


class LiveBus(Protocol):
    """Fan-out of live events to whoever listens on a topic, in this process
    or (with Redis) in any process of the service.

    Delivery is best effort and at most once, in publishing order per topic
    and publisher; listeners recover anything missed from the store.
    """

    def publish(self, topic: str, event: LiveEvent) -> None:
        """Hand the event over; never blocks, never raises."""
        ...

    def subscribe(self, topic: str, listener: LiveListener) -> Callable[[], None]:
        """Call `listener` (on the event loop; it must not block) with every
        event published on `topic` once the subscription is in effect (see
        `synced`). Returns the unsubscribe function."""
        ...

    async def synced(self) -> None:
        """Returns once every subscription made so far is in effect: events
        published from then on reach its listener."""
        ...


# ------------------------------------------------------------- session cache

SESSION_TTL_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class CachedState:
    version: int  # the conversation version the state was written with
    state: ConversationState


class SessionCache(Protocol):
    """Sessions, and the latest state of each conversation, for quick reads by
    this service and the rest of the platform. A cache: any entry may be
    gone, and any method may raise CoordinationUnavailable (a miss, to the
    caller)."""

    async def get_session(self, tenant_id: str, session_id: str) -> dict[str, Any] | None:
        """The session, or None; a hit keeps it for another full TTL."""
        ...

    async def put_session(
        self, tenant_id: str, session_id: str, session: Mapping[str, Any]
    ) -> None: ...

    async def get_conversation_state(
        self, tenant_id: str, conversation_id: str
    ) -> CachedState | None: ...

    async def put_conversation_state(
        self, tenant_id: str, conversation_id: str, state: ConversationState, *, version: int
    ) -> bool:
        """Stores the state unless a newer version is cached; whether it did."""
        ...


# --------------------------------------------------------------------- clock


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


# ------------------------------------------------------------ secret box


class SecretUnreadable(Exception):
    """A sealed secret cannot be opened: malformed, sealed with a key the
    keyring no longer holds, tampered with, or sealed for another context.
    The message never contains the secret, the sealed value or key material."""


class SecretBox(Protocol):
    """Encrypts tenants' platform credentials for storage (app secrets,
    access tokens): authenticated, and bound to the record they belong to."""

    def seal(self, plaintext: str, *, context: str) -> str:
        """`plaintext` encrypted with the current key. `context` names where
        the value is kept (e.g. "tenant/connection_id/field"): the sealed text
        opens only with the same context, so it cannot be moved to another
        record. Two seals of the same value differ."""
        ...

    def open(self, sealed: str, *, context: str) -> str:
        """The plaintext of a `seal` result (by any key still in the
        keyring); SecretUnreadable if it cannot be opened."""
        ...

    def fingerprint(self, plaintext: str) -> str:
        """A short tag to show instead of the secret (never reversible):
        the same for the same secret while the current key stays current."""
        ...


# ------------------------------------------------- callers' tokens and rights


class SigningKeys(Protocol):
    """The public keys callers' tokens are signed with, by key id (`kid`),
    as a JWKS endpoint publishes them (JWT_JWKS_URL; adapters/jwks/)."""

    @property
    def generation(self) -> int:
        """Changes whenever the set of keys does: a token verified before
        is verified again (its key may be gone)."""
        ...

    def keep_fresh(self) -> None:
        """Have the keys fetched again, in the background, if they are older
        than their max-age (called on every verification, remembered or not)."""
        ...

    async def key(self, kid: str) -> tuple[str, Any] | None:
        """The algorithm and public key of `kid`; None when the key set has
        no such key even after a refresh (refreshes are rate-limited).
        Unavailable when no key set could be fetched yet."""
        ...


@dataclass(frozen=True, slots=True)
class TokenValidation:
    """What the Security Hub says of a bearer token."""

    valid: bool
    tenant_id: str = ""
    subject: str = ""
    scopes: frozenset[str] = frozenset()
    expires_at: float | None = None  # epoch seconds; None: not said
    reason: str = ""  # why not valid (for logs, never for the caller)


@dataclass(frozen=True, slots=True)
class PermissionDecision:
    allowed: bool
    reason: str = ""  # why not (shown to the caller)


class SecurityHub(Protocol):
    """The platform's Security Hub (SECURITY_HUB_URL; adapters/security_hub/).
    Both calls are deadline-bounded and raise Unavailable when the hub
    cannot answer in time: the caller fails closed."""

    async def validate_token(self, token: str) -> TokenValidation: ...

    async def check_permission(
        self, *, subject: str, tenant_id: str, permission: str, resource: str
    ) -> PermissionDecision: ...


# ------------------------------------------------------------------- metrics


class Metrics(Protocol):
    """What the service counts and times (METRICS_PORT; adapters/metrics/).
    Every label is bounded: RPC names and codes, channels, outcomes and
    reasons from fixed sets. Never a user, conversation or message id (each
    would make a series per value), nor a tenant id but the few an operator
    lists (METRICS_TENANT_LABELS), on what is one tenant's: its messages
    (`committed`: the change's conversation), deliveries and refusals."""

    def rpc_started(self, service: str, method: str, kind: str) -> None:
        """A call began; `kind`: unary, client_stream, server_stream or bidi_stream."""
        ...

    def rpc_handled(self, service: str, method: str, kind: str, code: str, seconds: float) -> None:
        """A call ended with the gRPC status `code` (its name, "OK", ...)."""
        ...

    def committed(self, change: ConversationChange) -> None:
        """A change was stored: its messages (in or out, per channel) and
        its fallback events count."""
        ...

    def engine_called(self, engine: str, outcome: str, seconds: float) -> None:
        """One engine call: `outcome` "ok", or the failure's reason."""
        ...

    def delivery(self, tenant_id: str, channel: Channel, outcome: str) -> None:
        """A delivery step of a `tenant_id` reply; `outcome`: "sent" or
        "failed" (an attempt), "retried" (another attempt is scheduled),
        "dead_lettered" (given up)."""
        ...

    def rate_limited(self, tenant_id: str) -> None:
        """A call of `tenant_id` was refused by its rate limit."""
        ...

    def gauge_open(self, kind: str, count: Callable[[], int]) -> None:
        """`count()` is how many `kind` ("streams", "watches") are open now;
        read when the metrics are collected."""
        ...

    def lock_waited(self, outcome: str, seconds: float) -> None:
        """One wait for a conversation's lock; `outcome` "acquired" or "timeout"."""
        ...

    def outbox_lag(self, events: int) -> None:
        """Events written to the outbox and not yet published, as the relay
        saw after its last batch."""
        ...


class NoMetrics:
    """Metrics: nothing recorded (METRICS_PORT unset, and unit tests)."""

    def rpc_started(self, service: str, method: str, kind: str) -> None:
        pass

    def rpc_handled(self, service: str, method: str, kind: str, code: str, seconds: float) -> None:
        pass

    def committed(self, change: ConversationChange) -> None:
        pass

    def engine_called(self, engine: str, outcome: str, seconds: float) -> None:
        pass

    def delivery(self, tenant_id: str, channel: Channel, outcome: str) -> None:
        pass

    def rate_limited(self, tenant_id: str) -> None:
        pass

    def gauge_open(self, kind: str, count: Callable[[], int]) -> None:
        pass

    def lock_waited(self, outcome: str, seconds: float) -> None:
        pass

    def outbox_lag(self, events: int) -> None:
        pass


# ------------------------------------------------------------------- tracing

SpanValue: TypeAlias = str | int | float | bool
SpanAttributes: TypeAlias = Mapping[str, SpanValue]


class Span(Protocol):
    """The span of a step in progress."""

    def set(self, key: str, value: SpanValue) -> None:
        """An attribute learnt during the step (never a user's text or a secret)."""
        ...

    def fail(self, description: str) -> None:
        """The step failed (an exception that escapes the span marks it too)."""
        ...


class Tracer(Protocol):
    """Spans around the pipeline's steps (OTLP when configured,
    adapters/tracing/). The current span follows a call through its awaits
    (context variables), so a step's span is the child of the RPC's; work
    that another task does later (delivery) carries the position it was
    queued from with `capture`."""

    def span(
        self, name: str, attributes: SpanAttributes | None = None, *, origin: object = None
    ) -> AbstractContextManager[Span]:
        """A span around a step, the current one's child, or `origin`'s (a
        value `capture` returned) when given."""
        ...

    def capture(self) -> object:
        """Where the trace is now, for a span started elsewhere later; None
        when nothing is traced."""
        ...


class _NoSpan:
    __slots__ = ()

    def set(self, key: str, value: SpanValue) -> None:
        pass

    def fail(self, description: str) -> None:
        pass

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass


_NO_SPAN = _NoSpan()


class NoTracer:
    """Tracer: nothing traced (no OTLP endpoint, and unit tests). One shared
    do-nothing span: no cost on the calls."""

    def span(
        self, name: str, attributes: SpanAttributes | None = None, *, origin: object = None
    ) -> AbstractContextManager[Span]:
        return _NO_SPAN

    def capture(self) -> object:
        return None
