"""Import existing SOP documents (.txt, .md, .docx) as approved training examples.

Quality teams already have a folder of approved SOPs; importing them seeds the first
fine-tune. Every file goes through the same approval path as a Slack approval, so the format
check, canonical text, de-duplication and audit apply. Importing the same folder twice adds
nothing the second time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session

from sop_pipeline.examples import ApprovalStatus, approve_sop
from sop_pipeline.settings import Settings
from sop_pipeline.sop_format.documents import SOP_SUFFIXES, SopFileError, read_document

__all__ = ["SOP_SUFFIXES", "SopFileError", "import_paths", "iter_sop_files", "read_sop_file"]



@dataclass
class FileOutcome:
    """What happened to one file."""

    path: Path
    status: str  # approved | reapproved | duplicate | not_compliant | unreadable | skipped
    example_id: int | None = None
    findings: list = field(default_factory=list)
    error: str | None = None  # why a file is unreadable or skipped
    notes: list[str] = field(default_factory=list)  # e.g. the encoding was a guess
    # The example was stored renumbered by a release before issue #13; now it is verbatim.
    text_restored: bool = False

    @property
    def imported(self) -> bool:
        return self.status in (ApprovalStatus.APPROVED, ApprovalStatus.REAPPROVED)

    def triage(self, dry_run: bool = False) -> str:
        """What a QA lead needs to know about this file, in one phrase."""
        if self.imported:
            text = "would be imported" if dry_run else "imported"
            if self.status == ApprovalStatus.REAPPROVED:
                text += " (again; it had been retracted)"
            if self.text_restored:
                text += f" as #{self.example_id}: {self._restored(dry_run)}"
        elif self.status == ApprovalStatus.DUPLICATE:
            text = "already present"
            if self.text_restored:
                text += f" (#{self.example_id}): {self._restored(dry_run)}"
        elif self.status == ApprovalStatus.NOT_COMPLIANT:
            first = next((f for f in self.findings if f.severity == "error"), None)
            text = f"not compliant: {first.message if first else 'see the findings'}"
        elif self.status == "skipped":
            text = f"skipped: {self.error}"
        else:
            text = f"unreadable: {self.error}"
        if self.notes:
            text += "; note: " + " ".join(self.notes)
        return text

    def _restored(self, dry_run: bool) -> str:
        if dry_run:
            return "importing would restore your numbering in its training text"
        return "its training text now keeps your numbering"

    def line(self, dry_run: bool = False) -> str:
        return f"{self.path}: {self.triage(dry_run)}"

    def as_dict(self, dry_run: bool = False) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "status": "imported" if self.imported else self.status,
            "triage": self.triage(dry_run),
            "example_id": self.example_id,
            "text_restored": self.text_restored,
            "error": self.error,
            "notes": list(self.notes),
            "findings": [
                {"code": f.code, "severity": f.severity, "message": f.message,
                 "section": f.section}
                for f in self.findings
            ],
        }


@dataclass
class ImportReport:
    """Totals and per-file outcomes of an import."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    dry_run: bool = False

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
    def skipped(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == "skipped"]

    @property
    def failed(self) -> int:
        return len(self.not_compliant) + len(self.unreadable)

    def counts(self) -> dict[str, int]:
        return {
            "files": len(self.outcomes),
            "imported": self.imported,
            "already_present": self.duplicates,
            "not_compliant": len(self.not_compliant),
            "unreadable": len(self.unreadable),
            "skipped": len(self.skipped),
        }

    def summary(self) -> str:
        verb = "would be imported" if self.dry_run else "imported"
        text = (
            f"{len(self.outcomes)} file(s): {self.imported} {verb}, {self.duplicates} already "
            f"present, {len(self.not_compliant)} not compliant, {len(self.unreadable)} "
            f"unreadable, {len(self.skipped)} skipped (not SOPs)."
        )
        return f"Dry run, nothing was stored. {text}" if self.dry_run else text

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "summary": self.counts(),
            "files": [o.as_dict(self.dry_run) for o in self.outcomes],
        }


# File names that are never SOPs, whatever folder they sit in.
_NOT_SOP_NAME = re.compile(
    r"^(?:readme|licen[cs]e|changelog|changes|history|contributing|code[-_ ]of[-_ ]conduct|"
    r"security|authors|notice|index|toc|summary|sources|"
    r"(?:sop[-_ ]?)?(?:catalogu?e?|register|list|index)(?:[-_ ]of[-_ ]sops?)?)$",
    re.I,
)


def skip_reason(path: Path) -> str | None:
    """Why a file found in a folder is not an SOP, judged by its name; None if it may be."""
    if _NOT_SOP_NAME.match(path.stem):
        return f"{path.name} is a {path.stem.upper()} file, not an SOP"
    return None


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
    """The text of an SOP file (any common encoding; .docx paragraphs and tables in order,
    with their list numbering). Raises SopFileError (a sentence) for unreadable files."""
    return read_document(path).text


def import_paths(
    session: Session,
    template: Any,
    settings: Settings,
    paths: Iterable[Path | str],
    *,
    actor: str,
    progress: Callable[[Path, FileOutcome], None] | None = None,
    dry_run: bool = False,
) -> ImportReport:
    """Import every SOP file under `paths` as an approved example (source "import").

    Each file is committed on its own, so a crash half-way keeps what was imported and a rerun
    continues (already-imported files come back as duplicates). `progress` is called after
    each file. Unreadable and non-compliant files are reported, never raised; files that are
    not SOPs (README, catalogues, text without any SOP section) are skipped with a reason.
    `dry_run` checks everything and writes nothing.
    """
    report = ImportReport(dry_run=dry_run)
    for path in iter_sop_files(paths):
        outcome = _import_one(session, template, settings, path, actor, dry_run)
        report.outcomes.append(outcome)
        if progress is not None:
            progress(path, outcome)
    return report


def read_for_import(path: Path) -> tuple[str | None, FileOutcome | None, list[str]]:
    """(text, outcome if the file cannot be an SOP, notes)."""
    reason = skip_reason(path)
    if reason is not None:
        return None, FileOutcome(path, "skipped", error=reason), []
    try:
        document = read_document(path)
    except SopFileError as exc:
        return None, FileOutcome(path, "unreadable", error=str(exc)), []
    if not document.text.strip():
        return None, FileOutcome(
            path, "unreadable", error=f"{path.name} is empty; nothing to import."
        ), []
    return document.text, None, document.notes


def not_an_sop(path: Path) -> FileOutcome:
    return FileOutcome(
        path, "skipped",
        error=f"{path.name} has none of the SOP sections (Objective, Scope, Procedure ...); "
        "it does not look like an SOP",
    )


def looks_like_sop(text: str, template: Any) -> bool:
    """At least one template section heading: a catalogue or README has none."""
    from sop_pipeline.sop_format import parse

    return any(section.key for section in parse(text, template).sections)


def _import_one(
    session: Session, template: Any, settings: Settings, path: Path, actor: str, dry_run: bool
) -> FileOutcome:
    from sop_pipeline.examples import prepare_sop

    text, outcome, notes = read_for_import(path)
    if outcome is not None:
        return outcome
    assert text is not None
    prepared = prepare_sop(text, template, settings)  # parsed once, outside the transaction
    if not prepared.compliant and not looks_like_sop(text, template):
        return not_an_sop(path)
    if dry_run:
        return _dry_run_one(session, path, prepared, notes)
    try:
        result = approve_sop(
            session, template, settings, text=text, source="import", approver=actor,
            source_path=str(path), with_counts=False, prepared=prepared,
        )
        session.commit()
    except Exception:
        session.rollback()
        raise
    example_id = result.example.id if result.example is not None else None
    return FileOutcome(
        path, result.status, example_id=example_id, findings=result.findings, notes=notes,
        text_restored=result.text_restored,
    )


def _dry_run_one(
    session: Session, path: Path, prepared: Any, notes: list[str]
) -> FileOutcome:
    """What importing would do, by reading only."""
    from sqlmodel import select

    from sop_pipeline.legacy_text import renumbered_twin
    from sop_pipeline.models import ExampleStatus, TrainingExample

    if not prepared.compliant:
        return FileOutcome(
            path, ApprovalStatus.NOT_COMPLIANT, findings=prepared.findings, notes=notes
        )
    twin = renumbered_twin(session, prepared)
    existing = twin or session.exec(
        select(TrainingExample).where(TrainingExample.content_hash == prepared.digest)
    ).first()
    if existing is None:
        status = ApprovalStatus.APPROVED
    elif existing.status == ExampleStatus.RETRACTED:
        status = ApprovalStatus.REAPPROVED
    else:
        status = ApprovalStatus.DUPLICATE
    example_id = existing.id if existing is not None else None
    return FileOutcome(path, status, example_id=example_id, findings=prepared.findings,
                       notes=notes, text_restored=twin is not None)
