"""The request a user would type for an SOP, from its title: the prompt of an imported or
approved SOP that came with none."""

from __future__ import annotations

_TITLE_PREFIXES = (
    "standard operating procedure for ",
    "standard operating procedure on ",
    "standard operating procedure:",
    "standard operating procedure -",
    "sop for ",
    "sop on ",
    "sop:",
    "sop -",
)


def default_prompt(title: str | None) -> str:
    """The request a user would type for this SOP: "Write an SOP for <title>".

    A title that already says "SOP for ..." or "Standard Operating Procedure for ..." loses
    that prefix so the prompt does not repeat it; otherwise the title is kept as written.
    """
    cleaned = " ".join((title or "").split()).strip(" .:-")
    lowered = cleaned.lower()
    for prefix in _TITLE_PREFIXES:
        if lowered.startswith(prefix):
            cleaned = cleaned[len(prefix):].strip(" .:-")
            break
    if not cleaned:
        return "Write an SOP"
    return f"Write an SOP for {_unshout(cleaned)}"


_SMALL_WORDS = {"a", "an", "and", "at", "by", "for", "in", "of", "on", "or", "the", "to", "with"}


def _unshout(title: str) -> str:
    """ "RECEIPT OF RAW MATERIALS" → "Receipt of Raw Materials"; people do not type in caps.

    Short words that are not English glue words ("QC", "PH") stay upper-case: they are
    usually abbreviations.
    """
    if not title.isupper():
        return title
    words = []
    for index, word in enumerate(title.split()):
        lower = word.lower()
        if index and lower in _SMALL_WORDS:
            words.append(lower)
        elif len(word) <= 2 and word.isalpha():
            words.append(word)
        else:
            words.append(word.capitalize())
    return " ".join(words)
