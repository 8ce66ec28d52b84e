"""The limits of the content model, as the contract's comments state them.

proto/chatbot/chat/v1/content.proto documents each of these numbers and
allowed values. They bind every channel: validation enforces them on what
comes in and on the bot engine's replies, and the channel rules
(channel_rules.py) never exceed them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from chat_service.domain.enums import MessageType

MAX_TEXT_LENGTH = 4096  # Unicode code points
LANGUAGE_PATTERN = re.compile(r"[a-z]{2}")  # ISO 639-1
DEFAULT_LANGUAGE = "en"

MAX_URL_LENGTH = 2048  # every URL field
MAX_MEDIA_SIZE_BYTES = 52_428_800  # 50 MiB
MAX_ALT_TEXT_LENGTH = 500
IMAGE_MIME_TYPES = frozenset({"image/jpeg", "image/png", "image/gif"})
VIDEO_MIME_TYPES = frozenset({"video/mp4"})
AUDIO_MIME_TYPES = frozenset({"audio/mpeg"})
FILE_MIME_TYPES = IMAGE_MIME_TYPES | VIDEO_MIME_TYPES | AUDIO_MIME_TYPES | {"application/pdf"}
# The MIME types each media message type takes.
MIME_TYPES_BY_MESSAGE_TYPE: Mapping[MessageType, frozenset[str]] = {
    MessageType.IMAGE: IMAGE_MIME_TYPES,
    MessageType.VIDEO: VIDEO_MIME_TYPES,
    MessageType.AUDIO: AUDIO_MIME_TYPES,
    MessageType.FILE: FILE_MIME_TYPES,
}
ALLOWED_MIME_TYPES = FILE_MIME_TYPES
MEDIA_MESSAGE_TYPES = frozenset(MIME_TYPES_BY_MESSAGE_TYPE)

MIN_LATITUDE, MAX_LATITUDE = -90.0, 90.0
MIN_LONGITUDE, MAX_LONGITUDE = -180.0, 180.0
MAX_ADDRESS_LENGTH = 500

MAX_QUICK_REPLIES = 10
MAX_QUICK_REPLY_TITLE_LENGTH = 20
MAX_PAYLOAD_LENGTH = 1000
QUICK_REPLY_CONTENT_TYPES = frozenset({"text", "user_phone_number", "user_email"})
DEFAULT_QUICK_REPLY_CONTENT_TYPE = "text"

MAX_BUTTONS = 3
MAX_BUTTON_TITLE_LENGTH = 20
E164_PATTERN = re.compile(r"\+[1-9][0-9]{1,14}")

MIN_CARDS, MAX_CARDS = 1, 10
MAX_CARD_TITLE_LENGTH = 80
MAX_CARD_SUBTITLE_LENGTH = 80
MAX_CARD_BUTTONS = 3
