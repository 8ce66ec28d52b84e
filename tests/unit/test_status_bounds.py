"""Every status fits gRPC's trailers, whatever the error holds (grpc_api/errors.py).

A status travels in trailing metadata (grpc-message and
grpc-status-details-bin), which gRPC limits to 8 KiB by default; one that
does not fit reaches the client as RESOURCE_EXHAUSTED without details.
"""

from __future__ import annotations

from typing import Any

from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_status import rpc_status

from chat_service.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument
from chat_service.grpc_api.errors import OMITTED_VIOLATIONS, to_status

DOMAIN = "chat-service"
# What the trailers may take, with room to spare under the 8 KiB default.
TRAILER_BUDGET = 6 * 1024


def trailer_bytes(status: Any) -> int:
    """The size of the trailing metadata grpc sends for `status`."""
    grpc_status = rpc_status.to_status(status)
    sizes = [len(key) + len(value) for key, value in grpc_status.trailing_metadata]
    # grpc-message is percent-encoded: count every non-ASCII byte three times.
    message = grpc_status.details.encode()
    sizes.append(len(message) + 2 * sum(1 for byte in message if byte >= 0x80))
    return sum(sizes)


def unpack(status: Any) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest]:
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    status.details[0].Unpack(info)
    status.details[1].Unpack(bad)
    return info, bad


def test_huge_texts_are_cut() -> None:
    huge = "\u00e9" * 1_000_000  # two UTF-8 bytes each
    error = InvalidArgument([FieldViolation("f" * 100_000, huge)], huge)

    status = to_status(error, domain=DOMAIN)

    assert trailer_bytes(status) < TRAILER_BUDGET
    assert status.message.endswith("...")
    _, bad = unpack(status)
    (violation,) = bad.field_violations
    assert violation.field.startswith("fff")
    assert violation.field.endswith("...")
    assert violation.description.startswith("\u00e9\u00e9")
    assert violation.description.endswith("...")


def test_many_violations_are_kept_in_order_up_to_a_budget_and_counted() -> None:
    violations = [FieldViolation(f"channels[{i}]", f"unknown channel {i}") for i in range(100_000)]

    status = to_status(InvalidArgument(violations), domain=DOMAIN)

    assert trailer_bytes(status) < TRAILER_BUDGET
    info, bad = unpack(status)
    kept = [violation.field for violation in bad.field_violations]
    assert kept == [f"channels[{i}]" for i in range(len(kept))]
    assert len(kept) > 20
    assert info.metadata[OMITTED_VIOLATIONS] == str(100_000 - len(kept))


def test_a_usual_error_is_left_whole() -> None:
    violations = [FieldViolation(f"field_{i}", "must be at most 255 characters") for i in range(9)]

    status = to_status(InvalidArgument(violations), domain=DOMAIN)

    info, bad = unpack(status)
    assert [v.field for v in bad.field_violations] == [f"field_{i}" for i in range(9)]
    assert OMITTED_VIOLATIONS not in info.metadata
    assert status.message == "invalid request: " + ", ".join(f"field_{i}" for i in range(9))


def test_metadata_values_are_cut() -> None:
    error = FailedPrecondition("closed", metadata={"conversation_id": "c" * 100_000})

    status = to_status(error, domain=DOMAIN)

    assert trailer_bytes(status) < TRAILER_BUDGET
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.metadata["conversation_id"].startswith("ccc")
