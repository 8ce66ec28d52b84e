"""SendMessage, the core use case, on fakes: every branch of the pipeline."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import pytest

from adapters.memory.locks import InProcessConversationLocks
from adapters.memory.session_cache import InProcessSessionCache
from chat_service.domain.channel_rules import rules_for
from chat_service.domain.content import MessageContent, QuickReply
from chat_service.domain.enums import (
    Channel,
    ConversationStatus,
    DeliveryStatus,
    MessageRole,
    MessageType,
)
from chat_service.domain.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from chat_service.domain.errors import Unavailable as UnavailableError
from chat_service.domain.events import EventType
from chat_service.domain.model import (
    Conversation,
    ConversationState,
    IdempotencyRecord,
    InboundMessage,
    Message,
    ProcessingHints,
)
from chat_service.pipeline.delivery import DeliveryQueue
from chat_service.pipeline.send_message import SendMessage
from chat_service.ports import (
    ConversationChange,
    CoordinationUnavailable,
    EngineFailure,
    EngineReply,
    EngineRequest,
    LockLease,
    StoreUnavailable,
)
from chat_service.wiring import Services
from tests import builders
from tests.fakes import InMemoryStore, RecordingSender, ScriptedEngine

TENANT = "acme"


@dataclass
class Core:
    store: InMemoryStore
    engine: ScriptedEngine
    sender: RecordingSender
    services: Services

    @property
    def delivery(self) -> DeliveryQueue:
        return self.services.delivery

    @property
    def send(self) -> SendMessage:
        return self.services.send_message

    async def events(self) -> list[EventType]:
        entries = await self.store.claim_outbox("test", limit=10_000, lease_seconds=60)
        return [entry.event.event_type for entry in entries]


def build_core(
    store: InMemoryStore | None = None,
    *,
    engine_timeout: float = 0.5,
    sessions: InProcessSessionCache | None = None,
    engine: ScriptedEngine | None = None,
    locks: InProcessConversationLocks | None = None,
) -> Core:
    """The core as production wires it; SMS replies go to `sender` (web
    replies are delivered by storing them, as in production)."""
    store = store or InMemoryStore()
    engine = engine or ScriptedEngine()
    sender = RecordingSender()
    services = builders.build_core(
        store=store,
        engine=engine,
        senders={Channel.SMS: sender},
        locks=locks,
        sessions=sessions,
        settings=dataclasses.replace(
            builders.CORE_SETTINGS, mcp_engine_timeout_ms=round(engine_timeout * 1000)
        ),
    )
    return Core(store, engine, sender, services)


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    built = build_core()
    yield built
    await built.delivery.close(1.0)


def inbound(text: str = "hello", **overrides: object) -> InboundMessage:
    fields: dict[str, object] = {
        "tenant_id": TENANT,
        "message_id": "",
        "conversation_id": "",
        "user_id": "user-1",
        "channel": Channel.WEB,
        "content": MessageContent.of_text(text),
    }
    fields.update(overrides)
    return InboundMessage(**fields)  # type: ignore[arg-type]


async def test_new_conversation_gets_inbound_and_reply_in_sequence(core: Core) -> None:
    outcome = await core.send(inbound("hi there", message_id="m-1", channel=Channel.SMS))

    result = outcome.result
    assert not outcome.replayed
    assert result.message_id == "m-1"
    assert result.sequence == 1
    assert [r.sequence for r in result.replies] == [2]
    assert result.replies[0].role is MessageRole.BOT
    assert result.replies[0].reply_to_message_id == "m-1"
    assert result.response == MessageContent.of_text("echo: hi there")
    assert result.state.current_intent == "echo"
    conversation = await core.store.get_conversation(TENANT, result.conversation_id)
    assert conversation is not None
    assert conversation.last_sequence == 2
    assert conversation.state.current_intent == "echo"
    assert await core.delivery.wait_idle(1.0)
    assert await core.events() == [
        EventType.CONVERSATION_STARTED,
        EventType.MESSAGE_RECEIVED,
        EventType.MESSAGE_SENT,
        EventType.DELIVERY_UPDATED,
    ]


async def test_retry_with_same_id_replays_without_side_effects(core: Core) -> None:
    first = await core.send(inbound("hi", message_id="m-1", channel=Channel.SMS))
    await core.delivery.wait_idle(1.0)
    events_before = await core.events()

    again = await core.send(inbound("hi", message_id="m-1", channel=Channel.SMS))

    assert again.replayed
    assert again.result == first.result
    assert len(core.engine.requests) == 1
    assert len(core.sender.delivered) == 1
    messages = await core.store.list_messages(TENANT, first.result.conversation_id, limit=10)
    assert [m.sequence for m in messages] == [1, 2]
    assert await core.events() == events_before


async def test_concurrent_duplicates_are_processed_once(core: Core) -> None:
    outcomes = await asyncio.gather(*(core.send(inbound("hi", message_id="dup")) for _ in range(5)))

    assert all(o.result == outcomes[0].result for o in outcomes)
    assert sum(not o.replayed for o in outcomes) == 1
    assert len(core.engine.requests) == 1


async def test_reused_id_with_other_content_is_rejected(core: Core) -> None:
    await core.send(inbound("hi", message_id="m-1"))

    with pytest.raises(InvalidArgument) as caught:
        await core.send(inbound("something else", message_id="m-1"))

    assert caught.value.reason == "MESSAGE_ID_REUSED"
    assert [v.field for v in caught.value.violations] == ["message_id"]


async def test_generated_message_id_when_empty(core: Core) -> None:
    outcome = await core.send(inbound("hi"))

    assert outcome.result.message_id
    assert await core.store.get_message(TENANT, outcome.result.message_id) is not None


async def test_fifty_concurrent_messages_on_one_conversation(core: Core) -> None:
    first = await core.send(inbound("start"))
    conversation_id = first.result.conversation_id

    await asyncio.gather(
        *(
            core.send(inbound(f"message {n}", message_id=f"c-{n}", conversation_id=conversation_id))
            for n in range(49)
        )
    )

    messages = await core.store.list_messages(TENANT, conversation_id, limit=1000)
    assert [m.sequence for m in messages] == list(range(1, 101))
    # FIFO per conversation: every inbound message is followed by its reply.
    for user, bot in zip(messages[::2], messages[1::2], strict=True):
        assert user.role is MessageRole.USER
        assert bot.reply_to_message_id == user.message_id


async def test_engine_timeout_gives_fallback_and_keeps_state() -> None:
    core = build_core(engine_timeout=0.05)
    first = await core.send(inbound("hi"))
    core.engine.delay = 1.0

    outcome = await core.send(
        inbound("are you there?", conversation_id=first.result.conversation_id)
    )

    result = outcome.result
    assert result.fallback_used
    assert result.fallback_reason == "timeout"
    assert result.engine == "fallback"
    assert result.replies[0].content.text == "Sorry, try later."
    assert result.state == first.result.state
    assert [r.sequence for r in result.replies] == [4]
    assert EventType.FALLBACK_USED in await core.events()
    await core.delivery.close(1.0)


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (EngineFailure("unavailable", "connection refused"), "unavailable"),
        (EngineFailure("error", "INTERNAL"), "error"),
        (RuntimeError("engine bug"), "error"),
    ],
)
async def test_engine_failures_give_fallback(core: Core, failure: Exception, reason: str) -> None:
    core.engine.failure = failure

    result = (await core.send(inbound("hi"))).result

    assert result.fallback_used
    assert result.fallback_reason == reason
    assert result.replies[0].content.text == "Sorry, try later."


async def test_invalid_engine_reply_gives_fallback(core: Core) -> None:
    core.engine.reply = EngineReply(
        contents=(
            MessageContent(
                type=MessageType.QUICK_REPLY,
                text="pick",
                quick_replies=(QuickReply(title="x" * 21, payload="p"),),
            ),
        ),
        state=ConversationState(current_intent="bad"),
    )

    result = (await core.send(inbound("hi"))).result

    assert result.fallback_reason == "invalid_reply"
    assert result.state.current_intent == ""


async def test_human_review_escalates_and_the_bot_stays_silent(core: Core) -> None:
    first = await core.send(
        inbound("hi", processing_hints=ProcessingHints(require_human_review=True))
    )

    assert first.result.replies == ()
    assert first.result.engine == "none"
    conversation_id = first.result.conversation_id
    second = await core.send(inbound("hello?", conversation_id=conversation_id))

    assert second.result.replies == ()
    assert core.engine.requests == []
    conversation = await core.store.get_conversation(TENANT, conversation_id)
    assert conversation is not None
    assert conversation.status is ConversationStatus.ESCALATED
    assert conversation.last_sequence == 2
    assert EventType.STATUS_CHANGED in await core.events()


async def test_bypass_automation_stores_without_asking(core: Core) -> None:
    outcome = await core.send(
        inbound("note", processing_hints=ProcessingHints(bypass_automation=True))
    )

    assert outcome.result.replies == ()
    assert core.engine.requests == []
    again = await core.send(
        inbound(
            "note",
            message_id=outcome.result.message_id,
            processing_hints=ProcessingHints(bypass_automation=True),
        )
    )
    assert again.replayed


async def test_engine_can_escalate(core: Core) -> None:
    core.engine.reply = EngineReply(
        contents=(MessageContent.of_text("A person will take over."),),
        state=ConversationState(current_intent="handoff"),
        escalate=True,
    )

    result = (await core.send(inbound("agent please"))).result

    conversation = await core.store.get_conversation(TENANT, result.conversation_id)
    assert conversation is not None
    assert conversation.status is ConversationStatus.ESCALATED
    assert len(result.replies) == 1


async def test_unknown_and_foreign_conversations_are_not_found(core: Core) -> None:
    theirs = await core.send(inbound("hi", tenant_id="other-tenant"))

    for conversation_id in ("no-such-conversation", theirs.result.conversation_id):
        with pytest.raises(NotFound):
            await core.send(inbound("hi", conversation_id=conversation_id))


async def test_closed_conversation_refuses_messages(core: Core) -> None:
    first = await core.send(inbound("hi"))
    conversation = await core.store.get_conversation(TENANT, first.result.conversation_id)
    assert conversation is not None
    closed = dataclasses.replace(
        conversation, status=ConversationStatus.COMPLETED, version=conversation.version + 1
    )
    await core.store.write(ConversationChange(closed, expected_version=conversation.version))

    with pytest.raises(FailedPrecondition) as caught:
        await core.send(inbound("again", conversation_id=conversation.conversation_id))
    assert caught.value.reason == "CONVERSATION_CLOSED"


async def test_other_user_or_channel_is_a_mismatch(core: Core) -> None:
    first = await core.send(inbound("hi"))
    conversation_id = first.result.conversation_id

    with pytest.raises(FailedPrecondition) as caught:
        await core.send(inbound("hi", conversation_id=conversation_id, user_id="intruder"))
    assert caught.value.reason == "CONVERSATION_MISMATCH"
    with pytest.raises(FailedPrecondition):
        await core.send(inbound("hi", conversation_id=conversation_id, channel=Channel.SMS))


async def test_long_sms_reply_is_split_into_stored_parts(core: Core) -> None:
    words = " ".join(f"word{n}" for n in range(450))  # ~3,500 characters
    core.engine.reply = EngineReply(
        contents=(MessageContent.of_text(words),), state=ConversationState()
    )

    result = (await core.send(inbound("tell me a story", channel=Channel.SMS))).result

    limit = rules_for(Channel.SMS).max_text_length
    assert len(result.replies) >= 3
    assert all(len(r.content.text) <= limit for r in result.replies)
    assert [r.sequence for r in result.replies] == list(range(2, 2 + len(result.replies)))
    assert " ".join(r.content.text for r in result.replies).split() == words.split()
    assert result.response == MessageContent.of_text(words)


class FailSecondWrite(InMemoryStore):
    """A store that goes down after the inbound message was written."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.down_after = 1

    async def write(self, change: ConversationChange) -> None:
        self.writes += 1
        if self.writes > self.down_after:
            raise StoreUnavailable("disk gone")
        await super().write(change)


async def test_retry_after_a_failed_reply_write_resumes_without_duplicates() -> None:
    store = FailSecondWrite()
    core = build_core(store)

    with pytest.raises(UnavailableError):
        await core.send(inbound("hi", message_id="m-1"))
    store.down_after = 100
    outcome = await core.send(inbound("hi", message_id="m-1"))

    assert not outcome.replayed
    messages = await store.list_messages(TENANT, outcome.result.conversation_id, limit=10)
    assert [(m.sequence, m.role) for m in messages] == [(1, MessageRole.USER), (2, MessageRole.BOT)]
    assert (await core.send(inbound("hi", message_id="m-1"))).replayed
    await core.delivery.close(1.0)


class StealsTheConversation(InMemoryStore):
    """Between our read and our write, another writer moves the version on
    (as when a lock was lost)."""

    async def write(self, change: ConversationChange) -> None:
        if change.expected_version == 1:
            current = await self.get_conversation(
                change.conversation.tenant_id, change.conversation.conversation_id
            )
            assert current is not None
            await super().write(
                ConversationChange(dataclasses.replace(current, version=2), expected_version=1)
            )
        await super().write(change)


async def test_version_conflict_is_aborted_and_writes_nothing() -> None:
    store = StealsTheConversation()
    core = build_core(store)

    with pytest.raises(Aborted) as caught:
        await core.send(inbound("hi", message_id="m-1"))

    assert caught.value.reason == "CONVERSATION_CHANGED"
    assert await store.get_record(TENANT, "m-1") is None
    await core.delivery.close(1.0)


async def test_replies_are_delivered_and_marked_sent(core: Core) -> None:
    result = (await core.send(inbound("hi", channel=Channel.SMS))).result
    assert result.replies[0].delivery_status is DeliveryStatus.PENDING

    assert await core.delivery.wait_idle(1.0)

    stored = await core.store.get_message(TENANT, result.replies[0].message_id)
    assert stored is not None
    assert stored.delivery_status is DeliveryStatus.SENT
    assert core.sender.delivered == [result.replies[0]]


# ------------------------------------------------------------------ sessions


async def test_a_session_continues_its_conversation(core: Core) -> None:
    first = await core.send(inbound("hi", session_id="web-session-1"))
    second = await core.send(inbound("me again", session_id="web-session-1"))
    other_user = await core.send(inbound("hi", session_id="web-session-1", user_id="user-2"))
    no_session = await core.send(inbound("hi"))

    assert second.result.conversation_id == first.result.conversation_id
    assert second.result.sequence == 3
    assert other_user.result.conversation_id != first.result.conversation_id
    assert no_session.result.conversation_id != first.result.conversation_id


async def test_concurrent_first_messages_of_a_session_share_one_conversation(core: Core) -> None:
    outcomes = await asyncio.gather(
        *(core.send(inbound(f"burst {n}", session_id="s-burst")) for n in range(5))
    )

    assert len({o.result.conversation_id for o in outcomes}) == 1
    assert sorted(o.result.sequence for o in outcomes) == [1, 3, 5, 7, 9]


async def test_a_closed_session_conversation_gives_way_to_a_new_one(core: Core) -> None:
    first = await core.send(inbound("hi", session_id="s-1"))
    conversation = await core.store.get_conversation(TENANT, first.result.conversation_id)
    assert conversation is not None
    await core.store.write(
        ConversationChange(
            dataclasses.replace(
                conversation, status=ConversationStatus.COMPLETED, version=conversation.version + 1
            ),
            expected_version=conversation.version,
        )
    )

    after = await core.send(inbound("back again", session_id="s-1"))

    assert after.result.conversation_id != first.result.conversation_id
    assert after.result.sequence == 1


class DownSessions(InProcessSessionCache):
    async def get_session(self, tenant_id: str, session_id: str) -> dict[str, object] | None:
        raise CoordinationUnavailable("redis down")

    async def put_session(
        self, tenant_id: str, session_id: str, session: Mapping[str, object]
    ) -> None:
        raise CoordinationUnavailable("redis down")


async def test_without_the_session_cache_messages_still_go_through() -> None:
    core = build_core(sessions=DownSessions())

    first = await core.send(inbound("hi", session_id="s-1"))
    second = await core.send(inbound("again", session_id="s-1"))

    assert first.result.replies
    assert second.result.conversation_id != first.result.conversation_id  # a cache miss
    await core.delivery.close(1.0)


# ------------------------------------------------------------ late retries


class ExpiredRecords(InMemoryStore):
    """Idempotency records past their TTL: gone, while messages stay."""

    async def get_record(self, tenant_id: str, message_id: str) -> IdempotencyRecord | None:
        return None


async def test_a_retry_after_the_record_expired_replays_the_stored_replies() -> None:
    core = build_core(ExpiredRecords())
    first = await core.send(inbound("hi", message_id="m-1"))
    later = await core.send(inbound("more", conversation_id=first.result.conversation_id))

    again = await core.send(inbound("hi", message_id="m-1"))

    assert again.replayed
    assert [(r.message_id, r.sequence, r.content) for r in again.result.replies] == [
        (r.message_id, r.sequence, r.content) for r in first.result.replies
    ]
    assert len(core.engine.requests) == 2  # not asked again
    messages = await core.store.list_messages(TENANT, first.result.conversation_id, limit=10)
    assert len(messages) == 4
    assert later.result.sequence == 3
    await core.delivery.close(1.0)


async def test_a_late_retry_of_an_unanswered_bypass_message_stays_unanswered() -> None:
    core = build_core(ExpiredRecords())
    hints = ProcessingHints(bypass_automation=True)
    first = await core.send(inbound("note", message_id="m-1", processing_hints=hints))

    again = await core.send(inbound("note", message_id="m-1", processing_hints=hints))

    assert again.replayed
    assert again.result.replies == ()
    assert core.engine.requests == []
    assert again.result.sequence == first.result.sequence
    await core.delivery.close(1.0)


async def test_a_message_overtaken_after_a_failure_stays_unanswered() -> None:
    store = FailSecondWrite()
    core = build_core(store)
    with pytest.raises(UnavailableError):
        await core.send(inbound("first", message_id="m-1"))
    stored = await store.get_message(TENANT, "m-1")
    assert stored is not None
    conversation_id = stored.conversation_id
    store.down_after = 100
    later = await core.send(inbound("second", conversation_id=conversation_id))

    retry = await core.send(inbound("first", message_id="m-1"))

    assert retry.replayed
    assert retry.result.replies == ()
    messages = await store.list_messages(TENANT, conversation_id, limit=10)
    assert [m.sequence for m in messages] == [1, 2, 3]  # no reply slipped in after "second"
    assert later.result.sequence == 2
    await core.delivery.close(1.0)


async def test_an_engine_reply_with_too_many_parts_gives_the_fallback(core: Core) -> None:
    core.engine.reply = EngineReply(
        contents=tuple(MessageContent.of_text(f"part {n}") for n in range(11)),
        state=ConversationState(),
    )

    result = (await core.send(inbound("hi"))).result

    assert result.fallback_reason == "invalid_reply"
    assert len(result.replies) == 1


async def test_an_errored_conversation_is_not_escalated_by_the_engine(core: Core) -> None:
    first = await core.send(inbound("hi"))
    conversation = await core.store.get_conversation(TENANT, first.result.conversation_id)
    assert conversation is not None
    await core.store.write(
        ConversationChange(
            dataclasses.replace(
                conversation, status=ConversationStatus.ERROR, version=conversation.version + 1
            ),
            expected_version=conversation.version,
        )
    )
    core.engine.reply = EngineReply(
        contents=(MessageContent.of_text("handing over"),), state=ConversationState(), escalate=True
    )

    await core.send(inbound("help", conversation_id=conversation.conversation_id))

    after = await core.store.get_conversation(TENANT, conversation.conversation_id)
    assert after is not None
    assert after.status is ConversationStatus.ERROR


# ------------------------------------------------------------------- races


class PausingLocks(InProcessConversationLocks):
    """Conversation locks that, once, stop a caller just before it asks for
    `pause_on`'s lock until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__()
        self.pause_on = ""
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    def hold(
        self, tenant_id: str, conversation_id: str, *, timeout: float
    ) -> AbstractAsyncContextManager[LockLease]:
        if not self.pause_on or conversation_id != self.pause_on:
            return super().hold(tenant_id, conversation_id, timeout=timeout)
        self.pause_on = ""
        return self._after_pause(super().hold(tenant_id, conversation_id, timeout=timeout))

    @asynccontextmanager
    async def _after_pause(
        self, hold: AbstractAsyncContextManager[LockLease]
    ) -> AsyncIterator[LockLease]:
        self.paused.set()
        await self.resume.wait()
        async with hold as lease:
            yield lease


async def test_a_session_conversation_closed_before_its_lock_gives_way_to_a_new_one() -> None:
    locks = PausingLocks()
    core = build_core(locks=locks)
    first = await core.send(inbound("hi", session_id="s-race"))
    closing = first.result.conversation_id
    close = core.services.update_status
    locks.pause_on = closing
    sending = asyncio.create_task(core.send(inbound("back again", session_id="s-race")))
    await locks.paused.wait()  # the session chose `closing`, not locked yet

    await close(TENANT, closing, ConversationStatus.COMPLETED)
    locks.resume.set()
    after = await sending

    assert after.result.conversation_id != closing
    assert after.result.sequence == 1
    assert after.result.replies
    then = await core.send(inbound("and again", session_id="s-race"))
    assert then.result.conversation_id == after.result.conversation_id
    await core.delivery.close(1.0)


class GatedEngine(ScriptedEngine):
    """Answers only once `release` is set; `called` says a request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.called = asyncio.Event()
        self.release = asyncio.Event()

    async def process(self, request: EngineRequest) -> EngineReply:
        self.called.set()
        await self.release.wait()
        return await super().process(request)


async def test_a_call_cancelled_after_its_commit_still_stores_the_reply() -> None:
    engine = GatedEngine()
    core = build_core(engine=engine, engine_timeout=5.0)
    call = asyncio.create_task(core.send(inbound("hi", message_id="m-1")))
    await engine.called.wait()  # the inbound message is committed

    call.cancel()  # the client's deadline
    with pytest.raises(asyncio.CancelledError):
        await call
    engine.release.set()
    again = await core.send(inbound("hi", message_id="m-1"))

    assert again.replayed
    assert len(engine.requests) == 1  # the engine is not asked twice
    assert [r.content.text for r in again.result.replies] == ["echo: hi"]
    assert again.result.engine == "scripted"
    messages = await core.store.list_messages(TENANT, again.result.conversation_id, limit=10)
    assert [(m.sequence, m.role) for m in messages] == [(1, MessageRole.USER), (2, MessageRole.BOT)]
    assert await core.send.wait_idle(1.0)
    await core.delivery.close(1.0)


class SignallingLocks(InProcessConversationLocks):
    """Conversation locks that say when `watched`'s lock is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.watched = ""
        self.asked = asyncio.Event()

    def hold(
        self, tenant_id: str, conversation_id: str, *, timeout: float
    ) -> AbstractAsyncContextManager[LockLease]:
        if conversation_id == self.watched:
            self.asked.set()
        return super().hold(tenant_id, conversation_id, timeout=timeout)


async def test_a_call_cancelled_before_its_commit_writes_nothing() -> None:
    locks = SignallingLocks()
    core = build_core(locks=locks)
    first = await core.send(inbound("hi"))
    conversation_id = locks.watched = first.result.conversation_id

    async with locks.hold(TENANT, conversation_id, timeout=1.0):  # busy
        locks.asked.clear()
        call = asyncio.create_task(
            core.send(inbound("later", message_id="m-2", conversation_id=conversation_id))
        )
        await locks.asked.wait()  # queued behind us
        assert core.send.running == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await core.send.wait_idle(1.0)  # it gave up its place in the queue

    assert await core.store.get_message(TENANT, "m-2") is None
    assert len(core.engine.requests) == 1
    await core.delivery.close(1.0)


async def test_close_waits_for_committed_work_then_cancels_the_rest() -> None:
    engine = GatedEngine()
    core = build_core(engine=engine, engine_timeout=5.0)
    call = asyncio.create_task(core.send(inbound("hi", message_id="m-1")))
    await engine.called.wait()
    call.cancel()

    assert not await core.send.wait_idle(0.01)  # still waiting for the engine
    await core.send.close(0.01)  # gives up on it: a retry resumes it

    assert core.send.running == 0
    engine.release.set()
    again = await core.send(inbound("hi", message_id="m-1"))
    assert [r.content.text for r in again.result.replies] == ["echo: hi"]
    await core.delivery.close(1.0)


class ClosesBehindTheLock(InMemoryStore):
    """Closes `target` right after the next read of it, without its lock (as
    a writer does whose lock was lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.target = ""

    async def get_conversation(self, tenant_id: str, conversation_id: str) -> Conversation | None:
        found = await super().get_conversation(tenant_id, conversation_id)
        if found is not None and conversation_id == self.target:
            self.target = ""
            closed = dataclasses.replace(
                found, status=ConversationStatus.ABANDONED, version=found.version + 1
            )
            await self.write(ConversationChange(closed, expected_version=found.version))
        return found


async def test_a_session_conversation_closed_under_a_lost_lock_is_aborted_then_replaced() -> None:
    store = ClosesBehindTheLock()
    core = build_core(store)
    first = await core.send(inbound("hi", session_id="s-lost"))
    # Another process wrote the conversation since, so this one's copy is
    # stale and it reads the conversation again: then it gets closed.
    conversation = await store.get_conversation(TENANT, first.result.conversation_id)
    assert conversation is not None
    await store.write(
        ConversationChange(
            dataclasses.replace(conversation, version=conversation.version + 1),
            expected_version=conversation.version,
        )
    )
    store.target = first.result.conversation_id

    with pytest.raises(Aborted) as caught:
        await core.send(inbound("again", message_id="m-2", session_id="s-lost"))
    assert caught.value.reason == "CONVERSATION_CHANGED"
    assert await store.get_message(TENANT, "m-2") is None

    retry = await core.send(inbound("again", message_id="m-2", session_id="s-lost"))
    assert retry.result.conversation_id != first.result.conversation_id
    assert retry.result.sequence == 1
    await core.delivery.close(1.0)


# ------------------------------------------------------- the engine's faults


async def test_an_oversized_engine_state_gives_the_fallback_and_keeps_the_state(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: a huge state only failed at the store (RESOURCE_EXHAUSTED
    # for the caller, whose message was fine): the engine's fault.
    first = await core.send(inbound("hi"))
    said = "my secret words "
    core.engine.reply = EngineReply(
        contents=(MessageContent.of_text("noted"),),
        state=ConversationState(slots={"heard": said * 5000}),  # ~80 KB
    )

    with caplog.at_level(logging.DEBUG):
        outcome = await core.send(inbound(said, conversation_id=first.result.conversation_id))

    result = outcome.result
    assert result.fallback_reason == "invalid_reply"
    assert [r.content.text for r in result.replies] == ["Sorry, try later."]
    assert result.state == first.result.state
    stored = await core.store.get_conversation(TENANT, result.conversation_id)
    assert stored is not None
    assert stored.state == first.result.state
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("state" in text and "invalid_reply" in text for text in warnings)
    assert not any("secret" in r.getMessage() for r in caplog.records)


async def test_an_invalid_engine_reply_is_logged_without_its_values(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    # The engine may echo the user's text into what it got wrong.
    core.engine.reply = EngineReply(
        contents=(dataclasses.replace(MessageContent.of_text("ok"), language="my secret words"),),
        state=ConversationState(),
    )

    with caplog.at_level(logging.DEBUG):
        result = (await core.send(inbound("my secret words"))).result

    assert result.fallback_reason == "invalid_reply"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("response_contents[0].language" in text for text in warnings)
    assert not any("secret" in r.getMessage() for r in caplog.records)


# ------------------------------------------------- what a call reads (issue 13)


class CountsLookups(InMemoryStore):
    """Counts the store's point reads (each a thread hop on SQLite)."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[str] = []

    async def get_message(self, tenant_id: str, message_id: str) -> Message | None:
        self.lookups.append("get_message")
        return await super().get_message(tenant_id, message_id)

    async def get_conversation(self, tenant_id: str, conversation_id: str) -> Conversation | None:
        self.lookups.append("get_conversation")
        return await super().get_conversation(tenant_id, conversation_id)

    async def get_record(self, tenant_id: str, message_id: str) -> IdempotencyRecord | None:
        self.lookups.append("get_record")
        return await super().get_record(tenant_id, message_id)

    async def list_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        limit: int,
        after_sequence: int | None = None,
        descending: bool = False,
    ) -> Sequence[Message]:
        # The engine's history: a read of its own (the fake looks the
        # conversation up inside it, which is not one).
        counted = len(self.lookups)
        found = await super().list_messages(
            tenant_id,
            conversation_id,
            limit=limit,
            after_sequence=after_sequence,
            descending=descending,
        )
        del self.lookups[counted:]
        return found


async def test_a_new_message_to_a_conversation_written_here_reads_nothing_first() -> None:
    # No lookup of the message id (the store refuses a known one) and no
    # read of the conversation this process wrote last.
    store = CountsLookups()
    core = build_core(store)
    first = await core.send(inbound("hi", message_id="m-1"))
    store.lookups.clear()

    second = inbound("again", message_id="m-2", conversation_id=first.result.conversation_id)
    sent = await core.send(second)

    assert store.lookups == []
    assert sent.result.sequence == 3
    assert (await core.send(second)).replayed  # a retry still is
    await core.delivery.close(1.0)


async def test_a_conversation_another_process_wrote_is_read_again_and_the_message_goes_in(
    core: Core,
) -> None:
    first = await core.send(inbound("hi"))
    conversation_id = first.result.conversation_id
    stored = await core.store.get_conversation(TENANT, conversation_id)
    assert stored is not None
    # Another process's message and answer: this process's copy is stale.
    theirs = [
        dataclasses.replace(message, message_id=f"theirs-{message.sequence}", sequence=seq)
        for message, seq in zip(
            await core.store.list_messages(TENANT, conversation_id, limit=10), (3, 4), strict=True
        )
    ]
    await core.store.write(
        ConversationChange(
            dataclasses.replace(stored, last_sequence=4, version=stored.version + 1),
            expected_version=stored.version,
            messages=tuple(theirs),
        )
    )

    after = await core.send(inbound("mine", conversation_id=conversation_id))

    assert not after.replayed
    assert after.result.sequence == 5
    messages = await core.store.list_messages(TENANT, conversation_id, limit=10)
    assert [m.sequence for m in messages] == [1, 2, 3, 4, 5, 6]


async def test_a_retry_gets_its_answer_after_its_conversation_closed(core: Core) -> None:
    # A new message would be refused there now (CONVERSATION_CLOSED); a
    # retry of one stored before the close still gets its stored answer.
    started = await core.send(inbound("hi"))
    conversation_id = started.result.conversation_id
    first = await core.send(inbound("more", message_id="m-1", conversation_id=conversation_id))
    await core.services.update_status(TENANT, conversation_id, ConversationStatus.COMPLETED)

    retry = await core.send(inbound("more", message_id="m-1", conversation_id=conversation_id))

    assert retry.replayed
    assert retry.result == first.result
    with pytest.raises(FailedPrecondition):
        await core.send(inbound("new", message_id="m-2", conversation_id=conversation_id))
