"""A local Slack Web API: `chat.postMessage` as the Slack sender calls it,
checked like Slack checks it.

- `POST /api/chat.postMessage`, JSON, the bot token in `Authorization:
  Bearer` (https://docs.slack.dev/reference/methods/chat.postMessage).
  Answered as Slack does: HTTP 200 with `{"ok": true, "channel", "ts",
  "message"}`, or HTTP 200 with `{"ok": false, "error": "<code>"}`:
  `not_authed` (no token), `invalid_auth` (an unknown one),
  `channel_not_found` (a channel the workspace does not have),
  `not_in_channel` (the bot is not a member), `no_text`, `invalid_blocks`
  (a Block Kit limit broken: 50 blocks, section text 3000, 1-25 actions,
  button text 75, value 2000, url 3000, unique action ids, image blocks
  with image_url and alt_text). Text past 40,000 characters is truncated
  with the `message_truncated` warning Slack gives.
- Every call is recorded (`calls`); `posted(channel)` lists the messages
  accepted there. The next calls can be made to fail (`ratelimit`:
  HTTP 429 + Retry-After + `ratelimited`; `error`: `ok: false` with a
  code; `server_error`: 5xx; `hang`: no answer within the client's timeout).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.emulators import Fault, PlatformEmulator, hung, throttled

MAX_TEXT = 40_000
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_ACTIONS = 25
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2000
MAX_URL = 3000
MAX_ACTION_ID = 255
_HTTP_URL = re.compile(r"https?://\S+")


class SlackRefusal(Exception):
    """An `ok: false` answer (HTTP 200, as Slack answers its errors)."""

    def __init__(self, error: str, *, detail: str = "") -> None:
        super().__init__(error)
        self.body: dict[str, Any] = {"ok": False, "error": error}
        if detail:
            self.body["response_metadata"] = {"messages": [f"[ERROR] {detail}"]}


@dataclass
class _Workspace:
    team_id: str
    token: str
    bot_user_id: str
    channels: dict[str, bool] = field(default_factory=dict)  # channel -> bot is a member


@dataclass(frozen=True, slots=True)
class PostedMessage:
    """What Slack kept of an accepted chat.postMessage."""

    team_id: str
    channel: str
    ts: str
    thread_ts: str
    text: str
    blocks: tuple[Any, ...]
    payload: Mapping[str, Any]


class SlackApiEmulator(PlatformEmulator):
    base_setting = "SLACK_API_BASE_URL"
    base_path = "/api"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._workspaces: dict[str, _Workspace] = {}
        self._posted: list[PostedMessage] = []
        self._ts = itertools.count(1)
        app = web.Application()
        app.router.add_post("/api/{method}", self._method)
        super().__init__(app, clock=clock)

    # -------------------------------------------------------------- set-up

    def add_workspace(self, team_id: str, bot_token: str, bot_user_id: str = "U0LAN0Z89") -> None:
        self._workspaces[team_id] = _Workspace(team_id, bot_token, bot_user_id)

    def add_channel(self, team_id: str, channel: str, *, member: bool = True) -> None:
        """A channel (or DM: ids starting with D) of the workspace."""
        self._workspaces[team_id].channels[channel] = member

    # ------------------------------------------------------------- faults

    def ratelimit(self, times: int = 1, *, retry_after: str | None = "3") -> None:
        """HTTP 429 with `ratelimited` (and Retry-After unless None)."""
        self.faults.add(throttled({"ok": False, "error": "ratelimited"}, retry_after), times)

    def error(self, code: str, times: int = 1) -> None:
        """HTTP 200 with `ok: false` and `code` (channel_not_found...)."""
        self.faults.add(Fault(status=200, body={"ok": False, "error": code}), times)

    def server_error(self, status: int = 503, times: int = 1) -> None:
        self.faults.add(Fault(status=status, text="upstream connect error"), times)

    def hang(self, seconds: float, times: int = 1) -> None:
        """No answer for `seconds` (or until the emulator stops): a timeout."""
        body = {"ok": False, "error": "request_timeout"}
        self.faults.add(hung(seconds, status=504, body=body), times)

    # ---------------------------------------------------------- recordings

    def posted(self, channel: str | None = None) -> list[PostedMessage]:
        """The messages accepted (in `channel`), in order."""
        return [m for m in self._posted if channel is None or m.channel == channel]

    # ------------------------------------------------------------ handlers

    async def _method(self, request: web.Request) -> web.StreamResponse:
        index, body, injected = await self._arrived(request)
        if injected is not None:
            return injected
        try:
            if request.match_info["method"] != "chat.postMessage":
                raise SlackRefusal("unknown_method")
            answer = self._post_message(request, body)
        except SlackRefusal as refusal:
            return self._json(index, refusal.body)  # HTTP 200, as Slack answers errors
        return self._json(index, answer)

    def _workspace(self, request: web.Request) -> _Workspace:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise SlackRefusal("not_authed")
        found = next((w for w in self._workspaces.values() if w.token == token), None)
        if found is None:
            raise SlackRefusal("invalid_auth")
        return found

    def _post_message(self, request: web.Request, body: Any) -> dict[str, Any]:
        workspace = self._workspace(request)
        content_type = request.headers.get("Content-Type", "")
        if not content_type.startswith("application/json") or not isinstance(body, dict):
            raise SlackRefusal("invalid_json")
        channel = body.get("channel")
        if not isinstance(channel, str) or channel not in workspace.channels:
            raise SlackRefusal("channel_not_found")
        if not workspace.channels[channel]:
            raise SlackRefusal("not_in_channel")
        thread_ts = body.get("thread_ts", "")
        if not isinstance(thread_ts, str):
            raise SlackRefusal("invalid_arguments", detail="thread_ts must be a string")
        text = body.get("text", "")
        blocks = body.get("blocks")
        if not isinstance(text, str):
            raise SlackRefusal("invalid_arguments", detail="text must be a string")
        if blocks is not None:
            check_blocks(blocks)
        elif not text.strip():
            raise SlackRefusal("no_text")
        answer: dict[str, Any] = {"ok": True, "channel": channel}
        if len(text) > MAX_TEXT:
            text = text[:MAX_TEXT]
            answer["response_metadata"] = {"warnings": ["message_truncated"]}
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        posted = PostedMessage(
            team_id=workspace.team_id,
            channel=channel,
            ts=ts,
            thread_ts=thread_ts,
            text=text,
            blocks=tuple(blocks or ()),
            payload=dict(body),
        )
        self._posted.append(posted)
        message: dict[str, Any] = {
            "type": "message",
            "user": workspace.bot_user_id,
            "bot_id": "B" + workspace.bot_user_id[1:],
            "text": text,
            "ts": ts,
        }
        if posted.thread_ts:
            message["thread_ts"] = posted.thread_ts
        if blocks:
            message["blocks"] = blocks
        return answer | {"ts": ts, "message": message}


# ---------------------------------------------------------------- Block Kit


def _invalid(detail: str) -> SlackRefusal:
    return SlackRefusal("invalid_blocks", detail=detail)


def check_blocks(blocks: Any) -> None:
    """The Block Kit checks Slack makes of a message's blocks
    (https://docs.slack.dev/reference/block-kit/blocks)."""
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= MAX_BLOCKS:
        raise _invalid(f"blocks must hold 1 to {MAX_BLOCKS} blocks")
    action_ids: set[str] = set()
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "section":
            _check_text(block.get("text"), f"{where}.text", MAX_SECTION_TEXT)
            accessory = block.get("accessory")
            if accessory is not None:
                _check_image(accessory, f"{where}.accessory")
        elif kind == "image":
            _check_image(block, where)
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= MAX_ACTIONS:
                raise _invalid(f"{where}.elements must hold 1 to {MAX_ACTIONS} elements")
            for number, element in enumerate(elements):
                action_ids.add(_check_button(element, f"{where}.elements[{number}]", action_ids))
        elif kind != "divider":
            raise _invalid(f"{where}.type {kind!r} is not one the emulator knows")


def _check_text(text: Any, where: str, limit: int, *, plain: bool = False) -> None:
    kinds = ("plain_text",) if plain else ("plain_text", "mrkdwn")
    if not isinstance(text, dict) or text.get("type") not in kinds:
        raise _invalid(f"{where} must be a {' or '.join(kinds)} text object")
    value = text.get("text")
    if not isinstance(value, str) or not value:
        raise _invalid(f"{where}.text must be a non-empty string")
    if len(value) > limit:
        raise _invalid(f"{where}.text must be less than {limit + 1} characters")


def _check_image(image: Any, where: str) -> None:
    if not isinstance(image, dict) or image.get("type") != "image":
        raise _invalid(f"{where} must be an image")
    url, alt = image.get("image_url"), image.get("alt_text")
    if not isinstance(url, str) or not _HTTP_URL.fullmatch(url) or len(url) > MAX_URL:
        raise _invalid(f"{where}.image_url must be an http(s) URL of at most {MAX_URL}")
    if not isinstance(alt, str) or not alt or len(alt) > 2000:
        raise _invalid(f"{where}.alt_text must be 1 to 2000 characters")


def _check_button(element: Any, where: str, taken: set[str]) -> str:
    if not isinstance(element, dict) or element.get("type") != "button":
        raise _invalid(f"{where} must be a button")
    _check_text(element.get("text"), f"{where}.text", MAX_BUTTON_TEXT, plain=True)
    action_id = element.get("action_id")
    if not isinstance(action_id, str) or not 1 <= len(action_id) <= MAX_ACTION_ID:
        raise _invalid(f"{where}.action_id must be 1 to {MAX_ACTION_ID} characters")
    if action_id in taken:
        raise _invalid(f"{where}.action_id {action_id!r} is not unique in the message")
    value, url = element.get("value"), element.get("url")
    if value is not None and (not isinstance(value, str) or len(value) > MAX_BUTTON_VALUE):
        raise _invalid(f"{where}.value must be a string of at most {MAX_BUTTON_VALUE}")
    if url is not None and (
        not isinstance(url, str) or not _HTTP_URL.fullmatch(url) or len(url) > MAX_URL
    ):
        raise _invalid(f"{where}.url must be an http(s) URL of at most {MAX_URL}")
    return action_id
