"""Real public SOPs (tests/data/real_sops, sources and licences in SOURCES.md) through the
importer, `sop-bot validate` and the parser: one true triage line per file, no heading
swallowed, and training text that keeps every numbered line, however the text is wrapped.

The openregulatory files are ISO 13485 QMS procedures with their own headings (Summary,
General Considerations, Process Steps), and the innolitics one is RDM's starter CAPA SOP
(YAML front matter, "# Purpose", "# Work Instruction" with "1." on every step), so none is
compliant with the house format; the tests pin the first finding, which must be a true
statement about the document. Two are not from a QMS: a university lab's autoclave SOP (a
table before its first heading, Windows line ends; it has none of the house's sections, so
the importer skips it and says why) and a community kitchen's food-storage procedure (no
title heading, "### ALLOWED" under each storage area).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sop_pipeline.sop_format import load_template, parse, render_training_text, training_text
from sop_pipeline.sop_format import validate as validate_sop
from sop_pipeline.sop_format.documents import read_document
from sop_pipeline.sop_format.text import clean_inline
from tests.conftest import DATA_DIR
from tests.test_sop_format_corpus import assert_faithful, rewrap

TEMPLATE = load_template(None)
REAL_DIR = DATA_DIR / "real_sops"
REAL = sorted(p for p in REAL_DIR.iterdir() if p.name != "SOURCES.md")
OBJECTIVE_MISSING = "not compliant: Section 1.0 Objective is missing. Add it as the first section."
SCOPE_MISSING = "not compliant: Section 2.0 Scope is missing. Add it after 1.0 Objective."
# The first finding of each real document, as `import` and `validate` print it.
FIRST_FINDING = {
    "cannlytics_control_of_documents.md": SCOPE_MISSING,
    "cannlytics_data_collection.md": SCOPE_MISSING,
    "hmaldonadovilla_community-kitchen_storage.md": OBJECTIVE_MISSING,
    "innolitics_rdm_capa.md": SCOPE_MISSING,
    "openregulatory_sop_capa.md": OBJECTIVE_MISSING,
    "openregulatory_sop_document_record_control.md": OBJECTIVE_MISSING,
    "openregulatory_sop_internal_audit.md": OBJECTIVE_MISSING,
    "openregulatory_sop_purchasing.md": OBJECTIVE_MISSING,
    "openregulatory_sop_software_validation.md": OBJECTIVE_MISSING,
    "zamanianlab_labdocs_autoclave.md": (
        "skipped: zamanianlab_labdocs_autoclave.md has none of the SOP sections (Objective, "
        "Scope, Procedure ...); it does not look like an SOP"),
}
# A lab's autoclave SOP whose headings are its own ("Preparing Items for Autoclaving"): the
# importer, which must also skip a library's READMEs, says why it takes nothing from it.
SKIPPED = {"zamanianlab_labdocs_autoclave.md"}
_MD_HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.+?)\s*#*\s*$")


def text_of(path: Path) -> str:
    return read_document(path).text


def markdown_headings(source: str) -> list[tuple[int, str]]:
    """(level, cleaned text) of every Markdown heading outside code fences."""
    found, fenced = [], False
    for raw in source.splitlines():
        if raw.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else _MD_HEADING.match(raw.strip())
        if match:
            found.append((len(match.group("hashes")), clean_inline(match.group("text"))))
    return found


def test_every_real_document_is_named_in_sources_with_its_licence() -> None:
    sources = (REAL_DIR / "SOURCES.md").read_text(encoding="utf-8")
    assert set(FIRST_FINDING) == {p.name for p in REAL}
    for path in REAL:
        row = next(line for line in sources.splitlines() if line.startswith(f"| {path.name} |"))
        assert re.search(r"\| [0-9a-f]{40} \| (MIT|CC BY 4\.0)", row), row
    notice = "Please don't remove this notice even if you've modified contents of this template."
    for path in REAL:
        if path.name.startswith("openregulatory_"):  # CC BY 4.0: the notice stays at the bottom
            assert path.read_text(encoding="utf-8").rstrip().endswith(notice), path.name


# --- `sop-bot import --dry-run --json` and `sop-bot validate` --------------------------------


@pytest.fixture
def sop_bot(sop_bot_cli):  # noqa: ANN001, ANN201
    return sop_bot_cli()


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "qms library"
    root.mkdir()
    for path in REAL:
        shutil.copy(path, root / path.name)
    return root


def test_import_dry_run_gives_each_real_document_one_true_triage_line(
    sop_bot, library: Path  # noqa: ANN001
) -> None:
    result = sop_bot("import", library, "--dry-run", "--json")
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    names = [Path(entry["file"]).name for entry in report["files"]]
    assert sorted(names) == sorted(FIRST_FINDING)  # one entry per file, none skipped
    for entry in report["files"]:
        name = Path(entry["file"]).name
        assert entry["status"] == ("skipped" if name in SKIPPED else "not_compliant"), name
        assert entry["triage"] == FIRST_FINDING[name], name
        if name not in SKIPPED:
            first_error = next(f for f in entry["findings"] if f["severity"] == "error")
            assert first_error["code"] == "missing_section"
    assert report["summary"] == {
        "files": len(REAL), "imported": 0, "already_present": 0,
        "not_compliant": len(REAL) - len(SKIPPED), "unreadable": 0, "skipped": len(SKIPPED),
    }
    assert "0 approved" in sop_bot("examples", "list").output  # a dry run stores nothing


def test_validate_prints_the_same_single_triage_line_per_real_document(
    sop_bot, library: Path  # noqa: ANN001
) -> None:
    result = sop_bot("validate", library)
    assert result.exit_code == 1
    out = result.stdout.splitlines()
    for name, triage in FIRST_FINDING.items():
        lines = [line for line in out if line.startswith(f"{library / name}: ")]
        assert lines == [f"{library / name}: {triage}"]
    assert out[-1] == f"0 of {len(REAL)} file(s) compliant."


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_the_first_finding_is_true_of_the_document(path: Path) -> None:
    """The section named missing really is absent: no heading of the document is one of
    its names, and the sections before it in the template, if any, are present."""
    source = text_of(path)
    findings = validate_sop(parse(source, TEMPLATE), TEMPLATE)
    first = next(f for f in findings if f.severity == "error")
    spec = TEMPLATE.spec(first.section)
    assert spec is not None
    names = {name.casefold() for name in spec.names}
    headings = {text.casefold() for _, text in markdown_headings(source)}
    plain = {line.strip().rstrip(":").casefold() for line in source.splitlines()}
    assert not (names & (headings | plain)), (path.name, names & (headings | plain))
    earlier = TEMPLATE.sections[: TEMPLATE.index(spec.key)]
    present = {s.key for s in parse(source, TEMPLATE).sections}
    assert all(s.key in present for s in earlier)


# --- no heading is swallowed ----------------------------------------------------------------


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_every_heading_is_a_section_or_an_entry_of_its_own(path: Path) -> None:
    """A "#"/"##" heading is the title or its own section (an unknown one reported as an
    extra section); a deeper one is its own entry of its section, never glued to a step."""
    source = text_of(path)
    sop = parse(source, TEMPLATE)
    findings = validate_sop(sop, TEMPLATE)
    extra = " ".join(f.message for f in findings if f.code == "extra_section")
    sections = {" ".join(p for p in (s.label, s.heading) if p): s for s in sop.sections}
    entries = [
        " ".join(p for p in (item.marker, item.text) if p) for s in sop.sections for item in s.items
    ]
    levels = sorted({level for level, _ in markdown_headings(source)})
    top = levels[:2] if levels and levels[0] == 1 else levels[:1]
    for level, text in markdown_headings(source):
        if text == sop.title:
            continue
        if level in top:
            assert text in sections, (path.name, text)
            if sections[text].key is None:
                assert f"'{text}'" in extra, (path.name, text)
        else:
            assert text in entries, (path.name, text)  # an entry of its own, as written


# --- training text: every numbered line kept, at any wrap width ------------------------------

# Each real document renamed to the house headings (the only edit), so that its procedure
# and other sections are parsed as the house sections they correspond to.
HEADING_MAP = {
    "## Summary": "## Objective",
    "## General Considerations": "## Scope",
    "## 1. General Considerations": "## 2.0 Scope",
    "## Process Steps": "## Procedure",
    "## 2. Process Steps": "## 5.0 Procedure",
    "## Purpose": "## Objective",
    "## Training": "## Responsibility",
    "# Work Instruction": "# Procedure",
    "Training": "Responsibility",
    "## Autoclaving Items": "## Procedure",
    "## RESPONSIBILITY": "## 3.0 Responsibility",
    "## Fridges": "## Procedure",  # its "### ALLOWED" under a house section
}


def in_house_headings(source: str) -> str:
    lines = source.split("\n")
    return "\n".join(HEADING_MAP.get(line.rstrip(), line) for line in lines)


def test_the_heading_map_renames_a_heading_in_every_real_document() -> None:
    for path in REAL:
        source = text_of(path)
        assert in_house_headings(source) != source, path.name


VARIANTS = [(path, mapped) for path in REAL for mapped in (False, True)]


def _source(path: Path, mapped: bool) -> str:
    source = text_of(path)
    return in_house_headings(source) if mapped else source


@pytest.mark.parametrize(
    ("path", "mapped"), VARIANTS, ids=lambda v: v.name if isinstance(v, Path) else str(v)
)
def test_training_text_of_a_real_document_keeps_every_numbered_line(
    path: Path, mapped: bool
) -> None:
    source = _source(path, mapped)
    sop = parse(source, TEMPLATE)
    training = render_training_text(sop, TEMPLATE)
    assert_faithful(source, training, sop.preamble)  # text before any section is reported
    assert {f.code for f in validate_sop(sop, TEMPLATE) if f.code == "stray_text"} == (
        {"stray_text"} if sop.preamble else set()
    )
    assert training_text(training, TEMPLATE) == training  # approved again, unchanged


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VARIANTS), st.integers(min_value=40, max_value=120))
def test_rewrapped_real_documents_give_the_same_training_text(
    variant: tuple[Path, bool], width: int
) -> None:
    path, mapped = variant
    source = _source(path, mapped)
    wrapped = rewrap(source, width)
    training = training_text(wrapped, TEMPLATE)
    assert training == training_text(source, TEMPLATE)
    assert_faithful(source, training, parse(source, TEMPLATE).preamble)


# --- parser bugs the real documents exposed, each pinned on a small text ----------------------

MINI = """# SOP Mini

## Summary

This SOP describes the mini process.

|                   |                                   |
|-------------------|-----------------------------------|
| **Process Owner** | *\\<enter role of process owner\\>* |

## General Considerations

Documents are named according to this schema:

`ASSOCIATED PROCESS-TYPE-NAME`

### Document Type Abbreviations

| Abbreviation | Description |
|--------------|-------------|
| SOP          | Standard Operating Procedure |
| TPL          | Template |

## Process Steps

### 1. Creation

Anyone creates the document.

| Input   | Output               |
|---------|----------------------|
| Content | New Document (draft) |
| Review  | Released document    |
"""


def test_a_bold_table_row_is_not_a_heading() -> None:
    """`| **Process Owner** | *name* |` starts and ends with "*" but is two cells, not a
    bold-only heading line: it had opened a second "Procedure" section ("Process")."""
    sop = parse(MINI, TEMPLATE)
    assert [s.key for s in sop.sections].count("procedure") == 1
    summary = sop.sections[0]
    assert summary.heading == "Summary"
    assert [i.text for i in summary.items][-1].startswith("Process Owner | ")


def test_markdown_sections_before_the_first_house_section_are_not_stray_text() -> None:
    sop = parse(MINI, TEMPLATE)
    assert [(s.key, s.heading) for s in sop.sections] == [
        (None, "Summary"), (None, "General Considerations"), ("procedure", "Process Steps")
    ]
    assert sop.preamble == []
    codes = [f.code for f in validate_sop(sop, TEMPLATE)]
    assert "stray_text" not in codes and codes.count("extra_section") == 2
    # The same after "Title: ...", which is what the training text starts with.
    again = parse("Title: SOP Mini\n\n" + MINI.split("\n", 2)[2], TEMPLATE)
    assert [s.heading for s in again.sections] == [s.heading for s in sop.sections]


def test_process_steps_is_one_heading_not_a_heading_and_a_body() -> None:
    procedure = parse(MINI, TEMPLATE).section("procedure")
    assert procedure is not None
    assert (procedure.heading, procedure.body) == ("Process Steps", "")
    assert parse("Title: X\n\n## Process Steps: mix well\n", TEMPLATE).sections[0].body == (
        "mix well"
    )
    # On a plain line the extra word makes it content: "Process Owner: ..." is no heading.
    sop = parse("Title: X\n\n3.0 Responsibility:\nProcess Owner: QA Manager\n", TEMPLATE)
    assert [(s.key, [i.text for i in s.items]) for s in sop.sections] == [
        ("responsibility", ["Process Owner: QA Manager"])
    ]
    training = training_text(MINI, TEMPLATE)
    assert "\n## Process Steps:\n" in training  # the mark keeps it a heading when re-read


def test_a_code_span_line_and_a_table_header_row_are_content() -> None:
    sop = parse(MINI, TEMPLATE)
    considerations = sop.sections[1]
    texts = [i.text for i in considerations.items]
    assert "`ASSOCIATED PROCESS-TYPE-NAME`" in texts  # not a "caps" section of its own
    assert "Abbreviation | Description" in texts  # a table's header, not 6.0 Abbreviations
    assert sop.section("abbreviations") is None


def test_table_rows_are_entries_of_their_own_not_wrapped_lines() -> None:
    procedure = parse(MINI, TEMPLATE).section("procedure")
    assert procedure is not None
    assert [i.text for i in procedure.items][-3:] == [
        "Input | Output", "Content | New Document (draft)", "Review | Released document"
    ]
    training = training_text(MINI, TEMPLATE)
    assert training_text(training, TEMPLATE) == training


def test_a_wrapped_url_in_a_definitions_section_is_not_a_definition() -> None:
    """ "from https://..." continuing a reference read as the term "from https" defined as
    "//semver.org/..." and was split off onto a line of its own."""
    text = (
        "Title: X\n\n6.0 Abbreviations:\nSemVer: Semantic Versioning. Retrieved\n"
        "from https://semver.org/spec/v2.0.0.html.\n"
    )
    section = parse(text, TEMPLATE).section("abbreviations")
    assert section is not None
    assert [i.text for i in section.items] == [
        "SemVer: Semantic Versioning. Retrieved from https://semver.org/spec/v2.0.0.html."
    ]


# --- the innolitics CAPA SOP, pinned -----------------------------------------------------------

INNOLITICS = REAL_DIR / "innolitics_rdm_capa.md"


def test_the_innolitics_sop_keeps_every_heading_and_its_markdown_numbering() -> None:
    """RDM's starter SOP: the title from its YAML front matter, every "#" heading a section
    of its own (it had been stray text up to "# Purpose"), "1." on every step kept as written
    (Markdown shows 1 to 5) and never reported as a duplicate."""
    source = text_of(INNOLITICS)
    sop = parse(source, TEMPLATE)
    assert sop.title == "CAPA SOP" and sop.preamble == ["revision: 1"]
    assert [(s.key, s.heading) for s in sop.sections][:3] == [
        (None, "Approvals"), (None, "Training Record"), ("objective", "Purpose")
    ]
    findings = validate_sop(sop, TEMPLATE)
    assert [f.code for f in findings] == (
        ["stray_text"] + ["missing_section"] * 5 + ["extra_section"] * 11
        + ["undefined_abbreviation"] * 2
    )
    assert [f.message.split()[2] for f in findings if f.code == "undefined_abbreviation"] == [
        "SME", "QMS"  # CAPA is defined in Purpose: "corrective action / ... action (CAPA)"
    ]
    training = render_training_text(sop, TEMPLATE)
    assert training.startswith("Title: CAPA SOP\n\n## Approvals:\nAll approvers shall add")
    assert "\n## Work Instruction:\n1. Ensure you are on the master branch" in training
    assert training.count("\n1. ") == 5 and "\n2. " not in training


def test_the_innolitics_work_instruction_as_the_procedure_has_five_steps_and_no_duplicate() -> None:
    sop = parse(in_house_headings(text_of(INNOLITICS)), TEMPLATE)
    procedure = sop.section("procedure")
    assert procedure is not None
    assert [item.marker for item in procedure.items] == ["1."] * 5
    codes = {f.code for f in validate_sop(sop, TEMPLATE)}
    assert "too_few_steps" not in codes and "duplicate_step_number" not in codes

