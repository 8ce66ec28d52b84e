"""Phone calls as the core sees them, whatever the telephony platform.

A call is the one synchronous channel: the platform waits, in its webhook's
own response, for what the caller hears next. Its connector
(adapters/channels/voice.py) reads each webhook as a `CallEvent` and renders
a `CallAnswer` in the platform's language (Twilio's TwiML);
pipeline/voice_calls.py decides the answer. Pure: no I/O.

A call is a conversation of its own (session `session_of(connection, caller,
call id)`); every utterance is one message, numbered by its turn (1, 2...),
and the turn is what makes a platform's retry of the same utterance one
message with one reply (`utterance_id`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

# The longest call the turn numbers cover (an utterance every second of a
# four-hour call: Twilio ends calls at four hours,
# https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource,
# `TimeLimit`); larger numbers are no turn of ours.
MAX_TURN = 14_400
# Silent prompts in a row before the caller is told goodbye.
MAX_SILENCES = 2


class CallEventKind(StrEnum):
    STARTED = "started"  # the call was answered: nothing said yet
    SPOKE = "spoke"  # the caller said something (a transcript)
    SILENT = "silent"  # the caller was listened to and said nothing
    ENDED = "ended"  # the call is over (hung up, busy, not answered...)


@dataclass(frozen=True, slots=True)
class CallEvent:
    """What one verified webhook of a call tells."""

    kind: CallEventKind
    account_id: str  # the number called: picks the connection
    call_id: str  # the platform's id of the call (Twilio's CallSid)
    user_id: str  # the caller (E.164, or the platform's client id)
    # SPOKE and SILENT: the turn that was listened for (1 is the first).
    turn: int = 0
    # SILENT: silent prompts in a row, this one included.
    silences: int = 0
    text: str = ""  # SPOKE: what the caller said, as transcribed
    # SPOKE: platform details kept with the message (the transcript's
    # confidence): strings only, never a secret.
    extra: Mapping[str, str] = field(default_factory=dict)
    status: str = ""  # ENDED: the platform's final call status


@dataclass(frozen=True, slots=True)
class CallAnswer:
    """What the caller hears next: `say`, in order; then, while `listen_turn`
    is set, the call listens for that turn's utterance (`silences` silent
    prompts already behind it); else it ends when `hang_up`, or simply goes
    on with whatever the platform does next (an ended call: nothing)."""

    say: tuple[str, ...] = ()
    listen_turn: int = 0
    silences: int = 0
    hang_up: bool = False


def utterance_id(call_id: str, turn: int) -> str:
    """The platform message id of a call's utterance: the same for a
    platform's retry of the same turn (domain.webhooks.inbound_message_id
    makes it the stored message id)."""
    return f"{call_id}:{turn}"


# ------------------------------------------------------------------ speech

# How channels.format_for_channel writes the options a text channel cannot
# show as buttons or quick replies ("Reply with one of:" and a numbered list,
# the reply's last block). A caller cannot reply "2": options are said.
_OPTIONS = re.compile(r"(?:^|\n\n)Reply with one of:\n((?:[0-9]+\. [^\n]*(?:\n|$))+)\Z")
_OPTION = re.compile(r"[0-9]+\. (.*)")
_SENTENCE_END = (".", "!", "?", ":", ";", "…")


def spoken(text: str) -> str:
    """A reply as stored for the voice channel (channel-formatted text), as
    words to be said: the numbered options become "Say one of: A, B, or C.",
    and each line a sentence of its own (so that speech pauses where the
    text broke the line)."""
    text = text.strip()
    options: list[str] = []
    if match := _OPTIONS.search(text):
        options = [
            option.group(1).strip()
            for line in match.group(1).splitlines()
            if (option := _OPTION.fullmatch(line.strip())) and option.group(1).strip()
        ]
        text = text[: match.start()]
    sentences = [_sentence(line) for line in text.splitlines() if line.strip()]
    if options:
        sentences.append(f"Say one of: {_spoken_list(options)}.")
    return " ".join(sentences)


def speech_of(texts: Iterable[str]) -> tuple[str, ...]:
    """The replies' texts as what is said, one `<Say>` each; empty ones
    (a reply with nothing to say) left out."""
    return tuple(words for words in (spoken(text) for text in texts) if words)


def _sentence(line: str) -> str:
    line = " ".join(line.split())
    return line if line.endswith(_SENTENCE_END) else f"{line}."


def _spoken_list(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + f", or {items[-1]}"
