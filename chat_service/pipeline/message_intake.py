"""Under the conversation's lock: a new message stored and answered, or a
stored one that was never answered taken up again.

The inbound message, its events (and, when nobody answers it, the
idempotency record) go in one write; the answer (bot_answer.py) in a
second. `on_commit` is called just before the first write that may apply:
from there on the caller's leaving must not stop the work (SendMessage).

A message is written without first looking for its id: the store refuses a
known (tenant, message_id) (DuplicateMessage, nothing written), and only
then, on a retry, is the stored message read (AlreadyStored).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from chat_service.domain.engine_reply import MAX_REPLY_PARTS
from chat_service.domain.errors import ChatError
from chat_service.domain.model import (
    Conversation,
    IdempotencyRecord,
    InboundMessage,
    Message,
    SendResult,
    conversation_of,
)
from chat_service.domain.retries import late_retry, replay
from chat_service.domain.turns import receive, reply_message_id
from chat_service.pipeline.bot_answer import BotAnswer
from chat_service.pipeline.session_routing import SessionRouting
from chat_service.pipeline.writer import ConversationWriter
from chat_service.ports import (
    Clock,
    ConversationChange,
    ConversationStore,
    DuplicateMessage,
    VersionConflict,
)

log = logging.getLogger(__name__)

OnCommit = Callable[[], None]


class AlreadyStored(Exception):
    """The message id is taken: the call retries (or reuses the id of) a
    stored message, which is `message`. Nothing of this call was written."""

    def __init__(self, message: Message) -> None:
        super().__init__(f"message {message.message_id!r} is stored")
        self.message = message


class StaleConversation(Exception):
    """The conversation the write was built on had changed: nothing was
    written; read it again and decide anew."""


class MessageIntake:
    def __init__(
        self,
        *,
        store: ConversationStore,
        writer: ConversationWriter,
        routing: SessionRouting,
        bot: BotAnswer,
        clock: Clock,
    ) -> None:
        self._store = store
        self._writer = writer
        self._conversations = writer.conversations
        self._routing = routing
        self._bot = bot
        self._clock = clock

    async def stored_result(
        self, msg: InboundMessage, fingerprint: str, field_prefix: str
    ) -> SendResult | None:
        """The answer of a finished call with this message id, if any."""
        record = await self._store.get_record(msg.tenant_id, msg.message_id)
        return replay(record, fingerprint, field_prefix=field_prefix)

    async def take_new(
        self,
        msg: InboundMessage,
        conversation_id: str,
        *,
        fingerprint: str,
        field_prefix: str,
        fence: int,
        on_commit: OnCommit,
        fresh: bool = False,
    ) -> tuple[SendResult, bool]:
        """Stores `msg` in `conversation_id` (created if the message starts
        one) and answers it. Returns the result and whether it is replayed.
        AlreadyStored when the message id is taken; StaleConversation when
        the conversation, taken from the cache (unless `fresh`), had changed
        (nothing written: call again with `fresh`)."""
        conversation = await self._writable(msg, conversation_id, field_prefix, fresh=fresh)
        now = self._clock.now()
        received = receive(conversation, msg, fingerprint=fingerprint, at=now)
        record = None
        if not received.answered:
            # Nobody answers: the inbound write is the whole call, record included.
            result = SendResult.of(received.message, received.conversation)
            record = IdempotencyRecord(msg.tenant_id, msg.message_id, fingerprint, result, now)
        change = ConversationChange(
            conversation=received.conversation,
            expected_version=conversation.version,
            messages=(received.message,),
            events=received.events,
            record=record,
            fencing_token=fence,
        )
        on_commit()  # a write once started may apply: see it through
        try:
            await self._writer.write(change)
        except VersionConflict as conflict:
            if fresh:
                raise
            # Another process wrote the conversation since this one last did
            # (or our lock was lost: then the fence refuses the next try too).
            raise StaleConversation() from conflict
        except DuplicateMessage:
            stored = await self._store.get_message(msg.tenant_id, msg.message_id)
            if stored is None:
                raise  # a sequence taken: another writer got in (a lost lock)
            raise AlreadyStored(stored) from None
        if msg.session_id:
            await self._routing.remember(received.conversation, msg.session_id)
        if record is not None:
            return record.result, False
        hints = msg.processing_hints
        return await self._bot(received.conversation, received.message, hints, fence), False

    async def resume(
        self,
        msg: InboundMessage,
        inbound: Message,
        *,
        field_prefix: str,
        fence: int,
        on_commit: OnCommit,
    ) -> tuple[SendResult, bool]:
        """`inbound` is stored but its call never finished (a crash or a lost
        store between the two writes, or a record past its TTL): the stored
        answer, or an answer now."""
        stored = await self.stored_result(msg, inbound.fingerprint, field_prefix)
        if stored is not None:  # finished while we waited for the lock
            return stored, True
        found = await self._conversations.get(msg.tenant_id, inbound.conversation_id, fresh=True)
        # Missing cannot happen: both were written together.
        conversation = conversation_of(msg.tenant_id, inbound.conversation_id, found)
        replies = await self._stored_replies(conversation, inbound)
        late = late_retry(conversation, inbound, replies, msg.processing_hints)
        if late is not None:
            log.info(
                "message %s retried without its record; answered from the store", inbound.message_id
            )
            return late, True
        log.info("resuming unanswered message %s", inbound.message_id)
        on_commit()
        return await self._bot(conversation, inbound, msg.processing_hints, fence), False

    async def _stored_replies(
        self, conversation: Conversation, inbound: Message
    ) -> tuple[Message, ...]:
        """Replies already stored for `inbound`, found by their derived ids."""
        replies: list[Message] = []
        while len(replies) < MAX_REPLY_PARTS:
            found = await self._store.get_message(
                conversation.tenant_id, reply_message_id(inbound.message_id, len(replies))
            )
            if found is None:
                break
            replies.append(found)
        return tuple(replies)

    async def _writable(
        self, msg: InboundMessage, conversation_id: str, field_prefix: str, *, fresh: bool
    ) -> Conversation:
        """The conversation `msg` goes to, checked that it may take it; a new
        one (not stored yet) when the message starts it. A refusal gives way
        to the stored message if this is a retry: its conversation may have
        closed since, and a retry still gets the stored answer."""
        try:
            return await self._checked(msg, conversation_id, field_prefix, fresh=fresh)
        except ChatError:
            stored = await self._store.get_message(msg.tenant_id, msg.message_id)
            if stored is not None:
                raise AlreadyStored(stored) from None
            raise

    async def _checked(
        self, msg: InboundMessage, conversation_id: str, field_prefix: str, *, fresh: bool
    ) -> Conversation:
        assert msg.channel is not None  # validated
        if msg.conversation_id:
            found = await self._conversations.get(msg.tenant_id, conversation_id, fresh=fresh)
            conversation = conversation_of(msg.tenant_id, conversation_id, found)
            conversation.check_accepts_message(
                user_id=msg.user_id, channel=msg.channel, field_prefix=field_prefix
            )
            return conversation
        if msg.session_id:
            # The session's conversation (checked under this lock), or a new
            # id: then nothing is stored under it yet.
            found = await self._conversations.get(msg.tenant_id, conversation_id, fresh=fresh)
            if found is not None and not found.status.is_closed:
                return found
            if found is not None:
                # Closed under our lock, so the lock was lost: ABORTED, and
                # the retry starts the new conversation the contract promises.
                raise VersionConflict(f"conversation {conversation_id!r} was closed")
        return Conversation.start(
            conversation_id=conversation_id,
            tenant_id=msg.tenant_id,
            user_id=msg.user_id,
            channel=msg.channel,
            at=self._clock.now(),
            session_id=msg.session_id,
            channel_metadata=msg.channel_metadata,
        )
