"""SMS through Twilio, outbound: a stored reply as one Twilio message (or a
few, in order), sent with the REST API (twilio_api.py).

- Who: From the connection's `phone_number`, To the conversation's user
  (channel_metadata.platform_user_id: the `From` of their messages), with
  the connection's account SID and auth token.
- Opt-outs: nothing goes to a number whose latest keyword on the
  connection was STOP (adapters/channels/sms.py records them): permanent
  DeliveryError "recipient opted out (STOP)", until the user sends START.
- What (https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource):
  `Body` holds at most 1,600 characters (https://www.twilio.com/docs/api/errors/21617);
  replies arrive cut to that by format_for_channel (domain/channel_rules.py,
  buttons as numbered options), and anything longer still (an image's link
  added to a full text) goes out as several messages, split at word
  boundaries, in order.
- Images: as MMS (`MediaUrl`) when both numbers are North American (+1):
  Twilio's MMS is for the US and Canada ("Twilio MMS support: Supported"
  in https://www.twilio.com/en/guidelines/us/sms and .../ca/sms, not in
  other countries' guidelines); elsewhere the image's link is written into
  the text. Other media arrive as links already (the SMS channel shows
  images only).
- `StatusCallback`: the connection's `webhook_url` (the same URL Twilio
  posts incoming messages to; sms.py tells them apart), on the message
  whose SID the receipt names, so its delivery status moves forward. A
  connection without a webhook_url gets no status callbacks (and cannot
  take incoming messages either).
- Segments (domain/sms_segments.py): the receipt's metadata records how
  many segments the text takes and its encoding (`sms_segments`,
  `sms_encoding`); the delivery queue records it on the SENT delivery event
  and in the message's channel_metadata.additional_data. `mms: true` for
  MMS, which carriers do not segment.
- Pacing: none here. Twilio queues what a number cannot send at once and
  sends it at the number's rate, for up to 4 hours
  (https://www.twilio.com/docs/messaging/guides/scaling-queueing-latency).
- Receipt: the SID of the (last) message sent. SIDs of messages already
  sent are kept in memory per stored reply (outbound.PartialSends), so a
  retry after a failed later one does not send the earlier ones twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.channels.outbound import PartialSends, SenderFactory, open_connection, recipient_of
from adapters.channels.twilio import AUTH_TOKEN
from adapters.channels.twilio_api import TwilioApi
from chat_service.domain.channels import format_for_channel
from chat_service.domain.connections import E164
from chat_service.domain.content import MessageContent
from chat_service.domain.content_limits import IMAGE_MIME_TYPES
from chat_service.domain.enums import Channel, MessageType
from chat_service.domain.model import Conversation, Message
from chat_service.domain.sms_segments import UCS2, count_segments
from chat_service.domain.text import split_text
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConnectionDirectory,
    ConnectionStore,
    ConversationStore,
    DeliveryError,
    DeliveryReceipt,
    OpenedConnection,
    StoreUnavailable,
)

MAX_BODY_LENGTH = 1600  # https://www.twilio.com/docs/api/errors/21617
MAX_MEDIA_URLS = 10  # per MMS (https://www.twilio.com/docs/api/errors/21623)
OPTED_OUT = "recipient opted out (STOP)"
_MESSAGE_SID = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")
# North American Numbering Plan: where Twilio sends MMS (US and Canada).
_NANP = re.compile(r"\+1[2-9][0-9]{9}")


@dataclass(frozen=True, slots=True)
class SmsPart:
    """One Twilio message: its body and the images it carries (MMS)."""

    body: str
    media_urls: tuple[str, ...] = ()


def can_send_mms(from_number: str, to_number: str) -> bool:
    """Whether Twilio sends MMS between these numbers (both +1)."""
    return bool(_NANP.fullmatch(from_number) and _NANP.fullmatch(to_number))


def sms_parts(content: MessageContent, *, mms: bool) -> list[SmsPart]:
    """The Twilio messages that show `content`, in order: images as MMS
    media when `mms`, else as links in the text; bodies of at most 1,600
    characters, split at word boundaries."""
    bodies: list[str] = []
    media: list[str] = []
    for part in format_for_channel(content, Channel.SMS):
        image = part.media if part.type is MessageType.IMAGE else None
        if image is not None and mms and image.type in IMAGE_MIME_TYPES:
            media.append(image.url)
            bodies.append(part.text)
            continue
        lines = [part.text]
        if part.media is not None:  # an image without MMS, or any other media
            lines.append(
                f"{part.media.alt_text}\n{part.media.url}"
                if part.media.alt_text
                else part.media.url
            )
        bodies.append("\n\n".join(line for line in lines if line))
    texts = list(split_text("\n\n".join(body for body in bodies if body), MAX_BODY_LENGTH))
    if not texts and not media:
        raise DeliveryError("the message has nothing an SMS can carry", retryable=False)
    parts = [SmsPart(text) for text in texts]
    # The images ride on the last message (after the text that introduces
    # them), at most 10 per MMS.
    chunks = [tuple(media[i : i + MAX_MEDIA_URLS]) for i in range(0, len(media), MAX_MEDIA_URLS)]
    for index, chunk in enumerate(chunks):
        if index == 0 and parts:
            parts[-1] = SmsPart(parts[-1].body, chunk)
        else:
            parts.append(SmsPart("", chunk))
    return parts


def segments_metadata(parts: list[SmsPart]) -> dict[str, str | int | bool]:
    """What the receipt records about the texts sent: the segments they
    take (SMS) and their encoding; `mms` when one went as MMS."""
    texts = [part.body for part in parts if not part.media_urls and part.body]
    counted = [count_segments(text) for text in texts]
    metadata: dict[str, str | int | bool] = {}
    if counted:
        metadata["sms_segments"] = sum(c.segments for c in counted)
        metadata["sms_encoding"] = UCS2 if any(c.encoding == UCS2 for c in counted) else "GSM-7"
    if any(part.media_urls for part in parts):
        metadata["mms"] = True
    if len(parts) > 1:
        metadata["sms_messages"] = len(parts)
    return metadata


class SmsSender:
    """ChannelSender for SMS through Twilio."""

    def __init__(
        self, *, api: TwilioApi, directory: ConnectionDirectory, opt_outs: ConnectionStore
    ) -> None:
        self._api = api
        self._directory = directory
        self._opt_outs = opt_outs
        self._partial = PartialSends()

    async def send(self, conversation: Conversation, message: Message) -> DeliveryReceipt:
        opened = await _sms_connection(self._directory, conversation)
        connection = opened.connection
        recipient = recipient_of(conversation)
        try:
            opted_out = await self._opt_outs.is_opted_out(
                conversation.tenant_id, connection.connection_id, recipient
            )
        except StoreUnavailable as error:
            raise DeliveryError(f"store unavailable: {error}", retryable=True) from None
        if opted_out:
            raise DeliveryError(OPTED_OUT, retryable=False)
        sender = connection.account_id  # the phone number
        parts = sms_parts(message.content, mms=can_send_mms(sender, recipient))
        forms = [_form(part, recipient, sender) for part in parts]
        if connection.webhook_url:
            # Only the message the receipt names reports its status back.
            forms[-1].append(("StatusCallback", connection.webhook_url))
        account_sid = connection.public.get("account_sid", "")
        auth_token = opened.secrets.get(AUTH_TOKEN, "")

        async def create(form: list[tuple[str, str]]) -> str:
            return _message_sid(await self._api.create_message(account_sid, auth_token, form))

        sid = await self._partial.send(message, forms, create)
        return DeliveryReceipt(platform_message_id=sid, metadata=segments_metadata(parts))


def sms_sender_factory(api: TwilioApi, opt_outs: ConnectionStore) -> SenderFactory:
    """What bootstrap hands wiring: builds the sender once the connection
    directory exists. `opt_outs`: where sms.py records STOP and START."""

    def build(
        directory: ConnectionDirectory, store: ConversationStore, clock: Clock
    ) -> ChannelSender:
        return SmsSender(api=api, directory=directory, opt_outs=opt_outs)

    return build


def _form(part: SmsPart, to: str, sender: str) -> list[tuple[str, str]]:
    """The Messages.json parameters of one part (MediaUrl repeats)."""
    form = [("To", to), ("From", sender)]
    if part.body:
        form.append(("Body", part.body))
    return form + [("MediaUrl", url) for url in part.media_urls]


def _message_sid(answer: dict[str, object]) -> str:
    sid = answer.get("sid")
    if not isinstance(sid, str) or _MESSAGE_SID.fullmatch(sid) is None:
        # Twilio took the message: a retry could send it twice.
        raise DeliveryError("Twilio created the message but named no SID", retryable=False)
    return sid


async def _sms_connection(
    directory: ConnectionDirectory, conversation: Conversation
) -> OpenedConnection:
    """The conversation's SMS connection, with its auth token and an E.164
    phone number to send from."""
    opened = await open_connection(directory, conversation, Channel.SMS, AUTH_TOKEN)
    if not E164.fullmatch(opened.connection.account_id):
        raise DeliveryError(
            f"channel connection {opened.connection.connection_id} has no E.164 phone_number",
            retryable=False,
        )
    return opened
