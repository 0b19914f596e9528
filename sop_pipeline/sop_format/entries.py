"""The start of an entry: list markers ("5.1", "Step 3", "a)", bullets) and definitions
("IPA: Isopropyl Alcohol"), as `parse` splits them off a line.
"""

from __future__ import annotations

import re

_DOTTED = re.compile(r"^(?P<num>\d{1,2}(?:\.\d{1,3})+)(?:[.)](?!\d))?(?:\s*[:\-–—])?\s+")
_CELL_EDGE = re.compile(r"^\|\s*")  # "5.1 | Switch off": a table row, step number in a cell
_STEP = re.compile(r"^step\s*(?P<num>\d{1,3})\s*[:.)\-–—]?\s+", re.I)
_PLAIN = re.compile(r"^\(?(?P<num>\d{1,3})[.)]\s+")
_LETTER = re.compile(r"^(?:\((?P<a>[a-z]|[ivx]{1,4})\)|(?P<b>[a-z]|[ivx]{1,4})[.)])\s+", re.I)
_BULLET = re.compile(r"^[•◦▪▫‣⁃∙·●○■□➢➤►▶✓✔\-–—*+]\s+")
_LABEL_LINE = re.compile(r"^[A-Z][\w/&()' -]{0,40}?\s*[:：]\s+\S")
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
        found = strip_one_marker(text)
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


def strip_one_marker(text: str) -> tuple[str | None, str] | None:
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
