"""Reading SOP files: text in any common encoding, and Word documents as the author sees them.

Shared by the folder importer, `sop-bot validate` and the Slack file reader, so a file reads
the same wherever it arrives. Text files: byte-order marks first (UTF-8/16/32), then UTF-16/32
without a mark (recognised by their zero bytes), then UTF-8, then charset-normalizer's guess,
reported as a note because a guess can be wrong.
"""

from __future__ import annotations

import codecs
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_SUFFIXES = (".txt", ".md")
SOP_SUFFIXES = (*TEXT_SUFFIXES, ".docx")


class SopFileError(Exception):
    """A file cannot be read as an SOP; the text names the file and what to do."""


@dataclass(frozen=True)
class SopDocument:
    """The text of a file, the encoding it was read with, and notes a person should see."""

    text: str
    encoding: str
    notes: list[str] = field(default_factory=list)


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def read_document(path: Path) -> SopDocument:
    """Read an SOP file from disk (see `read_document_bytes`)."""
    suffix = path.suffix.lower()
    if suffix not in SOP_SUFFIXES:
        raise SopFileError(
            f"{path.name} is not a .txt, .md or .docx file; save it in one of those formats."
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SopFileError(f"{path.name} cannot be read ({exc.strerror}); check it.") from None
    return read_document_bytes(path.name, data)


def read_document_bytes(name: str, data: bytes) -> SopDocument:
    """The text of an SOP file's bytes; `name` picks the format and names it in errors."""
    suffix = Path(name).suffix.lower()
    if suffix == ".docx":
        return SopDocument(read_docx(name, data), "docx")
    if suffix not in TEXT_SUFFIXES:
        raise SopFileError(
            f"{name} is not a .txt, .md or .docx file; save it in one of those formats."
        )
    return decode_text(name, data)


def decode_text(name: str, data: bytes) -> SopDocument:
    """Bytes of a text file to str, trying the unambiguous encodings first."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return SopDocument(_decode(name, data[len(bom) :], encoding), encoding)
    wide = _wide_encoding(data)
    if wide is not None:
        return SopDocument(_decode(name, data, wide), wide)
    try:
        return SopDocument(_checked(name, data.decode("utf-8")), "utf-8")
    except UnicodeDecodeError:
        pass
    guessed = _guess(data)
    if guessed is None:
        raise SopFileError(
            f"{name} is not readable text (it looks like a binary file); save it as UTF-8 "
            "text or .docx and try again."
        )
    text = _decode(name, data, guessed)
    note = (
        f"{name} is not UTF-8; it was read as {guessed}. Check that accented letters and "
        "symbols look right, or save the file as UTF-8."
    )
    return SopDocument(text, guessed, [note])


def _decode(name: str, data: bytes, encoding: str) -> str:
    try:
        return _checked(name, data.decode(encoding))
    except UnicodeDecodeError:
        raise SopFileError(
            f"{name} says it is {encoding} but is not valid {encoding} text; save it again "
            "as UTF-8 and try again."
        ) from None


def _checked(name: str, text: str) -> str:
    if "\x00" in text:
        raise SopFileError(
            f"{name} contains binary data, not text; save it as UTF-8 text and try again."
        )
    return text


def _wide_encoding(data: bytes) -> str | None:
    """UTF-16/32 without a byte-order mark: ASCII letters leave zero bytes in fixed places."""
    sample = data[:4096]
    if len(sample) < 8 or b"\x00" not in sample:
        return None
    size = len(sample) - len(sample) % 4
    quads = [sample[i : i + 4] for i in range(0, size, 4)]
    if sum(q[1:] == b"\x00\x00\x00" for q in quads) > len(quads) * 0.6:
        return "utf-32-le"
    if sum(q[:3] == b"\x00\x00\x00" for q in quads) > len(quads) * 0.6:
        return "utf-32-be"
    odd = sample[1::2].count(0)
    even = sample[0::2].count(0)
    half = len(sample) // 2
    if odd > half * 0.6 and even < half * 0.1:
        return "utf-16-le"
    if even > half * 0.6 and odd < half * 0.1:
        return "utf-16-be"
    return None


def _guess(data: bytes) -> str | None:
    """charset-normalizer's best guess; Windows-1252 when it is among the top candidates,
    because that is what Western office tools write and short texts fit many code pages."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data))[:3]
    if not matches:
        return None
    if any("cp1252" in match.could_be_from_charset for match in matches):
        return "cp1252"
    return str(matches[0].encoding)


def read_docx(name: str, data: bytes) -> str:
    """A Word document as the author sees it: header text first, then body paragraphs and
    table rows in document order ("cell | cell"), Word auto-numbering written out, and a
    blank line between paragraphs (a Word paragraph is never a hard-wrapped line)."""
    try:
        import docx
        from docx.opc.exceptions import PackageNotFoundError
    except ImportError as exc:  # pragma: no cover - python-docx is a dependency
        raise SopFileError("Reading .docx needs the python-docx package; install it.") from exc
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise SopFileError(
            f"{name} is not a readable Word document ({type(exc).__name__}); open it in "
            "Word, save it again as .docx and import again."
        ) from None
    numbering = _NumberingState(document)
    lines: list[str] = []
    seen_headers: set[str] = set()
    for section in document.sections:
        try:
            header = section.header
            if header.is_linked_to_previous:
                continue
            blocks = list(_blocks(header._element, header, numbering))  # noqa: SLF001
        except (KeyError, ValueError, AttributeError):  # pragma: no cover - odd headers
            continue
        for line in blocks:
            if line not in seen_headers:
                seen_headers.add(line)
                lines.append(line)
    lines.extend(_blocks(document.element.body, document._body, numbering))  # noqa: SLF001
    return "\n\n".join(lines).strip() + "\n"


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def _blocks(parent: Any, proxy: Any, numbering: _NumberingState) -> Iterator[str]:
    """Paragraph texts and table rows under the XML element `parent`, in document order;
    `proxy` is the python-docx object that owns it (for styles)."""
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    for child in parent.iterchildren():
        if child.tag == f"{_W}p":
            paragraph = Paragraph(child, proxy)
            text = paragraph.text.strip()
            if text:
                yield numbering.prefix(paragraph) + text
        elif child.tag == f"{_W}tbl":
            yield from _table_rows(Table(child, proxy), numbering)
        elif child.tag == f"{_W}sdt":  # content controls wrap ordinary paragraphs
            content = child.find(f"{_W}sdtContent")
            if content is not None:
                yield from _blocks(content, proxy, numbering)


def _table_rows(table: Any, numbering: _NumberingState) -> Iterator[str]:
    """One line per row, cells joined by " | " (merged cells once)."""
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:  # noqa: SLF001 - a merged cell repeats
                continue
            previous = cell._tc  # noqa: SLF001
            parts = [
                numbering.prefix(p) + p.text.strip() for p in cell.paragraphs if p.text.strip()
            ]
            if parts:
                cells.append(" ".join(parts))
        if cells:
            yield " | ".join(cells)


@dataclass(frozen=True)
class _Level:
    fmt: str = "decimal"
    text: str = ""
    start: int = 1


class _NumberingState:
    """Reconstructs the visible numbers of Word auto-numbered paragraphs ("5.1", "a)", "-").

    Typed numbers ("5.1 Switch off ...") are part of the text already; Word list numbering is
    not, so we rebuild it from the paragraph's (or its style's) numPr and the level's lvlText,
    which keeps the structure the SOP parser needs. Bullets become "- ".
    """

    def __init__(self, document: Any) -> None:
        self._counters: dict[str, list[int | None]] = {}
        self._levels = _numbering_levels(document)

    def prefix(self, paragraph: Any) -> str:
        num = _num_pr(paragraph)
        if num is None:
            return ""
        num_id, level = num
        spec = self._levels.get((num_id, level), _Level())
        if spec.fmt in ("bullet", "none"):
            return "- " if spec.fmt == "bullet" else ""
        counters = self._counters.setdefault(num_id, [None] * 9)
        current = counters[level]
        counters[level] = spec.start if current is None else current + 1
        for deeper in range(level + 1, 9):
            counters[deeper] = None
        text = spec.text or "%" + str(level + 1) + "."
        for index in range(9):
            token = f"%{index + 1}"
            if token in text:
                value = counters[index]
                if value is None:
                    value = self._levels.get((num_id, index), _Level()).start
                fmt = self._levels.get((num_id, index), _Level()).fmt
                text = text.replace(token, _format_number(value, fmt))
        return text.strip() + " "


def _format_number(value: int, fmt: str) -> str:
    if fmt in ("lowerLetter", "upperLetter"):
        letters = ""
        while value > 0:
            value, rest = divmod(value - 1, 26)
            letters = chr(ord("a") + rest) + letters
        return letters.upper() if fmt == "upperLetter" else letters
    if fmt in ("lowerRoman", "upperRoman"):
        roman = _roman(value)
        return roman if fmt == "upperRoman" else roman.lower()
    return str(value)


def _roman(value: int) -> str:
    numerals = (
        (1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
        (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"),
    )
    out = ""
    for number, letters in numerals:
        while value >= number:
            out += letters
            value -= number
    return out


def _num_pr(paragraph: Any) -> tuple[str, int] | None:
    """(numId, level) from the paragraph, or from its style chain (e.g. "List Number")."""
    ppr = paragraph._p.pPr  # noqa: SLF001 - python-docx exposes numbering only via XML
    num_pr = ppr.numPr if ppr is not None else None
    style = _style(paragraph)
    while (num_pr is None or num_pr.numId is None) and style is not None:
        style_ppr = style.element.pPr
        num_pr = style_ppr.numPr if style_ppr is not None else None
        style = style.base_style
    if num_pr is None or num_pr.numId is None or num_pr.numId.val == 0:
        return None
    level = num_pr.ilvl.val if num_pr.ilvl is not None else 0
    return str(num_pr.numId.val), int(level)


def _style(paragraph: Any) -> Any:
    """The paragraph's style; paragraphs built without a document part have none."""
    try:
        return paragraph.style
    except AttributeError:
        return None


def _numbering_levels(document: Any) -> dict[tuple[str, int], _Level]:
    """(numId, level) → format, lvlText and start, read from numbering.xml."""
    levels: dict[tuple[str, int], _Level] = {}
    try:
        numbering = document.part.numbering_part.element
    except (NotImplementedError, KeyError, AttributeError):
        return levels
    w = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"

    def val(node: Any, tag: str, default: str = "") -> str:
        child = node.find(f"{w}{tag}")
        return child.get(f"{w}val", default) if child is not None else default

    abstract: dict[str, dict[int, _Level]] = {}
    for node in numbering.findall(f"{w}abstractNum"):
        abstract[node.get(f"{w}abstractNumId")] = {
            int(lvl.get(f"{w}ilvl", "0")): _Level(
                fmt=val(lvl, "numFmt", "decimal"),
                text=val(lvl, "lvlText"),
                start=int(val(lvl, "start", "1") or 1),
            )
            for lvl in node.findall(f"{w}lvl")
        }
    for num in numbering.findall(f"{w}num"):
        ref = val(num, "abstractNumId")
        for level, spec in abstract.get(ref, {}).items():
            levels[(num.get(f"{w}numId"), level)] = spec
    return levels


