"""Outbox positions for journalled writes, and how far the log is readable.

The outbox is also the event log, read by position (live tails, resumable
watches), so a reader must never see a position before every lower one is
settled: written, or known never to be. With transactions, the counter is
incremented inside the transaction that writes the events, and commits
settle positions in order by themselves (store.py). Without, positions are
taken before the events are written, so the counter document also lists
the positions in flight, each with the write that holds it:

    {_id: "outbox_position", value: 42,
     in_flight: {<token>: {start, until, conversation_id | message_key}}}

A block is taken by one compare-and-set of `value` that also adds its
entry, so no position is ever taken without being listed. Its write removes
the entry once its events are in the outbox, or once it gives up. A write
that died leaves its entry behind: past `until` (its lease), anyone may
settle it (recovery.py does). Readers see positions up to just below the
lowest one in flight: the event log's readers, and the relay's claims, so
that no event is published before one with a lower position (a delivery
update takes its position without the conversation's lock, so even one
conversation's events could otherwise leave out of order).

Concurrent writers race for the compare-and-set; losers retry at once with
a jittered pause. That serializes taking positions (not writing them), on a
standalone server, which is a small deployment's or a test's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson.int64 import Int64
from pymongo.read_concern import ReadConcern

from adapters.mongo.documents import OUTBOX_POSITION
from adapters.mongo.schema import Collection
from chat_service.ports import StoreUnavailable

_PAUSE_MAX = 0.005


@dataclass(frozen=True, slots=True)
class Counter:
    value: int  # the highest position ever taken
    # By the token of the write holding them. A map, not an array: nx-27017
    # stores documents $push-ed into an array as strings.
    in_flight: Mapping[str, Mapping[str, Any]]

    @property
    def settled_through(self) -> int:
        """Every position up to this one is written or never will be."""
        starts = (int(entry["start"]) for entry in self.in_flight.values())
        return min(starts, default=self.value + 1) - 1


class PositionRegistry:
    def __init__(self, counters: Collection, *, time_limit: float) -> None:
        self._counters = counters
        # How far the log is readable is read at majority, as the log itself
        # is (event_log.py): a position settled only on a primary about to be
        # rolled back must not let readers past it. Taking positions reads
        # the primary's latest (a stale value would only fail its
        # compare-and-set).
        self._settled_view = counters.with_options(read_concern=ReadConcern("majority"))
        self._time_limit = time_limit

    async def take(self, count: int, *, token: str, until: int, owner: Mapping[str, Any]) -> range:
        """`count` new positions for the write `token`, listed as in flight
        until `release(token)`; `owner` says where the write journals them."""
        started = time.monotonic()
        while True:
            counter = await self.read()
            start = counter.value + 1
            entry = {"start": start, "until": until, **owner}
            taken = await self._counters.update_one(
                {"_id": OUTBOX_POSITION, "value": counter.value},
                {"$set": {"value": Int64(counter.value + count), f"in_flight.{token}": entry}},
            )
            if taken.matched_count == 1:
                return range(start, start + count)
            if time.monotonic() - started > self._time_limit:
                raise StoreUnavailable("outbox positions: the counter stayed contended")
            await asyncio.sleep(random.random() * _PAUSE_MAX)  # noqa: S311

    async def release(self, token: str) -> None:
        """The positions of this write are settled (written, or void)."""
        await self._counters.update_one(
            {"_id": OUTBOX_POSITION}, {"$unset": {f"in_flight.{token}": ""}}
        )

    async def read(self, *, majority: bool = False) -> Counter:
        counters = self._settled_view if majority else self._counters
        found = await counters.find_one({"_id": OUTBOX_POSITION})
        if found is None:  # made at open; only an operator can have removed it
            raise RuntimeError("the outbox position counter is missing; reopen the store")
        return Counter(int(found.get("value", 0)), dict(found.get("in_flight", {})))
