"""Which lines are section headings: a template heading (numbered or not, under any of its
names), or a numbered or Markdown heading the template does not list, kept as a section of
its own. `parse` asks `match_heading` about every line, with the `Context` so far.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .template import SectionSpec, Template
from .text import Line

_SECTION_NUMBER = re.compile(
    r"^(?:(?P<word>section)\s*)?(?P<num>\d{1,2})(?!\d)(?P<zero>\.0)?"
    r"(?:[.)](?!\d)|(?=[\s:：\-–—|]|$))\s*(?:[:：\-–—|]\s*){0,2}",
    re.I,
)
# After a known heading name: more words joined by "/", "&" or "and" ("RESPONSIBILITIES /
# AUTHORITIES"), then a separator, or (for numbered or capitalised headings) just a space.
_HEADING_TAIL = (
    r"(?P<more>(?:\s*(?:/|&|\band\b)\s*[A-Z][\w-]*)*)(?![\w])\s*"
    r"(?P<sep>[:：|]|[-–—](?=\s|$)|$)?\s*(?P<body>.*)$"
)
_UNKNOWN_HEADING = re.compile(r"^(?P<heading>[^\W\d_][^:：|]{0,59}?)\s*[:：|]\s*(?P<body>.*)$")
_SMALL_WORDS = frozenset("a an and as at by for in of on or the to with & /".split())
_MAX_UNKNOWN_WORDS = 8
# One more capitalised word that is still the heading: "Process Steps", "Scope Statement: ...".
_NAME_WORD = re.compile(r"^(?P<word>[A-Z][a-z]+)(?:\s*(?P<sep>[:：])\s*(?P<body>.*)|\s*)$")
_LABEL_TAIL = re.compile(r"[\s:：\-–—|]+$")  # "2. : -" is labelled "2."


@dataclass(frozen=True)
class Heading:
    number: str | None
    spec: SectionSpec | None
    heading: str
    body: str
    label: str | None = None


@dataclass(frozen=True)
class Context:
    seen: frozenset[str]
    last_major: int
    has_section: bool
    in_items: bool
    section_hashes: int
    title_hashes: int = 0  # the "#" level of the Markdown heading taken as the title
    title_line: bool = False  # the title came from a "Title: ..." line
    next_plain: int | None = None  # the number a plain "1.", "2." list would take next
    dotted_items: bool = False  # the current section numbers its items "5.1", "5.2"
    in_extra: bool = False  # the current section is not in the template


def match_heading(line: Line, template: Template, context: Context) -> Heading | None:
    """Recognise a section heading: a known name (with or without a number), or a numbered
    or Markdown heading that is not in the template (kept as its own section, never merged
    into the one before)."""
    if line.code or line.table_header:
        return None  # nor is `ASSOCIATED PROCESS` or a table's "| Abbreviation | ... |" row
    if _is_subheading(line, context) and not _house_section_under_extra(line, template, context):
        return None
    number_match = _SECTION_NUMBER.match(line.text)
    number = label = None
    rest = line.text
    if number_match:
        number = number_match.group("num") + (number_match.group("zero") or "")
        label = _LABEL_TAIL.sub("", line.text[: number_match.end()])
        rest = line.text[number_match.end() :]
    # "1.0 OBJECTIVE To ..." or "## Scope This ...": a body after a plain space only where the
    # line is plainly a heading; "1. Methods, measurements ..." is a list item.
    loose = bool(number_match and _strong(number_match)) or line.marked
    known = _match_known(rest, template, loose)
    if known is not None:
        spec, heading, body, separated = known
        if context.has_section and not (line.gap or line.marked or number_match) \
                and heading[:1].islower():
            return None  # "... the operator has full\nresponsibility: for ..." is a wrapped line
        if context.section_hashes and not line.marked and rest[len(heading) :].lstrip()[:1] == "|":
            return None  # under "##" headings, "Abbreviation | Description" is a table row
        if spec.key in context.seen and not line.marked and _continues_list(number_match, context):
            return None  # "2. Process: mix" inside a procedure that already started is a step
        if (
            context.in_items
            and not separated
            and number_match is not None
            and not _strong(number_match)
            and not line.marked
            and not heading.isupper()
            and int(number_match.group("num")) <= context.last_major
        ):
            return None  # "3. Process the samples" is a step of the procedure
        return Heading(number, spec, heading, body, label)
    if not context.has_section:
        # Before the first known section, "# 21 CFR Part 11" is a title; a "## Summary"
        # after a "#" title (or a second "##") is a section of its own, never stray text,
        # and so is any "# Approvals" once a "Title:" line (or YAML "title:") named the SOP.
        if line.hashes and (
            context.title_line
            or (context.title_hashes and line.hashes >= max(context.title_hashes, 2))
        ):
            return _unknown(number, label, rest, allow_bare=True)
        return None
    if number_match is not None:
        return _match_unknown_numbered(line, number_match, number, label, rest, context)
    if line.hashes and (context.section_hashes or line.hashes <= 2):
        return _unknown(None, None, rest, allow_bare=True)
    # "REFERENCES" on a line of its own; under "## Fridges", a bare "ALLOWED" is its "### ALLOWED"
    if not context.section_hashes and reads_as_caps_heading(rest):
        return _unknown(None, None, rest, allow_bare=True)
    if line.marked and not context.in_items:
        return _unknown(None, None, rest, allow_bare=True)
    return None


def reads_as_caps_heading(text: str) -> bool:
    """ "REFERENCES" or "NOT ALLOWED" on a plain line of its own, under a section whose
    heading has no Markdown mark, reads as a section heading."""
    return _looks_like_heading(text) == "caps" and len(text.split()) <= 4 and text[-1:].isalpha()


def numbered_heading_stands(label: str, heading: str) -> bool:
    """Whether "label heading:" on a plain line reads as a heading even after a section's
    list: "5.0" and "Section 5" always do, and so does "7. DISTRIBUTION" in capitals; a
    plain "7. References" there may be the list's next entry."""
    match = _SECTION_NUMBER.match(label)
    return match is not None and (_strong(match) or _looks_like_heading(heading) == "caps")


def _strong(number_match: re.Match[str]) -> bool:
    """ "5.0" and "Section 5" can only number a section; "5." may number a step."""
    return bool(number_match.group("zero") or number_match.group("word"))


def _continues_list(number_match: re.Match[str] | None, context: Context) -> bool:
    """An unnumbered line, or a plain "2." right after item "1.": part of the list, while a
    repeated "2) Scope:" elsewhere is a duplicated section to report."""
    if number_match is None:
        return True
    if not _weak_number(number_match, context):
        return False
    return int(number_match.group("num")) == context.next_plain


def _weak_number(number_match: re.Match[str] | None, context: Context) -> bool:
    """No number, or a plain "2." that does not move past the sections seen so far."""
    if number_match is None:
        return True
    if _strong(number_match):
        return False
    return int(number_match.group("num")) <= context.last_major


def _is_subheading(line: Line, context: Context) -> bool:
    """A "###" line under a "##" section is part of that section."""
    return bool(line.hashes and context.section_hashes and line.hashes > context.section_hashes)


def _house_section_under_extra(line: Line, template: Template, context: Context) -> bool:
    """A "## Procedure" nested under a "# Cleaning steps" the template does not know opens the
    house section, not yet seen, instead of being a line of the extra section (written as a
    plain "Procedure:" it would read back as that section)."""
    if not context.in_extra:
        return False
    number_match = _SECTION_NUMBER.match(line.text)
    known = _match_known(line.text[number_match.end() :] if number_match else line.text,
                         template, True)
    return known is not None and known[0].key not in context.seen


def _match_unknown_numbered(
    line: Line,
    number_match: re.Match[str],
    number: str | None,
    label: str | None,
    rest: str,
    context: Context,
) -> Heading | None:
    strong = _strong(number_match)
    looks = _looks_like_heading(rest)
    if int(number_match.group("num")) <= context.last_major and not (strong and looks):
        return None
    # "7. Weigh the granules: ..." inside a procedure is a step, unless the steps there are
    # numbered "5.1", "5.2": then a plain "7." starts something else.
    dotted_list = context.dotted_items and context.next_plain is None
    if context.in_items and not (strong or line.marked or looks == "caps" or dotted_list):
        return None
    return _unknown(number, label, rest, allow_bare=line.marked or bool(looks))


def looks_like_heading(text: str) -> bool:
    """ "DISTRIBUTION" or "Document Type Abbreviations" on a line of its own reads as a heading;
    a sentence or a lone abbreviation does not."""
    return bool(_looks_like_heading(text))


def _looks_like_heading(text: str) -> str:
    """ "caps" for "DISTRIBUTION" or "REFERENCES / ANNEXURES", "title" for "Revision
    History", "" for anything that reads as a sentence or a lone abbreviation."""
    text = text.strip().rstrip(":：")
    words = text.split()
    if not words or len(words) > 6 or text.endswith((".", ";", ",")):
        return ""
    if not any(sum(ch.isalpha() for ch in word) >= 4 for word in words):
        return ""  # "IPA", "QA / QC": abbreviations, not headings
    letters = [ch for ch in text if ch.isalpha()]
    if all(ch.isupper() for ch in letters):
        return "caps"
    significant = [w for w in words if w.casefold() not in _SMALL_WORDS]
    if (
        len(words) <= 4
        and words[0][:1].isupper()
        and words[-1].casefold() not in _SMALL_WORDS
        and all(w[:1].isupper() for w in significant)
    ):
        return "title"
    return ""


def _unknown(
    number: str | None, label: str | None, rest: str, allow_bare: bool
) -> Heading | None:
    """A heading the template does not know: "References: ..." or a bare heading line."""
    match = _UNKNOWN_HEADING.match(rest)
    if match:
        heading, body = match.group("heading").strip(), match.group("body").strip()
    elif allow_bare:
        heading, body = rest.strip(), ""
    else:
        return None
    if not _plausible_heading(heading):
        return None
    return Heading(number, None, heading, body, label)


def _plausible_heading(heading: str) -> bool:
    words = heading.split()
    if not words or len(words) > _MAX_UNKNOWN_WORDS or len(heading) > 60:
        return False
    if not heading[0].isalpha():
        return False
    return not (heading.isupper() and " " not in heading and len(heading) <= 6)


def _match_known(
    rest: str, template: Template, loose: bool
) -> tuple[SectionSpec, str, str, bool] | None:
    """A template heading at the start of `rest`. Without a separator the body may follow
    after a space only when the heading is numbered, marked or written in capitals
    ("1.0 OBJECTIVE To describe ..."), so a sentence starting "Scope of ..." stays a sentence."""
    for spec, pattern in _known_patterns(template):
        match = pattern.match(rest)
        if not match:
            continue
        name = (match.group("name") + match.group("more")).strip()
        body = match.group("body").strip()
        sep = match.group("sep")
        word = _NAME_WORD.match(body) if sep is None else None
        if word and loose:  # "## Process Steps"; a plain "Process Owner: QA" stays content
            name, sep = f"{name} {word.group('word')}", word.group("sep")
            body = (word.group("body") or "").strip()
        if sep is None and body and (
            not (loose or name.isupper()) or not (body[0].isalnum() or body[0] in "\"'“‘(")
        ):
            continue
        return spec, name, body, sep is not None
    return None


@lru_cache(maxsize=32)
def _known_patterns(template: Template) -> tuple[tuple[SectionSpec, re.Pattern[str]], ...]:
    """One pattern per heading name, longest first so "Abbreviations and Definitions" wins
    over "Abbreviations"."""
    pairs = [(spec, name) for spec in template.sections for name in spec.names]
    pairs.sort(key=lambda pair: len(pair[1]), reverse=True)
    return tuple(
        (spec, re.compile(rf"^(?P<name>{_name_regex(name)}){_HEADING_TAIL}", re.I))
        for spec, name in pairs
    )


def reads_as_heading(heading: str, template: Template) -> bool:
    """Whether "Heading: ..." on a plain line is read back as this same known heading; one
    that is not ("Process Steps") needs a Markdown mark to stay a heading."""
    known = _match_known(f"{heading}: x", template, False)
    return known is not None and known[1] == heading


def _name_regex(name: str) -> str:
    words = []
    for word in name.split():
        words.append(r"(?:and|&)" if word.casefold() in ("and", "&") else re.escape(word))
    return r"\s+".join(words)
