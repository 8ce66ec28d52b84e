"""What the bot answers: the engine's reply checked and fit to the channel,
or the service's fallback.

The engine is outside the service's trust: a reply that breaks the content
rules, or would make the service store and deliver too much, is replaced by
the fallback reply (reason "invalid_reply") and the conversation keeps its
previous state, as it does when the engine fails or times out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

from chat_service.domain.channels import format_for_channel
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel
from chat_service.domain.errors import InvalidArgument
from chat_service.domain.model import Conversation, ConversationState
from chat_service.domain.validation import validate_content

MAX_REPLY_CONTENTS = 10
MAX_REPLY_PARTS = 30  # after adapting and splitting for the channel
# The engine's conversation state as compact JSON: the engine's to keep
# small. Unbounded, a huge state only fails at the store, as if the caller
# had sent too much.
MAX_STATE_BYTES = 64 * 1024
MAX_STATE_DEPTH = 32  # nesting of maps and lists; the state itself is level 1

INVALID_REPLY = "invalid_reply"


class EngineOutput(Protocol):
    """What the engine answers (the port's EngineReply has these)."""

    @property
    def contents(self) -> Sequence[MessageContent]: ...

    @property
    def state(self) -> ConversationState: ...

    @property
    def escalate(self) -> bool: ...

    @property
    def confidence_scores(self) -> Mapping[str, float]: ...


def _no_scores() -> Mapping[str, float]:
    return {}


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    """The bot's answer to one message, before it is stored."""

    parts: tuple[MessageContent, ...]  # formatted for the channel: one message each
    response: MessageContent | None  # the first reply as the engine produced it
    state: ConversationState
    escalate: bool = False
    confidence_scores: Mapping[str, float] = field(default_factory=_no_scores)
    fallback_reason: str = ""
    # Why the engine's reply was refused, for the log: field names and
    # limits only, never a value (a reply may echo the user's text).
    problem: str = ""


def plan_reply(
    conversation: Conversation,
    reply: EngineOutput | None,
    *,
    failure: str = "",
    fallback_text: str,
) -> ReplyPlan:
    """`reply` made fit for the conversation's channel; the fallback when
    there is none (`failure` says why) or it breaks a rule."""
    problem = ""
    if reply is not None and not failure:
        contents, problem = _checked_contents(reply.contents)
        if not problem:
            problem = state_problem(reply.state)
        if not problem:
            parts = _formatted(contents, conversation.channel)
            if len(parts) <= MAX_REPLY_PARTS:
                return ReplyPlan(
                    parts=parts,
                    response=contents[0] if contents else None,
                    state=reply.state,
                    escalate=reply.escalate,
                    confidence_scores=dict(reply.confidence_scores),
                )
            problem = f"the reply makes {len(parts)} messages (at most {MAX_REPLY_PARTS})"
        failure = INVALID_REPLY
    fallback = MessageContent.of_text(fallback_text)
    return ReplyPlan(
        parts=_formatted((fallback,), conversation.channel),
        response=fallback,
        state=conversation.state,
        fallback_reason=failure or "error",
        problem=problem,
    )


def _checked_contents(
    contents: Sequence[MessageContent],
) -> tuple[tuple[MessageContent, ...], str]:
    """The contents validated and normalized, or why they are refused."""
    if len(contents) > MAX_REPLY_CONTENTS:
        return (), f"response_contents: more than {MAX_REPLY_CONTENTS} replies"
    try:
        return tuple(
            validate_content(content, field_prefix=f"response_contents[{index}].")
            for index, content in enumerate(contents)
        ), ""
    except InvalidArgument as invalid:
        names = ", ".join(violation.field for violation in invalid.violations)
        return (), f"breaks the content rules: {names}"


def state_problem(state: ConversationState) -> str:
    """Why the engine's state cannot be kept (too large or too deep), or ""."""
    top = {name: getattr(state, name) for name in _STATE_FIELDS}
    size = 0
    pending: list[tuple[object, int]] = [(top, 1)]
    while pending:
        value, depth = pending.pop()
        # Scalars first, by their exact type: the ABC checks are the slow part.
        if isinstance(value, str):
            size += _str_size(value)
        elif type(value) in _SCALARS:
            size += _scalar_size(value)
        elif isinstance(value, Mapping | list | tuple):
            if depth > MAX_STATE_DEPTH:
                return f"state: nested deeper than {MAX_STATE_DEPTH} levels"
            size += 2 + max(len(value) - 1, 0)  # brackets and commas
            if isinstance(value, Mapping):
                for key, item in value.items():
                    size += _scalar_size(str(key)) + 1  # the key and its colon
                    pending.append((item, depth + 1))
            else:
                pending.extend((item, depth + 1) for item in value)
        else:
            size += _scalar_size(value)
        if size > MAX_STATE_BYTES:
            return f"state: larger than {MAX_STATE_BYTES} bytes as JSON"
    return ""


_STATE_FIELDS = tuple(f.name for f in fields(ConversationState))
_SCALARS = frozenset({int, float, bool, type(None)})


def _str_size(value: str) -> int:
    if len(value) > MAX_STATE_BYTES:  # no need to encode it to know
        return len(value)
    if value.isascii():
        return len(value) + 2
    return len(value.encode("utf-8", "surrogatepass")) + 2


def _scalar_size(value: object) -> int:
    """About the bytes of `value` in compact JSON (escapes not counted)."""
    if isinstance(value, str):
        return _str_size(value)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 2  # at least its digits; no str() of a huge int
    return len(repr(value))


def _formatted(contents: Sequence[MessageContent], channel: Channel) -> tuple[MessageContent, ...]:
    return tuple(part for content in contents for part in format_for_channel(content, channel))
