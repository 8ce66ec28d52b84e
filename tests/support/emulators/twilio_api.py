"""A local Twilio REST API: `Messages.json` as the SMS sender calls it,
checked like Twilio checks it, and Twilio's own webhook calls (incoming
messages, status callbacks), signed like Twilio signs them.

- `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded,
  HTTP basic auth with the account SID and its auth token
  (https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource).
  Answered as Twilio does: 201 with the Message resource (`sid` "SM..."
  or "MM..." with media, `status` "queued", `num_segments`), or an error
  `{"code", "message", "more_info", "status"}`: 20003 (401, bad
  credentials), 21211 (To is not a phone number), 21659 (From is not one
  of the account's numbers), 21602 (neither Body nor MediaUrl), 21617
  (Body past 1600 characters), 21623 (more than 10 MediaUrl), 21610 (the
  recipient sent STOP to that number: `unsubscribe`).
- Every call is recorded (`calls`); `sent(to)` lists the messages taken.
  The next calls can be made to fail (`ratelimit`: 429 + Retry-After +
  20429; `error`: any code and status; `server_error`: 5xx; `hang`: no
  answer within the client's timeout).
- `signed_post`: what Twilio does to a webhook URL: a form, POSTed to
  where the service listens, with the X-Twilio-Signature of the public URL
  it was configured with (`incoming_sms` and `status_callback` build the
  documented parameter sets).
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
from aiohttp import BasicAuth, web

from adapters.channels.twilio import sign
from tests.support.emulators import Fault, PlatformEmulator, hung, throttled

MAX_BODY = 1600
MAX_MEDIA = 10
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_GSM_UNSAFE = re.compile(r"[^\x20-\x7e\n\r£¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà]")


class TwilioRefusal(Exception):
    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }


@dataclass(frozen=True, slots=True)
class SentMessage:
    """What Twilio kept of an accepted Messages.json call."""

    sid: str
    account_sid: str
    to: str
    from_: str
    body: str
    media_urls: tuple[str, ...]
    status_callback: str
    form: tuple[tuple[str, str], ...]


@dataclass
class _Account:
    sid: str
    token: str
    numbers: set[str]


class TwilioApiEmulator(PlatformEmulator):
    base_setting = "TWILIO_API_BASE_URL"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._accounts: dict[str, _Account] = {}
        self._unsubscribed: set[tuple[str, str]] = set()  # (from, to)
        self._sent: list[SentMessage] = []
        self._ids = itertools.count(1)
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._messages)
        super().__init__(app, clock=clock)

    # -------------------------------------------------------------- set-up

    def add_account(self, account_sid: str, auth_token: str, *numbers: str) -> None:
        account = self._accounts.setdefault(account_sid, _Account(account_sid, auth_token, set()))
        account.token = auth_token
        account.numbers.update(numbers)

    def unsubscribe(self, from_number: str, to_number: str) -> None:
        """`to_number` sent STOP to `from_number`: Twilio refuses with 21610."""
        self._unsubscribed.add((from_number, to_number))

    # ------------------------------------------------------------- faults

    def ratelimit(self, times: int = 1, *, retry_after: str | None = "2") -> None:
        """HTTP 429 with code 20429 (and Retry-After unless None)."""
        body = TwilioRefusal(20429, "Too Many Requests", 429).body
        self.faults.add(throttled(body, retry_after), times)

    def error(self, code: int, status: int = 400, times: int = 1) -> None:
        """An error answer with Twilio's `code` (21211, 21610, ...)."""
        body = TwilioRefusal(code, f"error {code}", status).body
        self.faults.add(Fault(status=status, body=body), times)

    def server_error(self, status: int = 503, times: int = 1) -> None:
        self.faults.add(Fault(status=status, text="Service Unavailable"), times)

    def hang(self, seconds: float, times: int = 1) -> None:
        """No answer for `seconds` (or until the emulator stops): a timeout."""
        self.faults.add(hung(seconds, status=504), times)

    # ---------------------------------------------------------- recordings

    def sent(self, to: str | None = None) -> list[SentMessage]:
        """The messages accepted (to `to`), in order."""
        return [m for m in self._sent if to is None or m.to == to]

    # ------------------------------------------------------------ handlers

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            form = tuple(parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=bool(raw)))
        except (UnicodeDecodeError, ValueError):
            form = ()
        index = self._record(request, raw=raw, body=list(form))
        injected = await self._injected(index)
        if injected is not None:
            return injected
        try:
            answer = self._create(request, form)
        except TwilioRefusal as refusal:
            return self._json(index, refusal.body, status=refusal.status)
        return self._json(index, answer, status=201)

    def _create(self, request: web.Request, form: tuple[tuple[str, str], ...]) -> dict[str, Any]:
        account = self._account(request)
        content_type = request.headers.get("Content-Type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            raise TwilioRefusal(20001, "the body must be form-encoded")
        fields: dict[str, list[str]] = {}
        for name, value in form:
            fields.setdefault(name, []).append(value)
        to = _one(fields, "To")
        sender = _one(fields, "From")
        body = _one(fields, "Body")
        media = tuple(fields.get("MediaUrl", ()))
        if not _E164.fullmatch(to):
            raise TwilioRefusal(21211, f"The 'To' number {to} is not a valid phone number.")
        if sender not in account.numbers:
            raise TwilioRefusal(21659, f"{sender} is not a Twilio phone number of this account")
        if not body and not media:
            raise TwilioRefusal(21602, "Message body is required.")
        if len(body) > MAX_BODY:
            raise TwilioRefusal(21617, "The concatenated message body exceeds 1600 characters.")
        if len(media) > MAX_MEDIA:
            raise TwilioRefusal(21623, "Number of media files exceeds allowed limit.")
        if (sender, to) in self._unsubscribed:
            raise TwilioRefusal(21610, "Attempt to send to unsubscribed recipient")
        sid = ("MM" if media else "SM") + f"{next(self._ids):08x}" + secrets.token_hex(12)
        callback = _one(fields, "StatusCallback")
        self._sent.append(
            SentMessage(sid, account.sid, to, sender, body, media, callback, tuple(form))
        )
        return {
            "sid": sid,
            "account_sid": account.sid,
            "to": to,
            "from": sender,
            "body": body,
            "status": "queued",
            "num_segments": str(_segments(body)),
            "num_media": str(len(media)),
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "error_code": None,
            "error_message": None,
            "uri": f"/2010-04-01/Accounts/{account.sid}/Messages/{sid}.json",
        }

    def _account(self, request: web.Request) -> _Account:
        path_sid = request.match_info["sid"]
        try:
            auth = BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            raise TwilioRefusal(20003, "Authenticate", 401) from None
        account = self._accounts.get(auth.login)
        if account is None or account.token != auth.password or auth.login != path_sid:
            raise TwilioRefusal(20003, "Authenticate", 401)
        return account


def _one(fields: Mapping[str, list[str]], name: str) -> str:
    values = fields.get(name, [])
    if len(values) > 1:
        raise TwilioRefusal(21609, f"{name} is given more than once")
    return values[0] if values else ""


def _segments(body: str) -> int:
    """About what Twilio reports (num_segments); the service counts its own."""
    if not body:
        return 1
    single, per = (70, 67) if _GSM_UNSAFE.search(body) else (160, 153)
    return 1 if len(body) <= single else -(-len(body) // per)


# ---------------------------------------------------------- Twilio's calls


def new_sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


def incoming_sms(
    *,
    account_sid: str,
    from_number: str,
    to_number: str,
    body: str,
    sid: str = "",
    media: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """An incoming message's parameters, as the messaging webhook documents
    them (https://www.twilio.com/docs/messaging/guides/webhook-request).
    `media`: (URL, content type) pairs."""
    message_sid = sid or new_sid("MM" if media else "SM")
    form = [
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", message_sid),
        ("NumMedia", str(len(media))),
        ("ToCity", "SAN FRANCISCO"),
        ("FromZip", "94105"),
        ("SmsSid", message_sid),
        ("FromState", "CA"),
        ("SmsStatus", "received"),
        ("FromCity", "SAN FRANCISCO"),
        ("Body", body),
        ("FromCountry", "US"),
        ("To", to_number),
        ("ToZip", "94105"),
        ("NumSegments", "1"),
        ("MessageSid", message_sid),
        ("AccountSid", account_sid),
        ("From", from_number),
        ("ApiVersion", "2010-04-01"),
    ]
    for index, (url, content_type) in enumerate(media):
        form += [(f"MediaContentType{index}", content_type), (f"MediaUrl{index}", url)]
    return form


def status_callback(
    *,
    account_sid: str,
    message: SentMessage,
    status: str,
    error_code: str = "",
) -> list[tuple[str, str]]:
    """A status callback's parameters for a message the emulator took
    (https://www.twilio.com/docs/messaging/guides/track-outbound-message-status)."""
    form = [
        ("SmsSid", message.sid),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("To", message.to),
        ("MessageSid", message.sid),
        ("AccountSid", account_sid),
        ("From", message.from_),
        ("ApiVersion", "2010-04-01"),
    ]
    if error_code:
        form.append(("ErrorCode", error_code))
    return form


async def signed_post(
    http: httpx.AsyncClient,
    target: str,
    *,
    public_url: str,
    auth_token: str,
    form: Sequence[tuple[str, str]],
) -> httpx.Response:
    """POST `form` to `target` as Twilio would to `public_url` (the URL
    configured on the number, or a reply's StatusCallback): form-encoded,
    with the X-Twilio-Signature of `public_url` and the parameters."""
    return await http.post(
        target,
        content=urlencode(list(form)).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
            "X-Twilio-Signature": sign(public_url, auth_token, form),
            "User-Agent": "TwilioProxy/1.1",
        },
    )
