"""Renderers: the training text, Markdown, and a JSON-able structure for Block Kit and .docx.

All of them show the SOP as its author wrote it: the author's order, section numbers,
headings, step numbers and levels, with only the markup normalised. Nothing is ever
renumbered, reordered or renamed; numbering problems are findings for a person to fix
(issue #13: what a reviewer reads is what is approved and what the model learns).
"""

from __future__ import annotations

from typing import Any

from .entries import starts_entry
from .headings import numbered_heading_stands, reads_as_caps_heading, reads_as_heading
from .model import SOP, Item, Section
from .parse import parse
from .template import Template, load_template


def render_training_text(sop: SOP, template: Template | None = None) -> str:
    """The text an approved SOP becomes as training data: the author's own numbers, levels,
    headings and words, in the author's order, with only the markup normalised ("Title: ...",
    one blank line between sections, wrapped lines joined into their item, "\\n" line ends
    and exactly one trailing newline; an SOP with nothing in it renders as "")."""
    template = template or load_template(None)
    blocks: list[str] = []
    if sop.title:
        blocks.append(f"Title: {sop.title}")
    known_yet = False
    for section in sop.sections:
        spec = template.spec(section.key)
        known_yet = known_yet or spec is not None
        head = _with_colon(_heading(section))
        if spec is None and (
            not section.label
            or not known_yet
            or not numbered_heading_stands(section.label, section.heading)
        ):
            # Without a number, before the first house section, or numbered like a step
            # ("6. Records:" after a list), only the Markdown mark keeps it a heading
            # ("## Summary:", "## 1. General Considerations:", "## 7. References:").
            head = f"## {head}"
        elif spec is not None and not reads_as_heading(section.heading, template):
            head = f"## {head}"  # "## Process Steps:", as it was marked in the source
        elif any(not item.marker and reads_as_caps_heading(item.text) for item in section.items):
            # "### ALLOWED" under "## Procedure" is written "ALLOWED": under a marked heading
            # it stays a line of the section, under "Procedure:" it would be a section
            head = f"## {head}"
        first = f"{head} {section.body}" if section.body else head
        if head.startswith("## ") and first.endswith("#"):
            first += " #"  # a closing mark, so that "0 #" or "C#" at the end keeps its "#"
        lines = [first]
        kind = spec.kind if spec else "items"
        for index, item in enumerate(section.items):
            if item.marker or index == 0 or starts_entry(item.text, kind):
                lines.append(_item_line(item))
            else:  # a paragraph of its own: the blank line keeps it from joining the last
                lines.extend(["", item.text])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def training_text(text: str, template: Template | None = None) -> str:
    """Pasted text in, training text out (see `render_training_text`)."""
    template = template or load_template(None)
    return render_training_text(parse(text, template), template)


def render_canonical(sop: SOP, template: Template | None = None) -> str:
    """The house text of an SOP: the training text (`render_training_text`), so that a draft
    shown, approved and exported keeps the numbering it was written with."""
    return render_training_text(sop, template)


def canonicalize(text: str, template: Template | None = None) -> str:
    """Pasted text in, house text out: the same as `training_text`."""
    return training_text(text, template)


def render_markdown(sop: SOP, template: Template | None = None) -> str:
    """Markdown for docs and previews: "# Title", "## 5.0 Procedure" as written, then each
    step on a line of its own with its own number (a blank line between, so Markdown keeps
    them apart); read back, it gives the same training text."""
    template = template or load_template(None)
    blocks: list[str] = []
    if sop.title:
        blocks.append(f"# {sop.title}")
    for section in sop.sections:
        spec = template.spec(section.key)
        heading = f"## {_heading(section)}"
        if section.body and (spec is None or spec.kind == "items"):
            heading = f"{_with_colon(heading)} {section.body}"  # else it reads back as a step
        elif section.body:
            blocks.append(heading)
            heading = section.body
        blocks.append(heading)
        blocks.extend(_item_line(item) for item in section.items)
    return "\n\n".join(blocks) + "\n" if blocks else ""


def render_structure(sop: SOP, template: Template | None = None) -> dict[str, Any]:
    """Plain dicts/lists/strings for the Slack layer (Block Kit), the .docx export and storage
    as JSON: each section's number and heading as written, each item's marker as written
    ("5.1", "1.", "a)", "-" for any bullet; None for a plain line), its level, and its line
    exactly as the training text writes it (a nested bullet indented)."""
    template = template or load_template(None)
    return {
        "title": sop.title or None,
        "sections": [
            {
                "number": section.label,
                "key": section.key,
                "heading": section.heading,
                "body": section.body.strip(),
                "items": [
                    {"number": item.marker, "text": item.text, "level": item.level,
                     "line": _item_line(item)}
                    for item in section.items
                ],
            }
            for section in sop.sections
        ],
    }


def _heading(section: Section) -> str:
    """ "5.0 Procedure", "Section 5 Method" or "References": number and words as written."""
    return " ".join(part for part in (section.label, section.heading) if part)


def _with_colon(heading: str) -> str:
    """ "Heading:"; after a trailing backslash, " :", since "\\:" would read as an escape."""
    return f"{heading} :" if heading.endswith("\\") else f"{heading}:"


def _item_line(item: Item) -> str:
    """One item as written: bullets and plain numbers show their level by indenting; dotted
    numbers ("5.1.1") say it themselves."""
    if not item.marker:
        return item.text
    dotted = bool(item.number and "." in item.number)
    indent = "" if dotted else "   " * (item.level - 1)
    return f"{indent}{item.marker} {item.text}"
