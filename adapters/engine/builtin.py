"""The built-in rule engine: the embedded default when MCP_ENGINE_URL is unset.

It is deliberately small and deterministic: enough to make the service
useful out of the box (greeting, help, handoff to a human, acknowledging
media and locations, echoing the rest) and to exercise every reply shape
the channels must render. Real bots run in the MCP Engine.
"""

from __future__ import annotations

import re
from dataclasses import replace

from chat_service.domain.content import Button, MessageContent, QuickReply
from chat_service.domain.content_limits import MAX_TEXT_LENGTH
from chat_service.domain.enums import ButtonType, MessageType
from chat_service.domain.model import ConversationState, JsonValue
from chat_service.ports import EngineReply, EngineRequest, ExpectedInput

_GREETING = re.compile(r"^\s*(hi|hello|hey|hola|good (morning|afternoon|evening))\b", re.I)
_HELP = re.compile(r"\b(help|menu|options)\b", re.I)
_HANDOFF = re.compile(r"\b(human|agent|person|operator)\b", re.I)
_NAME = re.compile(r"\bmy name is ([A-Za-z][\w' -]{0,40})", re.I)

_MENU = (
    QuickReply(title="Help", payload="help"),
    QuickReply(title="Talk to a human", payload="handoff"),
)


class BuiltinEngine:
    name = "builtin"
    history_size = 0  # the rules look at the current message only

    async def process(self, request: EngineRequest) -> EngineReply:
        content = request.content
        text = content.text
        if content.type is MessageType.QUICK_REPLY and content.quick_replies:
            text = content.quick_replies[0].payload
        state = request.context
        turns = _int(state.slots.get("turns")) + 1
        slots: dict[str, JsonValue] = {**state.slots, "turns": turns}

        if name := _NAME.search(text):
            slots["name"] = name.group(1).strip()
            profile = {**state.user_profile, "name": slots["name"]}
            state = replace(state, user_profile=profile)
            return _reply(state, "greeting", slots, f"Nice to meet you, {slots['name']}!", 0.95)
        if text == "handoff" or _HANDOFF.search(text):
            reply = _reply(state, "handoff", slots, "Connecting you to a human agent.", 0.9)
            return replace(reply, escalate=True)
        if text == "help" or _HELP.search(text):
            return EngineReply(
                contents=(
                    MessageContent(
                        type=MessageType.TEXT,
                        text="I can answer simple questions, or hand you to a person.",
                        buttons=(
                            Button(
                                type=ButtonType.POSTBACK, title="Talk to a human", payload="handoff"
                            ),
                        ),
                    ),
                ),
                state=_state(state, "help", slots),
                confidence_scores={"help": 0.9},
            )
        if _GREETING.search(text):
            greeting = f"Hello {slots['name']}!" if "name" in slots else "Hello!"
            return EngineReply(
                contents=(
                    MessageContent(
                        type=MessageType.QUICK_REPLY,
                        text=f"{greeting} How can I help?",
                        quick_replies=_MENU,
                    ),
                ),
                state=_state(state, "greeting", slots),
                next_expected_inputs=(ExpectedInput(type="text", suggestions=("help",)),),
                confidence_scores={"greeting": 0.97},
            )
        if content.type is MessageType.LOCATION and content.location is not None:
            where = content.location.address or (
                f"{content.location.latitude:.5f}, {content.location.longitude:.5f}"
            )
            return _reply(state, "share_location", slots, f"Got your location: {where}.", 0.9)
        if content.media is not None:
            kind = content.type.value if content.type else "file"
            return _reply(state, f"share_{kind}", slots, f"Thanks, I received your {kind}.", 0.9)
        echo = f"You said: {text}" if text else "Got it."
        if len(echo) > MAX_TEXT_LENGTH:  # a reply must fit the content rules too
            echo = echo[: MAX_TEXT_LENGTH - 1] + "…"
        return _reply(state, "fallback", slots, echo, 0.3)


def _reply(
    state: ConversationState,
    intent: str,
    slots: dict[str, JsonValue],
    text: str,
    confidence: float,
) -> EngineReply:
    return EngineReply(
        contents=(MessageContent.of_text(text),),
        state=_state(state, intent, slots),
        confidence_scores={intent: confidence},
    )


def _state(state: ConversationState, intent: str, slots: dict[str, JsonValue]) -> ConversationState:
    return replace(state, current_intent=intent, slots=slots, conversation_stage="engaged")


def _int(value: JsonValue) -> int:
    # Struct numbers come back as floats from the wire.
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
