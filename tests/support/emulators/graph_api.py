"""A local Meta Graph API: the WhatsApp Cloud API and Messenger Send API
endpoints the connectors call, checked like Meta checks them.

- `POST /{version}/{phone-number-id}/messages`: WhatsApp (text, media by
  link, location, interactive button/list), answered with
  `messages[0].id` = "wamid....".
- `POST /{version}/{page-id}/messages` and `/{version}/me/messages`:
  Messenger (text, attachments by URL, button/generic templates, quick
  replies), answered with `message_id` = "m_...".
- `GET /{version}/{media-id}`: a WhatsApp media's URL (for media fetching).

The access token is read from `Authorization: Bearer`, or the
`access_token` query parameter as the Send API's examples pass it. A
missing one is code 104, an unknown one 190, one of another account 100/33;
a payload Meta would refuse is HTTP 400 with Meta's error body
`{"error": {message, type, code, error_subcode, error_data, fbtrace_id}}`.
Every call is recorded (`calls`), and the next calls can be made to fail
(`throttle`, `fail`, `hang`, `graph_error`).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.emulators import (
    Fault,
    PlatformEmulator,
    RecordedCall,
    hung,
    throttled,
)

VERSION = "v23.0"
_VERSION = re.compile(r"v\d+\.\d+")
_HTTP_URL = re.compile(r"https?://\S+")


class GraphApiRefusal(Exception):
    """What the handler answers instead of a success."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        subcode: int | None = None,
        details: str = "",
        kind: str = "OAuthException",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = graph_error_body(code, message, subcode=subcode, details=details, kind=kind)
        self.headers = dict(headers or {})


def graph_error_body(
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    details: str = "",
    kind: str = "OAuthException",
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message,
        "type": kind,
        "code": code,
        "fbtrace_id": secrets.token_urlsafe(9),
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": error}


@dataclass(frozen=True, slots=True)
class _Account:
    kind: str  # "whatsapp" or "messenger"
    account_id: str
    token: str


@dataclass(frozen=True, slots=True)
class _Media:
    media_id: str
    phone_number_id: str
    url: str
    mime_type: str
    file_size: int
    sha256: str


class GraphApiEmulator(PlatformEmulator):
    base_setting = "META_GRAPH_API_BASE_URL"
    base_path = f"/{VERSION}"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._accounts: dict[str, _Account] = {}
        self._media: dict[str, _Media] = {}
        app = web.Application()
        app.router.add_post("/{version}/{node}/messages", self._messages)
        app.router.add_get("/{version}/{node}", self._node)
        super().__init__(app, clock=clock)

    # -------------------------------------------------------------- set-up

    def add_whatsapp_number(self, phone_number_id: str, access_token: str) -> None:
        self._accounts[phone_number_id] = _Account("whatsapp", phone_number_id, access_token)

    def add_messenger_page(self, page_id: str, page_access_token: str) -> None:
        self._accounts[page_id] = _Account("messenger", page_id, page_access_token)

    def add_media(
        self,
        media_id: str,
        *,
        phone_number_id: str,
        url: str,
        mime_type: str = "image/jpeg",
        file_size: int = 1024,
    ) -> None:
        self._media[media_id] = _Media(
            media_id, phone_number_id, url, mime_type, file_size, secrets.token_hex(32)
        )

    # ------------------------------------------------------------- faults

    def throttle(
        self, times: int = 1, *, retry_after: str | None = "2", code: int = 130429
    ) -> None:
        """HTTP 429 with a throttling code (and Retry-After unless None)."""
        body = graph_error_body(code, f"(#{code}) Rate limit hit")
        self.faults.add(throttled(body, retry_after), times)

    def fail(self, times: int = 1, *, status: int = 500, text: str = "") -> None:
        """A server error: a bare status with a text body (a proxy's), or
        Meta's transient error body when `text` is empty."""
        if text:
            self.faults.add(Fault(status=status, text=text), times)
        else:
            body = graph_error_body(2, "An unexpected error has occurred. Please retry later.")
            self.faults.add(Fault(status=status, body=body), times)

    def hang(self, times: int = 1, *, seconds: float = 30.0) -> None:
        """Hold the call `seconds` (or until stop) before answering 503."""
        self.faults.add(hung(seconds), times)

    def graph_error(
        self,
        code: int,
        message: str,
        *,
        status: int = 400,
        subcode: int | None = None,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        body = graph_error_body(code, message, subcode=subcode)
        self.faults.add(Fault(status=status, body=body, headers=dict(headers or {})), times)

    # ---------------------------------------------------------- recordings

    def sent(self, account_id: str) -> list[dict[str, Any]]:
        """The message payloads accepted for `account_id`, in order."""
        return [
            call.body
            for call in self.calls
            if call.method == "POST"
            and call.status == 200
            and call.path.split("/")[2] in (account_id, "me")
            and self._owner(call) == account_id
        ]

    def _owner(self, call: RecordedCall) -> str:
        token = call.bearer or call.query.get("access_token", "")
        for account in self._accounts.values():
            if account.token == token:
                return account.account_id
        return ""

    # ------------------------------------------------------------ handlers

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self._send)

    async def _node(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self._get_node)

    async def _answer(
        self,
        request: web.Request,
        handle: Callable[[web.Request, Any], dict[str, Any]],
    ) -> web.StreamResponse:
        index, body, injected = await self._arrived(request)
        if injected is not None:
            return injected
        try:
            if not _VERSION.fullmatch(request.match_info["version"]):
                raise GraphApiRefusal(400, 2500, "Unknown path components")
            answer = handle(request, body)
        except GraphApiRefusal as refusal:
            return self._json(index, refusal.body, status=refusal.status, headers=refusal.headers)
        return self._json(index, answer)

    def _account(self, request: web.Request, body: Any) -> _Account:
        token = _token(request, body)
        if not token:
            raise GraphApiRefusal(400, 104, "An access token is required to request this resource.")
        node = request.match_info["node"]
        by_token = next((a for a in self._accounts.values() if a.token == token), None)
        if by_token is None:
            # Deliberately echoes the token, as Meta's "Malformed access
            # token" answers once did: the connector must never repeat it.
            raise GraphApiRefusal(401, 190, f"Malformed access token {token}")
        if node != "me" and node != by_token.account_id:
            raise GraphApiRefusal(
                400,
                100,
                f"Unsupported post request. Object with ID '{node}' does not exist, cannot be "
                "loaded due to missing permissions, or does not support this operation.",
                subcode=33,
            )
        return by_token

    def _send(self, request: web.Request, body: Any) -> dict[str, Any]:
        account = self._account(request, body)
        if not isinstance(body, dict):
            raise GraphApiRefusal(400, 100, "(#100) The request body must be a JSON object")
        if account.kind == "whatsapp":
            if request.match_info["node"] == "me":
                raise GraphApiRefusal(400, 100, "(#100) Invalid parameter", details="me")
            _check_whatsapp(body)
            to = body["to"]
            return {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                "messages": [{"id": "wamid." + secrets.token_urlsafe(24)}],
            }
        _check_messenger(body)
        return {
            "recipient_id": body["recipient"]["id"],
            "message_id": "m_" + secrets.token_urlsafe(24),
        }

    def _get_node(self, request: web.Request, body: Any) -> dict[str, Any]:
        token = _token(request, body)
        media = self._media.get(request.match_info["node"])
        owner = self._accounts.get(media.phone_number_id) if media is not None else None
        if not token:
            raise GraphApiRefusal(400, 104, "An access token is required to request this resource.")
        if media is None or owner is None or owner.token != token:
            raise GraphApiRefusal(
                400, 100, "(#100) Invalid parameter", subcode=33, details="unknown media id"
            )
        return {
            "messaging_product": "whatsapp",
            "url": media.url,
            "mime_type": media.mime_type,
            "sha256": media.sha256,
            "file_size": media.file_size,
            "id": media.media_id,
        }


def _token(request: web.Request, body: Any) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    if "access_token" in request.query:
        return request.query["access_token"]
    if isinstance(body, dict) and isinstance(body.get("access_token"), str):
        return str(body["access_token"])
    return ""


# ----------------------------------------------------------------- WhatsApp


def _invalid(details: str) -> GraphApiRefusal:
    return GraphApiRefusal(400, 131009, "(#131009) Parameter value is not valid", details=details)


def _missing(details: str) -> GraphApiRefusal:
    return GraphApiRefusal(400, 131008, "(#131008) Required parameter is missing", details=details)


def _text_field(
    container: Mapping[str, Any], key: str, where: str, *, limit: int, required: bool = True
) -> str:
    value = container.get(key)
    if value is None:
        if required:
            raise _missing(f"{where}.{key} is required")
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise _invalid(f"{where}.{key} must be a non-empty string")
    if len(value) > limit:
        raise _invalid(f"{where}.{key} must be at most {limit} characters")
    return value


def _check_whatsapp(body: Mapping[str, Any]) -> None:
    """The Cloud API's checks of POST /{phone-number-id}/messages."""
    if body.get("messaging_product") != "whatsapp":
        raise GraphApiRefusal(
            400, 100, "(#100) The parameter messaging_product is required.", details=""
        )
    if not isinstance(body.get("to"), str) or not body["to"]:
        raise _missing("to is required")
    kind = body.get("type", "text")
    if kind not in ("text", "image", "audio", "video", "document", "location", "interactive"):
        raise GraphApiRefusal(400, 131051, "(#131051) Unsupported message type")
    content = body.get(kind)
    if not isinstance(content, dict):
        raise _missing(f"{kind} is required for a {kind} message")
    if kind == "text":
        _text_field(content, "body", "text", limit=4096)
        if not isinstance(content.get("preview_url", False), bool):
            raise _invalid("text.preview_url must be a boolean")
    elif kind in ("image", "audio", "video", "document"):
        _check_media(kind, content, header=False)
    elif kind == "location":
        _check_location(content)
    else:
        _check_interactive(content)


def _check_media(kind: str, media: Mapping[str, Any], *, header: bool) -> None:
    link, media_id = media.get("link"), media.get("id")
    if (link is None) == (media_id is None):
        raise _invalid(f"{kind} needs exactly one of link and id")
    if link is not None and (not isinstance(link, str) or not _HTTP_URL.fullmatch(link)):
        raise _invalid(f"{kind}.link must be an http(s) URL")
    if "caption" in media:
        if header or kind == "audio":
            raise _invalid(f"{kind}.caption is not allowed here")
        _text_field(media, "caption", kind, limit=1024)
    if "filename" in media and kind != "document":
        raise _invalid(f"{kind}.filename is only for documents")


def _check_location(location: Mapping[str, Any]) -> None:
    for key, bound in (("latitude", 90.0), ("longitude", 180.0)):
        value = location.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _missing(f"location.{key} is required")
        if not -bound <= value <= bound:
            raise _invalid(f"location.{key} is out of range")
    for key in ("name", "address"):
        _text_field(location, key, "location", limit=1000, required=False)


def _check_interactive(interactive: Mapping[str, Any]) -> None:
    kind = interactive.get("type")
    if kind not in ("button", "list"):
        raise _invalid("interactive.type must be button or list here")
    body = interactive.get("body")
    if not isinstance(body, dict):
        raise _missing("interactive.body is required")
    _text_field(body, "text", "interactive.body", limit=1024)
    footer = interactive.get("footer")
    if footer is not None:
        _text_field(footer, "text", "interactive.footer", limit=60)
    header = interactive.get("header")
    if header is not None:
        header_type = header.get("type") if isinstance(header, dict) else None
        allowed = ("text", "image", "video", "document") if kind == "button" else ("text",)
        if not isinstance(header_type, str) or header_type not in allowed:
            raise _invalid(f"interactive.header.type must be one of {', '.join(allowed)}")
        if header_type == "text":
            _text_field(header, "text", "interactive.header", limit=60)
        else:
            media = header.get(header_type)
            if not isinstance(media, dict):
                raise _missing(f"interactive.header.{header_type} is required")
            _check_media(header_type, media, header=True)
    action = interactive.get("action")
    if not isinstance(action, dict):
        raise _missing("interactive.action is required")
    if kind == "button":
        _check_reply_buttons(action)
    else:
        _check_list(action)


def _check_reply_buttons(action: Mapping[str, Any]) -> None:
    buttons = action.get("buttons")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        raise _invalid("interactive.action.buttons must hold 1 to 3 buttons")
    ids, titles = set(), set()
    for index, button in enumerate(buttons):
        where = f"interactive.action.buttons[{index}]"
        reply = button.get("reply") if isinstance(button, dict) else None
        if button.get("type") != "reply" or not isinstance(reply, dict):
            raise _invalid(f"{where} must be a reply button")
        ids.add(_text_field(reply, "id", f"{where}.reply", limit=256))
        titles.add(_text_field(reply, "title", f"{where}.reply", limit=20))
    if len(ids) != len(buttons) or len(titles) != len(buttons):
        raise _invalid("interactive.action.buttons ids and titles must be unique")


def _check_list(action: Mapping[str, Any]) -> None:
    _text_field(action, "button", "interactive.action", limit=20)
    sections = action.get("sections")
    if not isinstance(sections, list) or not 1 <= len(sections) <= 10:
        raise _invalid("interactive.action.sections must hold 1 to 10 sections")
    rows_total, ids = 0, set()
    for index, section in enumerate(sections):
        where = f"interactive.action.sections[{index}]"
        if not isinstance(section, dict):
            raise _invalid(f"{where} must be an object")
        _text_field(section, "title", where, limit=24, required=len(sections) > 1)
        rows = section.get("rows")
        if not isinstance(rows, list) or not rows:
            raise _invalid(f"{where}.rows must hold at least one row")
        for row_index, row in enumerate(rows):
            row_where = f"{where}.rows[{row_index}]"
            if not isinstance(row, dict):
                raise _invalid(f"{row_where} must be an object")
            ids.add(_text_field(row, "id", row_where, limit=200))
            _text_field(row, "title", row_where, limit=24)
            _text_field(row, "description", row_where, limit=72, required=False)
        rows_total += len(rows)
    if rows_total > 10:
        raise _invalid("a list message holds at most 10 rows")
    if len(ids) != rows_total:
        raise _invalid("row ids must be unique")


# ---------------------------------------------------------------- Messenger


def _param(details: str, *, subcode: int | None = None) -> GraphApiRefusal:
    return GraphApiRefusal(400, 100, f"(#100) {details}", subcode=subcode)


def _check_messenger(body: Mapping[str, Any]) -> None:
    """The Send API's checks of POST /{page-id}/messages."""
    recipient = body.get("recipient")
    if not isinstance(recipient, dict) or not isinstance(recipient.get("id"), str):
        raise _param("param recipient must be non-empty.")
    if body.get("messaging_type") not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
        raise _param("param messaging_type must be one of RESPONSE, UPDATE, MESSAGE_TAG")
    message = body.get("message")
    if not isinstance(message, dict):
        raise _param("param message must be non-empty.")
    has_text, has_attachment = "text" in message, "attachment" in message
    if has_text == has_attachment:
        raise _param("Exactly one of message[text] and message[attachment] must be set")
    if has_text:
        text = message["text"]
        if not isinstance(text, str) or not text:
            raise _param("param message[text] must be a non-empty UTF-8 encoded string")
        if len(text) > 2000:
            raise _param("Length of param message[text] must be less than or equal to 2000")
    else:
        _check_attachment(message["attachment"])
    replies = message.get("quick_replies")
    if replies is not None:
        _check_quick_replies(replies)


def _check_attachment(attachment: Any) -> None:
    if not isinstance(attachment, dict):
        raise _param("param message[attachment] must be an object")
    kind, payload = attachment.get("type"), attachment.get("payload")
    if not isinstance(payload, dict):
        raise _param("param message[attachment][payload] must be an object")
    if kind in ("image", "audio", "video", "file"):
        url = payload.get("url")
        if not isinstance(url, str) or not _HTTP_URL.fullmatch(url):
            raise _param("param message[attachment][payload][url] must be a valid URL")
        return
    if kind != "template":
        raise _param(
            "param message[attachment][type] must be one of image, audio, video, file, template"
        )
    template_type = payload.get("template_type")
    if template_type == "button":
        text = payload.get("text")
        if not isinstance(text, str) or not text or len(text) > 640:
            raise _param("param payload[text] must be 1 to 640 characters")
        buttons = payload.get("buttons")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
            raise _param("param payload[buttons] must hold 1 to 3 buttons")
        for button in buttons:
            _check_button(button)
    elif template_type == "generic":
        elements = payload.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
            raise _param("param payload[elements] must hold 1 to 10 elements")
        for element in elements:
            title = element.get("title") if isinstance(element, dict) else None
            if not isinstance(title, str) or not title or len(title) > 80:
                raise _param("param elements[title] must be 1 to 80 characters")
            subtitle = element.get("subtitle", "")
            if not isinstance(subtitle, str) or len(subtitle) > 80:
                raise _param("param elements[subtitle] must be at most 80 characters")
            buttons = element.get("buttons", [])
            if not isinstance(buttons, list) or len(buttons) > 3:
                raise _param("param elements[buttons] must hold at most 3 buttons")
            for button in buttons:
                _check_button(button)
    else:
        raise _param("param payload[template_type] must be button or generic here")


def _check_button(button: Any) -> None:
    if not isinstance(button, dict):
        raise _param("param buttons must be objects")
    title = button.get("title")
    if not isinstance(title, str) or not title or len(title) > 20:
        raise _param("param buttons[title] must be 1 to 20 characters")
    kind = button.get("type")
    if kind == "web_url":
        if not isinstance(button.get("url"), str) or not _HTTP_URL.fullmatch(button["url"]):
            raise _param("param buttons[url] must be a valid URL")
    elif kind == "postback":
        payload = button.get("payload")
        if not isinstance(payload, str) or not payload or len(payload) > 1000:
            raise _param("param buttons[payload] must be 1 to 1000 characters")
    elif kind == "phone_number":
        payload = button.get("payload")
        if not isinstance(payload, str) or not payload.startswith("+"):
            raise _param("param buttons[payload] must be a phone number starting with +")
    else:
        raise _param("param buttons[type] must be web_url, postback or phone_number")


def _check_quick_replies(replies: Any) -> None:
    if not isinstance(replies, list) or not 1 <= len(replies) <= 13:
        raise _param("param message[quick_replies] must hold 1 to 13 quick replies")
    for reply in replies:
        kind = reply.get("content_type") if isinstance(reply, dict) else None
        if kind in ("user_phone_number", "user_email"):
            continue
        if kind != "text":
            raise _param("param quick_replies[content_type] is not valid")
        title, payload = reply.get("title"), reply.get("payload")
        if not isinstance(title, str) or not title or len(title) > 20:
            raise _param("param quick_replies[title] must be 1 to 20 characters")
        if not isinstance(payload, str) or not payload or len(payload) > 1000:
            raise _param("param quick_replies[payload] must be 1 to 1000 characters")
