"""The parsed shape of an SOP: what people wrote, with the template key attached.

Numbers and headings are kept as written, so the validator can point at the user's own text
and the renderers show (and train on) exactly that text; nothing is ever renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    """A line under a section: a step "5.1", a responsibility, or an abbreviation line.

    `number` is the marker as written without punctuation ("5.1", "3", "a"), or None for a
    bullet or a plain line. `level` is 1 for "5.1"-style items and 2 for "5.1.1" or an
    indented bullet under a step.
    """

    number: str | None
    text: str
    level: int = 1
    # The marker exactly as written ("5.1", "1)", "Step 3", "-"), for the training text.
    marker: str | None = field(default=None, compare=False)


@dataclass
class Section:
    """One section. `key` is the template key, or None when the heading is not in it."""

    number: str | None
    key: str | None
    heading: str
    body: str = ""
    items: list[Item] = field(default_factory=list)
    # The number as written ("5.0", "5)", "Section 5"), for the training text.
    label: str | None = field(default=None, compare=False)

    @property
    def major(self) -> int | None:
        """The section number as an int ("5.0" -> 5), None when unnumbered."""
        if not self.number:
            return None
        head = self.number.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def is_blank(self) -> bool:
        return not self.body.strip() and not any(item.text.strip() for item in self.items)


@dataclass
class SOP:
    """A parsed SOP. `preamble` holds lines before the first section other than the title."""

    title: str | None
    sections: list[Section] = field(default_factory=list)
    preamble: list[str] = field(default_factory=list)

    def section(self, key: str) -> Section | None:
        """The first section with this template key, if any."""
        return next((s for s in self.sections if s.key == key), None)
