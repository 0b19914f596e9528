"""Importing a folder of existing SOPs (.txt, .md, .docx) as approved training examples."""

from __future__ import annotations

import zipfile
from pathlib import Path

import docx
import pytest

from sop_pipeline import audit, db
from sop_pipeline.dataset import check_dataset
from sop_pipeline.examples import default_prompt, list_examples
from sop_pipeline.importer import (
    SopFileError,
    import_paths,
    iter_sop_files,
    read_sop_file,
)
from sop_pipeline.services import Services
from sop_pipeline.snapshots import create_snapshot, snapshot_bytes
from tests.conftest import DATA_DIR

SOPS = DATA_DIR / "sops"
BROKEN = DATA_DIR / "sops_broken"


def run_import(services: Services, *paths: Path, seen: list | None = None):  # noqa: ANN201
    with services.session() as session:
        return import_paths(
            session, services.template, services.settings, paths, actor="qa.lead",
            progress=(lambda path, outcome: seen.append((path, outcome.status)))
            if seen is not None else None,
        )


def test_the_real_world_folder_imports_completely_and_only_once(services: Services) -> None:
    seen: list = []
    first = run_import(services, SOPS, seen=seen)
    files = sorted(p for p in SOPS.iterdir() if p.suffix in (".txt", ".md"))

    assert first.imported == len(files) >= 10, first.summary()
    assert first.failed == 0
    assert [path for path, _ in seen] == files, "progress reported per file, sorted"
    with services.session() as session:
        examples = list_examples(session, limit=100)
        assert {e.source for e in examples} == {"import"}
        assert {e.source_path for e in examples} == {str(p) for p in files}
        assert all(e.prompt == default_prompt(e.title) for e in examples)
        prompts = {e.prompt for e in examples}
    assert "Write an SOP for Calibration of pH Meter" in prompts
    assert "Write an SOP for Operation of the Laboratory Autoclave" in prompts
    assert "Write an SOP for Receipt of Raw Materials in the Warehouse" in prompts
    with services.session() as session:
        assert len(audit.events(session, action="approve")) == len(files)

    second = run_import(services, SOPS)
    assert second.imported == 0 and second.duplicates == len(files)
    with services.session() as session:
        assert len(list_examples(session, limit=100)) == len(files)
        assert len(audit.events(session, action="approve")) == len(files)


def test_imported_folder_exports_a_dataset_without_errors(services: Services) -> None:
    run_import(services, SOPS)
    with db.session_scope(services.engine) as session:
        snapshot = create_snapshot(session, services.settings)
    report = check_dataset(snapshot_bytes(snapshot)[0].decode().splitlines(), services.settings)
    assert report.ok, report.error_sentences()
    assert report.errors == {}


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(BROKEN.iterdir()) if p.stem != "undefined_abbreviation"],
    ids=lambda p: p.stem,
)
def test_each_broken_sop_is_reported_with_its_finding(services: Services, path: Path) -> None:
    report = run_import(services, path)
    assert report.imported == 0
    [outcome] = report.not_compliant
    codes = {f.code for f in outcome.findings if f.severity == "error"}
    assert path.stem in codes, f"{path.name}: expected {path.stem}, got {codes}"
    with services.session() as session:
        assert list_examples(session) == []


def test_mixed_folder_keeps_going_past_bad_files(services: Services, tmp_path: Path) -> None:
    folder = tmp_path / "sops"
    (folder / "nested").mkdir(parents=True)
    (folder / "good.txt").write_text((SOPS / "01_tablet_compression_cleaning.txt").read_text())
    (folder / "nested" / "broken.md").write_text((BROKEN / "missing_title.txt").read_text())
    (folder / "nested" / "corrupt.docx").write_bytes(b"not a zip at all")
    (folder / "empty.txt").write_text("  \n")
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4")
    (folder / ".hidden.txt").write_text("ignored")

    report = run_import(services, folder)
    assert [o.path.name for o in report.outcomes] == [
        "empty.txt", "good.txt", "broken.md", "corrupt.docx"
    ]
    assert report.imported == 1
    assert [o.path.name for o in report.not_compliant] == ["broken.md"]
    assert {o.path.name for o in report.unreadable} == {"empty.txt", "corrupt.docx"}
    assert "corrupt.docx is not a readable Word document" in report.unreadable[1].error
    assert report.summary() == (
        "4 file(s): 1 imported, 0 already present, 1 not compliant, 2 unreadable, "
        "0 skipped (not SOPs)."
    )


def test_missing_path_is_not_mistaken_for_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_sop_files([tmp_path / "nope"]))


def _docx_from_lines(path: Path, lines: list[str], numbered_steps: bool = False) -> None:
    """A Word file like QA teams have; steps optionally as Word auto-numbered list items."""
    document = docx.Document()
    in_procedure = False
    for line in lines:
        if line.startswith("5.0"):
            in_procedure = True
        elif line[:2] == "6.":
            in_procedure = False
        if numbered_steps and in_procedure and line.startswith("5.") and not line.startswith(
            "5.0"
        ):
            document.add_paragraph(line.split(" ", 1)[1], style="List Number")
        else:
            document.add_paragraph(line)
    document.save(str(path))


def test_docx_paragraphs_and_numbering_are_read_in_order(
    services: Services, tmp_path: Path
) -> None:
    lines = (SOPS / "01_tablet_compression_cleaning.txt").read_text().splitlines()
    typed = tmp_path / "typed.docx"
    _docx_from_lines(typed, lines)
    assert read_sop_file(typed).split() == "\n".join(lines).split()

    auto = tmp_path / "auto.docx"
    _docx_from_lines(auto, lines, numbered_steps=True)
    text = read_sop_file(auto)
    assert "\n1. " in text and "\n2. " in text, text

    report = run_import(services, typed, auto)
    assert report.failed == 0, [o.findings for o in report.not_compliant]
    # Word shows "1.", "2." for its auto-numbered steps; the training text keeps what the
    # author sees instead of renumbering it to "5.1" (issue #13), so these are two examples.
    assert report.imported == 2
    with services.session() as session:
        texts = [e.sop_text for e in list_examples(session, limit=10)]
    assert any("\n1. Put 'OFF' the electric supply" in t for t in texts)
    assert any("\n5.1 Put 'OFF' the electric supply" in t for t in texts)


def test_corrupt_or_foreign_files_are_sentences_not_tracebacks(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.docx"
    garbage.write_bytes(b"\x00\x01 definitely not a document")
    not_word = tmp_path / "other.docx"
    with zipfile.ZipFile(not_word, "w") as archive:
        archive.writestr("hello.txt", "a zip, but not a Word file")
    for path in (garbage, not_word):
        with pytest.raises(SopFileError, match=rf"{path.name} is not a readable Word document"):
            read_sop_file(path)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Title: Caf\xe9 hygiene".encode("cp1252"))
    assert read_sop_file(latin) == "Title: Café hygiene"
