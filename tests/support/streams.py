"""A StreamConversation client for tests: send frames, read typed events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import content_pb2, resources_pb2

from tests.support.grpc_client import Metadata


class StreamClient:
    """One bidirectional stream. Frames go out as they are queued; responses
    are read on demand, so a test can also stop reading (a slow client)."""

    def __init__(self, stub: Any, metadata: Metadata) -> None:
        self._outgoing: asyncio.Queue[pb.StreamConversationRequest | None] = asyncio.Queue()
        self.call = stub.StreamConversation(self._frames(), metadata=metadata)

    async def _frames(self) -> AsyncIterator[pb.StreamConversationRequest]:
        while (frame := await self._outgoing.get()) is not None:
            yield frame

    def send(self, **frame: Any) -> None:
        self._outgoing.put_nowait(pb.StreamConversationRequest(**frame))

    def done_sending(self) -> None:
        self._outgoing.put_nowait(None)

    async def open(
        self,
        *,
        conversation_id: str = "",
        user_id: str = "user-1",
        channel: resources_pb2.Channel.ValueType = resources_pb2.CHANNEL_WEB,
        resume_after: int | None = None,
        event_kinds: Sequence[pb.StreamEventKind.ValueType] = (),
        omit_own: bool = False,
    ) -> pb.StreamOpened:
        open_frame = pb.StreamOpen(
            conversation_id=conversation_id,
            user_id=user_id,
            channel=channel,
            event_kinds=event_kinds,
            omit_own_messages=omit_own,
        )
        if resume_after is not None:
            open_frame.resume_after_sequence = resume_after
        self.send(open=open_frame)
        first = await self.next()
        assert first.WhichOneof("event") == "opened", first
        return first.opened

    def say(self, text: str, message_id: str) -> None:
        self.send(
            message=pb.StreamMessage(
                message_id=message_id,
                content=content_pb2.MessageContent(type=content_pb2.MESSAGE_TYPE_TEXT, text=text),
            )
        )

    async def next(self, timeout: float = 10.0) -> pb.StreamConversationResponse:
        async with asyncio.timeout(timeout):
            response = await self.call.read()
        assert response is not grpc.aio.EOF, "the stream ended"  # type: ignore[attr-defined]
        return response  # type: ignore[no-any-return]

    async def next_of(self, kind: str, timeout: float = 10.0) -> Any:
        """The next event of `kind` ("message", "ack", ...), skipping others."""
        while True:
            response = await self.next(timeout)
            if response.WhichOneof("event") == kind:
                return getattr(response, kind)

    async def messages_through(
        self, sequence: int, timeout: float = 10.0
    ) -> list[resources_pb2.Message]:
        """`message` events until one with `sequence` (inclusive)."""
        seen: list[resources_pb2.Message] = []
        while not seen or seen[-1].sequence < sequence:
            seen.append(await self.next_of("message", timeout))
        return seen

    def cancel(self) -> None:
        self.call.cancel()

    async def until_error(
        self, timeout: float = 10.0
    ) -> tuple[list[pb.StreamConversationResponse], grpc.aio.AioRpcError]:
        """Everything received until the stream ends with an error, and the error."""
        received: list[pb.StreamConversationResponse] = []
        try:
            while True:
                received.append(await self.next(timeout))
        except grpc.aio.AioRpcError as error:
            return received, error
