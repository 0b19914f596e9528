"""Parsing pasted SOP text into an `SOP`, guided by the template's headings and synonyms.

The parser is forgiving on purpose: it records what it finds and leaves judging to
`validate`, so a half-finished SOP still parses into something the bot can comment on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .model import SOP, Item, Section
from .template import SectionSpec, Template, load_template
from .text import Line, clean_inline, split_lines

_TITLE = re.compile(r"^(?:sop\s+)?(?:title|name)\s*[:：\-–—]\s*(?P<title>.*)$", re.I)
_SECTION_NUMBER = re.compile(
    r"^(?:(?P<word>section)\s*)?(?P<num>\d{1,2})(?!\d)(?P<zero>\.0)?"
    r"(?:[.)](?!\d)|(?=[\s:：\-–—]|$))\s*(?:[:：\-–—]\s*)?",
    re.I,
)
_HEADING_TAIL = r"(?![\w])\s*(?P<sep>[:：]|[-–—](?=\s|$)|$)\s*(?P<body>.*)$"
_UNKNOWN_HEADING = re.compile(r"^(?P<heading>[^\W\d_][^:：]{0,59}?)\s*[:：]\s*(?P<body>.*)$")
_MAX_UNKNOWN_WORDS = 8

_DOTTED = re.compile(r"^(?P<num>\d{1,2}(?:\.\d{1,3})+)(?:[.)](?!\d))?(?:\s*[:\-–—])?\s+")
_STEP = re.compile(r"^step\s*(?P<num>\d{1,3})\s*[:.)\-–—]?\s+", re.I)
_PLAIN = re.compile(r"^\(?(?P<num>\d{1,3})[.)]\s+")
_LETTER = re.compile(r"^(?:\((?P<a>[a-z]|[ivx]{1,4})\)|(?P<b>[a-z]|[ivx]{1,4})[.)])\s+", re.I)
_BULLET = re.compile(r"^[•◦▪▫‣⁃∙·●○■□➢➤►▶✓✔\-–—*+]\s+")


@dataclass(frozen=True)
class _Heading:
    number: str | None
    spec: SectionSpec | None
    heading: str
    body: str


def parse(text: str, template: Template | None = None) -> SOP:
    """Parse SOP text in any of the styles people paste; never raises on a string."""
    template = template or load_template(None)
    builder = _Builder(template)
    for line in split_lines(text if isinstance(text, str) else str(text)):
        builder.feed(line)
    return builder.finish()


class _Builder:
    """Feeds cleaned lines one at a time into title, preamble and sections."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self.title: str | None = None
        self.title_pending = False
        self.preamble: list[Line] = []
        self.sections: list[Section] = []
        self.seen: set[str] = set()
        self.last_major = 0
        self.section_hashes = 0
        self.base_indent: int | None = None

    @property
    def current(self) -> Section | None:
        return self.sections[-1] if self.sections else None

    def feed(self, line: Line) -> None:
        if not self.sections and self.title is None and self._take_title(line):
            return
        heading = _match_heading(line, self.template, self._context())
        if heading is not None:
            self._open(heading, line)
        elif self.current is None:
            self._preamble(line)
        else:
            self._content(line)

    def finish(self) -> SOP:
        if self.title is None and self.preamble:
            chosen = next((line for line in self.preamble if line.marked), self.preamble[0])
            self.preamble.remove(chosen)
            self.title = chosen.text
        return SOP(
            title=self.title or None,
            sections=self.sections,
            preamble=[line.text for line in self.preamble],
        )

    def _take_title(self, line: Line) -> bool:
        match = _TITLE.match(line.text)
        if not match:
            return False
        self.title = match.group("title").strip() or None
        self.title_pending = self.title is None
        return True

    def _context(self) -> _Context:
        current = self.current
        spec = self.template.spec(current.key) if current else None
        return _Context(
            seen=frozenset(self.seen),
            last_major=self.last_major,
            has_section=current is not None,
            in_items=current is not None and (spec is None or spec.kind == "items"),
            section_hashes=self.section_hashes,
        )

    def _open(self, heading: _Heading, line: Line) -> None:
        key = heading.spec.key if heading.spec else None
        section = Section(number=heading.number, key=key, heading=heading.heading)
        self.sections.append(section)
        self.base_indent = None
        self.section_hashes = line.hashes
        if key:
            self.seen.add(key)
        if section.major is not None:
            self.last_major = max(self.last_major, section.major)
        if any(ch.isalnum() for ch in heading.body):  # like lines, bare "..." carries nothing
            self._inline(heading.body)

    def _preamble(self, line: Line) -> None:
        if self.title_pending:
            self.title, self.title_pending = line.text, False
        else:
            self.preamble.append(line)

    def _kind(self) -> str:
        current = self.current
        spec = self.template.spec(current.key) if current else None
        return spec.kind if spec else "items"

    def _inline(self, text: str) -> None:
        """Text after "Heading:" is the body, except that "Abbreviations: IPA: Isopropyl
        Alcohol" is already the first definition."""
        section = self.current
        assert section is not None
        if self._kind() == "definitions" and is_definition(text):
            section.items.append(Item(number=None, text=text))
        else:
            section.body = text

    def _content(self, line: Line) -> None:
        section = self.current
        assert section is not None
        number, text, depth = split_marker(line.text)
        if not any(ch.isalnum() for ch in text):
            return  # "1. ;" is a marker with nothing behind it
        kind = self._kind()
        if kind == "paragraph" and not (number and "." in number):
            section.body = clean_inline(f"{section.body} {text}")  # joining can pair up "*"
            return
        if kind == "definitions" and not section.items and not section.body:
            if not is_definition(text):  # "Abbreviations:" then "None" on the next line
                section.body = text
                return
        section.items.append(Item(number=number, text=text, level=self._level(line, depth)))

    def _level(self, line: Line, depth: int | None) -> int:
        """Dotted numbers say their depth; otherwise an item indented deeper than the first
        item of the section is a sub-step."""
        if self.base_indent is None:
            self.base_indent = line.indent
        if depth is not None:
            return depth
        return 2 if line.indent >= self.base_indent + 2 else 1


@dataclass(frozen=True)
class _Context:
    seen: frozenset[str]
    last_major: int
    has_section: bool
    in_items: bool
    section_hashes: int


_DEFINITION = re.compile(
    r"^(?P<term>[^\W_][\w/&.+'’() -]{0,39}?)\s*(?:[:：=]|\s[-–—]\s)\s*(?P<meaning>\S.*)$"
)


def is_definition(text: str) -> bool:
    """ "IPA: Isopropyl Alcohol", "IPA - Isopropyl Alcohol", "IPA = ..." are definitions."""
    return _DEFINITION.match(text) is not None


def split_definition(text: str) -> tuple[str, str] | None:
    """(term, meaning) of a definition line, None for anything else."""
    match = _DEFINITION.match(text)
    if not match:
        return None
    return match.group("term"), match.group("meaning").strip()


def split_marker(text: str) -> tuple[str | None, str, int | None]:
    """Strip list markers ("5.1)", "Step 3", "a)", "•", "- 1.") from the start of a line.

    Returns (number, text, depth): depth comes only from dotted numbers ("5.1.1" -> 2).
    Markers are stripped repeatedly so rendered text never starts with one.
    """
    number: str | None = None
    depth: int | None = None
    for _ in range(4):
        found = _strip_one_marker(text)
        if found is None:
            break
        marker, text = found
        if marker is not None and (number is None or ("." in marker and "." not in number)):
            number = marker
            depth = max(1, marker.count(".")) if "." in marker else None
    return number, text.strip(), depth


def _strip_one_marker(text: str) -> tuple[str | None, str] | None:
    for pattern in (_DOTTED, _STEP, _PLAIN):
        match = pattern.match(text)
        if match:
            return match.group("num"), text[match.end() :]
    match = _LETTER.match(text)
    if match:
        return (match.group("a") or match.group("b")).lower(), text[match.end() :]
    match = _BULLET.match(text)
    if match:
        return None, text[match.end() :]
    return None


def _match_heading(line: Line, template: Template, context: _Context) -> _Heading | None:
    """Recognise a section heading: a known name (with or without a number), or a numbered
    or emphasised heading that is not in the template."""
    if _is_subheading(line, context):
        return None
    number_match = _SECTION_NUMBER.match(line.text)
    number = None
    rest = line.text
    if number_match:
        number = number_match.group("num") + (number_match.group("zero") or "")
        rest = line.text[number_match.end() :]
    known = _match_known(rest, template)
    if known is not None:
        spec, heading, body = known
        if spec.key in context.seen and not line.marked and _weak_number(number_match, context):
            return None  # "2. Process: mix" inside a procedure that already started is a step
        return _Heading(number, spec, heading, body)
    if not context.has_section:
        return None  # before the first known section, "# 21 CFR Part 11" is a title
    if number_match is not None:
        return _match_unknown_numbered(line, number_match, number, rest, context)
    if line.marked and not context.in_items:
        return _unknown(None, rest, allow_bare=True)
    return None


def _weak_number(number_match: re.Match[str] | None, context: _Context) -> bool:
    """No number, or a plain "2." that does not move past the sections seen so far."""
    if number_match is None:
        return True
    if number_match.group("zero") or number_match.group("word"):
        return False
    return int(number_match.group("num")) <= context.last_major


def _is_subheading(line: Line, context: _Context) -> bool:
    """A "###" line under a "##" section is part of that section."""
    return bool(line.hashes and context.section_hashes and line.hashes > context.section_hashes)


def _match_unknown_numbered(
    line: Line, number_match: re.Match[str], number: str | None, rest: str, context: _Context
) -> _Heading | None:
    if int(number_match.group("num")) <= context.last_major:
        return None
    strong = bool(number_match.group("zero") or number_match.group("word"))
    if context.in_items and not (strong or line.marked):
        return None  # "7. Weigh the granules: ..." inside a procedure is a step
    return _unknown(number, rest, allow_bare=line.marked)


def _unknown(number: str | None, rest: str, allow_bare: bool) -> _Heading | None:
    """A heading the template does not know: "References: ..." or a bare emphasised line."""
    match = _UNKNOWN_HEADING.match(rest)
    if match:
        heading, body = match.group("heading").strip(), match.group("body").strip()
    elif allow_bare:
        heading, body = rest.strip(), ""
    else:
        return None
    if not _plausible_heading(heading):
        return None
    return _Heading(number, None, heading, body)


def _plausible_heading(heading: str) -> bool:
    words = heading.split()
    if not words or len(words) > _MAX_UNKNOWN_WORDS or len(heading) > 60:
        return False
    if not heading[0].isalpha():
        return False
    return not (heading.isupper() and " " not in heading and len(heading) <= 6)


def _match_known(rest: str, template: Template) -> tuple[SectionSpec, str, str] | None:
    for spec, pattern in _known_patterns(template):
        match = pattern.match(rest)
        if match:
            return spec, match.group("name").strip(), match.group("body").strip()
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


def _name_regex(name: str) -> str:
    words = []
    for word in name.split():
        words.append(r"(?:and|&)" if word.casefold() in ("and", "&") else re.escape(word))
    return r"\s+".join(words)
