"""The delivery queue's retries (Retry-After, jittered backoff, permanent
failures), the platform id it records, its recovery of PENDING replies at
start-up, its delivery leases (several processes, here several queues, on
one store), and RetryDelivery, on fakes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta

import pytest

from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, DeliveryStatus, MessageRole
from chat_service.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from chat_service.domain.events import DomainEvent, EventType
from chat_service.domain.model import Conversation, InboundMessage, Message
from chat_service.pipeline.delivery import DeliveryPolicy, DeliveryQueue
from chat_service.ports import (
    DeliveryClaimant,
    DeliveryError,
    DeliveryReceipt,
    StoreUnavailable,
)
from tests.builders import (
    OTHER_TENANT,
    T0,
    TENANT,
    build_core,
    create_change,
    make_conversation,
    make_message,
)
from tests.fakes import InMemoryStore, RecordingSender, SteppingClock

Outcome = DeliveryError | DeliveryReceipt


class ScriptedSender:
    """ChannelSender: answers each attempt with the next scripted outcome
    (a receipt by default), or waits for `release` when told to block."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[str] = []  # message ids, per attempt
        self.block = False
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def send(self, conversation: Conversation, message: Message) -> DeliveryReceipt:
        self.sent.append(message.message_id)
        self.entered.set()
        if self.block:
            await self.release.wait()
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome or DeliveryReceipt(platform_message_id=f"wamid.{message.message_id}")


class Waits:
    """The queue's sleep: records each wait, and waits no real time."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def jitters(*values: float) -> Callable[[], float]:
    """The queue's randomness: these values in turn, then the last again."""
    sequence: Iterator[float] = iter(values)
    last = values[-1]

    def next_value() -> float:
        nonlocal last
        last = next(sequence, last)
        return last

    return next_value


# A lease long enough that the waits of these tests need no renewal (its
# renewals are tested with a shorter one).
POLICY = DeliveryPolicy(
    attempts=4, first_backoff=1.0, max_backoff=3.0, max_retry_after=60.0, lease_seconds=300.0
)


def queue_for(
    store: InMemoryStore,
    sender: ScriptedSender,
    waits: Callable[[float], Awaitable[None]],
    *,
    jitter: Callable[[], float] | None = None,
    policy: DeliveryPolicy = POLICY,
    clock: SteppingClock | None = None,
    owner: str | None = None,
) -> DeliveryQueue:
    return DeliveryQueue(
        store=store,
        senders={Channel.WHATSAPP: sender},
        clock=clock or SteppingClock(T0 + timedelta(days=1)),
        policy=policy,
        jitter=jitter or jitters(0.5),
        sleep=waits,
        owner=owner,
    )


async def stored_replies(
    store: InMemoryStore,
    count: int = 1,
    *,
    tenant_id: str = TENANT,
    status: DeliveryStatus = DeliveryStatus.PENDING,
    reply_ids: Sequence[str] = (),
) -> tuple[Conversation, list[Message]]:
    """A WhatsApp conversation: a user's message, then `count` bot replies
    created in the same instant (as one answer's replies are)."""
    conversation = make_conversation(tenant_id=tenant_id, channel=Channel.WHATSAPP)
    inbound = make_message(conversation, 1, delivery_status=DeliveryStatus.SENT)
    replies = [
        make_message(
            conversation,
            sequence,
            f"reply {sequence}",
            role=MessageRole.BOT,
            delivery_status=status,
            created_at=conversation.created_at + timedelta(seconds=1),
            **({"message_id": reply_ids[sequence - 2]} if reply_ids else {}),
        )
        for sequence in range(2, count + 2)
    ]
    await store.write(create_change(conversation, [inbound, *replies]))
    return conversation, replies


async def delivery_events(store: InMemoryStore) -> list[DomainEvent]:
    entries = await store.claim_outbox("test", limit=1000, lease_seconds=60)
    return [e.event for e in entries if e.event.event_type is EventType.DELIVERY_UPDATED]


async def status_of(store: InMemoryStore, message: Message) -> DeliveryStatus:
    stored = await store.get_message(message.tenant_id, message.message_id)
    assert stored is not None
    return stored.delivery_status


# ------------------------------------------------------------------ retries


async def test_a_platforms_retry_after_is_waited_out_before_the_next_attempt() -> None:
    store, waits = InMemoryStore(), Waits()
    sender = ScriptedSender(
        DeliveryError("throttled", retryable=True, retry_after=20.0),
        DeliveryError("throttled", retryable=True, retry_after=0.0),
    )
    queue = queue_for(store, sender, waits, jitter=jitters(0.5, 0.0))
    conversation, [reply] = await stored_replies(store)

    queue.submit(conversation, [reply])
    assert await queue.wait_idle(1)

    # At least what was asked (a tenth more at most, to spread a burst out),
    # although the backoff bound after the first attempt is 1 s.
    assert waits.delays == [21.0, 0.0]
    assert sender.sent == [reply.message_id] * 3
    assert await status_of(store, reply) is DeliveryStatus.SENT


async def test_a_retry_after_longer_than_the_policy_allows_dead_letters_at_once() -> None:
    store, waits = InMemoryStore(), Waits()
    sender = ScriptedSender(
        DeliveryError("throttled for an hour", retryable=True, retry_after=3600)
    )
    queue = queue_for(store, sender, waits)
    conversation, [reply] = await stored_replies(store)

    queue.submit(conversation, [reply])
    assert await queue.wait_idle(1)

    assert waits.delays == []
    assert len(sender.sent) == 1
    assert await status_of(store, reply) is DeliveryStatus.FAILED
    [dead] = await delivery_events(store)
    assert dead.metadata == {
        "role": "bot",
        "delivery_status": "failed",
        "error": "throttled for an hour",
        "attempts": 1,
        "dead_letter": True,
        "retry_after": 3600,
    }


async def test_backoff_is_exponential_with_full_jitter() -> None:
    store, waits = InMemoryStore(), Waits()
    sender = ScriptedSender(*(DeliveryError("503", retryable=True) for _ in range(3)))
    queue = queue_for(store, sender, waits, jitter=jitters(0.0, 0.5, 0.999))
    conversation, [reply] = await stored_replies(store)

    queue.submit(conversation, [reply])
    assert await queue.wait_idle(1)

    # Bounds 1, 2, then 4 capped at 3; each wait the jitter's share of its bound.
    assert waits.delays == pytest.approx([0.0, 1.0, 2.997])
    assert await status_of(store, reply) is DeliveryStatus.SENT


def test_jittered_backoff_stays_within_its_bound() -> None:
    for attempt, bound in [(1, 1.0), (2, 2.0), (3, 3.0), (9, 3.0)]:
        for jitter in (0.0, 0.25, 0.999999):
            assert 0.0 <= POLICY.backoff(attempt, jitter) < bound
        assert POLICY.backoff(attempt, 0.999999) == pytest.approx(bound, rel=1e-5)


async def test_exhausted_retries_dead_letter_with_the_reason() -> None:
    store, waits = InMemoryStore(), Waits()
    sender = ScriptedSender(*(DeliveryError("503", retryable=True) for _ in range(4)))
    queue = queue_for(store, sender, waits)
    conversation, [reply] = await stored_replies(store)

    queue.submit(conversation, [reply])
    assert await queue.wait_idle(1)

    assert len(sender.sent) == POLICY.attempts
    assert len(waits.delays) == POLICY.attempts - 1
    [dead] = await delivery_events(store)
    assert dead.metadata == {
        "role": "bot",
        "delivery_status": "failed",
        "error": "503",
        "attempts": 4,
        "dead_letter": True,
    }


async def test_a_permanent_failure_fails_at_once() -> None:
    store, waits = InMemoryStore(), Waits()
    sender = ScriptedSender(DeliveryError("recipient not on WhatsApp", retryable=False))
    queue = queue_for(store, sender, waits)
    conversation, [reply, after] = await stored_replies(store, 2)

    queue.submit(conversation, [reply, after])
    assert await queue.wait_idle(1)

    assert waits.delays == []
    assert sender.sent == [reply.message_id, after.message_id]
    assert await status_of(store, reply) is DeliveryStatus.FAILED
    assert await status_of(store, after) is DeliveryStatus.SENT  # the queue moves on


async def test_the_platform_id_is_recorded_with_sent() -> None:
    store, waits = InMemoryStore(), Waits()
    queue = queue_for(store, ScriptedSender(), waits)
    conversation, [reply] = await stored_replies(store)

    queue.submit(conversation, [reply])
    assert await queue.wait_idle(1)

    stored = await store.get_message(TENANT, reply.message_id)
    assert stored is not None
    assert stored.delivery_status is DeliveryStatus.SENT
    assert stored.channel_metadata.platform_message_id == f"wamid.{reply.message_id}"
    found = await store.find_by_platform_id(TENANT, Channel.WHATSAPP, f"wamid.{reply.message_id}")
    assert found == stored
    [sent] = await delivery_events(store)
    assert sent.metadata["platform_message_id"] == f"wamid.{reply.message_id}"


async def test_listeners_hear_the_platform_id_with_sent() -> None:
    """What streams show (DeliveryUpdate.platform_message_id) comes from here."""
    store, waits = InMemoryStore(), Waits()
    queue = queue_for(store, ScriptedSender(), waits)
    heard: list[tuple[str, DeliveryStatus]] = []
    queue.subscribe(
        lambda message, status: heard.append((message.channel_metadata.platform_message_id, status))
    )
    conversation, [reply] = await stored_replies(store)

    queue.submit(conversation, [reply])
    assert await queue.wait_idle(1)

    assert heard == [(f"wamid.{reply.message_id}", DeliveryStatus.SENT)]


class FlakyStore(InMemoryStore):
    """Unavailable for the first `outages` delivery status updates."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

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
        if self.outages:
            self.outages -= 1
            raise StoreUnavailable("down for a moment")
        return await super().update_delivery_status(
            tenant_id,
            message_id,
            status,
            event,
            platform_message_id=platform_message_id,
            channel_data=channel_data,
        )


async def test_recording_sent_is_retried_while_the_store_is_briefly_down() -> None:
    store, waits = FlakyStore(outages=2), Waits()
    sender = ScriptedSender()
    queue = queue_for(store, sender, waits)
    conversation, [reply] = await stored_replies(store)

    queue.submit(conversation, [reply])
    assert await queue.wait_idle(1)

    assert sender.sent == [reply.message_id]  # sent once, recorded on the third try
    assert len(waits.delays) == 2
    assert await status_of(store, reply) is DeliveryStatus.SENT


async def test_a_message_queued_twice_is_delivered_once() -> None:
    store, waits = InMemoryStore(), Waits()
    sender = ScriptedSender()
    sender.block = True
    queue = queue_for(store, sender, waits)
    conversation, [reply] = await stored_replies(store)

    assert queue.submit(conversation, [reply]) == 1
    await asyncio.wait_for(sender.entered.wait(), 1)
    assert queue.submit(conversation, [reply]) == 0  # being delivered
    await queue.resume_pending()  # it is PENDING in the store: not again either
    sender.release.set()
    assert await queue.wait_idle(1)

    assert sender.sent == [reply.message_id]


# ----------------------------------------------------------------- recovery


async def test_pending_replies_are_resumed_in_sequence_order_once() -> None:
    store, waits = InMemoryStore(), Waits()
    # Ids that sort unlike their sequences, in one instant: sequence rules.
    ids = [f"m-1/reply-{n}" for n in (1, 2, 10, 11)]
    _, replies = await stored_replies(store, 4, reply_ids=ids)
    _, [elsewhere] = await stored_replies(store, tenant_id=OTHER_TENANT)
    _, [done] = await stored_replies(store, status=DeliveryStatus.SENT)
    later_conversation = make_conversation(channel=Channel.WHATSAPP)
    later = make_message(  # created after the queue's start: its own
        later_conversation,
        1,
        role=MessageRole.BOT,
        created_at=T0 + timedelta(days=2),
    )
    await store.write(create_change(later_conversation, [later]))
    sender = ScriptedSender()
    # Pages of 2 end in the middle of the instant.
    queue = queue_for(store, sender, waits, policy=dataclasses.replace(POLICY, resume_page=2))

    await queue.resume_pending()
    assert await queue.wait_idle(1)

    mine = [m for m in sender.sent if m in ids]
    assert mine == [r.message_id for r in replies]  # sequences 2, 3, 4, 5
    assert sorted(sender.sent) == sorted([*ids, elsewhere.message_id])
    assert done.message_id not in sender.sent
    assert await status_of(store, later) is DeliveryStatus.PENDING


async def test_a_restarted_core_delivers_what_a_crash_left_pending() -> None:
    store = InMemoryStore()
    stuck = ScriptedSender()
    stuck.block = True  # the platform call never returns: then the crash
    first = build_core(store=store, senders={Channel.WHATSAPP: stuck})
    outcome = await first.send_message(
        InboundMessage(
            tenant_id=TENANT,
            message_id="wamid.in-1",
            conversation_id="",
            user_id="15550001",
            channel=Channel.WHATSAPP,
            content=MessageContent.of_text("hi"),
        )
    )
    [reply] = outcome.result.replies
    await asyncio.wait_for(stuck.entered.wait(), 1)
    await first.delivery.close(0)  # cut short: the reply stays PENDING
    assert await status_of(store, reply) is DeliveryStatus.PENDING

    sender = ScriptedSender()
    second = build_core(
        store=store,
        senders={Channel.WHATSAPP: sender},
        clock=SteppingClock(T0 + timedelta(hours=1)),
    )
    delivered = asyncio.Event()
    second.delivery.subscribe(
        lambda message, status: delivered.set() if status is DeliveryStatus.SENT else None
    )
    await second.start()
    try:
        await asyncio.wait_for(delivered.wait(), 2)
    finally:
        await second.close(1)

    assert sender.sent == [reply.message_id]
    stored = await store.get_message(TENANT, reply.message_id)
    assert stored is not None
    assert stored.channel_metadata.platform_message_id == f"wamid.{reply.message_id}"


async def test_a_closing_queue_takes_nothing_more() -> None:
    store, waits = InMemoryStore(), Waits()
    sender = ScriptedSender()
    queue = queue_for(store, sender, waits)
    conversation, [reply] = await stored_replies(store)

    await queue.close(1)
    assert queue.submit(conversation, [reply]) == 0
    await queue.resume_pending()

    assert queue.pending == 0
    assert sender.sent == []
    assert await status_of(store, reply) is DeliveryStatus.PENDING


# ------------------------------------------------- several processes: leases


class Gate:
    """A queue's sleep that holds every wait until `opened` (a process waiting
    out a Retry-After for as long as the test likes)."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.entered.set()
        await self.opened.wait()


class SimulatedTime:
    """A queue's sleep that moves the shared clock on by each wait, then runs
    `during` (another process's sweep at that moment)."""

    def __init__(self, clock: SteppingClock) -> None:
        self.clock = clock
        self.delays: list[float] = []
        self.during: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.clock.advance(timedelta(seconds=delay))
        if self.during is not None:
            await self.during()


def shared_clock() -> SteppingClock:
    """One clock for the queues of a test (processes whose clocks agree),
    a day after the replies of stored_replies were created."""
    return SteppingClock(T0 + timedelta(days=1))


async def test_a_reply_is_sent_once_when_another_process_starts_during_its_retry_after() -> None:
    store, clock = InMemoryStore(), shared_clock()
    first_sender = ScriptedSender(DeliveryError("throttled", retryable=True, retry_after=20.0))
    gate = Gate()
    first = queue_for(store, first_sender, gate, clock=clock, owner="process-1")
    conversation, [reply, behind] = await stored_replies(store, 2)
    first.submit(conversation, [reply, behind])
    await asyncio.wait_for(gate.entered.wait(), 1)  # throttled, waiting 20 s

    second_sender = ScriptedSender()
    second = queue_for(store, second_sender, Waits(), clock=clock, owner="process-2")
    await second.resume_pending()  # its start-up: both are the first's
    assert second.pending == 0
    # Even handed them directly, it leaves them to the first, silently.
    assert second.submit(conversation, [reply, behind]) == 2
    assert await second.wait_idle(1)

    gate.opened.set()
    assert await first.wait_idle(1)

    assert second_sender.sent == []
    assert first_sender.sent == [reply.message_id, reply.message_id, behind.message_id]
    assert await status_of(store, reply) is DeliveryStatus.SENT
    assert await status_of(store, behind) is DeliveryStatus.SENT


async def test_a_retry_after_longer_than_the_lease_keeps_the_lease_renewed() -> None:
    store, clock = InMemoryStore(), shared_clock()
    policy = dataclasses.replace(POLICY, lease_seconds=60.0, max_retry_after=900.0)
    time = SimulatedTime(clock)
    first_sender = ScriptedSender(DeliveryError("throttled", retryable=True, retry_after=150.0))
    first = queue_for(
        store, first_sender, time, jitter=jitters(0.0), policy=policy, clock=clock, owner="p-1"
    )
    second_sender = ScriptedSender()
    second = queue_for(store, second_sender, Waits(), policy=policy, clock=clock, owner="p-2")
    sweeps_found: list[int] = []

    async def second_sweeps() -> None:
        await second.resume_pending()
        sweeps_found.append(second.pending)

    time.during = second_sweeps
    conversation, [reply, behind] = await stored_replies(store, 2)

    first.submit(conversation, [reply, behind])
    assert await first.wait_idle(1)

    # 150 s in slices of a third of the lease, renewed between them; the
    # other process swept after each slice and found nothing to take.
    assert time.delays == [20.0] * 7 + [10.0]
    assert sweeps_found == [0] * 8
    assert second_sender.sent == []
    assert first_sender.sent == [reply.message_id, reply.message_id, behind.message_id]


async def test_a_dead_processs_replies_are_taken_over_once_its_lease_runs_out() -> None:
    store, clock = InMemoryStore(), shared_clock()
    _, [reply, behind] = await stored_replies(store, 2)
    for message in (reply, behind):  # claimed by a process that then died
        assert await store.claim_delivery(
            TENANT, message.message_id, "dead-process", now=clock.now(), lease_seconds=60
        )
    sender = ScriptedSender()
    survivor = queue_for(
        store,
        sender,
        Waits(),
        policy=dataclasses.replace(POLICY, lease_seconds=60.0),
        clock=clock,
        owner="survivor",
    )

    await survivor.resume_pending()
    assert survivor.pending == 0  # its lease still runs

    clock.advance(timedelta(seconds=61))
    await survivor.resume_pending()
    assert await survivor.wait_idle(1)

    assert sender.sent == [reply.message_id, behind.message_id]
    assert await status_of(store, reply) is DeliveryStatus.SENT
    assert await status_of(store, behind) is DeliveryStatus.SENT


async def test_a_process_restarted_under_its_owner_id_takes_its_leases_back_at_once() -> None:
    store, clock = InMemoryStore(), shared_clock()
    _, [reply] = await stored_replies(store)
    assert await store.claim_delivery(
        TENANT, reply.message_id, "pod-1", now=clock.now(), lease_seconds=300
    )
    sender = ScriptedSender()
    restarted = queue_for(store, sender, Waits(), clock=clock, owner="pod-1")

    await restarted.resume_pending()
    assert await restarted.wait_idle(1)

    assert sender.sent == [reply.message_id]


async def test_a_stopping_process_releases_its_replies_to_another_at_once() -> None:
    store, clock = InMemoryStore(), shared_clock()
    first_sender = ScriptedSender(DeliveryError("throttled", retryable=True, retry_after=20.0))
    gate = Gate()
    first = queue_for(store, first_sender, gate, clock=clock, owner="old-pod")
    conversation, [reply] = await stored_replies(store)
    first.submit(conversation, [reply])
    await asyncio.wait_for(gate.entered.wait(), 1)

    await first.close(0)  # a rolling deploy: its wait is cut short
    second_sender = ScriptedSender()
    second = queue_for(store, second_sender, Waits(), clock=clock, owner="new-pod")
    await second.resume_pending()  # no lease to wait out
    assert await second.wait_idle(1)

    assert first_sender.sent == [reply.message_id]
    assert second_sender.sent == [reply.message_id]
    assert await status_of(store, reply) is DeliveryStatus.SENT


class SweptStore(InMemoryStore):
    """Tells each listing of pending deliveries (a sweep)."""

    def __init__(self) -> None:
        super().__init__()
        self.swept = asyncio.Event()

    async def list_pending_deliveries(
        self,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
        claimable_by: DeliveryClaimant | None = None,
    ) -> Sequence[Message]:
        self.swept.set()
        return await super().list_pending_deliveries(
            limit=limit, after=after, claimable_by=claimable_by
        )


async def test_the_periodic_sweep_takes_over_orphans_after_start_up() -> None:
    store, clock = SweptStore(), shared_clock()
    sender = ScriptedSender()
    queue = queue_for(
        store,
        sender,
        Waits(),
        policy=dataclasses.replace(POLICY, lease_seconds=60.0, sweep_seconds=0.01),
        clock=clock,
        owner="survivor",
    )
    delivered = asyncio.Event()
    queue.subscribe(lambda _m, status: delivered.set() if status is DeliveryStatus.SENT else None)
    sweeps = asyncio.create_task(queue.run_sweeps())
    try:
        await asyncio.wait_for(store.swept.wait(), 1)  # start-up's sweep: nothing yet
        # Then another process claims a reply, and dies.
        _, [orphan] = await stored_replies(store)
        assert await store.claim_delivery(
            TENANT, orphan.message_id, "dead-process", now=clock.now(), lease_seconds=60
        )
        clock.advance(timedelta(seconds=61))

        await asyncio.wait_for(delivered.wait(), 2)
    finally:
        await queue.close(1)
        # close stops the sweeps by itself.
        await asyncio.wait_for(sweeps, 1)

    assert sender.sent == [orphan.message_id]


# ------------------------------------------------------------ RetryDelivery


async def test_retry_delivery_requeues_a_dead_letter_and_delivers_it() -> None:
    store = InMemoryStore()
    sender = RecordingSender()
    core = build_core(store=store, senders={Channel.WHATSAPP: sender})
    _, [reply] = await stored_replies(store, status=DeliveryStatus.FAILED)

    requeued = await core.retry_delivery(TENANT, reply.message_id)

    assert requeued == dataclasses.replace(reply, delivery_status=DeliveryStatus.PENDING)
    assert await core.delivery.wait_idle(1)
    assert [m.message_id for m in sender.delivered] == [reply.message_id]
    assert await status_of(store, reply) is DeliveryStatus.SENT
    statuses = [
        (e.metadata["delivery_status"], e.metadata.get("requeued"))
        for e in await delivery_events(store)
    ]
    assert statuses == [("pending", True), ("sent", None)]


@pytest.mark.parametrize(
    ("tenant_id", "which", "error", "reason"),
    [
        (OTHER_TENANT, "failed", NotFound, "MESSAGE_NOT_FOUND"),
        (TENANT, "unknown", NotFound, "MESSAGE_NOT_FOUND"),
        (TENANT, "sent", FailedPrecondition, "NOT_DEAD_LETTERED"),
        (TENANT, "inbound", FailedPrecondition, "NOT_DEAD_LETTERED"),
        (TENANT, "", InvalidArgument, "INVALID_ARGUMENT"),
    ],
)
async def test_retry_delivery_refuses_what_is_no_dead_letter(
    tenant_id: str, which: str, error: type[Exception], reason: str
) -> None:
    store = InMemoryStore()
    core = build_core(store=store, senders={Channel.WHATSAPP: RecordingSender()})
    _, [failed] = await stored_replies(store, status=DeliveryStatus.FAILED)
    _, [sent] = await stored_replies(store, status=DeliveryStatus.SENT)
    user_conversation = make_conversation()
    inbound = make_message(user_conversation, 1, delivery_status=DeliveryStatus.FAILED)
    await store.write(create_change(user_conversation, [inbound]))
    message_id = {
        "failed": failed.message_id,
        "sent": sent.message_id,
        "inbound": inbound.message_id,
        "unknown": "nope",
        "": "",
    }[which]

    with pytest.raises(error) as caught:
        await core.retry_delivery(tenant_id, message_id)

    assert getattr(caught.value, "reason", None) == reason
    assert await delivery_events(store) == []
    assert core.delivery.pending == 0
