"""A local Bot Framework: the parts of Microsoft's side a Teams bot talks to,
checked like Microsoft checks them.

- `GET /v1/.well-known/openidconfiguration` and `GET /v1/.well-known/keys`:
  the Bot Connector's OpenID metadata and its signing keys (RSA, made here
  with `cryptography`; each key endorsed for "msteams"), as
  TEAMS_OPENID_METADATA_URL reads them. `mint` signs a token as the Bot
  Connector signs the ones it sends a bot (iss, aud = the app id,
  serviceurl, kid), `rotate` publishes a new key (the old one stays unless
  told), `foreign_key` makes one that is never published (a forgery).
- `POST /botframework.com/oauth2/v2.0/token`: the client credentials grant
  (TEAMS_TOKEN_URL): the app id and password must be a registered bot's and
  the scope `https://api.botframework.com/.default`; a refusal is the OAuth
  error body (`invalid_client` with an AADSTS code, HTTP 401).
- `POST {service path}/v3/conversations/{id}/activities[/{activity id}]`:
  the Bot Connector's "send to conversation" and "reply to activity", for
  the service URL `service_url` (the emulator's origin plus "/amer/"). The
  bearer token must be one the token endpoint issued and not expired; the
  activity is checked like Teams checks it (a message; hero cards with at
  most 6 buttons of Teams' action types; at most 10 carousel cards;
  suggested actions of type imBack, at most 3, and never beside
  attachments) and answered with `{"id": ...}`; a refusal is the Connector's
  `{"error": {"code", "message"}}`.

Every call is recorded (`calls`); the next calls can be made to fail
(`throttle`, `fail`, `hang`, `refuse`), on the activities endpoint or, with
`on="token"`, on the token endpoint.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.emulators import (
    PASS,
    Fault,
    Faults,
    PlatformEmulator,
    RecordedCall,
    hung,
    throttled,
)

ISSUER = "https://api.botframework.com"
SCOPE = "https://api.botframework.com/.default"
TEAMS = "msteams"
SERVICE_PATH = "/amer"
TOKEN_PATH = "/botframework.com/oauth2/v2.0/token"
TOKEN_LIFETIME = 3600
_CARD_ACTIONS = frozenset({"openUrl", "imBack", "messageBack", "invoke", "signin"})


def new_app_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey
    endorsements: tuple[str, ...] = (TEAMS,)

    def jwk(self) -> dict[str, Any]:
        numbers = self.private.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": _b64(numbers.n),
            "e": _b64(numbers.e),
            "endorsements": list(self.endorsements),
        }


def make_key(kid: str | None = None, *, endorsements: tuple[str, ...] = (TEAMS,)) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid or secrets.token_urlsafe(12), private, endorsements)


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class _Grant:
    app_id: str
    expires_at: float


class ConnectorRefusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"code": code, "message": message}}


class BotConnectorEmulator(PlatformEmulator):
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._keys: list[SigningKey] = [make_key()]
        self._bots: dict[str, str] = {}  # app id -> password
        self._grants: dict[str, _Grant] = {}  # access token -> grant
        self.token_faults = Faults()
        self.metadata_fetches = 0
        self.key_fetches = 0
        app = web.Application()
        app.router.add_get("/v1/.well-known/openidconfiguration", self._metadata)
        app.router.add_get("/v1/.well-known/keys", self._jwks)
        app.router.add_post(TOKEN_PATH, self._token)
        conversations = SERVICE_PATH + "/v3/conversations/{conversation}/activities"
        app.router.add_post(conversations, self._activity)
        app.router.add_post(conversations + "/{activity}", self._activity)
        super().__init__(app, clock=clock)

    # -------------------------------------------------------------- set-up

    @property
    def service_environment(self) -> dict[str, str]:
        """The settings that point a service's Teams side here."""
        return {"TEAMS_OPENID_METADATA_URL": self.metadata_url, "TEAMS_TOKEN_URL": self.token_url}

    @property
    def metadata_url(self) -> str:
        """What TEAMS_OPENID_METADATA_URL is set to."""
        return f"{self.origin}/v1/.well-known/openidconfiguration"

    @property
    def token_url(self) -> str:
        """What TEAMS_TOKEN_URL is set to."""
        return f"{self.origin}{TOKEN_PATH}"

    @property
    def service_url(self) -> str:
        """The serviceUrl of the activities it sends (as Teams': a region path)."""
        return f"{self.origin}{SERVICE_PATH}/"

    def add_bot(self, app_id: str, password: str) -> None:
        self._bots[app_id] = password

    # -------------------------------------------------------------- keys

    @property
    def current_key(self) -> SigningKey:
        return self._keys[-1]

    def rotate(self, *, retire_old: bool = False) -> SigningKey:
        """Publish a new signing key (what `mint` signs with from now on)."""
        key = make_key()
        self._keys = [key] if retire_old else [*self._keys, key]
        return key

    def publish(self, key: SigningKey) -> None:
        self._keys.append(key)

    @staticmethod
    def foreign_key(kid: str | None = None) -> SigningKey:
        """A key nobody publishes (reusing a published kid makes a forgery)."""
        return make_key(kid)

    def mint(
        self,
        app_id: str,
        *,
        service_url: str | None = None,
        key: SigningKey | None = None,
        issuer: str = ISSUER,
        issued_at: float | None = None,
        lifetime: float = TOKEN_LIFETIME,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A Bot Connector token for the bot `app_id` (the audience)."""
        key = key or self.current_key
        now = self._clock() if issued_at is None else issued_at
        payload: dict[str, Any] = {
            "serviceurl": self.service_url if service_url is None else service_url,
            "nbf": int(now) - 10,
            "exp": int(now + lifetime),
            "iss": issuer,
            "aud": app_id,
        }
        payload |= dict(claims or {})
        return jwt.encode(
            payload, key.private, algorithm="RS256", headers={"kid": key.kid, **(headers or {})}
        )

    # ------------------------------------------------------------- faults

    def _queue(self, on: str) -> Faults:
        return self.token_faults if on == "token" else self.faults

    def throttle(self, times: int = 1, *, retry_after: str | None = "2", on: str = "") -> None:
        body = {"error": {"code": "TooManyRequests", "message": "Too many requests"}}
        self._queue(on).add(throttled(body, retry_after), times)

    def fail(self, times: int = 1, *, status: int = 500, on: str = "") -> None:
        body = {"error": {"code": "ServiceError", "message": "An unexpected error occurred"}}
        self._queue(on).add(Fault(status=status, body=body), times)

    def refuse(self, status: int, code: str, message: str, *, times: int = 1) -> None:
        body = {"error": {"code": code, "message": message}}
        self.faults.add(Fault(status=status, body=body), times)

    def hang(self, times: int = 1, *, seconds: float = 30.0, on: str = "") -> None:
        self._queue(on).add(hung(seconds), times)

    def let_through(self, times: int = 1, *, on: str = "") -> None:
        self._queue(on).add(PASS, times)

    def expire_tokens(self) -> None:
        """Every access token issued so far stops being accepted."""
        self._grants = {token: replace(g, expires_at=0.0) for token, g in self._grants.items()}

    # ---------------------------------------------------------- recordings

    def activities(self, conversation_id: str | None = None) -> list[RecordedCall]:
        """The accepted activity calls, in order (of one conversation)."""
        return [
            call
            for call in self.calls
            if call.path.startswith(SERVICE_PATH + "/v3/")
            and call.status in (200, 201)
            and (conversation_id is None or call.query.get("conversation") == conversation_id)
        ]

    def token_requests(self) -> list[RecordedCall]:
        return [call for call in self.calls if call.path == TOKEN_PATH]

    # ------------------------------------------------------------ handlers

    async def _metadata(self, request: web.Request) -> web.StreamResponse:
        self.metadata_fetches += 1
        return web.json_response(
            {
                "issuer": ISSUER,
                "authorization_endpoint": "https://invalid.botframework.com",
                "jwks_uri": f"{self.origin}/v1/.well-known/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.key_fetches += 1
        return web.json_response({"keys": [key.jwk() for key in self._keys]})

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        index = self._record(
            request,
            raw=b"",  # never keep the secret
            body={k: v for k, v in form.items() if k != "client_secret"},
            query={},
        )
        injected = await self._injected(index, self.token_faults)
        if injected is not None:
            return injected
        status, answer = self._grant(form)
        self._answered(index, status)  # not the answer: it holds the access token
        return web.json_response(answer, status=status)

    def _grant(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != "client_credentials":
            return 400, _oauth_error("unsupported_grant_type", "AADSTS70003")
        if form.get("scope") != SCOPE:
            return 400, _oauth_error("invalid_scope", "AADSTS70011")
        app_id, password = form.get("client_id", ""), form.get("client_secret", "")
        expected = self._bots.get(app_id)
        if expected is None:
            return 400, _oauth_error("unauthorized_client", "AADSTS700016")
        if not secrets.compare_digest(expected.encode(), password.encode()):
            return 401, _oauth_error("invalid_client", "AADSTS7000215")
        token = "bf." + secrets.token_urlsafe(32)
        self._grants[token] = _Grant(app_id, self._clock() + TOKEN_LIFETIME)
        return 200, {
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "ext_expires_in": TOKEN_LIFETIME,
            "access_token": token,
        }

    async def _activity(self, request: web.Request) -> web.StreamResponse:
        conversation = request.match_info["conversation"]
        reply_to = request.match_info.get("activity", "")
        # The decoded path parameters as the query, for assertions.
        index, body, injected = await self._arrived(
            request, query={"conversation": conversation, "replyTo": reply_to}
        )
        if injected is not None:
            return injected
        try:
            self._authorize(self.calls[index])
            _check_activity(body, conversation)
        except ConnectorRefusal as refusal:
            return self._json(index, refusal.body, status=refusal.status)
        answer = {"id": str(int(self._clock() * 1000)) + secrets.token_hex(2)}
        return self._json(index, answer, status=201)

    def _authorize(self, call: RecordedCall) -> None:
        grant = self._grants.get(call.bearer)
        if grant is None or grant.expires_at <= self._clock():
            raise ConnectorRefusal(401, "Unauthorized", "Authorization has been denied")


def _oauth_error(code: str, aadsts: str) -> dict[str, Any]:
    return {
        "error": code,
        "error_description": f"{aadsts}: the request was refused. Trace ID: {uuid.uuid4()}",
        "error_codes": [int(aadsts.removeprefix("AADSTS"))],
    }


def _bad(message: str) -> ConnectorRefusal:
    return ConnectorRefusal(400, "BadArgument", message)


def _check_activity(body: Any, conversation: str) -> None:
    if not isinstance(body, dict) or body.get("type") != "message":
        raise _bad("Activity type must be message")
    named = body.get("conversation")
    if isinstance(named, dict) and named.get("id") not in (None, conversation):
        raise _bad("The activity's conversation is not the one in the URL")
    text, attachments = body.get("text"), body.get("attachments")
    if text is not None and (not isinstance(text, str) or len(text) > 28_000):
        raise _bad("Text must be a string under the message size limit")
    if attachments is not None and not isinstance(attachments, list):
        raise _bad("Attachments must be a list")
    if not text and not attachments:
        raise _bad("The activity has neither text nor attachments")
    if body.get("textFormat") not in (None, "plain", "markdown", "xml"):
        raise _bad("Unknown textFormat")
    if body.get("attachmentLayout") not in (None, "list", "carousel"):
        raise _bad("Unknown attachmentLayout")
    if len(attachments or []) > 10:
        raise _bad("At most 10 attachments")
    for attachment in attachments or []:
        _check_attachment(attachment)
    suggested = body.get("suggestedActions")
    if suggested is not None:
        if attachments:
            raise _bad("Suggested actions are not supported with attachments")
        actions = suggested.get("actions") if isinstance(suggested, dict) else None
        if not isinstance(actions, list) or not 1 <= len(actions) <= 3:
            raise _bad("Suggested actions must hold 1 to 3 actions")
        for action in actions:
            if not isinstance(action, dict) or action.get("type") != "imBack":
                raise _bad("Suggested actions must be imBack")
            _check_title(action)


def _check_attachment(attachment: Any) -> None:
    if not isinstance(attachment, dict) or not isinstance(attachment.get("contentType"), str):
        raise _bad("An attachment needs a contentType")
    kind = attachment["contentType"]
    if kind == "application/vnd.microsoft.card.hero":
        card = attachment.get("content")
        if not isinstance(card, dict):
            raise _bad("A hero card needs its content")
        buttons = card.get("buttons", [])
        if not isinstance(buttons, list) or len(buttons) > 6:
            raise _bad("A hero card holds at most 6 buttons")
        for button in buttons:
            _check_action(button)
        for image in card.get("images", []):
            if not isinstance(image, dict) or not str(image.get("url", "")).startswith("https://"):
                raise _bad("Card images need an https url")
    elif kind.startswith("image/"):
        if not str(attachment.get("contentUrl", "")).startswith("https://"):
            raise _bad("An image attachment needs an https contentUrl")
    else:
        raise _bad(f"Attachment type {kind} is not expected from this bot")


def _check_action(action: Any) -> None:
    if not isinstance(action, dict) or action.get("type") not in _CARD_ACTIONS:
        raise _bad("Teams does not support this card action type")
    _check_title(action)
    if action["type"] == "openUrl" and not str(action.get("value", "")).startswith(
        ("https://", "http://")
    ):
        raise _bad("openUrl needs a URL value")
    if action["type"] == "messageBack" and action.get("value") is None:
        raise _bad("messageBack needs a value")


def _check_title(action: Mapping[str, Any]) -> None:
    title = action.get("title")
    if not isinstance(title, str) or not title:
        raise _bad("Actions need a title")
