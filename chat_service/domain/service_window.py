"""The 24-hour customer-service window of Meta's messaging platforms.

A business may send free-form messages to a WhatsApp or Messenger user only
within 24 hours of that user's last message to it; after that only a
pre-approved template (WhatsApp) or a tagged message (Messenger) may go
out. A reply outside the window is refused here, with a clear reason,
instead of being sent to fail at Meta (WhatsApp error 131047, Messenger
error 10/2018278).

- WhatsApp: "When a WhatsApp user messages you or calls you, a 24-hour
  timer called a customer service window starts"
  (https://developers.facebook.com/documentation/business-messaging/whatsapp/messages/send-messages,
  "Customer service windows").
- Messenger: "The message recipient must have sent your Page a message
  within the last 24 hours" (https://developers.facebook.com/docs/messenger-platform/reference/send-api,
  "Before You Start").

Pure rules: the time comes from the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from chat_service.domain.enums import Channel, MessageRole
from chat_service.domain.model import Message

SERVICE_WINDOW = timedelta(hours=24)

# The channels whose platforms enforce the window.
WINDOWED_CHANNELS = frozenset({Channel.WHATSAPP, Channel.MESSENGER})

_OUTSIDE_REASONS: Mapping[Channel, str] = {
    Channel.WHATSAPP: (
        "outside the 24-hour customer service window: a template message is required"
    ),
    Channel.MESSENGER: ("outside the 24-hour standard messaging window: a message tag is required"),
}


def outside_window_reason(channel: Channel) -> str:
    """What a reply refused for the window is marked FAILED with."""
    return _OUTSIDE_REASONS.get(
        channel, "outside the 24-hour customer service window: a template message is required"
    )


def last_inbound_time(message: Message) -> datetime:
    """When the user's `message` opened (or renewed) the window.

    The platform's own time of the message (`client_time`, from the webhook)
    when it is earlier than when it was stored: the platform's window runs
    from when it received the message, and an inbox backlog must not make
    the window look longer than it is.
    """
    if message.client_time is not None and message.client_time < message.created_at:
        return message.client_time
    return message.created_at


def latest_inbound(messages: Iterable[Message]) -> Message | None:
    """The newest of the user's messages among `messages`, or None."""
    newest: Message | None = None
    for message in messages:
        if message.role is MessageRole.USER and (
            newest is None or message.sequence > newest.sequence
        ):
            newest = message
    return newest


def window_closes_at(last_inbound: datetime) -> datetime:
    return last_inbound + SERVICE_WINDOW


def window_open(last_inbound: datetime | None, now: datetime) -> bool:
    """Whether a free-form message may go out at `now`, the user's last
    message having been at `last_inbound` (None: the user never wrote, so
    no window ever opened). The window is open strictly before its end."""
    if last_inbound is None:
        return False
    return now < window_closes_at(last_inbound)
