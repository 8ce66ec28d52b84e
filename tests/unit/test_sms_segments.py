"""SMS segment counting (chat_service/domain/sms_segments.py): the edges
carriers count at (160/161 GSM-7, 70/71 UCS-2), escape characters that
take two septets, and characters that take two UTF-16 code units."""

from __future__ import annotations

import pytest

from chat_service.domain.sms_segments import (
    GSM7,
    GSM7_BASIC,
    GSM7_EXTENSION,
    UCS2,
    SmsSegments,
    count_segments,
    is_gsm7,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SmsSegments(GSM7, 0, 0)),
        ("a" * 160, SmsSegments(GSM7, 160, 1)),
        ("a" * 161, SmsSegments(GSM7, 161, 2)),
        ("a" * 306, SmsSegments(GSM7, 306, 2)),  # 2 segments of 153
        ("a" * 307, SmsSegments(GSM7, 307, 3)),
        ("é" * 160, SmsSegments(GSM7, 160, 1)),  # é is in the basic table
        ("ж" * 70, SmsSegments(UCS2, 70, 1)),
        ("ж" * 71, SmsSegments(UCS2, 71, 2)),
        ("ж" * 134, SmsSegments(UCS2, 134, 2)),  # 2 segments of 67
        ("ж" * 135, SmsSegments(UCS2, 135, 3)),
    ],
)
def test_the_limits_carriers_count_at(text: str, expected: SmsSegments) -> None:
    assert count_segments(text) == expected


def test_one_character_outside_gsm7_makes_the_whole_text_ucs2() -> None:
    assert count_segments("a" * 69 + "ç").segments == 1  # ç (lower case) is not GSM-7
    assert count_segments("a" * 70 + "ç") == SmsSegments(UCS2, 71, 2)
    curly_apostrophe = "\u2019"
    assert count_segments("a" * 159 + curly_apostrophe) == SmsSegments(UCS2, 160, 3)


@pytest.mark.parametrize("char", sorted(GSM7_EXTENSION))
def test_an_escape_character_takes_two_septets(char: str) -> None:
    assert count_segments(char * 80) == SmsSegments(GSM7, 160, 1)
    assert count_segments(char * 81) == SmsSegments(GSM7, 162, 2)


def test_an_escape_sequence_is_never_split_between_segments() -> None:
    # 152 septets then "€" (2): 154 fits no single SMS; the escape does not
    # fit in the first segment's 153 either, so both halves go whole: 2.
    assert count_segments("a" * 152 + "€" + "a" * 10) == SmsSegments(GSM7, 164, 2)
    # 305 septets + "€": the first segment takes 153, the second 152 and
    # cannot take the escape's two: a third segment.
    assert count_segments("a" * 305 + "€") == SmsSegments(GSM7, 307, 3)
    assert count_segments("a" * 304 + "€") == SmsSegments(GSM7, 306, 2)


def test_an_emoji_is_two_code_units_and_a_flag_four() -> None:
    assert count_segments("😀" * 35) == SmsSegments(UCS2, 70, 1)
    assert count_segments("😀" * 36) == SmsSegments(UCS2, 72, 2)
    assert count_segments("🇫🇷") == SmsSegments(UCS2, 4, 1)
    assert count_segments("🇫🇷" * 17 + "ab") == SmsSegments(UCS2, 70, 1)
    assert count_segments("🇫🇷" * 18) == SmsSegments(UCS2, 72, 2)


def test_a_surrogate_pair_is_never_split_between_segments() -> None:
    # 66 units then an emoji: 68 units in one segment of 67 cannot hold the
    # pair's second half, so it moves whole.
    assert count_segments("ж" * 66 + "😀" + "ж" * 10) == SmsSegments(UCS2, 78, 2)
    assert count_segments("ж" * 133 + "😀") == SmsSegments(UCS2, 135, 3)


def test_the_tables_are_the_standards() -> None:
    # 3GPP TS 23.038: 128 code points in the basic table, one of them the
    # escape; ten characters reached through it.
    assert len(GSM7_BASIC) == 127
    assert "\x1b" not in GSM7_BASIC
    assert frozenset("\f^{}\\[~]|€") == GSM7_EXTENSION
    assert is_gsm7("Hello @ £5 {ok}\n")
    assert not is_gsm7("naïve")
