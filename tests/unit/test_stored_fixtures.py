"""Documents written before issue 13 (tests/fixtures/stored/) still read.

The JSON files there were written by the hand-written codecs that the
schema-driven one (chat_service/domain/serialization.py) replaced, from the
objects in tests/fixtures/stored/objects.py: the codec's documents, SQLite's
row parameters (JSON columns as the text json.dumps wrote) and MongoDB's
documents (Int64 as plain numbers, BSON dates as {"$date": ...}). Whatever
writes the stored shape must read every one to the same object, and write
the same document again, since SQL and MongoDB queries look at its fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bson.int64 import Int64

from adapters.mongo import documents as mongo
from adapters.sqlite import rows
from chat_service.domain import content_codec, conversation_codec, event_codec
from chat_service.domain.events import DomainEvent
from chat_service.domain.model import Conversation, IdempotencyRecord, Message
from chat_service.domain.serialization import StoredShapeError, from_document
from tests.fixtures.stored import objects

STORED = Path(__file__).parents[1] / "fixtures" / "stored"
STORED_AT = datetime(2026, 12, 2, 13, 0, 2, tzinfo=UTC)


def _read(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((STORED / name).read_text(encoding="utf-8"))
    return loaded


DOCUMENTS = _read("documents.json")
SQLITE_ROWS = _read("sqlite_rows.json")
MONGO_DOCUMENTS = _read("mongo_documents.json")

# (file section, objects, decoder, encoder)
_CODEC_SECTIONS: list[tuple[str, dict[str, Any], Callable[[Any], Any], Callable[[Any], Any]]] = [
    ("contents", objects.CONTENTS, content_codec.content_from_dict, content_codec.content_to_dict),
    (
        "conversations",
        objects.CONVERSATIONS,
        conversation_codec.conversation_from_dict,
        conversation_codec.conversation_to_dict,
    ),
    (
        "messages",
        objects.MESSAGES,
        conversation_codec.message_from_dict,
        conversation_codec.message_to_dict,
    ),
    ("events", objects.EVENTS, event_codec.event_from_dict, event_codec.event_to_dict),
    (
        "records",
        objects.RECORDS,
        conversation_codec.idempotency_record_from_dict,
        conversation_codec.idempotency_record_to_dict,
    ),
]
CODEC_CASES = [
    pytest.param(DOCUMENTS[section][name], value, decode, encode, id=f"{section}: {name}")
    for section, values, decode, encode in _CODEC_SECTIONS
    for name, value in values.items()
] + [
    pytest.param(
        DOCUMENTS["channel_metadata"],
        objects.METADATA,
        conversation_codec.channel_metadata_from_dict,
        conversation_codec.channel_metadata_to_dict,
        id="channel metadata with additional_data",
    ),
    pytest.param(
        DOCUMENTS["state"],
        objects.STATE,
        conversation_codec.conversation_state_from_dict,
        conversation_codec.conversation_state_to_dict,
        id="conversation state",
    ),
]


def test_every_object_has_its_stored_document() -> None:
    """The files cover the objects (a fixture added to objects.py needs its document)."""
    for section, values, _, _ in _CODEC_SECTIONS:
        assert set(DOCUMENTS[section]) == set(values), section
    assert set(SQLITE_ROWS["messages"]) == set(MONGO_DOCUMENTS["messages"]) == set(objects.MESSAGES)


@pytest.mark.parametrize(("document", "value", "decode", "encode"), CODEC_CASES)
def test_codec_documents_read_to_the_same_object(
    document: dict[str, Any], value: object, decode: Callable[[Any], Any], encode: object
) -> None:
    assert decode(document) == value


@pytest.mark.parametrize(("document", "value", "decode", "encode"), CODEC_CASES)
def test_the_codec_writes_the_same_document(
    document: dict[str, Any], value: object, decode: object, encode: Callable[[Any], Any]
) -> None:
    assert encode(value) == document


# -------------------------------------------------------------------- SQLite


def test_an_engine_score_json_cannot_hold_still_reads_back() -> None:
    """NaN from the engine is stored as null in SQLite's JSON text (the
    standard library wrote NaN, which is not JSON), and must not make the
    idempotency record unreadable: a retry would fail instead of replaying."""
    record = objects.RECORDS["bare"]
    scored = dataclasses.replace(
        record,
        result=dataclasses.replace(
            record.result, confidence_scores={"nan": math.nan, "inf": math.inf, "ok": 0.5}
        ),
    )

    row: Any = rows.record_params(scored)  # read back as a row: by column name
    scores = rows.record_from_row(row).result.confidence_scores

    assert math.isnan(scores["nan"])
    assert math.isnan(scores["inf"])
    assert scores["ok"] == 0.5


@pytest.mark.parametrize("name", sorted(objects.CONVERSATIONS))
def test_sqlite_conversation_rows_read(name: str) -> None:
    row = SQLITE_ROWS["conversations"][name]

    assert rows.conversation_from_row(row) == objects.CONVERSATIONS[name]
    assert _json_columns(rows.conversation_params(objects.CONVERSATIONS[name])) == _json_columns(
        row
    )


@pytest.mark.parametrize("name", sorted(objects.MESSAGES))
def test_sqlite_message_rows_read(name: str) -> None:
    row = SQLITE_ROWS["messages"][name]

    assert rows.message_from_row(row) == objects.MESSAGES[name]
    assert _json_columns(rows.message_params(objects.MESSAGES[name])) == _json_columns(row)


@pytest.mark.parametrize("name", sorted(objects.RECORDS))
def test_sqlite_record_rows_read(name: str) -> None:
    row = SQLITE_ROWS["records"][name]

    assert rows.record_from_row(row) == objects.RECORDS[name]
    assert _json_columns(rows.record_params(objects.RECORDS[name])) == _json_columns(row)


@pytest.mark.parametrize("name", sorted(objects.EVENTS))
def test_sqlite_outbox_events_read(name: str) -> None:
    text = SQLITE_ROWS["outbox_events"][name]

    assert event_codec.event_from_dict(rows.load_json(text)) == objects.EVENTS[name]


def _json_columns(params: dict[str, Any]) -> dict[str, Any]:
    """The row with its JSON text columns parsed: the text may differ in
    spelling (a float's digits), never in value; the other columns exactly."""
    parsed = dict(params)
    for column in ("state", "channel_metadata", "content", "result"):
        if column in parsed:
            parsed[column] = json.loads(parsed[column])
    return parsed


# ------------------------------------------------------------------- MongoDB


def _as_read(document: dict[str, Any]) -> dict[str, Any]:
    """A fixture document as the driver hands it back ({"$date": ...} a datetime)."""

    def revive(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"$date"}:
                return datetime.fromisoformat(value["$date"])
            return {key: revive(item) for key, item in value.items()}
        if isinstance(value, list):
            return [revive(item) for item in value]
        return value

    revived: dict[str, Any] = revive(document)
    return revived


@pytest.mark.parametrize("name", sorted(objects.CONVERSATIONS))
def test_mongo_conversation_documents_read(name: str) -> None:
    document = _as_read(MONGO_DOCUMENTS["conversations"][name])
    conversation = objects.CONVERSATIONS[name]

    assert mongo.conversation_from_document(document) == conversation
    assert mongo.conversation_document(conversation, fencing_token=3) == document


@pytest.mark.parametrize("name", sorted(objects.MESSAGES))
def test_mongo_message_documents_read(name: str) -> None:
    document = _as_read(MONGO_DOCUMENTS["messages"][name])

    assert mongo.message_from_document(document) == objects.MESSAGES[name]
    assert mongo.message_document(objects.MESSAGES[name]) == document


@pytest.mark.parametrize("name", sorted(objects.RECORDS))
def test_mongo_record_documents_read(name: str) -> None:
    document = _as_read(MONGO_DOCUMENTS["records"][name])
    record = objects.RECORDS[name]

    assert mongo.record_from_document(document) == record
    assert mongo.record_document(record, stored_at=STORED_AT, version=2) == document


def test_mongo_outbox_documents_read() -> None:
    for position, (name, event) in enumerate(objects.EVENTS.items(), start=1):
        document = _as_read(MONGO_DOCUMENTS["outbox"][name])

        assert mongo.outbox_entry(document).event == event
        assert mongo.outbox_entry(document).position == position
        assert mongo.outbox_document(position, event_codec.event_to_dict(event)) == document
        assert isinstance(mongo.outbox_document(position, {})["position"], Int64)


# -------------------------------------------------------- malformed documents


def _message_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(DOCUMENTS["messages"]["content: image"]))
    document.update(changes)
    return document


MALFORMED: list[tuple[str, type, Any, str]] = [
    ("not an object", Message, ["msg-1"], "expected an object, got list"),
    (
        "missing key",
        Message,
        {k: v for k, v in _message_document().items() if k != "sequence"},
        "sequence: missing",
    ),
    (
        "string for an integer",
        Message,
        _message_document(sequence="12"),
        "sequence: expected an integer",
    ),
    (
        "true for an integer",
        Message,
        _message_document(sequence=True),
        "sequence: expected an integer",
    ),
    (
        "unknown enum value",
        Message,
        _message_document(role="robot"),
        "role: expected one of 'user', 'bot', 'agent', got str 'robot'",
    ),
    (
        "naive time",
        Message,
        _message_document(created_at="2026-12-02T13:00:01"),
        "created_at: expected an ISO-8601 time with an offset",
    ),
    (
        "number for a time",
        Message,
        _message_document(created_at=1796216401),
        "created_at: expected an ISO-8601 time",
    ),
    (
        "deep bad value",
        Message,
        _message_document(content={"type": "image", "media": {"url": 5, "type": "image/png"}}),
        "content.media.url: expected a string, got int 5",
    ),
    (
        "bad list item",
        IdempotencyRecord,
        {
            **DOCUMENTS["records"]["with replies"],
            "result": {
                **DOCUMENTS["records"]["with replies"]["result"],
                "replies": [DOCUMENTS["messages"]["content: text"], {"message_id": "m"}],
            },
        },
        "result.replies[1].tenant_id: missing",
    ),
    (
        "object for a list",
        Message,
        _message_document(content={"type": "text", "buttons": {}}),
        "content.buttons: expected a list",
    ),
    (
        "list for an object",
        Conversation,
        {**DOCUMENTS["conversations"]["full"], "state": []},
        "state: expected an object, got list",
    ),
    (
        "string for JSON data",
        DomainEvent,
        {**DOCUMENTS["events"]["bare"], "metadata": "{}"},
        "metadata: expected an object, got str",
    ),
    (
        "string for a score",
        IdempotencyRecord,
        {
            **DOCUMENTS["records"]["bare"],
            "result": {
                **DOCUMENTS["records"]["bare"]["result"],
                "confidence_scores": {"a": "high"},
            },
        },
        "result.confidence_scores: expected numbers: expected a number, got str 'high'",
    ),
]


@pytest.mark.parametrize(
    ("cls", "document", "message"), [pytest.param(*case[1:], id=case[0]) for case in MALFORMED]
)
def test_a_malformed_document_is_refused_with_where_and_why(
    cls: type, document: Any, message: str
) -> None:
    with pytest.raises(StoredShapeError) as raised:
        from_document(cls, document)

    assert str(raised.value).startswith(f"not a stored {cls.__name__}: {message}")
    assert isinstance(raised.value, ValueError)  # what the stores' callers catch
