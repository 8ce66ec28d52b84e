"""What each channel's platform can carry, in and out.

One row per channel: the message types its users can send, what it shows
natively, and its limits. Limits are the platforms' documented ones where
they are stricter than the content model's own (content_limits.py); the
model's limits bind everywhere else, so the counts and lengths below never
exceed them. Validation uses the inbound side, reply formatting
(channels.py) the outbound side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from chat_service.domain.content_limits import (
    MAX_BUTTONS,
    MAX_CARDS,
    MAX_QUICK_REPLIES,
    MAX_TEXT_LENGTH,
    MEDIA_MESSAGE_TYPES,
)
from chat_service.domain.enums import ButtonType, Channel, MessageType

_T = MessageType
_ALL_TYPES = frozenset(MessageType)
_ALL_BUTTONS = frozenset(ButtonType)


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """What one channel's platform can carry.

    Lengths are in Unicode code points. A count of 0 means the platform
    cannot show that element at all.
    """

    channel: Channel
    # Longest text of one platform message.
    max_text_length: int
    # Longest text that can travel in the same platform message as media, a
    # location, cards, buttons or quick replies (captions, interactive
    # bodies); often shorter than a plain text message.
    max_attached_text_length: int
    # What an end user can send from the platform.
    inbound_types: frozenset[MessageType]
    # What the platform shows natively; anything else is degraded to text.
    outbound_types: frozenset[MessageType]
    # Which button kinds it shows natively.
    button_types: frozenset[ButtonType]
    max_quick_replies: int
    max_buttons: int
    max_cards: int
    # False where one platform message carries quick replies or buttons but
    # not both (WhatsApp: one interactive element per message).
    quick_replies_with_buttons: bool = True

    def __post_init__(self) -> None:
        # Keep the table consistent: a type is shown natively exactly when
        # its element can be.
        if (_T.QUICK_REPLY in self.outbound_types) != (self.max_quick_replies > 0):
            raise ValueError(f"{self.channel}: QUICK_REPLY and max_quick_replies disagree")
        if (_T.CAROUSEL in self.outbound_types) != (self.max_cards > 0):
            raise ValueError(f"{self.channel}: CAROUSEL and max_cards disagree")
        if bool(self.button_types) != (self.max_buttons > 0):
            raise ValueError(f"{self.channel}: button_types and max_buttons disagree")
        if not 0 < self.max_attached_text_length <= self.max_text_length <= MAX_TEXT_LENGTH:
            raise ValueError(f"{self.channel}: text limits out of order")


_RULES: Mapping[Channel, ChannelRules] = {
    # Our own widget: it renders the whole content model, so the model's
    # limits are its limits.
    Channel.WEB: ChannelRules(
        channel=Channel.WEB,
        max_text_length=MAX_TEXT_LENGTH,
        max_attached_text_length=MAX_TEXT_LENGTH,
        inbound_types=_ALL_TYPES,
        outbound_types=_ALL_TYPES,
        button_types=_ALL_BUTTONS,
        max_quick_replies=MAX_QUICK_REPLIES,
        max_buttons=MAX_BUTTONS,
        max_cards=MAX_CARDS,
    ),
    # WhatsApp Cloud API (developers.facebook.com/documentation/business-
    # messaging/whatsapp/messages/...): text body 4096; interactive body and
    # media captions 1024; reply buttons max 3 (titles 20) and only send a
    # reply, so links and phone numbers go in the text, which WhatsApp
    # links itself; list messages max 10 rows, used for quick replies; one
    # interactive element per message; no generic carousel outside
    # templates; location messages both ways.
    Channel.WHATSAPP: ChannelRules(
        channel=Channel.WHATSAPP,
        max_text_length=4096,
        max_attached_text_length=1024,
        inbound_types=frozenset({_T.TEXT, *MEDIA_MESSAGE_TYPES, _T.LOCATION}),
        outbound_types=frozenset({_T.TEXT, *MEDIA_MESSAGE_TYPES, _T.LOCATION, _T.QUICK_REPLY}),
        button_types=frozenset({ButtonType.POSTBACK}),
        max_quick_replies=10,
        max_buttons=3,
        max_cards=0,
        quick_replies_with_buttons=False,
    ),
    # Messenger Platform (developers.facebook.com/documentation/business-
    # messaging/messenger-platform/send-messages/...): text 2000 (the long-
    # cited Send API limit); button template text 640 with 1-3 buttons
    # (web_url, postback, phone_number; the share button is deprecated);
    # quick replies max 13; generic template carousel max 10 elements
    # (titles and subtitles 80). Users send text and attachments; sending
    # a location is not supported.
    Channel.MESSENGER: ChannelRules(
        channel=Channel.MESSENGER,
        max_text_length=2000,
        max_attached_text_length=640,
        inbound_types=frozenset({_T.TEXT, *MEDIA_MESSAGE_TYPES}),
        outbound_types=frozenset({_T.TEXT, *MEDIA_MESSAGE_TYPES, _T.QUICK_REPLY, _T.CAROUSEL}),
        button_types=frozenset({ButtonType.POSTBACK, ButtonType.URL, ButtonType.PHONE}),
        max_quick_replies=13,
        max_buttons=3,
        max_cards=10,
    ),
    # Slack chat.postMessage (docs.slack.dev/reference/methods/chat.postMessage):
    # `text` is truncated past 40000 characters, but Slack asks clients to
    # keep a message to 4000 (docs.slack.dev/changelog/2018-truncating-
    # really-long-messages): 4000 it is. With buttons, an image or cards
    # the text goes in section blocks, whose text is limited to 3000
    # (docs.slack.dev/reference/block-kit/blocks/section-block). Buttons
    # (and quick replies, shown as buttons) go in actions blocks of up to
    # 25 elements (.../block-kit/blocks/actions-block); a URL button opens
    # its link. Image blocks show images; a carousel is one section per card
    # (image accessory, its buttons in an actions block): 10 cards take at
    # most 30 of a message's 50 blocks. Files by URL and locations become
    # text. Users send text and files of any kind.
    Channel.SLACK: ChannelRules(
        channel=Channel.SLACK,
        max_text_length=4000,
        max_attached_text_length=3000,
        inbound_types=frozenset({_T.TEXT, *MEDIA_MESSAGE_TYPES}),
        outbound_types=frozenset({_T.TEXT, _T.IMAGE, _T.QUICK_REPLY, _T.CAROUSEL}),
        button_types=frozenset({ButtonType.POSTBACK, ButtonType.URL}),
        max_quick_replies=25,
        max_buttons=25,
        max_cards=MAX_CARDS,
    ),
    # Microsoft Teams bots (learn.microsoft.com/microsoftteams/platform/
    # bots/how-to/format-your-bot-messages): the message size limit (28 KB
    # in older docs, 40-100 KB now, UTF-16) is far above 4096 code points,
    # so the model's limit binds. Hero cards, alone or in a carousel
    # attachment layout of at most 10 (.../task-modules-and-cards/cards/
    # cards-reference); their buttons (at most six there, so the model's 3
    # binds) are card actions openUrl, imBack, messageBack, invoke and
    # signin only (.../cards/cards-actions: "Teams does not support
    # CardAction types not listed"), so no call button: phone numbers go in
    # the text. Suggested actions for quick replies, of which Teams shows
    # the first three (.../conversations/suggested-actions). Images show
    # natively (PNG, JPEG, GIF); other media go as links. Users send text
    # and file or image attachments.
    Channel.TEAMS: ChannelRules(
        channel=Channel.TEAMS,
        max_text_length=MAX_TEXT_LENGTH,
        max_attached_text_length=MAX_TEXT_LENGTH,
        inbound_types=frozenset({_T.TEXT, _T.IMAGE, _T.FILE}),
        outbound_types=frozenset({_T.TEXT, _T.IMAGE, _T.QUICK_REPLY, _T.CAROUSEL}),
        button_types=frozenset({ButtonType.POSTBACK, ButtonType.URL}),
        max_quick_replies=3,
        max_buttons=3,
        max_cards=10,
    ),
    # Twilio Programmable Messaging (twilio.com/docs/glossary/what-sms-
    # character-limit; error 21617): a body of at most 1600 characters,
    # which Twilio sends as concatenated segments. MMS carries images both
    # ways (US and Canada; elsewhere Twilio sends a link). No buttons, quick
    # replies or cards.
    Channel.SMS: ChannelRules(
        channel=Channel.SMS,
        max_text_length=1600,
        max_attached_text_length=1600,
        inbound_types=frozenset({_T.TEXT, _T.IMAGE}),
        outbound_types=frozenset({_T.TEXT, _T.IMAGE}),
        button_types=frozenset(),
        max_quick_replies=0,
        max_buttons=0,
        max_cards=0,
    ),
    # Twilio Programmable Voice: replies are spoken with <Say>, whose text is
    # limited per voice (twilio.com/docs/api/errors/13521: basic 4096 bytes,
    # Polly 3000 characters, Google 5000); 3000 fits every voice. Users speak
    # (a transcript arrives as text) or leave a recording (audio).
    Channel.VOICE: ChannelRules(
        channel=Channel.VOICE,
        max_text_length=3000,
        max_attached_text_length=3000,
        inbound_types=frozenset({_T.TEXT, _T.AUDIO}),
        outbound_types=frozenset({_T.TEXT}),
        button_types=frozenset(),
        max_quick_replies=0,
        max_buttons=0,
        max_cards=0,
    ),
}


def rules_for(channel: Channel) -> ChannelRules:
    return _RULES[channel]
