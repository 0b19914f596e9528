"""The wording fingerprint of an SOP's text: its words in order, without its numbering.

The release before issue #13 stored approved SOPs renumbered (a wrapped line became a step and
the steps after it got new numbers), named known sections by the template's heading ("1.0
Objective:" for the author's "Purpose:") and kept only the first line of a wrapped title. The
verbatim training text of the same SOP keeps the author's numbers, headings and lines. Both
have the same fingerprint, so a re-import or re-approval finds the old example and restores
its text instead of storing the SOP a second time.

Left out, and why:
- numbering at the start of a line ("5", "5.", "5.0", "5.1.1", "5)", "(a)", "iv.",
  "Section 5", "Step 3") and bullets: numbering, not words;
- punctuation, case and whitespace (so where lines wrap): markup, not words;
- the heading of each section (the words before the first colon of a block, a block being
  what blank lines separate): the old release wrote the template's name there;
- the title block ("Title: ..." up to the first blank line): the old release cut wrapped
  titles, so titles are compared on their own (`title_may_be_cut`).

Stored as training_example.wording_hash (migration 0003 computed it for older rows): a change
to what is left out needs a migration that computes it again.
"""

from __future__ import annotations

import hashlib
import re

_TITLE = re.compile(r"^\W*title\s*[:：]", re.I)
# Numbering that starts a line: "5", "5.", "5.0", "5.1.1", "5)", "(5)", "Section 5",
# "Step 3", a letter or roman numeral "a)", "(a)", "iv." ... then its separator.
_MARKER = re.compile(
    r"^(?:(?:section|step)\s*)?\d{1,3}(?:\.\d{1,3})*[.)]?(?=[\s:：\-–—|]|$)"
    r"|^(?:[a-z]|[ivx]{1,4})[.)](?=\s|$)",
    re.I,
)
_LEAD = re.compile(r"^[\W_]+")  # bullets, Markdown marks, "(" of "(a)", separators
_WORD = re.compile(r"[^\W_]+")
_BLANK = re.compile(r"\n[ \t]*\n")
# A section heading is at most this many words before its colon ("Responsibilities /
# Authorities:"); a longer run is a sentence that happens to contain a colon.
_HEADING_WORDS = 8


def wording(text: str) -> list[str]:
    """The body's words in order, lower-cased, without numbering, headings or punctuation."""
    words: list[str] = []
    normalised = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    for index, block in enumerate(_BLANK.split(normalised)):
        lines = [_strip_markers(line) for line in block.split("\n")]
        joined = " ".join(line for line in lines if line)
        if index == 0 and _TITLE.match(block.strip()):
            continue
        heading, colon, rest = joined.partition(":")
        if colon and len(_WORD.findall(heading)) <= _HEADING_WORDS:
            joined = rest
        words.extend(_WORD.findall(joined.casefold()))
    return words


def wording_fingerprint(text: str) -> str:
    """sha256 of `wording(text)`: the same for the renumbered and the verbatim text of an SOP."""
    return hashlib.sha256(" ".join(wording(text)).encode("utf-8")).hexdigest()


def title_may_be_cut(stored: str | None, title: str | None) -> bool:
    """True when the `stored` title is `title`, or its first words as the old release kept
    them from a title wrapped over two lines."""
    old, new = _WORD.findall((stored or "").casefold()), _WORD.findall((title or "").casefold())
    return old == new[: len(old)] and (bool(old) or not new)


_DOTTED_STEP = re.compile(r"^\d{1,2}(?:\.\d{1,3})+\s+(?P<text>\S.*)$")
_SENTENCE_END = (".", ":", ";", "!", "?", ")")


def continuation_steps(text: str) -> list[str]:
    """Numbered lines that read as the rest of the line before them ("5.2 cleaning operation
    and ..." after "5.1.1 Put 'OFF' the electric supply before the"): what the release before
    issue #13 made of wrapped lines. They start in lower case after a line without a
    sentence end; the author's own numbering cannot be recovered from the text alone."""
    found: list[str] = []
    previous = ""
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        match = _DOTTED_STEP.match(line)
        if (match and previous and match["text"][0].islower()
                and not previous.endswith(_SENTENCE_END)):
            found.append(line)
        previous = line
    return found


def _strip_markers(line: str) -> str:
    """The line without leading bullets and numbering (they may stack: "- 1. ...")."""
    rest = line.strip()
    while True:
        stripped = _LEAD.sub("", rest)
        match = _MARKER.match(stripped)
        if match:
            stripped = stripped[match.end():]
        stripped = stripped.strip()
        if stripped == rest:
            return rest
        rest = stripped
