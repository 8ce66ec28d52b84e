"""The outbox's rules, shared by the stores; each reads and writes its rows
its own way and asks these which ones.

The outbox is also the event log, read by position, so both claims (what
the relay publishes next) and retention (what it deletes) work from the
head of the log and stop at the first row they may not take: a relay never
publishes an event before an earlier one, and a reader never finds a hole
in the log, only a head that moved (EventsPruned).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from chat_service.ports import EventsPruned


class Lease(NamedTuple):
    """Who holds an unpublished row, and until when (epoch microseconds)."""

    claimed_by: str | None
    claimed_until: int | None


class HeadRow(NamedTuple):
    """A row at the head of the log, as retention sees it."""

    position: int
    published: bool
    # When it was published; None when not known (a row marked by an earlier
    # version of a store): such a row is pruned by count only.
    published_us: int | None


def claimable_count(head: Iterable[Lease], owner: str, now: int) -> int:
    """How many of the oldest unpublished rows (`head`, in position order)
    `owner` may claim: the run up to the first one another owner holds on a
    live lease (at the head: none, another relay is publishing them)."""
    count = 0
    for lease in head:
        holder = lease.claimed_by
        if holder is not None and holder != owner and (lease.claimed_until or 0) > now:
            break
        count += 1
    return count


def prune_reach(
    head: Iterable[HeadRow], *, published_before: int, last_position: int, keep_last: int
) -> int | None:
    """The highest position retention deletes through (None: nothing).

    From the oldest row (`head`, in position order), while every row is
    published, and either published before `published_before` or beyond
    the newest `keep_last` positions of the log (`last_position` being its
    end). An unpublished row ends the reach: the relay still needs it.
    """
    kept_from = last_position - max(keep_last, 0)
    through = None
    for row in head:
        if not row.published:
            break
        old = row.published_us is not None and row.published_us < published_before
        if not old and row.position > kept_from:
            break
        through = row.position
    return through


def refuse_pruned(after_position: int, pruned_through: int) -> None:
    """A read of the log after `after_position` when retention deleted it
    through `pruned_through` may have missed events: it is refused.
    (`pruned_through` is read after the rows: a pruning records its reach
    before it deletes, so one that removed any of them is seen.)"""
    if after_position < pruned_through:
        raise EventsPruned(after_position, pruned_through)
