"""`sop-bot import` and `sop-bot validate` on a mixed folder, as a QA lead runs them: one
triage line per file, an accurate summary, --json, --dry-run, and progress without a terminal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR

SOPS = DATA_DIR / "sops"
QUIRKS = DATA_DIR / "quirks"


@pytest.fixture
def sop_bot(sop_bot_cli):  # noqa: ANN001, ANN201
    return sop_bot_cli()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A real SOP library: good SOPs, the quirks, a broken one, a README, a catalogue, a
    corrupt Word file and a UTF-16 file."""
    root = tmp_path / "qms" / "procedures with long folder names"
    root.mkdir(parents=True)
    shutil.copy(SOPS / "01_tablet_compression_cleaning.txt", root / "SOP-001 cleaning.txt")
    shutil.copy(QUIRKS / "wrapped_50_columns_grouped_steps.txt", root / "SOP-002 rmg.txt")
    shutil.copy(QUIRKS / "utf16_notepad.txt", root / "SOP-003 dispensing.txt")
    shutil.copy(DATA_DIR / "sops_broken" / "missing_title.txt", root / "SOP-004 draft.md")
    (root / "README.md").write_text("# Procedures\n\nAll approved SOPs of the site.\n")
    (root / "catalogue.md").write_text("SOP-001 Cleaning\nSOP-002 Granulator\n")
    (root / "index of procedures.md").write_text("- SOP-001\n- SOP-002\n")
    (root / "SOP-005 scan.docx").write_bytes(b"not a zip at all")
    return root


def lines_for(output: str, root: Path) -> dict[str, str]:
    """File name -> triage text, from lines "<path>: <triage>"."""
    found = {}
    for line in output.splitlines():
        if line.startswith(str(root)):
            path, _, triage = line.partition(": ")
            found[Path(path).name] = triage
    return found


def test_import_prints_one_triage_line_per_file_and_an_accurate_summary(
    sop_bot, folder: Path  # noqa: ANN001
) -> None:
    result = sop_bot("import", folder)
    assert result.exit_code == 0, result.output
    triage = lines_for(result.stdout, folder)
    assert triage == {
        "README.md": "skipped: README.md is a README file, not an SOP",
        "SOP-001 cleaning.txt": "imported",
        "SOP-002 rmg.txt": "imported",
        "SOP-003 dispensing.txt": "imported",
        "SOP-004 draft.md": "not compliant: The SOP has no title. Add a first line 'Title: ...'.",
        "SOP-005 scan.docx": (
            "unreadable: SOP-005 scan.docx is not a readable Word document (BadZipFile); open "
            "it in Word, save it again as .docx and import again."
        ),
        "catalogue.md": "skipped: catalogue.md is a CATALOGUE file, not an SOP",
        "index of procedures.md": (
            "skipped: index of procedures.md has none of the SOP sections (Objective, Scope, "
            "Procedure ...); it does not look like an SOP"
        ),
    }
    assert len([line for line in result.stdout.splitlines() if line.startswith(str(folder))]) == 8
    assert result.stdout.splitlines()[-1] == (
        "8 file(s): 3 imported, 0 already present, 1 not compliant, 1 unreadable, "
        "3 skipped (not SOPs)."
    )
    # Not a terminal: a plain progress line instead of a bar that shows nothing.
    assert "progress: 8 of 8 files" in result.stderr

    again = sop_bot("import", folder)
    assert lines_for(again.stdout, folder)["SOP-002 rmg.txt"] == "already present"
    assert "0 imported, 3 already present" in again.stdout

    shown = sop_bot("examples", "show", "3")
    assert "ÿþ" not in shown.output and "Dispensing of Raw Materials" in shown.output


def test_dry_run_stores_nothing_and_json_lists_every_file(sop_bot, folder: Path) -> None:  # noqa: ANN001
    dry = sop_bot("import", folder, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert lines_for(dry.stdout, folder)["SOP-001 cleaning.txt"] == "would be imported"
    assert dry.stdout.splitlines()[-1].startswith("Dry run, nothing was stored. 8 file(s): 3 ")
    listed = sop_bot("examples", "list")
    assert "0 approved" in listed.output

    as_json = sop_bot("import", folder, "--json")
    report = json.loads(as_json.stdout)
    assert report["summary"] == {
        "files": 8, "imported": 3, "already_present": 0, "not_compliant": 1,
        "unreadable": 1, "skipped": 3,
    }
    by_name = {Path(entry["file"]).name: entry for entry in report["files"]}
    assert by_name["SOP-004 draft.md"]["status"] == "not_compliant"
    assert by_name["SOP-004 draft.md"]["findings"][0]["code"] == "missing_title"
    assert by_name["SOP-002 rmg.txt"]["status"] == "imported"
    assert by_name["SOP-002 rmg.txt"]["example_id"] is not None


def test_a_cp1252_file_is_imported_with_a_note(sop_bot, tmp_path: Path) -> None:  # noqa: ANN001
    text = (SOPS / "01_tablet_compression_cleaning.txt").read_text(encoding="utf-8")
    path = tmp_path / "old.txt"
    path.write_bytes(text.replace("Machine", "Machine – Café line").encode("cp1252"))
    result = sop_bot("import", path)
    assert result.exit_code == 0, result.output
    assert f"{path}: imported; note: old.txt is not UTF-8; it was read as cp1252." in (
        result.stdout
    )


def test_validate_prints_the_same_triage_line_before_the_details(
    sop_bot, folder: Path  # noqa: ANN001
) -> None:
    result = sop_bot("validate", folder)
    assert result.exit_code == 1
    out = result.stdout.splitlines()
    draft = out.index(f"{folder / 'SOP-004 draft.md'}: not compliant: The SOP has no title. "
                      "Add a first line 'Title: ...'.")
    assert out[draft + 1].startswith("  - error missing_title: The SOP has no title.")
    assert f"{folder / 'SOP-002 rmg.txt'}: would be imported" in out
    assert f"{folder / 'README.md'}: skipped: README.md is a README file, not an SOP" in out
    assert out[-1] == "3 of 8 file(s) compliant."
