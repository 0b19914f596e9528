"""Import existing SOP documents (.txt, .md, .docx) as approved training examples.

Quality teams already have a folder of approved SOPs; importing them seeds the first
fine-tune. Every file goes through the same approval path as a Slack approval, so the format
check, canonical text, de-duplication and audit apply. Importing the same folder twice adds
nothing the second time.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session

from sop_pipeline.examples import ApprovalStatus, approve_sop
from sop_pipeline.settings import Settings

SOP_SUFFIXES = (".txt", ".md", ".docx")


class SopFileError(Exception):
    """A file cannot be read as an SOP; the text names the file and what to do."""


@dataclass
class FileOutcome:
    """What happened to one file."""

    path: Path
    status: str  # approved | reapproved | duplicate | not_compliant | unreadable
    example_id: int | None = None
    findings: list = field(default_factory=list)
    error: str | None = None


@dataclass
class ImportReport:
    """Totals and per-file outcomes of an import."""

    outcomes: list[FileOutcome] = field(default_factory=list)

    def _count(self, *statuses: str) -> int:
        return sum(1 for o in self.outcomes if o.status in statuses)

    @property
    def imported(self) -> int:
        return self._count(ApprovalStatus.APPROVED, ApprovalStatus.REAPPROVED)

    @property
    def duplicates(self) -> int:
        return self._count(ApprovalStatus.DUPLICATE)

    @property
    def not_compliant(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == ApprovalStatus.NOT_COMPLIANT]

    @property
    def unreadable(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == "unreadable"]

    @property
    def failed(self) -> int:
        return len(self.not_compliant) + len(self.unreadable)

    def summary(self) -> str:
        return (
            f"{len(self.outcomes)} file(s): {self.imported} imported, {self.duplicates} already "
            f"present, {len(self.not_compliant)} not compliant, {len(self.unreadable)} unreadable."
        )


def iter_sop_files(paths: Iterable[Path | str]) -> Iterator[Path]:
    """SOP files among `paths`: files as given, folders searched recursively, sorted.

    Hidden files and Word lock files ("~$x.docx") are skipped. A path that does not exist
    raises FileNotFoundError so a typo is not mistaken for an empty folder.
    """
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(2, "No such file or directory", str(path))
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SOP_SUFFIXES and not _ignored(p, path)
            )
        else:
            found = [path]
        for item in found:
            if item not in seen:
                seen.add(item)
                yield item


def _ignored(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return any(part.startswith(".") for part in parts) or path.name.startswith("~$")


def read_sop_file(path: Path) -> str:
    """The text of an SOP file; .docx paragraphs in order with their list numbering.

    Raises SopFileError (a sentence) for corrupt, unsupported or non-text files.
    """
    suffix = path.suffix.lower()
    if suffix == ".docx":
        return _read_docx(path)
    if suffix not in (".txt", ".md"):
        raise SopFileError(
            f"{path.name} is not a .txt, .md or .docx file; save it in one of those formats."
        )
    data = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise SopFileError(f"{path.name} is not readable text; save it as UTF-8 and import again.")


def _read_docx(path: Path) -> str:
    try:
        import docx
        from docx.opc.exceptions import PackageNotFoundError
    except ImportError as exc:  # pragma: no cover - python-docx is a dependency
        raise SopFileError("Reading .docx needs the python-docx package; install it.") from exc
    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise SopFileError(
            f"{path.name} is not a readable Word document ({type(exc).__name__}); open it in "
            "Word, save it again as .docx and import again."
        ) from None
    lines = []
    numbering = _NumberingState(document)
    for paragraph in document.paragraphs:
        text = paragraph.text.strip()
        if not text:
            lines.append("")
            continue
        lines.append(numbering.prefix(paragraph) + text)
    return "\n".join(lines).strip() + "\n"


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
    style = paragraph.style
    while (num_pr is None or num_pr.numId is None) and style is not None:
        style_ppr = style.element.pPr
        num_pr = style_ppr.numPr if style_ppr is not None else None
        style = style.base_style
    if num_pr is None or num_pr.numId is None or num_pr.numId.val == 0:
        return None
    level = num_pr.ilvl.val if num_pr.ilvl is not None else 0
    return str(num_pr.numId.val), int(level)


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


def import_paths(
    session: Session,
    template: Any,
    settings: Settings,
    paths: Iterable[Path | str],
    *,
    actor: str,
    progress: Callable[[Path, FileOutcome], None] | None = None,
) -> ImportReport:
    """Import every SOP file under `paths` as an approved example (source "import").

    Each file is committed on its own, so a crash half-way keeps what was imported and a rerun
    continues (already-imported files come back as duplicates). `progress` is called after
    each file. Unreadable and non-compliant files are reported, never raised.
    """
    report = ImportReport()
    for path in iter_sop_files(paths):
        outcome = _import_one(session, template, settings, path, actor)
        report.outcomes.append(outcome)
        if progress is not None:
            progress(path, outcome)
    return report


def _import_one(
    session: Session, template: Any, settings: Settings, path: Path, actor: str
) -> FileOutcome:
    try:
        text = read_sop_file(path)
    except SopFileError as exc:
        return FileOutcome(path, "unreadable", error=str(exc))
    if not text.strip():
        return FileOutcome(path, "unreadable", error=f"{path.name} is empty; nothing to import.")
    try:
        result = approve_sop(
            session, template, settings, text=text, source="import", approver=actor,
            source_path=str(path), with_counts=False,
        )
        session.commit()
    except Exception:
        session.rollback()
        raise
    example_id = result.example.id if result.example is not None else None
    return FileOutcome(path, result.status, example_id=example_id, findings=result.findings)
