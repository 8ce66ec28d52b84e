"""Replies the service gives itself, without asking the bot engine.

An inbound platform message the service cannot read (a sticker, a voice
note, a reaction) is stored as it is (a placeholder text) and must get a
polite answer (domain.webhooks.UNSUPPORTED_REPLY), not whatever the engine
would make of the placeholder. It still takes SendMessage's whole path
(idempotency, the conversation's lock, reply ids derived from the message,
delivery, events): `CannedReplies` wraps the engine, and the inbox worker
tells it, for the duration of its SendMessage call, which message gets
which reply. Every other request goes to the engine unchanged.

Process-local by design: the worker and the SendMessage call it makes run
in the same process. A message retried after a crash is handed over again
by the worker, with its canned reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from chat_service.domain.content import MessageContent
from chat_service.ports import Engine, EngineReply, EngineRequest


class CannedReplies:
    """An Engine: the canned reply for the messages it was told about, the
    wrapped engine's answer for the rest."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._canned: dict[tuple[str, str], MessageContent] = {}

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def history_size(self) -> int:
        return self._engine.history_size

    @contextmanager
    def answering(self, tenant_id: str, message_id: str, reply: MessageContent) -> Iterator[None]:
        """While inside, the message `message_id` is answered with `reply`."""
        key = (tenant_id, message_id)
        self._canned[key] = reply
        try:
            yield
        except asyncio.CancelledError:
            # Kept: a SendMessage call whose caller was cancelled after the
            # message was stored still answers it (at shutdown only).
            raise
        except BaseException:
            self._canned.pop(key, None)
            raise
        self._canned.pop(key, None)

    async def process(self, request: EngineRequest) -> EngineReply:
        reply = self._canned.get((request.tenant_id, request.message_id))
        if reply is None:
            return await self._engine.process(request)
        # The conversation's state stays as it was: nothing was understood.
        return EngineReply(contents=(reply,), state=request.context)
