"""How validation reports a broken rule: one violation per field, all at once.

Each violation is named by its path in the request
(`content.quick_replies[2].title`), so that a caller fixes a request in one
round trip. A FieldChecker collects them while the checks walk the request
and raises them together; the checks shared by every part of a request
(lengths, counts, ids, URLs) are its methods.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from urllib.parse import urlsplit

from chat_service.domain.content_limits import MAX_URL_LENGTH
from chat_service.domain.errors import FieldViolation, InvalidArgument
from chat_service.domain.identifiers import identifier_problem


class FieldChecker:
    """Collects violations; `nested` shares the list under a longer prefix."""

    def __init__(self, prefix: str, violations: list[FieldViolation] | None = None) -> None:
        self._prefix = prefix
        self._violations = violations if violations is not None else []

    def nested(self, path: str) -> FieldChecker:
        return FieldChecker(self._prefix + path, self._violations)

    def fail(self, field: str, description: str) -> None:
        self._violations.append(FieldViolation(self._prefix + field, description))

    def identifier(self, field: str, value: str, *, maximum: int, required: bool = False) -> None:
        if required and not value:
            self.fail(field, "is required")
        elif problem := identifier_problem(value, maximum=maximum):
            self.fail(field, problem)

    def length(self, field: str, value: str, *, maximum: int, required: bool = False) -> None:
        if required and not value:
            self.fail(field, "is required")
        elif len(value) > maximum:
            self.fail(field, f"must be at most {maximum} characters, got {len(value)}")

    def count(self, field: str, items: Sequence[object], *, maximum: int, noun: str) -> None:
        if len(items) > maximum:
            self.fail(field, f"must have at most {maximum} {noun}, got {len(items)}")

    def url(self, field: str, value: str, *, required: bool = False) -> None:
        if not value:
            if required:
                self.fail(field, "is required")
            return
        if len(value) > MAX_URL_LENGTH:
            self.fail(field, f"must be at most {MAX_URL_LENGTH} characters, got {len(value)}")
            return
        problem = _url_problem(value)
        if problem:
            self.fail(field, problem)

    def raise_if_any(self) -> None:
        if self._violations:
            raise InvalidArgument(self._violations)


def _url_problem(url: str) -> str | None:
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        return "must be an absolute http or https URL without white space"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what raises on a bad one
    except ValueError:
        return "must be an absolute http or https URL"
    if parts.scheme not in ("http", "https"):
        return "must be an absolute http or https URL"
    if not parts.hostname:
        return "must be an absolute http or https URL with a host"
    return None
