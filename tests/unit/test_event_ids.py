"""Event ids (domain/events.py `_new_id`): random version-4 UUIDs made
without a system call per id, still unique in every process, forked ones
included (consumers deduplicate by event id)."""

from __future__ import annotations

import os
import uuid

from chat_service.domain import events


def test_event_ids_are_version_4_uuids_in_their_canonical_text() -> None:
    ids = [events._new_id() for _ in range(2_000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    events._new_id()  # the generator exists before the fork
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only writes and leaves
        try:
            os.write(writing, events._new_id().encode())
        finally:
            os._exit(0)
    os.close(writing)
    try:
        from_child = os.read(reading, 64).decode()
    finally:
        os.close(reading)
        os.waitpid(child, 0)
    # Without a fresh seed in the child, its next id is the parent's next id.
    assert uuid.UUID(from_child).version == 4
    assert from_child != events._new_id()
