"""Opaque page tokens."""

from __future__ import annotations

import pytest

from chat_service.domain.errors import InvalidArgument
from chat_service.pipeline.conversations import ConversationQueries
from chat_service.pipeline.page_tokens import decode_token, encode_token, query_digest
from tests.builders import create_change, make_conversation
from tests.fakes import InMemoryStore


def test_round_trip() -> None:
    digest = query_digest("messages", "c-1", False)
    token = encode_token({"s": 42}, digest=digest)

    assert decode_token(token, digest=digest) == {"s": 42}
    assert "=" not in token


def test_token_for_other_parameters_is_refused() -> None:
    token = encode_token({"s": 42}, digest=query_digest("messages", "c-1", False))

    with pytest.raises(InvalidArgument) as caught:
        decode_token(token, digest=query_digest("messages", "c-1", True))
    assert caught.value.violations[0].field == "page_token"


@pytest.mark.parametrize("token", ["garbage", "!!!", "e30", "eyJ2IjoyfQ", "bm90IGpzb24"])
def test_garbage_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_token(token, digest="d")
    assert caught.value.violations[0].field == "page_token"


@pytest.mark.parametrize("sequence", [2**70, -1, "12", True, 1.5])
async def test_a_forged_list_messages_token_is_invalid_argument(sequence: object) -> None:
    store = InMemoryStore()
    conversation = make_conversation()
    await store.write(create_change(conversation))
    queries = ConversationQueries(store)
    digest = query_digest("messages", conversation.conversation_id, False)
    forged = encode_token({"s": sequence}, digest=digest)  # type: ignore[dict-item]

    with pytest.raises(InvalidArgument) as refused:
        await queries.list_messages(
            conversation.tenant_id,
            conversation.conversation_id,
            page_size=10,
            page_token=forged,
            descending=False,
        )
    assert refused.value.violations[0].field == "page_token"
