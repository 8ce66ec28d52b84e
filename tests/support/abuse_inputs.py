"""Hostile inputs for the abuse suite (tests/e2e/test_abuse_*.py).

Hypothesis strategies of odd values (Unicode, control characters, NUL,
limits +-1, unknown enum numbers, NaN, huge integers, deep JSON), mutations
that break one field of a valid request, protobuf encoded by hand (for
nesting protobuf itself would refuse to write), and tampered or forged
opaque tokens.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from chatbot.chat.v1 import content_pb2
from google.protobuf.message import Message as ProtoMessage
from hypothesis import strategies as st

T = content_pb2
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
M = TypeVar("M", bound=ProtoMessage)


def build(cls: type[M], **fields: Any) -> M:
    """A message with fields set from untyped values (enum numbers no
    enum has, for one)."""
    return cls(**fields)


def set_path(message: ProtoMessage, path: str, value: Any) -> None:
    """Set a dotted field path; a list replaces a repeated field, a dict
    fills a Struct, a message is copied in."""
    *parents, name = path.split(".")
    for parent in parents:
        message = getattr(message, parent)
    if isinstance(value, list):
        repeated = getattr(message, name)
        del repeated[:]
        if value and isinstance(value[0], ProtoMessage):
            for item in value:
                repeated.add().CopyFrom(item)
        else:
            repeated.extend(value)
    elif isinstance(value, dict):
        struct = getattr(message, name)
        struct.Clear()
        struct.update(value)
    elif isinstance(value, ProtoMessage):
        getattr(message, name).CopyFrom(value)
    else:
        setattr(message, name, value)


# ------------------------------------------------------------- strategies

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x00" * 300,
    "\u202eevil",
    "\ufeffbom",
    "e\u0301",
    "\u0958" * 3000,
    "\U0010ffff",
    "\uffff\ufffe",
    "\u2028\u2029",
    "\r\n\r\n",
    " \t\n ",
    "\x1b[31mred",
    "\U0001f600" * 5,
    "%s%n%x",
    "' OR 1=1 --",
    '{"$gt": ""}',
    "$where",
    ".*",
    "(?:",
    "\\",
    "../../etc/passwd",
    "javascript:alert(1)",
    "https://",
    "+",
    "+1" + "4" * 20,
]

odd_text = st.one_of(
    st.sampled_from(ODD_STRINGS),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40),
    st.builds(
        lambda char, count: char * count,
        st.sampled_from(["a", "é", "\x00", "\U0001f600", "\u0301", " ", "\n"]),
        st.sampled_from([1, 2, 3, 20, 21, 80, 81, 128, 129, 255, 256, 500, 501, 1001, 4097]),
    ),
)
int32 = st.one_of(st.sampled_from([-1, 0, 1, 9, 99, *INT32]), st.integers(*INT32))
int64 = st.one_of(st.sampled_from([-1, 0, 52_428_800, 52_428_801, *INT64]), st.integers(*INT64))
odd_float = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 90.0, 90.0000001, -180.0, 1e308, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
odd_url = st.one_of(
    odd_text,
    st.sampled_from(
        ["https://cdn.example.com/a.png", "ftp://x/y", "https://cdn.example.com:99999/", "http:"]
    ),
    st.builds(lambda n: "https://cdn.example.com/" + "a" * n, st.sampled_from([2024, 2025, 9000])),
)
json_leaf = st.one_of(st.none(), st.booleans(), odd_float, odd_text)
json_object = st.recursive(
    st.dictionaries(odd_text, json_leaf, max_size=3),
    lambda children: st.dictionaries(
        odd_text, st.one_of(children, st.lists(children, max_size=3)), max_size=3
    ),
    max_leaves=12,
)
deep_object = st.builds(lambda depth: chain(depth), st.sampled_from([7, 8, 9, 12, 20, 30]))


def chain(depth: int) -> dict[str, Any]:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return dict(value)


quick_reply = st.builds(T.QuickReply, title=odd_text, payload=odd_text, content_type=odd_text)
button = st.builds(T.Button, type=int32, title=odd_text, payload=odd_text, url=odd_url)
card = st.builds(
    T.CarouselCard,
    title=odd_text,
    subtitle=odd_text,
    image_url=odd_url,
    buttons=st.lists(button, max_size=4),
)


@dataclass(frozen=True)
class Mutation:
    """One field of a valid request set to a hostile value."""

    path: str
    value: Any
    # Where a refusal may point because of this change.
    blame: tuple[str, ...]

    def __repr__(self) -> str:
        shown = repr(self.value)
        return f"{self.path}={shown[:120]}{'...' if len(shown) > 120 else ''}"


def mutation(path: str, values: st.SearchStrategy[Any], *blame: str) -> st.SearchStrategy[Any]:
    return values.map(lambda value: Mutation(path, value, blame or (path,)))


def content_mutation(path: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return mutation(f"content.{path}", values, "content")


MUTATIONS = st.one_of(
    mutation("message_id", odd_text),
    mutation("conversation_id", st.one_of(odd_text, st.just(str(uuid.uuid4())))),
    mutation("user_id", odd_text),
    mutation("session_id", odd_text),
    mutation("channel", int32, "channel", "content"),
    mutation("timestamp.seconds", int64, "timestamp"),
    mutation("timestamp.nanos", int32, "timestamp"),
    content_mutation("type", int32),
    content_mutation("text", odd_text),
    content_mutation("language", odd_text),
    content_mutation("media.url", odd_url),
    content_mutation("media.type", odd_text),
    content_mutation("media.size_bytes", int64),
    content_mutation("media.alt_text", odd_text),
    content_mutation("media.thumbnail_url", odd_url),
    content_mutation("location.latitude", odd_float),
    content_mutation("location.longitude", odd_float),
    content_mutation("location.accuracy_meters", int32),
    content_mutation("location.address", odd_text),
    content_mutation("quick_replies", st.lists(quick_reply, max_size=12)),
    content_mutation("buttons", st.lists(button, max_size=5)),
    content_mutation("cards", st.lists(card, max_size=12)),
    mutation("channel_metadata.platform_message_id", odd_text, "channel_metadata"),
    mutation("channel_metadata.platform_user_id", odd_text, "channel_metadata"),
    mutation("channel_metadata.thread_id", odd_text, "channel_metadata"),
    mutation("channel_metadata.workspace_id", odd_text, "channel_metadata"),
    mutation(
        "channel_metadata.additional_data",
        st.one_of(json_object, deep_object),
        "channel_metadata",
    ),
    mutation("processing_hints.priority", int32, "processing_hints"),
    mutation("processing_hints.expected_response_type", int32, "processing_hints"),
    mutation("processing_hints.bypass_automation", st.booleans(), "processing_hints"),
    mutation("processing_hints.require_human_review", st.booleans(), "processing_hints"),
)


# ------------------------------------------------------------- protobuf by hand


def varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def delimited(field_number: int, payload_size: int) -> bytes:
    """The tag and length of a length-delimited field (its payload follows)."""
    return varint(field_number << 3 | 2) + varint(payload_size)


def deep_value(depth: int, *, lists: bool) -> bytes:
    """A google.protobuf.Value nested `depth` times (structs {"a": ...} or
    lists [...]), encoded by hand: protobuf's own encoder may refuse it."""
    core = delimited(3, 1) + b"x"  # Value.string_value = "x"
    headers: list[bytes] = []
    size = len(core)
    for _ in range(depth):
        if lists:
            # Value.list_value(6) -> ListValue.values(1) -> Value
            inner = delimited(1, size)
            outer = delimited(6, len(inner) + size)
            headers.append(outer + inner)
        else:
            # Value.struct_value(5) -> Struct.fields(1) -> entry{key(1)="a", value(2)}
            key = delimited(1, 1) + b"a"
            value = delimited(2, size)
            entry_size = len(key) + len(value) + size
            entry = delimited(1, entry_size)
            struct = delimited(5, len(entry) + entry_size)
            headers.append(struct + entry + key + value)
        size += len(headers[-1])
    return b"".join(reversed(headers)) + core


# ------------------------------------------------------------------ tokens


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def token_mutations(token: str) -> Iterator[tuple[str, str]]:
    """Named tamperings of an opaque token: bit flips, truncations,
    extensions, re-encodings."""
    raw = token.encode()
    for position in sorted({0, 1, len(raw) // 3, len(raw) // 2, len(raw) - 2}):
        if 0 <= position < len(raw):
            for bit in (0, 5):
                flipped = bytearray(raw)
                flipped[position] ^= 1 << bit
                yield f"bit {bit} of byte {position} flipped", flipped.decode("latin-1")
    for keep in sorted({1, len(token) // 2, len(token) - 1}):
        yield f"truncated to {keep} characters", token[:keep]
    yield "doubled", token + token
    yield "with a trailing A", token + "A"
    yield "with a leading A", "A" + token
    yield "padded with ==", token + "=="
    yield "in standard base64 alphabet", token.replace("-", "+").replace("_", "/")
    yield "upper-cased", token.upper()
    yield "reversed", token[::-1]
    yield "with a NUL", token[: len(token) // 2] + "\x00" + token[len(token) // 2 :]
    yield "with a space", token[: len(token) // 2] + " " + token[len(token) // 2 :]


def semantic_mutations(token: str) -> Iterator[tuple[str, str]]:
    """What a client that looked inside would try: every dot-separated part
    that is base64 of JSON comes back with one value changed (a number moved
    or made huge, a string emptied, a type swapped), encoded the same way."""
    parts = token.split(".")
    for index, part in enumerate(parts):
        try:
            body = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except ValueError:
            continue
        for name, changed in _json_variants(body, "$"):
            encoded = json.dumps(changed, separators=(",", ":")).encode()
            mutated = [*parts[:index], b64url(encoded), *parts[index + 1 :]]
            yield f"part {index} {name}", ".".join(mutated)


def _json_variants(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in list(value.items())[:8]:
            for name, changed in _json_variants(item, f"{path}.{key}"):
                yield name, {**value, key: changed}
        yield f"{path} with an extra key", {**value, "zz": 1}
    elif isinstance(value, list):
        for position, item in enumerate(value[:4]):
            for name, changed in _json_variants(item, f"{path}[{position}]"):
                yield name, [*value[:position], changed, *value[position + 1 :]]
    elif isinstance(value, bool) or value is None:
        yield f"{path} as 0", 0
    elif isinstance(value, int | float):
        yield f"{path} + 1", value + 1
        yield f"{path} - 1", value - 1
        yield f"{path} negative", -abs(value) - 1
        yield f"{path} as 10**400", 10**400
        yield f"{path} as a string", str(value)
        yield f"{path} as a list", [value]
    elif isinstance(value, str):
        yield f"{path} emptied", ""
        yield f"{path} changed", value[:-1] + ("0" if value[-1:] != "0" else "1")
        yield f"{path} as a number", 1


def forged_tokens() -> Iterator[tuple[str, str]]:
    """Tokens the service never issued, none of them derived from one it did."""
    yield "garbage", "not-a-token"
    yield "one character", "A"
    yield "non-ASCII", "tökén-\u202e-\U0001f600"
    yield "control characters", "\x01\x02\x7f"
    yield "base64 of garbage", b64url(bytes(range(256)))
    yield "base64 of an empty object", b64url(b"{}")
    yield "base64 of null", b64url(b"null")
    yield "base64 of a huge number", b64url(b"1" + b"0" * 5000)
    yield "base64 of 1e400", b64url(b'{"v":1,"q":"x","p":{"p":1e400}}')
    yield "base64 of NaN", b64url(b'{"v":1,"q":"x","p":{"p":NaN}}')
    yield "base64 of a list 10k deep", b64url(nested_json(10_000))
    yield "base64 of an object 10k deep", b64url(b'{"a":' * 10_000 + b"1" + b"}" * 10_000)
    yield (
        "base64 of a deep position",
        b64url(b'{"v":1,"q":"x","p":' + b'{"p":' * 3000 + b"1" + b"}" * 3001),
    )
    yield "base64 of invalid UTF-8", b64url(b'{"v":1,"q":"\xff\xfe"}')
    yield "1 MB of A", "A" * 1_000_000
    yield "3 MB of base64", b64url(b"x" * 2_200_000)
