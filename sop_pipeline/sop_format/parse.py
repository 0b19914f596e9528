"""Parsing pasted SOP text into an `SOP`, guided by the template's headings and synonyms.

The parser is forgiving on purpose: it records what it finds and leaves judging to
`validate`, so a half-finished SOP still parses into something the bot can comment on.
"""

from __future__ import annotations

import re

from .entries import is_definition, split_marker_as_written, starts_entry, strip_one_marker
from .headings import Context, Heading, match_heading
from .model import SOP, Item, Section
from .template import Template, load_template
from .text import Line, clean_inline, reread, split_lines

_TITLE = re.compile(r"^(?:sop\s+)?(?:title|name)\s*[:：\-–—|]\s*(?P<title>.*)$", re.I)
_WRAPPED_TITLE = 30
# "Execution: Operator" on its own line is a new entry, not the end of a wrapped line.
_FIELD_LINE = re.compile(r"^[^:：|]{1,40}[:：|](?:\s|$)")


def _join_title(title: str, more: str) -> str:
    """A title wrapped over two lines, cleaned as one line: a `code span` or **bold** the wrap
    (or an HTML line break) cut in two is decoration again once joined, and is read as such,
    so the training text reads the same when it is read again."""
    return clean_inline(f"{title} {more}")


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
        self.item_context: tuple[Item, Context] | None = None  # see `_append`

    @property
    def current(self) -> Section | None:
        return self.sections[-1] if self.sections else None

    def feed(self, line: Line) -> None:
        if not self.sections and self.title is None and self._take_title(line):
            return
        heading = match_heading(line, self.template, self._context())
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

    def _context(self) -> Context:
        current = self.current
        spec = self.template.spec(current.key) if current else None
        return Context(
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

    def _open(self, heading: Heading, line: Line) -> None:
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
            and match_heading(Line(text=text), self.template, self._context()) is None
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
        if not parts and strip_one_marker(joined) is not None:
            return False
        line = Line(text=" ".join(part for part in (item.marker, clean_inline(joined)) if part))
        remembered, context = self.item_context or (None, self._context())
        if remembered is not item:
            context = self._context()
        return match_heading(line, self.template, context) is None

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
