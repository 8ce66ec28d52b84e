"""Twilio's side of a phone call, for tests: the documented webhook
parameter sets (tests/fixtures/webhooks/voice/), posted where the service's
TwiML says (its `<Gather action>`, its `<Redirect>`) and signed as Twilio
signs them, and the TwiML answers read back.

Shared by the unit tests of the core (tests/unit/test_voice.py) and the
end-to-end tests through the real Envoy edge (tests/e2e/test_voice.py).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree

from adapters.channels.twilio import SIGNATURE_HEADER, sign

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "voice"
FORM = "application/x-www-form-urlencoded"


def parameters(name: str) -> dict[str, str]:
    """A documented parameter set (tests/fixtures/webhooks/voice/<name>.json)."""
    loaded: dict[str, str] = json.loads((FIXTURES / f"{name}.json").read_bytes())
    return loaded


def twilio_sid(prefix: str) -> str:
    """A fresh Twilio sid: two letters and 32 lowercase hex digits."""
    return prefix + uuid.uuid4().hex


@dataclass(frozen=True)
class Twiml:
    """A TwiML answer as Twilio would act on it."""

    says: tuple[str, ...]  # every <Say>, in document order (nested ones too)
    gather: dict[str, str] | None  # the <Gather>'s attributes
    redirect: str  # the <Redirect> URL ("" when none)
    hangup: bool
    verbs: tuple[str, ...]  # the top-level verbs, in order

    @property
    def action(self) -> str:
        assert self.gather is not None, "no <Gather> in the answer"
        return self.gather["action"]


def read_twiml(body: bytes) -> Twiml:
    """The answer's verbs; fails the test if it is not well-formed TwiML."""
    root = ElementTree.fromstring(body)
    assert root.tag == "Response", body
    gather = root.find("Gather")
    redirect = root.find("Redirect")
    return Twiml(
        says=tuple(say.text or "" for say in root.iter("Say")),
        gather=dict(gather.attrib) if gather is not None else None,
        redirect=(redirect.text or "") if redirect is not None else "",
        hangup=root.find("Hangup") is not None,
        verbs=tuple(child.tag for child in root),
    )


@dataclass(frozen=True)
class TwilioRequest:
    """One webhook request as Twilio sends it."""

    url: str  # the full URL Twilio requested (what it signed)
    body: bytes
    headers: dict[str, str]

    @property
    def path(self) -> str:
        """The path and query string: what reaches the service past the
        public address (Envoy's x-envoy-original-path)."""
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")


@dataclass
class Phone:
    """One caller's call to a tenant's number, as Twilio reports it."""

    webhook_url: str  # the number's voice URL (the connection's webhook_url)
    auth_token: str
    account_sid: str
    number: str  # the tenant's number (To)
    caller: str  # From
    call_sid: str = field(default_factory=lambda: twilio_sid("CA"))

    def ring(self) -> TwilioRequest:
        """ "A call comes in": the number's voice URL."""
        return self._request(self.webhook_url, "incoming_call")

    def say(self, words: str, answer: Twiml, *, confidence: str = "0.92") -> TwilioRequest:
        """The caller says `words` while `answer`'s <Gather> listens."""
        return self._request(
            answer.action, "gather_speech", SpeechResult=words, Confidence=confidence
        )

    def stay_silent(self, answer: Twiml) -> TwilioRequest:
        """The caller says nothing: Twilio follows `answer`'s <Redirect>."""
        assert answer.redirect, "no <Redirect> in the answer"
        return self._request(answer.redirect, "gather_timeout")

    def hang_up(self, status: str = "completed") -> TwilioRequest:
        """The call's status callback (the number's status URL)."""
        name = "status_no_answer" if status == "no-answer" else "status_completed"
        return self._request(self.webhook_url, name, CallStatus=status)

    def _request(self, url: str, name: str, **overrides: str) -> TwilioRequest:
        params = parameters(name) | {
            "AccountSid": self.account_sid,
            "CallSid": self.call_sid,
            "To": self.number,
            "Called": self.number,
            "From": self.caller,
            "Caller": self.caller,
            **overrides,
        }
        headers = {SIGNATURE_HEADER: sign(url, self.auth_token, params)}
        return TwilioRequest(url=url, body=urlencode(params).encode(), headers=headers)
