"""A store's refusal of the caller's input is the caller's error (pipeline/errors.py)."""

from __future__ import annotations

import pytest

from chat_service.domain.errors import InvalidArgument, ResourceExhausted
from chat_service.pipeline.errors import port_errors
from chat_service.ports import StoreRejected


def test_a_rejected_value_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as raised, port_errors():
        raise StoreRejected("MongoDB (write): Key names must not contain the NULL byte")

    assert raised.value.reason == "STORE_REJECTED_VALUE"
    assert [v.field for v in raised.value.violations] == ["request"]
    # The store's own words (which may quote anything) stay in the log.
    assert "NULL" not in raised.value.message
    assert "NULL" not in raised.value.violations[0].description


def test_a_record_too_large_is_resource_exhausted_and_not_retryable() -> None:
    with pytest.raises(ResourceExhausted) as raised, port_errors():
        raise StoreRejected("MongoDB (write): document too large", too_large=True)

    assert raised.value.reason == "STORE_LIMIT_EXCEEDED"
    assert raised.value.retry_after is None
