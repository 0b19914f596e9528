"""Renderers: the house text format, Markdown, and a JSON-able structure for Block Kit.

All three go through one canonical view (template order, template headings, re-derived
numbers) so they can never disagree about what the SOP says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import SOP, Section
from .parse import parse, reads_as_heading, split_definition, starts_entry
from .template import Template, load_template


@dataclass(frozen=True)
class _ViewItem:
    number: str | None
    text: str
    level: int


@dataclass(frozen=True)
class _ViewSection:
    number: str
    key: str | None
    heading: str
    body: str
    items: tuple[_ViewItem, ...]
    kind: str


def render_canonical(sop: SOP, template: Template | None = None) -> str:
    """The house format: "Title: ...", then "N.0 Heading: body" sections with "N.k" items,
    one blank line between sections, "\\n" line ends and exactly one trailing newline
    (an SOP with nothing in it renders as "")."""
    title, sections = _canonical_view(sop, template or load_template(None))
    blocks: list[str] = []
    if title:
        blocks.append(f"Title: {title}")
    for section in sections:
        head = f"{section.number} {section.heading}:"
        lines = [f"{head} {section.body}" if section.body else head]
        for item in section.items:
            lines.append(f"{item.number} {item.text}" if item.number else item.text)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def render_training_text(sop: SOP, template: Template | None = None) -> str:
    """The text an approved SOP becomes as training data: the author's own numbers, levels,
    headings and words, in the author's order, with only the markup normalised ("Title: ...",
    one blank line between sections, wrapped lines joined into their item). Nothing is ever
    renumbered here; numbering problems are findings for a person to fix."""
    template = template or load_template(None)
    blocks: list[str] = []
    if sop.title:
        blocks.append(f"Title: {sop.title}")
    known_yet = False
    for section in sop.sections:
        spec = template.spec(section.key)
        kind = spec.kind if spec else "items"
        known_yet = known_yet or spec is not None
        head = " ".join(part for part in (section.label, section.heading) if part) + ":"
        if spec is None and (not section.label or not known_yet):
            # Without a number, or before the first house section, only the Markdown mark
            # keeps it a heading ("## Summary:", "## 1. General Considerations:").
            head = f"## {head}"
        elif spec is not None and not reads_as_heading(section.heading, template):
            head = f"## {head}"  # "## Process Steps:", as it was marked in the source
        lines = [f"{head} {section.body}" if section.body else head]
        for index, item in enumerate(section.items):
            if item.marker:
                # Bullets and plain numbers show their level by indenting, as written.
                dotted = bool(item.number and "." in item.number)
                indent = "" if dotted else "   " * (item.level - 1)
                lines.append(f"{indent}{item.marker} {item.text}")
            elif index == 0 or starts_entry(item.text, kind):
                lines.append(item.text)
            else:  # a paragraph of its own: the blank line keeps it from joining the last
                lines.extend(["", item.text])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def training_text(text: str, template: Template | None = None) -> str:
    """Pasted text in, training text out (see `render_training_text`)."""
    template = template or load_template(None)
    return render_training_text(parse(text, template), template)


def render_markdown(sop: SOP, template: Template | None = None) -> str:
    """Markdown for docs and previews: "# Title", "## 1.0 Objective", ordered lists for
    steps (sub-steps indented), a bullet list for abbreviations."""
    title, sections = _canonical_view(sop, template or load_template(None))
    blocks: list[str] = []
    if title:
        blocks.append(f"# {title}")
    for section in sections:
        heading = f"## {section.number} {section.heading}"
        if section.body and section.kind == "items":
            heading += f": {section.body}"  # a paragraph here would read back as a step
        elif section.body:
            blocks.append(heading)
            heading = section.body
        blocks.append(heading)
        if section.items:
            blocks.append("\n".join(_markdown_items(section)))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _markdown_items(section: _ViewSection) -> list[str]:
    if section.kind == "definitions":
        return [_markdown_definition(item.text) for item in section.items]
    if section.kind == "paragraph":  # stray "2.1" lines keep their numbers in a bullet
        return [f"- {item.number} {item.text}" for item in section.items]
    counters: list[int] = []
    lines = []
    for item in section.items:
        counters = _advance(counters, item.level)
        lines.append("   " * (len(counters) - 1) + f"{counters[-1]}. {item.text}")
    return lines


def _markdown_definition(text: str) -> str:
    parts = split_definition(text)
    return f"- **{parts[0]}**: {parts[1]}" if parts else f"- {text}"


def render_structure(sop: SOP, template: Template | None = None) -> dict[str, Any]:
    """Plain dicts/lists/strings for the Slack layer (Block Kit) and for storage as JSON."""
    title, sections = _canonical_view(sop, template or load_template(None))
    return {
        "title": title,
        "sections": [
            {
                "number": section.number,
                "key": section.key,
                "heading": section.heading,
                "body": section.body,
                "items": [{"number": item.number, "text": item.text} for item in section.items],
            }
            for section in sections
        ],
    }


def canonicalize(text: str, template: Template | None = None) -> str:
    """Pasted text in, house format out."""
    template = template or load_template(None)
    return render_canonical(parse(text, template), template)


def _canonical_view(sop: SOP, template: Template) -> tuple[str | None, list[_ViewSection]]:
    """Known sections in template order (repeats kept together), unknown ones after them,
    numbered on from the last template number."""
    known = [s for s in sop.sections if template.spec(s.key) is not None]
    known.sort(key=lambda s: template.index(s.key))
    unknown = [s for s in sop.sections if template.spec(s.key) is None]
    next_number = max((spec.number for spec in template.sections), default=0) + 1
    view = [_view_known(s, template) for s in known]
    for offset, section in enumerate(unknown):
        view.append(_view_section(section, next_number + offset, section.heading, None, "items"))
    return (sop.title or None), view


def _view_known(section: Section, template: Template) -> _ViewSection:
    spec = template.spec(section.key)
    assert spec is not None
    return _view_section(section, spec.number, spec.heading, spec.key, spec.kind)


def _view_section(
    section: Section, number: int, heading: str, key: str | None, kind: str
) -> _ViewSection:
    if kind == "definitions":
        items = tuple(_ViewItem(None, _definition_text(i.text), 1) for i in section.items)
    else:
        items = _numbered_items(section, number)
    return _ViewSection(f"{number}.0", key, heading, section.body.strip(), items, kind)


def _numbered_items(section: Section, number: int) -> tuple[_ViewItem, ...]:
    """Renumber items "N.1, N.2, N.2.1 ..." from their levels; a sub-step with no step
    before it is promoted so numbers never skip."""
    counters: list[int] = []
    items = []
    for item in section.items:
        counters = _advance(counters, item.level)
        label = f"{number}." + ".".join(str(c) for c in counters)
        items.append(_ViewItem(label, item.text, len(counters)))
    return tuple(items)


def _advance(counters: list[int], level: int) -> list[int]:
    level = max(1, min(level, len(counters) + 1))
    if len(counters) >= level:
        return [*counters[: level - 1], counters[level - 1] + 1]
    return [*counters, 1]


def _definition_text(text: str) -> str:
    """ "IPA - Isopropyl Alcohol" and "IPA = ..." become "IPA: Isopropyl Alcohol"."""
    parts = split_definition(text)
    return f"{parts[0].strip()}: {parts[1]}" if parts else text
