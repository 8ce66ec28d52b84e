"""A message sent on a stream whose stream ends before the reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from adapters.memory.locks import InProcessConversationLocks
from chat_service.domain.enums import Channel
from chat_service.pipeline.conversation_stream import Acked, ConversationStream
from chat_service.pipeline.stream_opener import StreamOpenRequest
from chat_service.ports import LockLease
from tests.builders import TENANT
from tests.unit.test_conversation_stream import _take, build
from tests.unit.test_send_message import inbound


def _hold_first_lock(
    monkeypatch: pytest.MonkeyPatch, conversation_id: str
) -> tuple[asyncio.Event, asyncio.Event]:
    """Stops the first request for `conversation_id`'s lock (SendMessage's
    first step, before anything is written) until `release` is set."""
    reached, release = asyncio.Event(), asyncio.Event()
    hold = InProcessConversationLocks.hold

    @asynccontextmanager
    async def held_first(
        locks: InProcessConversationLocks, tenant_id: str, wanted: str, *, timeout: float
    ) -> AsyncIterator[LockLease]:
        if wanted == conversation_id and not reached.is_set():
            reached.set()
            await release.wait()
        async with hold(locks, tenant_id, wanted, timeout=timeout) as lease:
            yield lease

    monkeypatch.setattr(InProcessConversationLocks, "hold", held_first)
    return reached, release


def _send(stream: ConversationStream, message_id: str) -> asyncio.Task[None]:
    message = inbound(
        "hi",
        message_id=message_id,
        tenant_id=TENANT,
        user_id="u-1",
        conversation_id=stream.conversation_id,
    )
    return asyncio.create_task(stream.send(message))


async def test_a_stream_that_ends_before_the_commit_stores_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stream's frame reader is cancelled when the stream ends (the
    # client left, the server drains...). A message not yet acked whose write
    # has not started is then not stored, as for a cancelled SendMessage: the
    # client resends it (same id) when it reconnects, and it is stored once.
    world = build()
    stream = await world.streams.open(TENANT, StreamOpenRequest(user_id="u-1", channel=Channel.WEB))
    reached, release = _hold_first_lock(monkeypatch, stream.conversation_id)
    sending = _send(stream, "s-1")
    await reached.wait()

    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    stream.close()
    release.set()

    again = await world.streams.open(
        TENANT, StreamOpenRequest(conversation_id=stream.conversation_id)
    )
    items = again.items()
    await _take(items, 1)  # opened
    await _send(again, "s-1")
    got = await _take(items, 3)
    acks = [item for item in got if isinstance(item, Acked)]
    assert [(a.message_id, a.sequence, a.duplicate) for a in acks] == [("s-1", 1, False)]
    messages = await world.store.list_messages(TENANT, stream.conversation_id, limit=10)
    assert [m.sequence for m in messages] == [1, 2]
    again.close()
