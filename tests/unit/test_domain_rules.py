"""The conversation rules, as pure functions: no event loop, no I/O."""

from __future__ import annotations

import dataclasses

import pytest

from chat_service.domain.content import MessageContent
from chat_service.domain.engine_reply import (
    MAX_REPLY_CONTENTS,
    MAX_STATE_BYTES,
    MAX_STATE_DEPTH,
    ReplyPlan,
    plan_reply,
    state_problem,
)
from chat_service.domain.enums import Channel, ConversationStatus, DeliveryStatus, MessageRole
from chat_service.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from chat_service.domain.events import EventType
from chat_service.domain.model import (
    ChannelMetadata,
    Conversation,
    ConversationState,
    IdempotencyRecord,
    InboundMessage,
    JsonValue,
    ProcessingHints,
    SendResult,
    conversation_of,
)
from chat_service.domain.retries import late_retry, replay
from chat_service.domain.turns import answer, receive, reply_message_id
from chat_service.ports import EngineReply
from tests.builders import OTHER_TENANT, T0, TENANT, make_conversation, make_message

S = ConversationStatus

# ------------------------------------------------------------ conversations


def test_a_conversation_starts_active_unsaved_with_the_conversations_metadata_only() -> None:
    first = ChannelMetadata(
        platform_message_id="wamid.1",
        platform_user_id="+15550100",
        thread_id="t-1",
        additional_data={"raw": 1},
    )

    started = Conversation.start(
        conversation_id="c-1",
        tenant_id=TENANT,
        user_id="u-1",
        channel=Channel.WHATSAPP,
        at=T0,
        session_id="s-1",
        channel_metadata=first,
    )

    assert started.is_new
    assert (started.status, started.last_sequence) == (S.ACTIVE, 0)
    assert (started.created_at, started.updated_at, started.session_id) == (T0, T0, "s-1")
    assert started.channel_metadata == ChannelMetadata(
        platform_user_id="+15550100", thread_id="t-1"
    )


def test_another_tenants_conversation_is_not_found_like_a_missing_one() -> None:
    theirs = make_conversation(tenant_id=OTHER_TENANT)

    with pytest.raises(NotFound) as foreign:
        conversation_of(TENANT, theirs.conversation_id, theirs)
    with pytest.raises(NotFound) as missing:
        conversation_of(TENANT, theirs.conversation_id, None)

    assert foreign.value.message == missing.value.message
    assert foreign.value.reason == "CONVERSATION_NOT_FOUND"
    mine = make_conversation()
    assert conversation_of(TENANT, mine.conversation_id, mine) is mine


@pytest.mark.parametrize("status", [S.COMPLETED, S.ABANDONED])
def test_a_closed_conversation_accepts_no_message(status: ConversationStatus) -> None:
    closed = make_conversation(status=status)

    with pytest.raises(FailedPrecondition) as refused:
        closed.check_accepts_message(user_id="user-1", channel=Channel.WEB)

    assert refused.value.reason == "CONVERSATION_CLOSED"
    assert refused.value.metadata["status"] == status.value


@pytest.mark.parametrize("status", [S.ACTIVE, S.ESCALATED, S.ERROR])
def test_an_open_conversation_accepts_its_own_users_messages(status: ConversationStatus) -> None:
    make_conversation(status=status).check_accepts_message(user_id="user-1", channel=Channel.WEB)


def test_another_user_or_channel_is_a_mismatch_naming_the_fields() -> None:
    conversation = make_conversation()

    with pytest.raises(FailedPrecondition) as both:
        conversation.check_accepts_message(
            user_id="intruder", channel=Channel.SMS, field_prefix="message."
        )
    with pytest.raises(FailedPrecondition) as user:
        conversation.check_participant(user_id="intruder", field_prefix="open.")

    assert both.value.reason == "CONVERSATION_MISMATCH"
    assert both.value.metadata["fields"] == "message.channel,message.user_id"
    assert user.value.message == "open.user_id differs from the conversation's"
    conversation.check_participant(user_id="")  # not given: not checked


@pytest.mark.parametrize(
    ("status", "may"),
    [(S.ACTIVE, True), (S.ESCALATED, False), (S.ERROR, False), (S.COMPLETED, False)],
)
def test_who_may_be_escalated(status: ConversationStatus, may: bool) -> None:
    assert make_conversation(status=status).may_escalate is may


def test_a_status_change_follows_the_transitions() -> None:
    escalated = make_conversation(status=S.ESCALATED, version=3)

    back = escalated.moved_to(S.ACTIVE, reason="agent done", at=T0)
    assert (back.status, back.status_reason, back.version) == (S.ACTIVE, "agent done", 4)
    with pytest.raises(FailedPrecondition) as refused:
        make_conversation(status=S.COMPLETED).moved_to(S.ACTIVE, reason="", at=T0)
    assert refused.value.reason == "INVALID_STATUS_TRANSITION"
    assert refused.value.metadata == {"from": "completed", "to": "active"}


def test_delivery_status_only_moves_forward_and_failed_or_read_end_it() -> None:
    D = DeliveryStatus
    assert D.PENDING.can_advance_to(D.SENT)
    assert D.SENT.can_advance_to(D.READ)
    assert D.SENT.can_advance_to(D.FAILED)
    assert not D.DELIVERED.can_advance_to(D.SENT)
    assert not D.FAILED.can_advance_to(D.READ)
    assert not D.READ.can_advance_to(D.FAILED)


def test_outbound_messages_are_the_bots_and_agents() -> None:
    conversation = make_conversation()
    assert not make_message(conversation, 1, role=MessageRole.USER).is_outbound
    assert make_message(conversation, 2, role=MessageRole.BOT).is_outbound
    assert make_message(conversation, 3, role=MessageRole.AGENT).is_outbound


# ------------------------------------------------------------------ retries


def _result(conversation: Conversation, sequence: int = 1) -> SendResult:
    return SendResult.of(make_message(conversation, sequence), conversation)


def test_a_retry_of_the_same_request_gets_the_stored_result() -> None:
    stored = _result(make_conversation())
    record = IdempotencyRecord(TENANT, stored.message_id, "fp-1", stored, T0)

    assert replay(record, "fp-1", field_prefix="") is stored
    assert replay(None, "fp-1", field_prefix="") is None


def test_a_reused_id_with_other_content_is_refused_naming_the_field() -> None:
    stored = _result(make_conversation())
    record = IdempotencyRecord(TENANT, stored.message_id, "fp-1", stored, T0)

    with pytest.raises(InvalidArgument) as refused:
        replay(record, "fp-2", field_prefix="message.")

    assert refused.value.reason == "MESSAGE_ID_REUSED"
    assert [v.field for v in refused.value.violations] == ["message.message_id"]


def test_a_late_retry_gets_the_stored_replies_or_none_or_must_be_answered() -> None:
    conversation = make_conversation(last_sequence=1)
    inbound = make_message(conversation, 1)
    reply = make_message(conversation, 2, "hello back", role=MessageRole.BOT)
    hints = ProcessingHints()

    replayed = late_retry(conversation, inbound, (reply,), hints)
    assert replayed is not None
    assert (replayed.replies, replayed.response, replayed.engine) == (
        (reply,),
        reply.content,
        "replay",
    )
    bypassed = late_retry(conversation, inbound, (), ProcessingHints(bypass_automation=True))
    assert bypassed == SendResult.of(inbound, conversation)
    escalated = dataclasses.replace(conversation, status=S.ESCALATED)
    assert late_retry(escalated, inbound, (), hints) == SendResult.of(inbound, escalated)
    overtaken = dataclasses.replace(conversation, last_sequence=3)
    assert late_retry(overtaken, inbound, (), hints) == SendResult.of(inbound, overtaken)
    assert late_retry(conversation, inbound, (), hints) is None  # answer it now


# ----------------------------------------------------------- a message in


def _inbound(**overrides: object) -> InboundMessage:
    fields: dict[str, object] = {
        "tenant_id": TENANT,
        "message_id": "m-1",
        "conversation_id": "",
        "user_id": "user-1",
        "channel": Channel.WEB,
        "content": MessageContent.of_text("hi"),
    }
    return InboundMessage(**(fields | overrides))  # type: ignore[arg-type]


def _new() -> Conversation:
    return Conversation.start(
        conversation_id="c-1", tenant_id=TENANT, user_id="user-1", channel=Channel.WEB, at=T0
    )


def test_the_first_message_starts_the_conversation() -> None:
    received = receive(_new(), _inbound(), fingerprint="fp", at=T0)

    assert received.answered
    assert (received.message.sequence, received.message.fingerprint) == (1, "fp")
    assert (received.conversation.last_sequence, received.conversation.version) == (1, 1)
    assert [e.event_type for e in received.events] == [
        EventType.CONVERSATION_STARTED,
        EventType.MESSAGE_RECEIVED,
    ]


def test_a_review_request_escalates_and_nobody_answers() -> None:
    hints = ProcessingHints(require_human_review=True)

    received = receive(make_conversation(), _inbound(processing_hints=hints), fingerprint="", at=T0)

    assert not received.answered
    assert received.conversation.status is S.ESCALATED
    assert [e.event_type for e in received.events] == [
        EventType.MESSAGE_RECEIVED,
        EventType.STATUS_CHANGED,
    ]


def test_bypassed_or_escalated_messages_are_not_answered() -> None:
    bypass = _inbound(processing_hints=ProcessingHints(bypass_automation=True))
    assert not receive(make_conversation(), bypass, fingerprint="", at=T0).answered
    escalated = make_conversation(status=S.ESCALATED)
    assert not receive(escalated, _inbound(), fingerprint="", at=T0).answered


# ------------------------------------------------------------ the reply


def _reply(*texts: str, **overrides: object) -> EngineReply:
    fields: dict[str, object] = {
        "contents": tuple(MessageContent.of_text(text) for text in texts),
        "state": ConversationState(current_intent="next"),
    }
    return EngineReply(**(fields | overrides))  # type: ignore[arg-type]


def test_a_valid_reply_is_used_as_the_engine_gave_it() -> None:
    plan = plan_reply(make_conversation(), _reply("hello", escalate=True), fallback_text="sorry")

    assert plan == ReplyPlan(
        parts=(MessageContent.of_text("hello"),),
        response=MessageContent.of_text("hello"),
        state=ConversationState(current_intent="next"),
        escalate=True,
    )


def test_without_a_reply_the_fallback_keeps_the_state() -> None:
    conversation = make_conversation(state=ConversationState(current_intent="before"))

    plan = plan_reply(conversation, None, failure="timeout", fallback_text="sorry")

    assert plan.fallback_reason == "timeout"
    assert plan.parts == (MessageContent.of_text("sorry"),)
    assert plan.state == conversation.state


def test_a_long_reply_is_split_for_the_channel() -> None:
    words = " ".join(f"word{n}" for n in range(300))

    plan = plan_reply(make_conversation(channel=Channel.SMS), _reply(words), fallback_text="x")

    assert len(plan.parts) > 1
    assert plan.response == MessageContent.of_text(words)


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (_reply(*["hi"] * (MAX_REPLY_CONTENTS + 1)), "more than 10 replies"),
        (
            _reply(contents=(dataclasses.replace(MessageContent.of_text("x"), language="SECRET"),)),
            "response_contents[0].language",
        ),
        (_reply("hi", state=ConversationState(slots={"k": "v" * MAX_STATE_BYTES})), "state"),
    ],
)
def test_an_unusable_reply_gives_the_fallback_and_says_why_without_values(
    reply: EngineReply, problem: str
) -> None:
    conversation = make_conversation(channel=Channel.SMS)

    plan = plan_reply(conversation, reply, fallback_text="sorry")

    assert plan.fallback_reason == "invalid_reply"
    assert plan.state == conversation.state
    assert problem in plan.problem
    assert "SECRET" not in plan.problem


def test_the_state_is_bounded_in_size_and_depth() -> None:
    assert state_problem(ConversationState(slots={"n": 10**100_000, "s": "ok"})) != ""
    assert state_problem(ConversationState(entities={"x": [1, 2.5, None, True, "é"]})) == ""
    nested: JsonValue = "leaf"
    for _ in range(MAX_STATE_DEPTH):
        nested = [nested]
    assert "deeper" in state_problem(ConversationState(slots={"deep": nested}))
    many = {f"k{n}": n for n in range(MAX_STATE_BYTES // 4)}
    assert "larger" in state_problem(ConversationState(user_profile=many))


def test_the_answer_stores_the_replies_after_the_message() -> None:
    conversation = make_conversation(last_sequence=1, version=2)
    inbound = make_message(conversation, 1, message_id="m-1")
    plan = plan_reply(conversation, _reply("a", "b", escalate=True), fallback_text="sorry")

    turn = answer(
        conversation,
        inbound,
        plan,
        engine="builtin",
        engine_latency_ms=12.0,
        delivery_status=DeliveryStatus.PENDING,
        at=T0,
    )

    assert [(r.message_id, r.sequence) for r in turn.replies] == [
        ("m-1/reply-1", 2),
        ("m-1/reply-2", 3),
    ]
    assert reply_message_id("m-1", 1) == "m-1/reply-2"
    assert all(r.reply_to_message_id == "m-1" and r.role is MessageRole.BOT for r in turn.replies)
    assert (turn.conversation.last_sequence, turn.conversation.version) == (3, 3)
    assert turn.conversation.status is S.ESCALATED
    assert [e.event_type for e in turn.events] == [
        EventType.MESSAGE_SENT,
        EventType.MESSAGE_SENT,
        EventType.STATUS_CHANGED,
    ]
    assert turn.result == SendResult.of(
        inbound,
        turn.conversation,
        replies=turn.replies,
        response=MessageContent.of_text("a"),
        engine="builtin",
        engine_latency_ms=12.0,
    )


def test_a_fallback_answer_says_so() -> None:
    conversation = make_conversation(last_sequence=1, status=S.ERROR)
    inbound = make_message(conversation, 1)
    plan = plan_reply(conversation, None, failure="unavailable", fallback_text="sorry")

    turn = answer(
        conversation,
        inbound,
        dataclasses.replace(plan, escalate=True),
        engine="mcp",
        engine_latency_ms=0.0,
        delivery_status=DeliveryStatus.SENT,
        at=T0,
    )

    assert turn.result.engine == "fallback"
    assert turn.result.fallback_used
    assert turn.result.fallback_reason == "unavailable"
    assert turn.conversation.status is S.ERROR  # ERROR cannot be escalated
    assert [e.event_type for e in turn.events] == [EventType.FALLBACK_USED, EventType.MESSAGE_SENT]
