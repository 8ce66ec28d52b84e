"""Voice, through Twilio Programmable Voice: a call's webhooks read as call
events, and what the caller hears next written as TwiML.

- Signature: the same `X-Twilio-Signature` check as SMS (twilio.py), over
  the connection's webhook_url (required) with the request's own path and
  query (which carries our turn numbers, below). Failures are 403 and
  nothing is stored.
- Webhooks (https://www.twilio.com/docs/usage/webhooks/voice-webhooks):
  form-encoded, `CallSid`, `AccountSid`, `From` (the caller), `To` (the
  number called: picks the connection), `CallStatus`. Three kinds reach
  the number's one URL:
  * the incoming call (the number's "A call comes in" webhook; CallStatus
    `ringing`): answered with the greeting, listening for turn 1;
  * our `<Gather input="speech">` callbacks
    (https://www.twilio.com/docs/voice/twiml/gather#attributes-action):
    `SpeechResult` (the transcript) and `Confidence` (0 to 1, kept with the
    message);
  * the call's status callback (the number's "Call status changes" URL,
    the same page's "Call status callbacks"): `CallStatus` completed,
    busy, failed, no-answer or canceled ends the call.
- Turns: every `<Gather>` we answer names its turn in its `action` URL
  (`?turn=N` after the connection's webhook_url), so that a callback tells
  which utterance it is, and a retry of it is the same one (the message id
  is `voice:{CallSid}:{N}`). When the caller says nothing, Twilio goes on to
  the verb after the `<Gather>`: a `<Redirect>` to the same URL with
  `&silence=K` (https://www.twilio.com/docs/voice/twiml/redirect). The
  numbers are ours, signed by Twilio with the rest of the URL, so they
  cannot be forged; the last occurrence counts (ours come after any the
  configured URL has).
- Speech only (`input="speech"`, `speechTimeout="auto"`: the transcript is
  sent when the caller pauses); the bot's replies are said with `<Say>`
  (https://www.twilio.com/docs/voice/twiml/say), one per reply, inside the
  `<Gather>` so that the caller may talk over them. Every text is
  XML-escaped (twilio.py), and the `action` and `<Redirect>` URLs are the
  connection's webhook_url (absolute, checked https when the connection
  was made) with our numbers: never anything the caller or the request
  chose.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from urllib.parse import parse_qsl, urlencode, urlsplit

from adapters.channels.twilio import (
    TWIML_CONTENT_TYPE,
    WEBHOOK_PAYLOAD_INVALID,
    TwilioSignatures,
    form_fields,
    gather,
    hangup,
    parse_form,
    redirect,
    say,
    twiml,
)
from chat_service.domain.calls import (
    MAX_TURN,
    CallAnswer,
    CallEvent,
    CallEventKind,
    utterance_id,
)
from chat_service.domain.connections import E164
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel
from chat_service.domain.errors import InvalidArgument
from chat_service.domain.identifiers import MAX_USER_ID_LENGTH, identifier_problem
from chat_service.domain.webhooks import (
    ParsedWebhook,
    PlatformMessage,
    WebhookCall,
    body_dedup_key,
)
from chat_service.ports import Clock, OpenedConnection

TURN_PARAMETER = "turn"
SILENCE_PARAMETER = "silence"
# https://www.twilio.com/docs/voice/api/call-resource#call-status-values:
# the statuses after which the call is over.
ENDED_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
# More silent prompts in a row than any answer of ours asks for.
MAX_SILENCE_COUNT = 100

_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_NUMBER = re.compile(r"[0-9]{1,6}")
_CONFIDENCE = re.compile(r"(0|1)(\.[0-9]{1,12})?")


class VoiceInbound:
    """InboundChannel and SynchronousChannel of Twilio voice calls."""

    channel = Channel.VOICE

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._signatures = TwilioSignatures()

    # ----------------------------------------------------- InboundChannel

    async def verify(
        self, call: WebhookCall, candidates: Sequence[OpenedConnection]
    ) -> Sequence[OpenedConnection]:
        return self._signatures.verify(call, candidates)

    def parse(self, call: WebhookCall) -> ParsedWebhook:
        """An utterance as the platform message it is (the other events carry
        none); INVALID_ARGUMENT for what is not one of Twilio's voice webhooks."""
        event = self.call_event(call)
        if event.kind is not CallEventKind.SPOKE:
            return ParsedWebhook(skipped=(f"call {event.kind.value}: no message",))
        message = PlatformMessage(
            account_id=event.account_id,
            platform_message_id=utterance_id(event.call_id, event.turn),
            user_id=event.user_id,
            sent_at=self._clock.now(),
            content=MessageContent.of_text(event.text),
            kind="speech",
            thread_id=event.call_id,
            conversation_key=event.call_id,
            extra=event.extra,
        )
        return ParsedWebhook(messages=(message,))

    def dedup_key(self, call: WebhookCall) -> str:
        # Calls never reach the inbox (SynchronousChannel); a key anyway.
        return body_dedup_key(call.body)

    def acknowledgement(self, call: WebhookCall) -> tuple[bytes, str]:
        return twiml(), TWIML_CONTENT_TYPE

    # ------------------------------------------------- SynchronousChannel

    def call_event(self, call: WebhookCall) -> CallEvent:
        fields = form_fields(parse_form(call.body))
        call_id = _required(fields, "CallSid", _CALL_SID, '"CA" and 32 hex digits')
        _required(fields, "AccountSid", _ACCOUNT_SID, '"AC" and 32 hex digits')
        account_id = _required(fields, "To", E164, "an E.164 number like +14155550100")
        user_id = _caller(fields)
        status = fields.get("CallStatus", "").strip().lower()
        started = CallEvent(
            CallEventKind.STARTED, account_id=account_id, call_id=call_id, user_id=user_id
        )
        if status in ENDED_STATUSES:
            return replace(started, kind=CallEventKind.ENDED, status=status)
        turn, silences = _turn_of(call.original_path)
        speech = " ".join(fields.get("SpeechResult", "").split())
        if speech:
            if not turn:
                raise _invalid(
                    f"query.{TURN_PARAMETER}",
                    "is required with a SpeechResult (the turn our <Gather> asked for)",
                )
            confidence = fields.get("Confidence", "").strip()
            extra = {"voice_confidence": confidence} if _CONFIDENCE.fullmatch(confidence) else {}
            return replace(started, kind=CallEventKind.SPOKE, turn=turn, text=speech, extra=extra)
        if turn:
            return replace(started, kind=CallEventKind.SILENT, turn=turn, silences=silences or 1)
        return started

    def render(self, answer: CallAnswer, connection: OpenedConnection) -> tuple[bytes, str]:
        """TwiML: each text said, then the next turn listened for (a
        `<Gather>` posting to our URL, and a `<Redirect>` for silence), or a
        `<Hangup/>`; `<Response/>` for nothing (an ended call)."""
        spoken = [say(text) for text in answer.say]
        if not answer.listen_turn:
            return twiml(*spoken, *([hangup()] if answer.hang_up else [])), TWIML_CONTENT_TYPE
        url = connection.connection.webhook_url
        listen = gather(*spoken, action=turn_url(url, answer.listen_turn), speech_timeout="auto")
        silent = redirect(turn_url(url, answer.listen_turn, silence=answer.silences + 1))
        return twiml(listen, silent), TWIML_CONTENT_TYPE


# ----------------------------------------------------------------- helpers


def turn_url(webhook_url: str, turn: int, *, silence: int = 0) -> str:
    """The connection's webhook_url asking for `turn` (and telling the
    silent prompts so far): what Twilio posts the next utterance to."""
    params = {TURN_PARAMETER: str(turn)}
    if silence:
        params[SILENCE_PARAMETER] = str(silence)
    separator = "&" if urlsplit(webhook_url).query else "?"
    return f"{webhook_url}{separator}{urlencode(params)}"


def _turn_of(original_path: str) -> tuple[int, int]:
    """The turn and silence count our URL named (0 when it named none)."""
    query = parse_qsl(urlsplit(original_path).query, keep_blank_values=True)
    found: dict[str, str] = {}
    for name, value in query:
        if name in (TURN_PARAMETER, SILENCE_PARAMETER):
            found[name] = value  # the last one counts
    return (
        _count(found, TURN_PARAMETER, MAX_TURN),
        _count(found, SILENCE_PARAMETER, MAX_SILENCE_COUNT),
    )


def _count(found: Mapping[str, str], name: str, maximum: int) -> int:
    value = found.get(name)
    if value is None:
        return 0
    if not _NUMBER.fullmatch(value) or not 1 <= int(value) <= maximum:
        raise _invalid(f"query.{name}", f"must be a whole number from 1 to {maximum}")
    return int(value)


def _required(fields: Mapping[str, str], name: str, shape: re.Pattern[str], told: str) -> str:
    value = fields.get(name, "").strip()
    if not value:
        raise _invalid(f"body.{name}", "is required")
    if not shape.fullmatch(value):
        raise _invalid(f"body.{name}", f"must be {told}")
    return value


def _caller(fields: Mapping[str, str]) -> str:
    """`From`: an E.164 number, a `client:` identity or a SIP address;
    "anonymous" when the caller withheld it (still a caller, one per call)."""
    value = fields.get("From", "").strip()
    if not value:
        raise _invalid("body.From", "is required")
    if problem := identifier_problem(value, maximum=MAX_USER_ID_LENGTH):
        raise _invalid("body.From", problem)
    return value


def _invalid(path: str, description: str) -> InvalidArgument:
    return InvalidArgument.of(path, description, reason=WEBHOOK_PAYLOAD_INVALID)
