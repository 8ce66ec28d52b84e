"""Opaque page tokens."""

from __future__ import annotations

import pytest

from chat_service.domain.errors import InvalidArgument
from chat_service.pipeline.page_tokens import decode_token, encode_token, query_digest


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
