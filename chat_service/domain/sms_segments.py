"""How many SMS segments a text takes, counted the way carriers do.

An SMS carries 140 bytes. A text whose every character is in the GSM 03.38
7-bit alphabet (the basic table, or the extension table reached through an
escape, which costs two septets) is sent as GSM-7: 160 septets in one
segment; a longer text is split into segments of 153 septets each (the
concatenation header takes the rest). Any other character makes the whole
text UCS-2 (UTF-16): 70 code units in one segment, 67 per segment beyond;
a character outside the Basic Multilingual Plane (most emoji) is a
surrogate pair, two code units, and a flag (two regional indicators) is
four. An escape sequence or a surrogate pair is never split between two
segments: one that does not fit moves whole to the next.

Sources: https://www.twilio.com/docs/glossary/what-sms-character-limit,
https://www.twilio.com/docs/glossary/what-is-gsm-7-character-encoding,
https://www.twilio.com/docs/glossary/what-is-ucs-2-character-encoding,
3GPP TS 23.038 (the GSM 7-bit default alphabet and its extension table).

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GSM7: Literal["GSM-7"] = "GSM-7"
UCS2: Literal["UCS-2"] = "UCS-2"

GSM7_SINGLE = 160
GSM7_PER_SEGMENT = 153
UCS2_SINGLE = 70
UCS2_PER_SEGMENT = 67

# TS 23.038 default alphabet, in table order (0x1B, the escape, left out:
# it is no character of its own).
_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_BASIC = frozenset(_BASIC) - {"\x1b"}
# The extension table: each takes the escape and itself, two septets.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


@dataclass(frozen=True, slots=True)
class SmsSegments:
    """A text's encoding, its length in that encoding's units (septets or
    UTF-16 code units) and the segments it is sent as."""

    encoding: Literal["GSM-7", "UCS-2"]
    units: int
    segments: int


def is_gsm7(text: str) -> bool:
    """Whether every character of `text` has a GSM-7 encoding."""
    return all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text)


def count_segments(text: str) -> SmsSegments:
    """The segments `text` is sent as (0 for an empty text)."""
    if is_gsm7(text):
        sizes = [2 if char in GSM7_EXTENSION else 1 for char in text]
        return SmsSegments(GSM7, sum(sizes), _segments(sizes, GSM7_SINGLE, GSM7_PER_SEGMENT))
    sizes = [2 if ord(char) > 0xFFFF else 1 for char in text]
    return SmsSegments(UCS2, sum(sizes), _segments(sizes, UCS2_SINGLE, UCS2_PER_SEGMENT))


def _segments(sizes: list[int], single: int, per_segment: int) -> int:
    """Segments for characters of `sizes` units: one when they all fit in a
    single message, else filled in order, a character that does not fit
    moving whole to the next segment."""
    total = sum(sizes)
    if total == 0:
        return 0
    if total <= single:
        return 1
    segments, used = 1, 0
    for size in sizes:
        if used + size > per_segment:
            segments += 1
            used = 0
        used += size
    return segments
