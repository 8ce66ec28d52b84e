"""Plain-text rules shared by validation, search and channel formatting.

One module for every rule about text itself (its stored form, how a search
matches it, how much of it an error may quote, where a long one is cut), so
that what validation stores, what search compares and what formatting
splits are the same text.
"""

from __future__ import annotations

import re
import unicodedata

_LINE_BREAK = re.compile(r"\r\n?")

# How much of a caller's value an error message may quote (see quote).
QUOTE_LIMIT = 32
MAX_SEARCH_QUERY_LENGTH = 200


def normalize_text(text: str) -> str:
    """The stored form of message text (content.proto, MessageContent.text).

    NFC, so that the same words compare and search the same however the
    client composed them; line breaks as "\\n"; control characters other than
    "\\n" and "\\t" removed (they render as garbage or break platform
    payloads); surrounding white space trimmed. Idempotent.
    """
    if text.isascii():
        # The usual case, at a fraction of the cost: ASCII is NFC already,
        # and its control characters (Cc) are 0-31 and 127.
        if "\r" in text:
            text = _LINE_BREAK.sub("\n", text)
        return text.translate(_ASCII_CONTROLS).strip()
    text = composed_lines(text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    return text.strip()


# The ASCII control characters normalize_text removes: all but "\n" and "\t".
_ASCII_CONTROLS = dict.fromkeys(code for code in (*range(32), 127) if chr(code) not in "\n\t")


def composed_lines(text: str) -> str:
    """NFC, line breaks as "\\n": the part of normalize_text that keeps
    every other character."""
    return _LINE_BREAK.sub("\n", unicodedata.normalize("NFC", text))


def search_key(text: str) -> str:
    """The form both sides of a text search take (ListConversations'
    search_query and the stored message text it is matched against): NFC,
    then casefolded, so that "e" + U+0301 finds U+00E9 and "Straße" finds
    "STRASSE". Stored text is already NFC (normalize_text), so for it this
    is its casefold."""
    return unicodedata.normalize("NFC", text).casefold()


def search_query_problem(query: str) -> str | None:
    """Why ListConversations' search_query cannot be searched for, or None.

    Checked before normalize_search_query: the length first, so that an
    oversized query costs nothing more. Stored text holds no control
    characters but tab and line feed (normalize_text), so a query with any
    other could match nothing; NUL would also reach MongoDB inside a
    regular expression, which it refuses.
    """
    if len(query) > MAX_SEARCH_QUERY_LENGTH:
        return f"must be at most {MAX_SEARCH_QUERY_LENGTH} characters, got {len(query)}"
    if any(ch not in "\t\n\r" and unicodedata.category(ch) == "Cc" for ch in query):
        return "must not contain control characters other than tab and line breaks"
    return None


def normalize_search_query(query: str) -> str:
    """The query as stored text is normalized: NFC, line breaks as "\\n".
    Not trimmed: surrounding spaces are part of a substring search."""
    return composed_lines(query)


def quote(value: str, limit: int = QUOTE_LIMIT) -> str:
    """A caller's value as an error message may show it: a repr of at most
    `limit` characters of it, and its length when it is longer.

    Error texts travel in gRPC trailers, which are small (8 KiB by
    default): a value copied whole could make the status itself fail. The
    repr escapes control characters, so nothing the caller sent can break
    a log line or a terminal either.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


# Where a long text may be cut, best first, and whether the cut goes before
# the match (a break: its white space is dropped, a message boundary replaces
# it) or after it (a sentence's closing punctuation stays with its sentence).
_BREAKS: tuple[tuple[re.Pattern[str], bool], ...] = (
    (re.compile(r"\n[ \t]*\n"), True),  # paragraph
    (re.compile(r"\n"), True),  # line
    # sentence: ASCII and ideographic stops, then closing quotes or brackets
    (re.compile("[.!?\u2026]+[\"')\\]\u201d\u2019]*(?=\\s)|[\u3002\uff01\uff1f]+"), False),
)
# White space, except the no-break spaces, which exist to forbid a break there.
_WORD_BREAK = re.compile(r"[^\S\u00a0\u2007\u202f]")


def split_text(text: str, limit: int) -> tuple[str, ...]:
    """Cut `text` into parts of at most `limit` code points.

    Prefers a paragraph break, then a line break, then a sentence end, as
    long as the part keeps at least half the limit; else the last word
    boundary; a word longer than the limit is the only thing cut hard (and
    never in front of a combining mark). Parts are trimmed; no other
    character is lost or reordered. Empty text gives no parts.
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = _cut_position(rest, limit)
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return tuple(parts)


def _cut_position(text: str, limit: int) -> int:
    # The window includes the character just past the limit: a break right
    # after a full-length part is a good one.
    window = text[: limit + 1]
    for pattern, before in _BREAKS:
        # A part much shorter than the limit would waste a platform message.
        cut = _last_cut(pattern, window, limit, before=before, minimum=max(1, limit // 2))
        if cut:
            return cut
    return _last_cut(_WORD_BREAK, window, limit, before=True, minimum=1) or _hard_cut(text, limit)


def _last_cut(
    pattern: re.Pattern[str], window: str, limit: int, *, before: bool, minimum: int
) -> int:
    """The last cut of `pattern` in [minimum, limit], or 0."""
    best = 0
    for match in pattern.finditer(window):
        cut = match.start() if before else match.end()
        if minimum <= cut <= limit:
            best = cut
    return best


def _hard_cut(text: str, limit: int) -> int:
    cut = limit
    while cut > 1 and unicodedata.combining(text[cut]):
        cut -= 1
    return cut
