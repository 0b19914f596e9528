"""Opt-in redaction of personal data before any text leaves for the model provider.

QA teams paste requests like "call Jane on +44 20 7946 0958 if the autoclave fails"; some
sites may not send names, e-mail addresses or phone numbers to a third party. `SOP_REDACT_PATTERNS`
lists what to blank out: the built-ins "email" and "phone", and any custom regular expression.
Matches become `[REDACTED-EMAIL]`, `[REDACTED-PHONE]` or `[REDACTED]` (custom patterns).

Redaction only changes what is *sent*; the request and examples stay unchanged in our database.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")

# Digit groups separated by space, dot or dash, optionally with +country code or (area code).
# Candidates are then filtered (digit count, separators, date shapes) so that SOP numbering
# ("5.1"), ranges ("1000-2000 rpm") and dates ("2026-11-25") are left alone.
_PHONE_CANDIDATE_RE = re.compile(
    r"(?<![\w.+/-])"
    r"(?:\+\d{1,3}[ .-]?)?"
    r"(?:\(\d{1,5}\)[ .-]?)?"
    r"\d{2,5}(?:[ .-]\d{2,5}){0,5}"
    r"(?![\w/]|[.-]\d)"
)
_DATE_RE = re.compile(r"^(?:\d{4}[.-]\d{1,2}[.-]\d{1,2}|\d{1,2}[.-]\d{1,2}[.-]\d{2,4})$")

EMAIL_MARK = "[REDACTED-EMAIL]"
PHONE_MARK = "[REDACTED-PHONE]"
CUSTOM_MARK = "[REDACTED]"


def _looks_like_phone(candidate: str) -> bool:
    """Seven to fifteen digits, and clearly a phone: +, (area) or at least two separators."""
    digits = sum(ch.isdigit() for ch in candidate)
    if not 7 <= digits <= 15 or _DATE_RE.match(candidate):
        return False
    if candidate.startswith("+") or "(" in candidate:
        return True
    separators = len(re.findall(r"[ .-]", candidate))
    return separators >= 2  # a bare digit run is more likely a lot or batch number


def _redact_phones(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        return PHONE_MARK if _looks_like_phone(found) else found

    return _PHONE_CANDIDATE_RE.sub(replace, text)


@dataclass(frozen=True)
class Redactor:
    """Applies the configured patterns in a fixed order: e-mail, phone, then custom patterns."""

    email: bool = False
    phone: bool = False
    custom: tuple[re.Pattern[str], ...] = ()

    @property
    def enabled(self) -> bool:
        return self.email or self.phone or bool(self.custom)

    def __call__(self, text: str) -> str:
        if not text or not self.enabled:
            return text
        if self.email:
            text = EMAIL_RE.sub(EMAIL_MARK, text)
        for pattern in self.custom:
            text = pattern.sub(CUSTOM_MARK, text)
        if self.phone:
            text = _redact_phones(text)
        return text

    def messages(self, messages: Iterable[Mapping[str, object]]) -> list[dict[str, object]]:
        """Chat messages with every string content redacted (the last step before sending)."""
        out: list[dict[str, object]] = []
        for message in messages:
            copy = dict(message)
            content = copy.get("content")
            if isinstance(content, str):
                copy["content"] = self(content)
            out.append(copy)
        return out


def make_redactor(patterns: Iterable[str]) -> Redactor:
    """Build the redactor from `SOP_REDACT_PATTERNS` (already validated by Settings)."""
    names = [p.strip() for p in patterns if p and p.strip()]
    custom = tuple(re.compile(p) for p in names if p.lower() not in ("email", "phone"))
    lowered = {p.lower() for p in names}
    return Redactor(email="email" in lowered, phone="phone" in lowered, custom=custom)


def redact(text: str, patterns: Iterable[str]) -> str:
    """One-off convenience: redact `text` with `patterns`."""
    return make_redactor(patterns)(text)


RedactFn = Callable[[str], str]
