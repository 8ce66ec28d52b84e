"""What WhatsApp and Messenger share: both are Meta (Graph API) webhooks.

- `verify_signature`: Meta signs every POST with `X-Hub-Signature-256:
  sha256=<hex>`, the HMAC-SHA256 of the raw body keyed by the app secret
  (https://developers.facebook.com/docs/graph-api/webhooks/getting-started/,
  "Validating Payloads"). It is checked over the bytes as received, before
  anything is parsed: a body re-serialized by anyone on the way fails.
- `verify_subscription`: the GET handshake (`hub.mode=subscribe`,
  `hub.verify_token`, `hub.challenge` echoed back; same page, "Verification
  Requests").
- `load_body` and the `Fields` reader: the JSON body as typed values, every
  wrong shape an INVALID_ARGUMENT naming the path in the payload, never a crash.

Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from chat_service.domain.errors import InvalidArgument, PermissionDenied, Unauthenticated

SIGNATURE_HEADER = "x-hub-signature-256"  # gRPC metadata keys are lower case
WEBHOOK_SIGNATURE_INVALID = "WEBHOOK_SIGNATURE_INVALID"
WEBHOOK_VERIFY_TOKEN_MISMATCH = "WEBHOOK_VERIFY_TOKEN_MISMATCH"  # noqa: S105 (a reason)
WEBHOOK_VERIFY_MODE_INVALID = "WEBHOOK_VERIFY_MODE_INVALID"
WEBHOOK_PAYLOAD_INVALID = "WEBHOOK_PAYLOAD_INVALID"

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
# Longer decimal strings are no timestamp (ms since 1970 take 13 digits), and
# past 4300 digits int() raises a ValueError of its own.
_MAX_INTEGER_DIGITS = 20
# Meta sends an int; echoed as text/plain, so keep it short and printable.
_CHALLENGE = re.compile(r"[\x21-\x7e]{1,256}")


@dataclass(frozen=True, slots=True)
class Skipped:
    """A part of a valid payload deliberately not turned into a message or status."""

    path: str  # where in the payload, e.g. entry[0].changes[1]
    reason: str


def verify_signature(raw_body: bytes, header: str | None, app_secret: str) -> None:
    """Raise Unauthenticated unless `header` is Meta's signature of `raw_body`."""
    if not app_secret:
        # An empty key is one anybody can sign with: a misconfigured
        # connection must not accept every body.
        raise _bad_signature("no app secret is configured for this connection")
    if header is None or not header.strip():
        raise _bad_signature("the X-Hub-Signature-256 header is missing")
    match = _SIGNATURE.fullmatch(header.strip())
    if match is None:
        raise _bad_signature("the X-Hub-Signature-256 header is not 'sha256=<64 hex digits>'")
    expected = hmac.new(app_secret.encode(), raw_body, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, bytes.fromhex(match.group(1))):
        raise _bad_signature("the X-Hub-Signature-256 signature does not match the body")


def sign(raw_body: bytes, app_secret: str) -> str:
    """The header value Meta would send (for tests and emulators)."""
    return "sha256=" + hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()


def verify_subscription(
    mode: str | None, token: str | None, challenge: str | None, expected_token: str
) -> str:
    """The challenge to echo (text/plain) when the handshake is Meta's; else PERMISSION_DENIED."""
    if mode != "subscribe":
        raise PermissionDenied("hub.mode must be 'subscribe'", reason=WEBHOOK_VERIFY_MODE_INVALID)
    # An empty expected token (unconfigured) matches nothing.
    if not expected_token or not hmac.compare_digest(
        (token or "").encode(), expected_token.encode()
    ):
        raise PermissionDenied(
            "hub.verify_token does not match the connection's verify token",
            reason=WEBHOOK_VERIFY_TOKEN_MISMATCH,
        )
    if challenge is None or _CHALLENGE.fullmatch(challenge) is None:
        raise InvalidArgument.of(
            "hub.challenge",
            "must be 1 to 256 printable ASCII characters",
            reason=WEBHOOK_PAYLOAD_INVALID,
        )
    return challenge


def _bad_signature(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=WEBHOOK_SIGNATURE_INVALID)


def payload_error(path: str, description: str) -> InvalidArgument:
    return InvalidArgument.of(path, description, reason=WEBHOOK_PAYLOAD_INVALID)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def load_body(raw_body: bytes, expected_object: str) -> Fields:
    """The (verified) body as a JSON object whose `object` is `expected_object`."""
    try:
        value: object = json.loads(raw_body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # bad UTF-8, bad JSON, absurd nesting
        raise payload_error("body", f"is not a JSON document: {type(error).__name__}") from None
    body = Fields.of(value, "body")
    kind = body.text("object")
    if kind != expected_object:
        raise payload_error("object", f"must be {expected_object!r}, got {kind!r}")
    return body


class Fields:
    """A JSON object read with its path: every getter checks the type it returns."""

    __slots__ = ("_path", "_value")

    def __init__(self, value: Mapping[str, object], path: str) -> None:
        self._value = value
        self._path = path

    @classmethod
    def of(cls, value: object, path: str) -> Fields:
        if not isinstance(value, dict):
            raise payload_error(path, "must be a JSON object")
        return cls(value, path)

    @property
    def path(self) -> str:
        return self._path

    def has(self, key: str) -> bool:
        return self._value.get(key) is not None

    def at(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path != "body" else key

    def text(self, key: str) -> str:
        """A required, non-empty string."""
        value = self._value.get(key)
        if not isinstance(value, str) or not value:
            raise payload_error(self.at(key), "must be a non-empty string")
        return utf8_text(value)

    def opt_text(self, key: str) -> str:
        value = self._value.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise payload_error(self.at(key), "must be a string")
        return utf8_text(value)

    def id(self, key: str) -> str:
        """An id Meta sends as a string or, in older payloads, a number."""
        value = self._value.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self.text(key)

    def integer(self, key: str) -> int:
        """A required integer, given as a number or a decimal string (WhatsApp timestamps)."""
        value = self._value.get(key)
        if (
            isinstance(value, str)
            and value.isascii()
            and value.isdigit()
            and len(value) <= _MAX_INTEGER_DIGITS
        ):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise payload_error(self.at(key), "must be an integer")

    def number(self, key: str) -> float:
        value = self._value.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)  # an integer past a float's range overflows
            except OverflowError:
                number = math.inf
            if math.isfinite(number):
                return number
        raise payload_error(self.at(key), "must be a number")

    def flag(self, key: str) -> bool:
        value = self._value.get(key, False)
        if not isinstance(value, bool):
            raise payload_error(self.at(key), "must be true or false")
        return value

    def obj(self, key: str) -> Fields:
        return Fields.of(self._value.get(key), self.at(key))

    def opt_obj(self, key: str) -> Fields | None:
        return None if self._value.get(key) is None else self.obj(key)

    def array(self, key: str) -> Sequence[object]:
        """A list, empty when absent."""
        value = self._value.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise payload_error(self.at(key), "must be a JSON array")
        return value

    def items(self, key: str) -> list[Fields]:
        return [Fields.of(item, f"{self.at(key)}[{i}]") for i, item in enumerate(self.array(key))]


def utf8_text(value: str) -> str:
    """`value` as valid Unicode: JSON can escape half of a surrogate pair
    ("\\ud83d" alone), which Python keeps and every later encoding to UTF-8
    (fingerprints, the stores) refuses; each lone half becomes U+FFFD."""
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def unix_time(seconds: int, path: str) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise payload_error(path, "is not a valid Unix time") from None
