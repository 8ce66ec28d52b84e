"""Channel rules and reply formatting (domain/channel_rules.py, domain/channels.py,
domain/text.py)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import replace

import pytest

from chat_service.domain.channel_rules import ChannelRules, rules_for
from chat_service.domain.channels import MAPS_URL, format_for_channel
from chat_service.domain.content import (
    Button,
    CarouselCard,
    LocationContent,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.content_limits import MAX_TEXT_LENGTH
from chat_service.domain.enums import ButtonType, Channel, MessageType
from chat_service.domain.text import split_text
from chat_service.domain.validation import validate_content

POSTBACK = Button(ButtonType.POSTBACK, "Yes please", payload="YES")
LINK = Button(ButtonType.URL, "Track order", url="https://shop.example.com/track/42")
CALL = Button(ButtonType.PHONE, "Call us", payload="+14155550123")
SHARE = Button(ButtonType.SHARE, "Share")
REPLIES = tuple(QuickReply(f"Option {n}", f"OPT{n}") for n in range(1, 6))
CARDS = (
    CarouselCard(
        "Margherita",
        "Tomato and mozzarella",
        "https://cdn.example.com/m.jpg",
        (Button(ButtonType.URL, "Order", url="https://shop.example.com/m"), POSTBACK),
    ),
    CarouselCard("Diavola", "Spicy salami", buttons=(CALL, SHARE)),
    CarouselCard("Marinara"),
)
PHOTO = MediaContent(
    "https://cdn.example.com/cat.png", "image/png", size_bytes=2048, alt_text="A sleeping cat"
)
PLACE = LocationContent(48.8584, 2.2945, accuracy_meters=15, address="Champ de Mars, Paris")

SAMPLES: dict[str, MessageContent] = {
    "text": MessageContent.of_text("Hello there. How can I help?"),
    "text with buttons": MessageContent(
        MessageType.TEXT, text="Your order shipped.", buttons=(POSTBACK, LINK, CALL)
    ),
    "text with everything": MessageContent(
        MessageType.TEXT, text="Anything else?", quick_replies=REPLIES, buttons=(LINK, SHARE)
    ),
    "image": MessageContent(MessageType.IMAGE, text="Here it is", media=PHOTO),
    "file": MessageContent(
        MessageType.FILE,
        media=MediaContent("https://cdn.example.com/invoice.pdf", "application/pdf"),
    ),
    "audio": MessageContent(
        MessageType.AUDIO,
        media=MediaContent("https://cdn.example.com/hi.mp3", "audio/mpeg", alt_text="Greeting"),
    ),
    "video": MessageContent(
        MessageType.VIDEO, media=MediaContent("https://cdn.example.com/how.mp4", "video/mp4")
    ),
    "location": MessageContent(MessageType.LOCATION, text="We are here", location=PLACE),
    "location without address": MessageContent(
        MessageType.LOCATION, location=LocationContent(-33.8568, 151.2153)
    ),
    "quick reply": MessageContent(
        MessageType.QUICK_REPLY, text="Pick one", quick_replies=REPLIES[:3]
    ),
    "many quick replies": MessageContent(
        MessageType.QUICK_REPLY, text="Pick one", quick_replies=REPLIES
    ),
    "quick replies and buttons": MessageContent(
        MessageType.QUICK_REPLY, text="Pick one", quick_replies=REPLIES[:2], buttons=(POSTBACK,)
    ),
    "carousel": MessageContent(
        MessageType.CAROUSEL, text="Our pizzas", cards=CARDS, quick_replies=REPLIES[:1]
    ),
    "long text": MessageContent.of_text(
        "\n\n".join(
            " ".join(f"Sentence {p}.{s} has a few words in it." for s in range(30))
            for p in range(4)
        )[:4096].strip()
    ),
    "long caption with replies": MessageContent(
        MessageType.QUICK_REPLY,
        text=" ".join(f"word{n}" for n in range(500)) + " Which one?",
        quick_replies=REPLIES[:3],
    ),
}


def has_attachments(content: MessageContent) -> bool:
    return bool(
        content.media
        or content.location
        or content.cards
        or content.buttons
        or content.quick_replies
    )


def assert_deliverable(parts: tuple[MessageContent, ...], rules: ChannelRules) -> None:
    """Every part is valid, already normalized, and within the channel's rules;
    only the last one carries anything but text."""
    assert parts
    for index, part in enumerate(parts):
        assert validate_content(part, field_prefix=f"parts[{index}].") == part
        assert part.type in rules.outbound_types
        limit = rules.max_attached_text_length if has_attachments(part) else rules.max_text_length
        assert len(part.text) <= limit
        assert len(part.quick_replies) <= rules.max_quick_replies
        assert len(part.cards) <= rules.max_cards
        for buttons in (part.buttons, *(card.buttons for card in part.cards)):
            assert len(buttons) <= rules.max_buttons
            assert all(button.type in rules.button_types for button in buttons)
        if part.quick_replies and part.buttons:
            assert rules.quick_replies_with_buttons
    for part in parts[:-1]:
        assert part.type is MessageType.TEXT
        assert not has_attachments(part)


def shown(parts: tuple[MessageContent, ...]) -> str:
    """Everything a user can see of the parts, natively or as text."""

    def pieces(part: MessageContent) -> Iterator[str]:
        yield part.text
        if part.media:
            yield from (part.media.url, part.media.alt_text)
        if part.location:
            yield part.location.address
        yield from (reply.title for reply in part.quick_replies)
        for button in (*part.buttons, *(b for card in part.cards for b in card.buttons)):
            yield from (button.title, button.url, button.payload)
        for card in part.cards:
            yield from (card.title, card.subtitle)

    return "\n".join(piece for part in parts for piece in pieces(part))


def information(content: MessageContent) -> Iterator[str]:
    """What a user must still be able to read or act on, wherever it ends up."""
    yield from content.text.split()
    if content.media:
        yield content.media.url
        yield from content.media.alt_text.split()
    if content.location:
        yield from content.location.address.split()
    yield from (reply.title for reply in content.quick_replies)
    for button in (*content.buttons, *(b for card in content.cards for b in card.buttons)):
        if button.type is not ButtonType.SHARE:
            yield button.title
        if button.type is ButtonType.URL:
            yield button.url
        if button.type is ButtonType.PHONE:
            yield button.payload
    for card in content.cards:
        yield from (card.title, card.subtitle)


# ------------------------------------------------------------------- rules


def test_every_channel_has_rules_within_the_content_model() -> None:
    for channel in Channel:
        rules = rules_for(channel)
        assert rules.channel is channel
        assert rules.max_text_length <= MAX_TEXT_LENGTH
        assert rules.inbound_types
        assert MessageType.TEXT in rules.outbound_types


def test_platform_limits() -> None:
    assert rules_for(Channel.WHATSAPP).max_text_length == 4096
    assert rules_for(Channel.WHATSAPP).max_buttons == 3
    assert rules_for(Channel.MESSENGER).max_text_length == 2000
    assert rules_for(Channel.MESSENGER).max_quick_replies == 13
    assert rules_for(Channel.MESSENGER).max_cards == 10
    assert rules_for(Channel.SMS).max_text_length == 1600
    assert MessageType.CAROUSEL not in rules_for(Channel.WHATSAPP).outbound_types
    assert rules_for(Channel.SMS).inbound_types == {MessageType.TEXT, MessageType.IMAGE}
    assert rules_for(Channel.VOICE).outbound_types == {MessageType.TEXT}
    assert rules_for(Channel.VOICE).inbound_types == {MessageType.TEXT, MessageType.AUDIO}


def test_inconsistent_rules_are_refused() -> None:
    web = rules_for(Channel.WEB)

    with pytest.raises(ValueError, match="QUICK_REPLY"):
        replace(web, max_quick_replies=0)
    with pytest.raises(ValueError, match="text limits"):
        replace(web, max_attached_text_length=web.max_text_length + 1)


# -------------------------------------------------------------- formatting


@pytest.mark.parametrize("name", list(SAMPLES))
def test_web_passes_content_through_unchanged(name: str) -> None:
    content = SAMPLES[name]

    (only,) = format_for_channel(content, Channel.WEB)

    assert only is content


@pytest.mark.parametrize("channel", list(Channel))
@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_reply_is_deliverable_and_keeps_its_information(name: str, channel: Channel) -> None:
    content = SAMPLES[name]
    assert validate_content(content, field_prefix="") == content

    parts = format_for_channel(content, channel)

    assert_deliverable(parts, rules_for(channel))
    visible = shown(parts)
    missing = [piece for piece in information(content) if piece not in visible]
    assert not missing
    assert all(part.language == content.language for part in parts)


def test_sms_gets_a_carousel_as_a_numbered_list() -> None:
    (part,) = format_for_channel(SAMPLES["carousel"], Channel.SMS)

    assert part.type is MessageType.TEXT
    assert part.text == (
        "Our pizzas\n\n"
        "1. Margherita\nTomato and mozzarella\nOrder: https://shop.example.com/m\n\n"
        "2. Diavola\nSpicy salami\nCall us: +14155550123\n\n"
        "3. Marinara\n\n"
        "Reply with one of:\n1. Option 1\n2. Yes please (Margherita)"
    )


def test_messenger_shows_the_carousel_minus_what_it_cannot_show() -> None:
    (part,) = format_for_channel(SAMPLES["carousel"], Channel.MESSENGER)

    assert part.type is MessageType.CAROUSEL
    assert [card.title for card in part.cards] == ["Margherita", "Diavola", "Marinara"]
    assert part.cards[0] == CARDS[0]
    assert part.cards[1].buttons == (CALL,)  # Messenger retired its share button
    assert part.quick_replies == REPLIES[:1]
    assert part.text == "Our pizzas"


def test_channels_without_quick_replies_get_numbered_options() -> None:
    (part,) = format_for_channel(SAMPLES["quick reply"], Channel.SMS)

    assert part == MessageContent.of_text(
        "Pick one\n\nReply with one of:\n1. Option 1\n2. Option 2\n3. Option 3"
    )


def test_too_many_quick_replies_all_become_text() -> None:
    (part,) = format_for_channel(SAMPLES["many quick replies"], Channel.TEAMS)

    assert part.type is MessageType.TEXT
    assert part.quick_replies == ()
    assert part.text.endswith(
        "Reply with one of:\n" + "\n".join(f"{n}. Option {n}" for n in range(1, 6))
    )


def test_quick_replies_within_the_limit_stay_native() -> None:
    (part,) = format_for_channel(SAMPLES["many quick replies"], Channel.WHATSAPP)

    assert part == SAMPLES["many quick replies"]


def test_buttons_the_platform_cannot_show_become_links() -> None:
    (part,) = format_for_channel(SAMPLES["text with buttons"], Channel.WHATSAPP)

    assert part.buttons == (POSTBACK,)
    assert part.text == (
        "Your order shipped.\n\n"
        "Track order: https://shop.example.com/track/42\nCall us: +14155550123"
    )


def test_sms_turns_every_button_into_text() -> None:
    (part,) = format_for_channel(SAMPLES["text with buttons"], Channel.SMS)

    assert part.buttons == ()
    assert part.text == (
        "Your order shipped.\n\n"
        "Track order: https://shop.example.com/track/42\nCall us: +14155550123\n\n"
        "Reply with one of:\n1. Yes please"
    )


def test_whatsapp_keeps_the_quick_replies_of_a_quick_reply_message() -> None:
    (part,) = format_for_channel(SAMPLES["quick replies and buttons"], Channel.WHATSAPP)

    assert part.type is MessageType.QUICK_REPLY
    assert part.quick_replies == REPLIES[:2]
    assert part.buttons == ()
    assert part.text.endswith("Reply with one of:\n1. Yes please")


def test_whatsapp_keeps_the_buttons_of_other_messages() -> None:
    content = MessageContent(
        MessageType.TEXT, text="Done.", quick_replies=REPLIES[:2], buttons=(POSTBACK,)
    )

    (part,) = format_for_channel(content, Channel.WHATSAPP)

    assert part.buttons == (POSTBACK,)
    assert part.quick_replies == ()
    assert part.text == "Done.\n\nReply with one of:\n1. Option 1\n2. Option 2"


def test_a_location_becomes_its_address_and_a_maps_link() -> None:
    (part,) = format_for_channel(SAMPLES["location"], Channel.MESSENGER)

    link = MAPS_URL.format(latitude="48.8584", longitude="2.2945")
    assert part == MessageContent.of_text(
        f"We are here\n\nLocation: Champ de Mars, Paris (within 15 m)\n{link}"
    )


def test_a_location_without_address_shows_its_coordinates() -> None:
    (part,) = format_for_channel(SAMPLES["location without address"], Channel.SMS)

    assert part.text.startswith("Location: -33.8568, 151.2153\nhttps://")
    assert "query=-33.8568,151.2153" in part.text


def test_whatsapp_sends_locations_natively() -> None:
    (part,) = format_for_channel(SAMPLES["location"], Channel.WHATSAPP)

    assert part == SAMPLES["location"]


def test_unsupported_media_becomes_its_description_and_url() -> None:
    (file_by_sms,) = format_for_channel(SAMPLES["file"], Channel.SMS)
    (image_by_voice,) = format_for_channel(SAMPLES["image"], Channel.VOICE)

    assert file_by_sms == MessageContent.of_text("File: https://cdn.example.com/invoice.pdf")
    assert image_by_voice == MessageContent.of_text(
        "Here it is\n\nImage: A sleeping cat\nhttps://cdn.example.com/cat.png"
    )


def test_sms_sends_images_as_mms() -> None:
    assert format_for_channel(SAMPLES["image"], Channel.SMS) == (SAMPLES["image"],)


# --------------------------------------------------------------- splitting


def words(parts: tuple[MessageContent, ...]) -> list[str]:
    return " ".join(part.text for part in parts).split()


def test_long_text_is_split_within_the_limit_keeping_every_word() -> None:
    content = SAMPLES["long text"]

    parts = format_for_channel(content, Channel.SMS)

    assert all(len(part.text) <= 1600 for part in parts)
    assert words(parts) == content.text.split()
    # Its four paragraphs of about 1100 characters each fit one part each.
    assert [part.text for part in parts] == content.text.split("\n\n")


def test_split_prefers_paragraphs_to_lines() -> None:
    first = " ".join(["alpha"] * 150)  # 899 characters
    line = " ".join(["beta"] * 60)  # 299 characters
    second = "\n".join([line] * 4)  # a later single line break would fit too

    parts = format_for_channel(MessageContent.of_text(f"{first}\n\n{second}"), Channel.SMS)

    assert [part.text for part in parts] == [first, second]


def test_split_prefers_sentences_to_words() -> None:
    sentence = "This sentence is exactly fifty characters long ok."
    text = " ".join([sentence] * 40)  # 2039 characters, no line breaks

    parts = format_for_channel(MessageContent.of_text(text), Channel.SMS)

    assert [len(part.text) for part in parts] == [1580, 458]
    assert all(part.text.endswith("long ok.") for part in parts)


def test_only_a_word_longer_than_the_limit_is_cut() -> None:
    long_word = "x" * 2000
    text = f"Before the link {long_word} after it"

    parts = format_for_channel(MessageContent.of_text(text), Channel.SMS)

    assert [part.text for part in parts] == [
        "Before the link",
        "x" * 1600,
        "x" * 400 + " after it",
    ]


def test_quick_replies_ride_on_the_last_part_only() -> None:
    content = SAMPLES["long caption with replies"]  # 3900 characters

    parts = format_for_channel(content, Channel.MESSENGER)

    assert len(parts) == 3
    assert all(len(part.text) <= 2000 for part in parts)
    assert len(parts[-1].text) <= 640
    assert parts[-1].text.endswith("Which one?")
    assert parts[-1].quick_replies == REPLIES[:3]
    assert parts[-1].type is MessageType.QUICK_REPLY
    assert all(part == MessageContent.of_text(part.text) for part in parts[:-1])
    assert words(parts) == content.text.split()


def test_a_long_caption_goes_before_the_media() -> None:
    caption = " ".join(["caption"] * 300)  # 2399 characters
    content = MessageContent(MessageType.IMAGE, text=caption, media=PHOTO)

    parts = format_for_channel(content, Channel.WHATSAPP)

    assert [part.type for part in parts] == [MessageType.TEXT, MessageType.IMAGE]
    assert len(parts[1].text) <= 1024
    assert parts[1].media == PHOTO
    assert words(parts) == caption.split()


def test_parts_keep_the_language() -> None:
    content = replace(SAMPLES["long text"], language="de")

    parts = format_for_channel(content, Channel.SMS)

    assert {part.language for part in parts} == {"de"}


def test_a_hard_cut_keeps_combining_marks_with_their_letter() -> None:
    text = "a" * 9 + "e\u0301" + "b" * 5  # the accent would start the second part

    parts = split_text(text, 10)

    assert parts == ("a" * 9, "e\u0301" + "b" * 5)


def test_no_break_spaces_are_not_break_points() -> None:
    parts = split_text("aaaa bb\u00a0cc", 8)

    assert parts == ("aaaa", "bb\u00a0cc")


def test_split_text_edges() -> None:
    assert split_text("", 5) == ()
    assert split_text("  short  ", 5) == ("short",)
    with pytest.raises(ValueError, match="positive"):
        split_text("text", 0)


# Hypothesis is not installed in this project; a seeded random search keeps
# the property test deterministic and fast.
_ALPHABET = "abcdefghij"
_SEPARATORS = [" ", " ", " ", " ", "\n", "\n\n", ". ", "! ", "\t", " \n "]


def _random_text(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(0, 120)):
        pieces.append("".join(rng.choices(_ALPHABET, k=rng.choice([1, 2, 3, 5, 8, 13, 40]))))
        pieces.append(rng.choice(_SEPARATORS))
    return "".join(pieces)


@pytest.mark.parametrize("seed", range(400))
def test_split_text_properties(seed: int) -> None:
    rng = random.Random(seed)
    text = _random_text(rng)
    limit = rng.choice([1, 2, 7, 16, 50, 160, 1000])

    parts = split_text(text, limit)

    assert all(0 < len(part) <= limit for part in parts)
    assert all(part == part.strip() for part in parts)
    # Nothing but white space at the cuts is lost, nothing is reordered.
    assert re.sub(r"\s", "", "".join(parts)) == re.sub(r"\s", "", text)
    if all(len(word) <= limit for word in text.split()):
        assert " ".join(parts).split() == text.split()
    # Every part is a piece of the text as it was.
    assert all(part in text for part in parts)
