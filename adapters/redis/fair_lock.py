"""A fair (first come, first served) lease lock over Redis, shared by every
process of the service: the conversation locks (locks.py).

How it works (the scripts are in lock_scripts.py):
- A waiter's first attempt takes a ticket: it joins the lock's queue, a
  sorted set ordered by a per-lock counter, so the order is the order in
  which the attempts reached Redis, whichever process made them.
- The lock is granted only to the head of the queue, and only when it is
  free; the grant sets the owner key with the lease as its expiry.
- While held, a background task renews the lease every third of it. A holder
  that stops renewing (crashed, or its event loop stalled) loses the lock
  when the lease runs out, and the next waiter gets it with a higher
  fencing token, which the stores use to refuse the stalled holder's writes.
- Release and renewal compare the owner value first (compare-and-delete in
  Lua), so a holder that lost the lock can never free its successor's.
- A waiter that dies does not block the queue: every poll refreshes the
  waiter's deadline in a second sorted set, and any attempt drops waiters
  whose deadline passed. A waiter that times out leaves at once.
- A waiter whose poll fails (Redis error, breaker open) or is cancelled
  leaves in the background, by its waiter id: LEAVE takes it out of the
  queue and hands back a grant it may have won without hearing the answer
  (a reply lost with the connection), so neither a ghost in the queue nor a
  grant nobody knows of holds the lock for a waiter TTL or a lease.
- A release outlives a cancelled holder: a holder cancelled during its
  release (a deadline at the end of its work) hands it to the background,
  which sends it again, so the lock is still freed at once.
- A hold's renewal is a timer until the first renewal is due (a third of
  the lease); only a hold that lasts that long gets a renewing task.
- Polls go through the shared circuit breaker (breaker.py): while Redis is
  known to be failing they fail fast. Renewals and releases are always
  tried (when the breaker is open the release is handed to the background
  instead of making the caller wait for a stalled Redis).

Waiting is polling with a short exponential backoff (5 ms up to 50 ms), not
a pub/sub wake-up. Polling holds no connection between attempts (a
subscription or a BLPOP would take one connection per waiter out of a
bounded pool), cannot miss a notification (pub/sub is fire-and-forget, so a
lost release message would leave a waiter asleep), and doubles as the
waiter's heartbeat. Its cost is a handoff delay of at most the backoff cap
between processes; inside one process a release wakes the local waiters of
that key at once, so the common handoff has no delay at all.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from adapters.redis import lock_scripts, script_runner
from adapters.redis.background import BoundedBackground
from adapters.redis.breaker import CircuitBreaker
from adapters.redis.client import hash_tagged
from adapters.redis.errors import coordination_errors
from chat_service.ports import CoordinationUnavailable, LockLease, LockTimeout

log = logging.getLogger(__name__)

# How long the last fencing token outlives the lock's use. Tokens are floored
# by Redis's clock anyway; the counter only has to cover grants made within
# the same microsecond, and a clock stepped back by less than this.
_FENCE_TTL_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class LockTimings:
    """Seconds. The defaults suit a conversation lock held across an engine
    call (the renewal, not the lease, bounds how long it may be held)."""

    lease: float = 10.0
    # None: a third of the lease. Larger than the lease simulates a holder
    # that stalls (tests).
    renew_interval: float | None = None
    # A waiter that has not polled for this long counts as dead.
    waiter_ttl: float = 3.0
    min_poll: float = 0.005
    max_poll: float = 0.05

    def __post_init__(self) -> None:
        if self.max_poll * 4 > self.waiter_ttl:
            raise ValueError("waiter_ttl must leave room for several polls")


@dataclass(frozen=True, slots=True)
class _LockKeys:
    owner: str
    queue: str
    alive: str
    tickets: str
    fence: str

    @classmethod
    def of(cls, base: str) -> _LockKeys:
        return cls(*(f"{base}:{part}" for part in ("owner", "queue", "alive", "tickets", "fence")))


class _LocalReleases:
    """Wakes this process's waiters of a key when a holder here releases it."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, int] = {}

    def released(self, key: str) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    async def wait(self, key: str, timeout: float) -> bool:
        """Whether a release woke us before `timeout`."""
        event = self._events.setdefault(key, asyncio.Event())
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters[key] -= 1
            if self._waiters[key] == 0:
                del self._waiters[key]
                if self._events.get(key) is event:
                    del self._events[key]


class RedisFairLocks:
    """Fair lease locks named by string, under `<prefix><namespace>:`; every
    grant carries a fencing token."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        namespace: str,
        timings: LockTimings,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._redis = redis
        self._breaker = breaker or CircuitBreaker()
        self._prefix = prefix
        self._namespace = namespace
        self._timings = timings
        # Through the client's queue (script_runner.py): batched under load,
        # and sent in order, which a waiter's LEAVE after its ACQUIRE needs.
        scripts = script_runner.for_client(redis)
        self._acquire = scripts.register(lock_scripts.ACQUIRE)
        self._renew = scripts.register(lock_scripts.RENEW)
        self._release = scripts.register(lock_scripts.RELEASE)
        self._leave = scripts.register(lock_scripts.LEAVE)
        self._local = _LocalReleases()
        # Waiter ids: unique across processes by the prefix, within this one
        # by the counter (no random bytes, a system call, per hold).
        self._waiter_prefix = f"{uuid.uuid4().hex}-"
        self._waiters = itertools.count(1)
        # Leaves and releases that outlive their caller (background.py).
        self._background = BoundedBackground()

    @asynccontextmanager
    async def hold(self, name: str, *, timeout: float) -> AsyncIterator[LockLease]:
        """Hold lock `name`; LockTimeout after `timeout` seconds in the queue,
        CoordinationUnavailable when Redis fails."""
        keys = _LockKeys.of(hash_tagged(self._prefix, self._namespace, name))
        waiter = f"{self._waiter_prefix}{next(self._waiters):x}"
        token = await self._wait_for_grant(name, keys, waiter, timeout)
        owner_value = f"{waiter} {token}"
        renewal = _Renewal(self._timings, lambda: self._keep_renewing(name, keys, owner_value))
        try:
            yield LockLease(key=name, fencing_token=token)
        finally:
            # Not awaited: waiting for it could swallow a cancellation of this
            # task. A renewal still in flight is harmless: it extends the
            # lease only while the owner value is still ours.
            renewal.stop()
            await self._release_soon(name, keys, owner_value)

    async def waiting(self, name: str) -> int:
        """How many waiters are queued for `name` (live or not yet expired)."""
        keys = _LockKeys.of(hash_tagged(self._prefix, self._namespace, name))
        with coordination_errors(f"queue of {name}", self._breaker):
            return int(await self._redis.zcard(keys.queue))

    async def _wait_for_grant(self, name: str, keys: _LockKeys, waiter: str, timeout: float) -> int:
        timings = self._timings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        args = (
            waiter,
            _ms(timings.lease),
            _ms(timings.waiter_ttl),
            _FENCE_TTL_MS,
        )
        delay = timings.min_poll
        tried = False  # whether a poll may have reached Redis (and queued us)
        try:
            while True:
                with coordination_errors(f"acquire {name}", self._breaker):
                    tried = True
                    token = await self._acquire(keys=_acquire_keys(keys), args=args)
                if token is not None:
                    return int(token)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise LockTimeout(f"lock {name!r} not granted within {timeout:g}s")
                jittered = delay * random.uniform(0.8, 1.2)  # noqa: S311 - not security
                if await self._local.wait(name, min(jittered, remaining)):
                    delay = timings.min_poll
                else:
                    delay = min(delay * 2, timings.max_poll)
        except LockTimeout:
            await self._leave_queue(name, keys, waiter)
            raise
        except (CoordinationUnavailable, asyncio.CancelledError):
            # Leave in the background: a cancelled caller cannot await without
            # swallowing its cancellation, and a failed one should not wait
            # on a failing Redis again. The entry would expire after
            # waiter_ttl, a grant whose reply was lost after a lease: this
            # frees them now.
            if tried:
                self._background.spawn(
                    self._leave_queue(name, keys, waiter), f"leave queue of {name}"
                )
            raise

    async def _leave_queue(self, name: str, keys: _LockKeys, waiter: str) -> None:
        try:
            with coordination_errors(f"leave queue of {name}", self._breaker, gated=False):
                await self._leave(keys=[keys.owner, keys.queue, keys.alive], args=[waiter])
        except CoordinationUnavailable as error:
            log.warning("%s; the waiter's entry expires on its own", error)

    async def _keep_renewing(self, name: str, keys: _LockKeys, owner_value: str) -> None:
        """Renews now, then every interval (started an interval into the hold)."""
        timings = self._timings
        interval = _renew_interval(timings)
        first = True
        while True:
            if not first:
                await asyncio.sleep(interval)
            first = False
            try:
                with coordination_errors(f"renew {name}", self._breaker, gated=False):
                    renewed = await self._renew(
                        keys=[keys.owner], args=[owner_value, _ms(timings.lease)]
                    )
            except CoordinationUnavailable as error:
                # Try again at the next tick: two more chances within the lease.
                log.warning("%s; retrying", error)
                continue
            if not renewed:
                # Nothing else to do from here: the holder's work goes on, and
                # its writes are refused by fencing token if it is too late.
                log.warning("lock %s was lost: its lease ran out before renewal", name)
                return

    async def _release_soon(self, name: str, keys: _LockKeys, owner_value: str) -> None:
        if self._breaker.state != "closed":
            # Redis failed just now: do not hold the caller for it.
            self._background.spawn(self._give_back(name, keys, owner_value), f"release {name}")
            return
        try:
            await self._give_back(name, keys, owner_value)
        except asyncio.CancelledError:
            # The holder was cancelled (a deadline) with its release under
            # way. A second one from the background makes sure the lock is
            # freed at once, whatever became of the first (a release is a
            # compare-and-delete: twice does no harm).
            self._background.spawn(self._give_back(name, keys, owner_value), f"release {name}")
            raise

    async def _give_back(self, name: str, keys: _LockKeys, owner_value: str) -> None:
        # A failed release is logged, not raised: the work inside the lock is
        # done (and stored), and the lease frees the lock on its own.
        try:
            with coordination_errors(f"release {name}", self._breaker, gated=False):
                await self._release(keys=[keys.owner], args=[owner_value])
        except CoordinationUnavailable as error:
            log.warning("%s; the lease will expire on its own", error)
        finally:
            self._local.released(name)


class _Renewal:
    """A hold's renewals: a timer until the first is due, then a task.

    Most holds end well within a renewal interval (a third of the lease), so
    a hold costs a timer, not a task that starts, sleeps and is cancelled.
    """

    __slots__ = ("_handle", "_renewing", "_task")

    def __init__(
        self, timings: LockTimings, renewing: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        self._renewing = renewing
        self._task: asyncio.Task[None] | None = None
        self._handle = asyncio.get_running_loop().call_later(_renew_interval(timings), self._due)

    def _due(self) -> None:
        self._task = asyncio.create_task(self._renewing(), name="renew lock")

    def stop(self) -> None:
        self._handle.cancel()
        if self._task is not None:
            self._task.cancel()


def _renew_interval(timings: LockTimings) -> float:
    return timings.renew_interval or timings.lease / 3


def _acquire_keys(keys: _LockKeys) -> list[str]:
    return [keys.owner, keys.queue, keys.alive, keys.tickets, keys.fence]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
