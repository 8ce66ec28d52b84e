"""normalize_text: the ASCII fast path and the general path store the same text."""

from __future__ import annotations

import unicodedata

import pytest

from chat_service.domain.text import composed_lines, normalize_text


def _by_the_rule(text: str) -> str:
    """normalize_text's rule, character by character, for every text."""
    text = composed_lines(text)
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc").strip()


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("cafe\u0301", "caf\u00e9"),  # composed (NFC)
        ("  \u00e9t\u00e9\r\nhiver\r", "\u00e9t\u00e9\nhiver"),
        ("\u3000\u65e5\u672c\x07\u8a9e\u00a0", "\u65e5\u672c\u8a9e"),  # CJK, BEL, no-break space
        ("\u0085x\u200by\x9f", "x\u200by"),  # C1 controls go, a zero-width space stays
        ("\U0001f600 ok\x00", "\U0001f600 ok"),
    ],
)
def test_non_ascii_text_normalizes_as_before(text: str, stored: str) -> None:
    assert normalize_text(text) == stored


def test_every_ascii_character_is_kept_or_dropped_by_the_same_rule() -> None:
    every = "".join(chr(code) for code in range(128))
    for text in (every, f"a{every}b", "x\r\ny\rz\n\r", "\t tab \x0b\x0c\x1c\x1f end \x7f"):
        assert normalize_text(text) == _by_the_rule(text)
