"""The Engine port, timed: wraps the chosen engine in the composition root,
so the core calls it as before and never knows it is measured."""

from __future__ import annotations

import asyncio
import time

from chat_service.ports import Engine, EngineFailure, EngineReply, EngineRequest, Metrics


class MeasuredEngine:
    """An Engine: `engine`'s answers, each call's time and outcome recorded.
    The caller bounds the time (bot_answer.py), so a timeout reaches here as
    a cancellation."""

    def __init__(self, engine: Engine, metrics: Metrics) -> None:
        self._engine = engine
        self._metrics = metrics

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def history_size(self) -> int:
        return self._engine.history_size

    async def process(self, request: EngineRequest) -> EngineReply:
        started = time.monotonic()
        outcome = "error"
        try:
            reply = await self._engine.process(request)
            outcome = "ok"
            return reply
        except EngineFailure as failure:
            outcome = failure.reason
            raise
        except asyncio.CancelledError:
            outcome = "timeout"
            raise
        finally:
            self._metrics.engine_called(self._engine.name, outcome, time.monotonic() - started)
