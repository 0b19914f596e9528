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
from .text import Line, clean_inline, reread, split_lines

_TITLE = re.compile(r"^(?:sop\s+)?(?:title|name)\s*[:：\-–—|]\s*(?P<title>.*)$", re.I)
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
_WRAPPED_TITLE = 30

_DOTTED = re.compile(r"^(?P<num>\d{1,2}(?:\.\d{1,3})+)(?:[.)](?!\d))?(?:\s*[:\-–—])?\s+")
_LABEL_TAIL = re.compile(r"[\s:：\-–—|]+$")  # "2. : -" is labelled "2."
_CELL_EDGE = re.compile(r"^\|\s*")  # "5.1 | Switch off": a table row, step number in a cell
_STEP = re.compile(r"^step\s*(?P<num>\d{1,3})\s*[:.)\-–—]?\s+", re.I)
_PLAIN = re.compile(r"^\(?(?P<num>\d{1,3})[.)]\s+")
_LETTER = re.compile(r"^(?:\((?P<a>[a-z]|[ivx]{1,4})\)|(?P<b>[a-z]|[ivx]{1,4})[.)])\s+", re.I)
_BULLET = re.compile(r"^[•◦▪▫‣⁃∙·●○■□➢➤►▶✓✔\-–—*+]\s+")
# "Execution: Operator" on its own line is a new entry, not the end of a wrapped line.
_FIELD_LINE = re.compile(r"^[^:：|]{1,40}[:：|](?:\s|$)")
_LABEL_LINE = re.compile(r"^[A-Z][\w/&()' -]{0,40}?\s*[:：]\s+\S")


def _join_title(title: str, more: str) -> str:
    """A title wrapped over two lines, cleaned as one line: a `code span` or **bold** the wrap
    (or an HTML line break) cut in two is decoration again once joined, and is read as such,
    so the training text reads the same when it is read again."""
    return clean_inline(f"{title} {more}")


@dataclass(frozen=True)
class _Heading:
    number: str | None
    spec: SectionSpec | None
    heading: str
    body: str
    label: str | None = None


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
        self.title_open = False  # the next unbroken line continues a wrapped title
        self.preamble: list[Line] = []
        self.sections: list[Section] = []
        self.seen: set[str] = set()
        self.last_major = 0
        self.section_hashes = 0
        self.title_hashes = 0  # "#" level of the first Markdown heading before any section
        self.title_line = False  # the title came from a "Title: ..." (or YAML "title:") line
        self.base_indent: int | None = None
        self.next_plain: int | None = None  # after item "3." of the current section: 4
        self.dotted_items = False
        self.pending_target: Item | Section | None = None
        self.pending_parts: list[str] = []
        self.heading_item: Item | None = None  # "### Sub-heading": never continued by a line
        self.item_context: tuple[Item, _Context] | None = None  # see `_append`

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
        self._flush()
        if self.title is None and self.preamble:
            chosen = next((line for line in self.preamble if line.marked), self.preamble[0])
            index = self.preamble.index(chosen)
            self.preamble.remove(chosen)
            self.title = chosen.text
            # An untagged first-line title long enough to have been wrapped continues on the
            # next unbroken line, as after "Title:".
            wrapped = len(chosen.text) >= _WRAPPED_TITLE and not chosen.marked
            while wrapped and index < len(self.preamble):
                line = self.preamble[index]
                if line.gap or line.marked or _FIELD_LINE.match(line.text):
                    break
                self.title = _join_title(self.title, line.text)
                self.preamble.pop(index)
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
        self.title_hashes = 1  # a "## Heading" after "Title: ..." is a section of its own
        self.title_pending = self.title is None
        self.title_line = self.title is not None
        # Only a line long enough to have been hard-wrapped can continue on the next line.
        self.title_open = self.title is not None and len(line.text) >= _WRAPPED_TITLE
        return True

    def _context(self) -> _Context:
        current = self.current
        spec = self.template.spec(current.key) if current else None
        return _Context(
            seen=frozenset(self.seen),
            last_major=self.last_major,
            has_section=current is not None,
            in_items=current is not None and (spec is None or spec.kind == "items"),
            in_extra=current is not None and spec is None,
            section_hashes=self.section_hashes,
            title_hashes=self.title_hashes,
            title_line=self.title_line,
            next_plain=self.next_plain,
            dotted_items=self.dotted_items,
        )

    def _open(self, heading: _Heading, line: Line) -> None:
        self._flush()
        key = heading.spec.key if heading.spec else None
        section = Section(
            number=heading.number, key=key, heading=heading.heading, label=heading.label
        )
        self.sections.append(section)
        self.base_indent = None
        self.next_plain = None
        self.dotted_items = False
        self.heading_item = None
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
            self.title_open = len(line.text) >= _WRAPPED_TITLE
        elif (
            self.title_open and not line.gap and not line.marked and self.title
            and not _FIELD_LINE.match(line.text)
        ):
            self.title = _join_title(self.title, line.text)  # a long title wrapped in two
        else:
            self.title_open = False
            self.preamble.append(line)
            self.title_hashes = self.title_hashes or line.hashes

    def _kind(self) -> str:
        current = self.current
        spec = self.template.spec(current.key) if current else None
        return spec.kind if spec else "items"

    def _inline(self, text: str) -> None:
        """Text after "Heading:" is the body, except that "Abbreviations: IPA: Isopropyl
        Alcohol" is already the first definition."""
        section = self.current
        assert section is not None
        if (
            self._kind() == "definitions"
            and is_definition(text)
            # On a line of its own (as the training text writes it), "10 X 0|0" would open a
            # section "10 X 0" and "5.1 | 1" be step 5.1: then it stays the body, as written.
            and _match_heading(Line(text=text), self.template, self._context()) is None
            and split_marker_as_written(text)[0] is None
        ):
            section.items.append(Item(number=None, text=text))
        else:
            section.body = text

    def _content(self, line: Line) -> None:
        """A line with a marker is a new item; a plain line is a new entry only where it
        reads as one (a definition, "Label: ...", or a paragraph after a blank line), and
        otherwise continues the item or text before it: hard-wrapped lines join up."""
        section = self.current
        assert section is not None
        marker, number, text, depth = split_marker_as_written(line.text)
        if not any(ch.isalnum() for ch in text):
            return  # "1. ;" is a marker with nothing behind it
        if marker is not None:
            level = self._level(line, depth)
            self._append(section, Item(number=number, text=text, level=level, marker=marker), line)
            if number is not None:
                self.next_plain = int(number) + 1 if number.isdigit() else None
                self.dotted_items = self.dotted_items or "." in number
            return
        kind = self._kind()
        if (
            starts_entry(text, kind)
            or (kind != "paragraph" and (line.marked or line.table_row))
            or (line.gap and bool(section.items))
            or (kind == "items" and not section.items)
        ):
            level = section.items[-1].level if section.items else 1
            self._append(section, Item(number=None, text=text, level=level), line)
        elif section.items and self._joinable(section.items[-1], text):
            self._continue(section.items[-1], text)
        elif section.items:  # "5.1 0." then "0": joined, it would read as a new marker
            self._append(section, Item(number=None, text=text, level=section.items[-1].level), line)
        else:
            self._continue(section, text)

    def _append(self, section: Section, item: Item, line: Line) -> None:
        """Add an item, remembering the context its line was read in: a line joined to it
        later is checked in that context, as the training text will be read again."""
        self._flush()
        self.item_context = (item, self._context())
        section.items.append(item)
        self.heading_item = item if line.marked else None

    def _joinable(self, item: Item, text: str) -> bool:
        """Whether `text` continues `item`: not after a heading, and not when the joined line
        would read as something else ("5.1 0." + "0", or "2. X" + "0|", a heading "X 0")."""
        if item is self.heading_item:
            return False  # a Markdown heading is a line of its own, however short
        parts = self.pending_parts if self.pending_target is item else []
        joined = " ".join([item.text, *parts, text])
        if not parts and _strip_one_marker(joined) is not None:
            return False
        line = Line(text=" ".join(part for part in (item.marker, clean_inline(joined)) if part))
        remembered, context = self.item_context or (None, self._context())
        if remembered is not item:
            context = self._context()
        return _match_heading(line, self.template, context) is None

    def _continue(self, target: Item | Section, text: str) -> None:
        """Collect the lines of a wrapped item; joined once (linear time, however long)."""
        if self.pending_target is not target:
            self._flush()
            self.pending_target = target
        self.pending_parts.append(text)

    def _flush(self) -> None:
        target, parts = self.pending_target, self.pending_parts
        if target is None:
            return
        if isinstance(target, Item):  # joining can pair up "*", so clean the joined text
            text = clean_inline(" ".join([target.text, *parts]))
            if not target.marker:  # the training text starts the line with it
                text = reread(text)
            else:
                # Read as the training text will be read again: "5.1 `| 0" + "0`" cleans to
                # "| 0 0", and "5.1 | 0 0" is step 5.1 in a table cell, "0 0".
                marker, number, rest, _depth = split_marker_as_written(f"{target.marker} {text}")
                if marker and rest:
                    target.marker, target.number, text = marker, number, rest
            target.text = text
        else:  # "Abbreviations:" then "ABC1:" and "1": joined, the first definition
            joined = clean_inline(" ".join([target.body, *parts]))
            target.body = ""
            self.pending_target, self.pending_parts = None, []
            self._inline(joined)
        self.pending_target, self.pending_parts = None, []

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
    title_hashes: int = 0  # the "#" level of the Markdown heading taken as the title
    title_line: bool = False  # the title came from a "Title: ..." line
    next_plain: int | None = None  # the number a plain "1.", "2." list would take next
    dotted_items: bool = False  # the current section numbers its items "5.1", "5.2"
    in_extra: bool = False  # the current section is not in the template


_DEFINITION = re.compile(
    r"^(?P<term>[^\W_][\w/&.+'’() -]{0,39}?)\s*(?:[:：=|]|\s[-–—]\s)\s*(?P<meaning>(?!//)\S.*)$"
)
# "HVAC Heating, Ventilation and Air Conditioning": a term that looks like an abbreviation
# (two or more capitals, digits allowed) followed by its meaning, with only a space between.
_SPACED_DEFINITION = re.compile(
    r"^(?P<term>(?=[\w&/.+-]*[A-Z][\w&/.+-]*[A-Z])[A-Za-z0-9][\w&/.+-]{1,11})\s+"
    r"(?:[-–—]\s+)?(?P<meaning>[A-Za-z(].*)$"
)


def is_definition(text: str) -> bool:
    """ "IPA: Isopropyl Alcohol", "IPA - ...", "IPA = ...", "IPA | ..." (a table row) and
    "HVAC Heating, ..." are definitions."""
    return split_definition(text) is not None


def split_definition(text: str) -> tuple[str, str] | None:
    """(term, meaning) of a definition line, None for anything else."""
    match = _DEFINITION.match(text)
    if match:
        return match.group("term").strip(), match.group("meaning").strip()
    match = _SPACED_DEFINITION.match(text)
    if match and match.group("meaning")[:1].isupper() or (match and "(" in text[:2]):
        return match.group("term"), match.group("meaning").strip()
    return None


def starts_entry(text: str, kind: str) -> bool:
    """Whether a line without a marker starts a new entry rather than continuing a line."""
    if kind == "definitions":
        return is_definition(text)
    if kind == "items":
        return _LABEL_LINE.match(text) is not None
    return False


def split_marker(text: str) -> tuple[str | None, str, int | None]:
    """Strip list markers ("5.1)", "Step 3", "a)", "•", "- 1.") from the start of a line.

    Returns (number, text, depth): depth comes only from dotted numbers ("5.1.1" -> 2).
    Markers are stripped repeatedly so rendered text never starts with one.
    """
    _marker, number, rest, depth = split_marker_as_written(text)
    return number, rest, depth


def split_marker_as_written(text: str) -> tuple[str | None, str | None, str, int | None]:
    """(marker as written, number, text, depth). The marker keeps the author's numbering
    ("5.1.", "3)", "Step 2", "a)"); bullets of any shape are written "-"."""
    number: str | None = None
    depth: int | None = None
    original = text
    for _ in range(6):
        found = _strip_one_marker(text)
        if found is None and text is not original and _CELL_EDGE.match(text):
            found = (None, text[_CELL_EDGE.match(text).end() :])  # type: ignore[union-attr]
        if found is None:
            break
        marker, text = found
        if marker is not None and (number is None or ("." in marker and "." not in number)):
            number = marker
            depth = max(1, marker.count(".")) if "." in marker else None
    if text is original:
        return None, None, text.strip(), None
    written = original[: len(original) - len(text)].replace("|", " ").strip()
    parts = written.split()
    # A leading bullet of any shape is written "-"; after a number ("2. *") it stays, since
    # "2. -" would read as the heading "2." with a dash.
    if parts and _BULLET.match(parts[0] + " "):
        parts[0] = "-"
    written = " ".join(parts)
    return written, number, text.strip(), depth


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
        return _Heading(number, spec, heading, body, label)
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
    if _looks_like_heading(rest) == "caps" and len(rest.split()) <= 4 and rest[-1:].isalpha():
        return _unknown(None, None, rest, allow_bare=True)  # "REFERENCES" on a line of its own
    if line.marked and not context.in_items:
        return _unknown(None, None, rest, allow_bare=True)
    return None


def _strong(number_match: re.Match[str]) -> bool:
    """ "5.0" and "Section 5" can only number a section; "5." may number a step."""
    return bool(number_match.group("zero") or number_match.group("word"))


def _continues_list(number_match: re.Match[str] | None, context: _Context) -> bool:
    """An unnumbered line, or a plain "2." right after item "1.": part of the list, while a
    repeated "2) Scope:" elsewhere is a duplicated section to report."""
    if number_match is None:
        return True
    if not _weak_number(number_match, context):
        return False
    return int(number_match.group("num")) == context.next_plain


def _weak_number(number_match: re.Match[str] | None, context: _Context) -> bool:
    """No number, or a plain "2." that does not move past the sections seen so far."""
    if number_match is None:
        return True
    if _strong(number_match):
        return False
    return int(number_match.group("num")) <= context.last_major


def _is_subheading(line: Line, context: _Context) -> bool:
    """A "###" line under a "##" section is part of that section."""
    return bool(line.hashes and context.section_hashes and line.hashes > context.section_hashes)


def _house_section_under_extra(line: Line, template: Template, context: _Context) -> bool:
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
    context: _Context,
) -> _Heading | None:
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
) -> _Heading | None:
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
    return _Heading(number, None, heading, body, label)


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
