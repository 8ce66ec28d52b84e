"""The rules the SQLite and MongoDB stores share (adapters/storage), as pure
functions; the store contract suite runs them through both stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from adapters.storage.outbox import HeadRow, Lease, claimable_count, prune_reach, refuse_pruned
from adapters.storage.times import from_micros, to_micros
from chat_service.ports import EventsPruned

NOW = 1_000_000


def test_a_claim_takes_the_head_up_to_another_owners_live_lease() -> None:
    head = [
        Lease(None, None),  # never claimed
        Lease("me", NOW + 5),  # mine: taken again
        Lease("other", NOW),  # another's lease ran out
        Lease("other", NOW + 1),  # another's, live: the run ends here
        Lease(None, None),
    ]

    assert claimable_count(head, "me", NOW) == 3
    assert claimable_count([Lease("other", NOW + 1), Lease(None, None)], "me", NOW) == 0
    assert claimable_count([], "me", NOW) == 0


def test_retention_stops_at_the_first_unpublished_row() -> None:
    head = [HeadRow(1, True, 10), HeadRow(2, False, None), HeadRow(3, True, 10)]

    assert prune_reach(head, published_before=100, last_position=3, keep_last=0) == 1


def test_retention_keeps_young_rows_within_the_count_and_prunes_old_or_beyond_it() -> None:
    head = [HeadRow(p, True, 50 if p <= 2 else 500) for p in range(1, 7)]

    # Old (1, 2) go whatever the count; young ones only beyond the last 3.
    assert prune_reach(head, published_before=100, last_position=6, keep_last=3) == 3
    assert prune_reach(head, published_before=100, last_position=6, keep_last=10) == 2
    assert prune_reach(head, published_before=0, last_position=6, keep_last=10) is None
    # A negative count keeps nothing by count.
    assert prune_reach(head, published_before=0, last_position=6, keep_last=-1) == 6


def test_a_row_published_at_an_unknown_time_is_pruned_by_count_only() -> None:
    head = [HeadRow(1, True, None), HeadRow(2, True, None)]

    assert prune_reach(head, published_before=10**18, last_position=2, keep_last=2) is None
    assert prune_reach(head, published_before=10**18, last_position=2, keep_last=1) == 1


def test_a_read_from_before_the_pruned_head_is_refused() -> None:
    refuse_pruned(5, 5)
    with pytest.raises(EventsPruned):
        refuse_pruned(4, 5)


def test_times_are_exact_epoch_microseconds_and_must_be_aware() -> None:
    moment = datetime(2026, 11, 25, 8, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))

    assert from_micros(to_micros(moment)) == moment
    assert to_micros(datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == 1
    with pytest.raises(ValueError, match="timezone-aware"):
        to_micros(datetime(2026, 1, 1))
