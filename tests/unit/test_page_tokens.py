"""Opaque, signed page and resume tokens."""

from __future__ import annotations

import base64
import json

import pytest

from chat_service.domain.errors import InvalidArgument
from chat_service.pipeline.conversations import ConversationQueries
from chat_service.pipeline.page_tokens import (
    MAX_TOKEN_LENGTH,
    PageTokens,
    query_digest,
)
from chat_service.ports import ConversationQuery
from tests.builders import create_change, make_conversation
from tests.fakes import InMemoryStore

KEY = b"k" * 32
TOKENS = PageTokens(KEY)
DIGEST = query_digest("messages", "tenant-a", "c-1", False)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _refusal(call: object, field: str = "page_token") -> str:
    assert callable(call)
    with pytest.raises(InvalidArgument) as caught:
        call()
    [violation] = caught.value.violations
    assert violation.field == field
    assert len(violation.description) < 200  # never the token itself
    return violation.description


def test_round_trip() -> None:
    token = TOKENS.encode({"s": 42}, digest=DIGEST)

    assert TOKENS.decode(token, digest=DIGEST) == {"s": 42}
    assert "=" not in token
    assert len(token) < 200


def test_a_token_is_valid_in_every_process_with_the_same_key() -> None:
    token = TOKENS.encode({"s": 42}, digest=DIGEST)

    assert PageTokens(KEY).decode(token, digest=query_digest("messages", "tenant-a", "c-1", False))
    _refusal(lambda: PageTokens(b"o" * 32).decode(token, digest=DIGEST))


def test_a_token_for_other_parameters_is_refused() -> None:
    token = TOKENS.encode({"s": 42}, digest=DIGEST)

    other = query_digest("messages", "tenant-a", "c-1", True)
    assert "other parameters" in _refusal(lambda: TOKENS.decode(token, digest=other))


def test_another_tenants_token_is_refused() -> None:
    token = TOKENS.encode({"s": 42}, digest=DIGEST)

    stranger = query_digest("messages", "tenant-b", "c-1", False)
    _refusal(lambda: TOKENS.decode(token, digest=stranger))


def test_a_tampered_token_is_refused() -> None:
    token = TOKENS.encode({"s": 42}, digest=DIGEST)
    body, mac = token.split(".")
    forged_body = _b64(json.dumps({"v": 2, "q": DIGEST, "p": {"s": 1}}).encode())
    flipped_mac = mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB")

    for forged in (f"{forged_body}.{mac}", f"{body}.{flipped_mac}", f"{body}.", body):
        _refusal(lambda forged=forged: TOKENS.decode(forged, digest=DIGEST))


NESTED = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!",
        "e30",
        "a.b.c",
        "é.é",
        # The first, unsigned version: base64 of JSON.
        _b64(json.dumps({"v": 1, "q": DIGEST, "p": {"s": 1}}).encode()),
        # base64 of [[[[...]]]]: json.loads raised RecursionError (INTERNAL).
        _b64(NESTED.encode()),
        _b64(NESTED.encode()) + "." + _b64(b"x" * 32),
    ],
    ids=[
        "word",
        "punctuation",
        "empty-json",
        "three-parts",
        "non-ascii",
        "v1",
        "nested",
        "nested-2",
    ],
)
def test_garbage_is_invalid_argument(token: str) -> None:
    _refusal(lambda: TOKENS.decode(token, digest=DIGEST))
    _refusal(lambda: TOKENS.resume_position("tenant-a", token), field="resume_token")


def test_a_long_token_is_refused_before_it_is_decoded() -> None:
    valid_looking = _b64(b"x" * MAX_TOKEN_LENGTH) + "." + _b64(b"y" * 32)

    assert "longer" in _refusal(lambda: TOKENS.decode(valid_looking, digest=DIGEST))
    assert "longer" in _refusal(lambda: TOKENS.decode("a" * 10_000_000, digest=DIGEST))


def test_a_signed_body_that_is_no_token_is_still_refused() -> None:
    # Only a leaked key could sign these; decoding refuses them all the same.
    for body in (NESTED.encode()[:600], b"[]", b'{"v":2,"q":"x","p":[]}', b"\xff"):
        token = f"{_b64(body)}.{_b64(TOKENS._mac(body))}"
        _refusal(lambda token=token: TOKENS.decode(token, digest="x"))


def test_resume_tokens_round_trip_per_tenant() -> None:
    token = TOKENS.resume_token("tenant-a", 7)

    assert TOKENS.resume_position("tenant-a", token) == 7
    _refusal(lambda: TOKENS.resume_position("tenant-b", token), field="resume_token")
    # Neither a page token as a resume token, nor the reverse.
    page = TOKENS.encode({"p": 7}, digest=DIGEST)
    _refusal(lambda: TOKENS.resume_position("tenant-a", page), field="resume_token")
    _refusal(lambda: TOKENS.decode(token, digest=DIGEST))


@pytest.mark.parametrize("position", [2**63, -1, "7", True, 1.5, None])
def test_a_resume_position_the_stores_cannot_take_is_refused(position: object) -> None:
    token = TOKENS.encode({"p": position}, digest=query_digest("watch", "tenant-a"))  # type: ignore[dict-item]

    _refusal(lambda: TOKENS.resume_position("tenant-a", token), field="resume_token")


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PageTokens(b"short")


@pytest.mark.parametrize("sequence", [2**70, -1, "12", True, 1.5])
async def test_a_list_messages_token_with_an_odd_position_is_invalid_argument(
    sequence: object,
) -> None:
    store = InMemoryStore()
    conversation = make_conversation()
    await store.write(create_change(conversation))
    queries = ConversationQueries(store, tokens=TOKENS)
    digest = query_digest("messages", conversation.tenant_id, conversation.conversation_id, False)
    odd = TOKENS.encode({"s": sequence}, digest=digest)  # type: ignore[dict-item]

    with pytest.raises(InvalidArgument) as refused:
        await queries.list_messages(
            conversation.tenant_id,
            conversation.conversation_id,
            page_size=10,
            page_token=odd,
            descending=False,
        )
    assert refused.value.violations[0].field == "page_token"


@pytest.mark.parametrize(
    "token",
    [_b64(NESTED.encode()), "A" * 100_000, _b64(b'{"v":1,"q":"x","p":{"s":1}}')],
    ids=["nested", "long", "unsigned"],
)
async def test_the_list_queries_answer_a_bad_token_with_invalid_argument(token: str) -> None:
    store = InMemoryStore()
    conversation = make_conversation()
    await store.write(create_change(conversation))
    queries = ConversationQueries(store)

    with pytest.raises(InvalidArgument) as messages:
        await queries.list_messages(
            conversation.tenant_id,
            conversation.conversation_id,
            page_size=10,
            page_token=token,
            descending=False,
        )
    with pytest.raises(InvalidArgument) as conversations:
        await queries.list_conversations(
            conversation.tenant_id, ConversationQuery(), page_size=10, page_token=token
        )
    assert messages.value.violations[0].field == "page_token"
    assert conversations.value.violations[0].field == "page_token"
