"""Reading SOP files: every common text encoding, and Word documents with tables and headers."""

from __future__ import annotations

import codecs
from pathlib import Path

import docx
import pytest

from sop_pipeline.sop_format import is_compliant, load_template, parse, training_text, validate
from sop_pipeline.sop_format.documents import (
    SopFileError,
    decode_text,
    read_document,
    read_document_bytes,
)
from tests.conftest import DATA_DIR

TEMPLATE = load_template(None)
SOP = (DATA_DIR / "sops" / "05_dispensing_raw_materials.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("encoded", "encoding"),
    [
        (codecs.BOM_UTF8 + SOP.encode("utf-8"), "utf-8"),
        (SOP.encode("utf-16"), "utf-16-le"),  # Windows Notepad's "Unicode"
        (codecs.BOM_UTF16_BE + SOP.encode("utf-16-be"), "utf-16-be"),
        (SOP.encode("utf-16-le"), "utf-16-le"),  # no byte-order mark
        (SOP.encode("utf-16-be"), "utf-16-be"),
        (SOP.encode("utf-32"), "utf-32-le"),
        (SOP.encode("utf-32-be"), "utf-32-be"),
        (SOP.encode("utf-8"), "utf-8"),
    ],
)
def test_unicode_files_read_exactly_with_or_without_a_byte_order_mark(
    encoded: bytes, encoding: str
) -> None:
    document = decode_text("sop.txt", encoded)
    assert (document.text, document.encoding, document.notes) == (SOP, encoding, [])


def test_the_utf16_fixture_is_imported_as_text_not_mojibake() -> None:
    document = read_document(DATA_DIR / "quirks" / "utf16_notepad.txt")
    assert document.encoding == "utf-16-le"
    assert document.text.startswith("Title: Dispensing of Raw Materials\r\n")
    assert "ÿþ" not in training_text(document.text) and "\x00" not in document.text


def test_a_legacy_code_page_is_read_with_a_note_that_says_so() -> None:
    text = "Title: Café hygiene – déjà vu\n1.0 Objective: Keep 5 °C “cold”.\n"
    document = decode_text("old.txt", text.encode("cp1252"))
    assert document.text == text and document.encoding == "cp1252"
    assert document.notes == [
        "old.txt is not UTF-8; it was read as cp1252. Check that accented letters and symbols "
        "look right, or save the file as UTF-8."
    ]


@pytest.mark.parametrize("data", [bytes(range(256)) * 4, b"\x00\x01\x02\x03" * 50])
def test_binary_data_is_an_error_sentence(data: bytes) -> None:
    with pytest.raises(SopFileError, match="save it as UTF-8"):
        decode_text("scan.txt", data)


def test_other_file_types_are_refused_with_what_to_do() -> None:
    with pytest.raises(SopFileError, match=r"scan\.pdf is not a \.txt, \.md or \.docx file"):
        read_document_bytes("scan.pdf", b"%PDF-1.4")


# --- Word --------------------------------------------------------------------------------------


def _word_sop(path: Path) -> None:
    """A Word SOP as QA teams keep them: a header, the title in a table, numbered sections as
    paragraphs, steps Word numbers itself, and the abbreviations as a two-column table."""
    document = docx.Document()
    document.sections[0].header.paragraphs[0].text = "ACME Pharma Ltd - Quality Assurance"
    header = document.add_table(rows=2, cols=2)
    for row, (left, right) in zip(
        header.rows, [("Title", "Dispensing of Raw Materials"), ("SOP No.", "QA-SOP-014")],
        strict=True,
    ):
        row.cells[0].text, row.cells[1].text = left, right
    document.add_paragraph("1.0 OBJECTIVE To lay down the procedure for dispensing raw materials.")
    document.add_paragraph("2.0 SCOPE Applies to the dispensing booth of the warehouse.")
    document.add_paragraph("3.0 RESPONSIBILITY")
    document.add_paragraph("3.1 Warehouse Officer: dispenses the materials.")
    document.add_paragraph("3.2 QA Officer: verifies the weights.")
    document.add_paragraph("4.0 ACCOUNTABILITY Head of Warehouse")
    document.add_paragraph("5.0 PROCEDURE")
    for step in (
        "Check the status label of the booth and of the balance.",
        "Weigh each material against the issue slip and print the weight.",
        "Label each container with the batch number and the weight.",
    ):
        document.add_paragraph(step, style="List Number")
    document.add_paragraph("6.0 ABBREVIATIONS")
    table = document.add_table(rows=2, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "QA", "Quality Assurance"
    table.rows[1].cells[0].text, table.rows[1].cells[1].text = "SOP", "Standard Operating Procedure"
    document.save(str(path))


def test_a_word_sop_reads_header_tables_and_numbering_in_document_order(tmp_path: Path) -> None:
    path = tmp_path / "dispensing.docx"
    _word_sop(path)
    text = read_document(path).text
    lines = [line for line in text.split("\n") if line]
    assert lines[:3] == [
        "ACME Pharma Ltd - Quality Assurance",
        "Title | Dispensing of Raw Materials",
        "SOP No. | QA-SOP-014",
    ]
    assert "1. Check the status label" in text and "3. Label each container" in text
    assert lines[-2:] == ["QA | Quality Assurance", "SOP | Standard Operating Procedure"]

    sop = parse(text, TEMPLATE)
    findings = validate(sop, TEMPLATE)
    assert is_compliant(findings), findings
    assert sop.title == "Dispensing of Raw Materials"
    assert {f.code for f in findings} == {"stray_text"}  # the header and the SOP number
    training = training_text(text, TEMPLATE)
    assert "\n5.0 PROCEDURE:\n1. Check the status label of the booth" in training
    assert "\nQA | Quality Assurance\n" in training


def test_a_word_sop_whose_body_is_one_big_table_is_not_empty(tmp_path: Path) -> None:
    document = docx.Document()
    rows = [
        ("Title", "Cleaning of Sifter"),
        ("1.0 Objective", "To lay down the cleaning procedure for the sifter."),
        ("2.0 Scope", "Applicable in the granulation area."),
        ("3.0 Responsibility", "Operator"),
        ("4.0 Accountability", "Production Manager"),
        ("5.0 Procedure", ""),
        ("5.1", "Switch off the sifter."),
        ("5.2", "Remove the sieve."),
        ("5.3", "Wash it with purified water."),
        ("6.0 Abbreviations", "None"),
    ]
    table = document.add_table(rows=len(rows), cols=2)
    for row, (left, right) in zip(table.rows, rows, strict=True):
        row.cells[0].text, row.cells[1].text = left, right
    path = tmp_path / "table.docx"
    document.save(str(path))
    text = read_document(path).text
    sop = parse(text, TEMPLATE)
    assert validate(sop, TEMPLATE) == []
    assert "\n5.1 Switch off the sifter.\n5.2 Remove the sieve." in training_text(text)
