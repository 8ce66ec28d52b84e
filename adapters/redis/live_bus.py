"""LiveBus over Redis pub/sub: live events reach listeners in every process.

Publishing: `publish` puts the event on a bounded in-memory queue and
returns; one background task sends queued events to Redis in pipelined
batches, in order. When the queue is full (Redis slow or down) the event is
dropped and counted: live events are best effort, and every listener
recovers what it missed from the store.

Listening: the listeners of a topic live in this process; the bus keeps one
Redis channel subscription per topic that has listeners, on one shared
PubSub connection read by one background task, which decodes each message
once and calls the topic's listeners. An event published here comes back
through Redis like any other, so local listeners hear it exactly once.

Subscribing is synchronous (the port's contract) while SUBSCRIBE takes a
round trip: an event published between `subscribe()` and Redis confirming
the subscription is not heard. `synced()` waits until every subscription
is confirmed, for callers (and tests) that must not miss anything.

Outages: the reader reconnects with backoff and resubscribes every topic
that still has listeners; the publisher drops what it cannot send and backs
off. Neither ever raises into the service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from contextlib import suppress

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from adapters.redis import script_runner
from adapters.redis.client import DEFAULT_PREFIX
from chat_service.domain.event_codec import live_event_from_dict, live_event_to_dict
from chat_service.domain.live import LiveEvent
from chat_service.ports import LiveListener

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 5.0  # seconds close() waits for its loops to stop
_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 2.0


class RedisLiveBus:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        queue_size: int = 10_000,
        batch_size: int = 256,
        ping_interval: float = 5.0,
    ) -> None:
        self._redis = redis
        self._commands = script_runner.for_client(redis)
        self._channel_prefix = f"{prefix}live:"
        self._batch_size = batch_size
        self._ping_interval = ping_interval
        self._outbox: asyncio.Queue[tuple[str, LiveEvent]] = asyncio.Queue(queue_size)
        self._listeners: dict[str, list[LiveListener]] = {}
        self._wanted_changed = asyncio.Event()
        self._sent: set[str] = set()  # channels SUBSCRIBE was sent for
        self._confirmed: set[str] = set()  # channels Redis confirmed
        self._confirmations = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._stopping = False
        self._dropped = 0
        self._last_drop_log = 0.0

    # ----------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError("the live bus is started already")
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="live bus publisher"),
            asyncio.create_task(self._subscription_loop(), name="live bus subscriber"),
        ]

    async def close(self, *, flush_timeout: float = 1.0) -> None:
        """Sends what is queued (for up to `flush_timeout`), then stops. The
        Redis client is the caller's to close."""
        self._closed = True
        if self._tasks:
            try:
                async with asyncio.timeout(flush_timeout):
                    await self._outbox.join()
            except TimeoutError:
                log.warning("live bus closed with %d events unsent", self._outbox.qsize())
        # Then the loops end: cancelled, and told to, since a cancellation
        # can be lost (Python 3.11's asyncio.wait_for inside redis-py's
        # connect can swallow one that races a connection error).
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        # Bounded: a loop stuck in a call that ignores cancellation must not
        # hold up shutdown (it goes with the process).
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=_CLOSE_TIMEOUT)
            for task in stuck:
                log.error("%s did not stop when cancelled", task.get_name())
        self._tasks = []

    # ------------------------------------------------------------- LiveBus

    def publish(self, topic: str, event: LiveEvent) -> None:
        if self._closed:
            self._drop(1, "the bus is closed")
            return
        try:
            self._outbox.put_nowait((topic, event))
        except asyncio.QueueFull:
            self._drop(1, "the publish queue is full")

    def subscribe(self, topic: str, listener: LiveListener) -> Callable[[], None]:
        listeners = self._listeners.setdefault(topic, [])
        listeners.append(listener)
        if len(listeners) == 1:
            self._wanted_changed.set()

        def unsubscribe() -> None:
            listeners = self._listeners.get(topic)
            if listeners is None or listener not in listeners:
                return
            listeners.remove(listener)
            if not listeners:
                del self._listeners[topic]
                self._wanted_changed.set()

        return unsubscribe

    # ---------------------------------------------------------- inspection

    async def synced(self) -> None:
        """Returns once Redis has confirmed a subscription for every topic
        with listeners (waits through an outage)."""
        async with self._confirmations:
            await self._confirmations.wait_for(lambda: self.listening)

    @property
    def listening(self) -> bool:
        """Whether every topic with listeners has a confirmed subscription
        (false from when the reader notices an outage until it resubscribed)."""
        return self._wanted() <= self._confirmed

    @property
    def dropped(self) -> int:
        """Events not delivered to Redis (queue full, Redis down, closed)."""
        return self._dropped

    @property
    def topics(self) -> int:
        """Topics with listeners (for tests: nothing leaks)."""
        return len(self._listeners)

    # ---------------------------------------------------------- publishing

    async def _publish_loop(self) -> None:
        backoff = _MIN_BACKOFF
        while not self._stopping:
            batch = [await self._outbox.get()]
            while len(batch) < self._batch_size and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                await self._send(batch)
                backoff = _MIN_BACKOFF
            except (RedisError, OSError) as error:
                self._drop(len(batch), f"redis: {error}")
                # Not a busy loop while Redis is down; the queue fills, then drops.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            finally:
                for _ in batch:
                    self._outbox.task_done()

    async def _send(self, batch: list[tuple[str, LiveEvent]]) -> None:
        # Through the client's command queue (script_runner.py), in the same
        # round trips as the locks' and caches' scripts under load. Submitted
        # in one step, so they go in one batch, and are answered together.
        sent: list[asyncio.Future[object]] = []
        for topic, event in batch:
            try:
                payload = _encode(event)
            except (TypeError, ValueError):
                log.exception("live event on %s cannot be encoded; dropped", topic)
                self._dropped += 1
                continue
            sent.append(self._commands.submit("PUBLISH", self._channel_prefix + topic, payload))
        if not sent:
            return
        await asyncio.wait(sent)
        # Every outcome retrieved (none is left to be logged as unobserved);
        # a failure fails the batch, as a failed pipeline did.
        errors = [publish.exception() for publish in sent if not publish.cancelled()]
        failed = next((error for error in errors if error is not None), None)
        if failed is not None:
            raise failed

    def _drop(self, count: int, why: str) -> None:
        self._dropped += count
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:  # one line per 10 s, not per event
            self._last_drop_log = now
            log.warning("live events dropped (%s); %d so far", why, self._dropped)

    # ----------------------------------------------------------- listening

    def _wanted(self) -> set[str]:
        return {self._channel_prefix + topic for topic in self._listeners}

    async def _subscription_loop(self) -> None:
        backoff = _MIN_BACKOFF
        while not self._stopping:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.ping()  # connects; its PONG is read like any message
                backoff = _MIN_BACKOFF
                self._wanted_changed.set()  # (re)subscribe everything wanted
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._read(pubsub))
                    group.create_task(self._sync_subscriptions(pubsub))
            except* (RedisError, OSError) as errors:
                log.warning("live bus lost redis (%s); reconnecting", errors.exceptions[0])
            except* Exception:
                log.exception("live bus subscriber failed; reconnecting")
            finally:
                self._sent.clear()
                self._confirmed.clear()
                with suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated upstream
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _sync_subscriptions(self, pubsub: PubSub) -> None:
        """Makes the channels subscribed on `pubsub` those with listeners."""
        while True:
            await self._wanted_changed.wait()
            self._wanted_changed.clear()
            wanted = self._wanted()
            added, removed = wanted - self._sent, self._sent - wanted
            if added:
                # Marked sent before the await: the reader may take Redis's
                # confirmation while subscribe() is still returning, and
                # drops a confirmation of a channel it does not know as sent
                # (synced() then waited for ever: seen under load in CI).
                self._sent |= added
                await pubsub.subscribe(*sorted(added))
            if removed:
                self._sent -= removed
                self._confirmed -= removed
                await pubsub.unsubscribe(*sorted(removed))

    async def _read(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=min(1.0, self._ping_interval))
            now = loop.time()
            if message is not None:
                last_heard, pinged = now, False
                await self._handle(message)
            elif now - last_heard >= 2 * self._ping_interval and pinged:
                raise RedisConnectionError("no answer to PING on the pub/sub connection")
            elif now - last_heard >= self._ping_interval and not pinged:
                # Silence may be a dead peer that never closed the socket.
                await pubsub.ping()
                pinged = True

    async def _handle(self, message: dict[str, object]) -> None:
        kind = message["type"]
        channel = _text(message["channel"])
        if kind == "message":
            self._dispatch(channel, message["data"])
        elif kind in ("subscribe", "unsubscribe"):
            async with self._confirmations:
                if kind == "subscribe" and channel in self._sent:
                    self._confirmed.add(channel)
                elif kind == "unsubscribe":
                    self._confirmed.discard(channel)
                self._confirmations.notify_all()

    def _dispatch(self, channel: str, data: object) -> None:
        listeners = self._listeners.get(channel.removeprefix(self._channel_prefix))
        if not listeners:
            return  # unsubscribed while the message was on its way
        try:
            event = live_event_from_dict(json.loads(_text(data)))
        except (ValueError, KeyError, TypeError):
            log.warning("undecodable live event on %s dropped", channel, exc_info=True)
            return
        for listener in tuple(listeners):
            try:
                listener(event)
            except Exception:
                log.exception("live listener on %s failed", channel)


def _encode(event: LiveEvent) -> bytes:
    return json.dumps(live_event_to_dict(event), separators=(",", ":"), ensure_ascii=False).encode()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)
