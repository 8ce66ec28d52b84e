"""LiveBus inside one process: a dict of topic -> listeners."""

from __future__ import annotations

import logging
from collections.abc import Callable

from chat_service.domain.live import LiveEvent
from chat_service.ports import LiveListener

log = logging.getLogger(__name__)


class InProcessLiveBus:
    def __init__(self) -> None:
        self._listeners: dict[str, list[LiveListener]] = {}

    def publish(self, topic: str, event: LiveEvent) -> None:
        for listener in tuple(self._listeners.get(topic, ())):
            try:
                listener(event)
            except Exception:
                log.exception("live listener on %s failed", topic)

    def subscribe(self, topic: str, listener: LiveListener) -> Callable[[], None]:
        self._listeners.setdefault(topic, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(topic)
            if listeners is None or listener not in listeners:
                return
            listeners.remove(listener)
            if not listeners:
                del self._listeners[topic]

        return unsubscribe

    async def synced(self) -> None:
        return None  # subscriptions take effect at once in one process

    @property
    def topics(self) -> int:
        """Topics with listeners (for tests: nothing leaks)."""
        return len(self._listeners)
