"""Rendering SOPs as text, as Markdown and as a Block Kit-ready structure: always as the
author wrote them (issue #13: renumbering is never silent, it is a finding)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sop_pipeline.sop_format import (
    SOP,
    Item,
    Section,
    canonicalize,
    load_template,
    parse,
    render_canonical,
    render_markdown,
    render_structure,
    validate,
)

FIXTURES = sorted((Path(__file__).parent / "data" / "sops").iterdir())
BROKEN = sorted((Path(__file__).parent / "data" / "sops_broken").iterdir())
TEMPLATE = load_template(None)

REFERENCE = """\
Title: Standard Cleaning Procedure for Tablet Compression Machine

1.0 Objective: To lay down the cleaning procedure for the Tablet Compression Machine.

2.0 Scope: This SOP shall be applicable for the cleaning of the tablet compression machine \
in the production department.

3.0 Responsibility:
3.1 Execution: Operator
3.2 Checking: Pharmacist and above

4.0 Accountability: HOD - Production

5.0 Procedure:
5.1 Put 'OFF' the electric supply before the cleaning operation.
5.2 Remove the hopper and the feed frame and clean them with purified water.
5.3 Wipe the turret and the dies with a lint-free cloth soaked in IPA.

6.0 Abbreviations:
SCP: Standard Cleaning Procedure
IPA: Isopropyl Alcohol
"""


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


# --- the reference format ------------------------------------------------------------------


def test_the_reference_example_renders_exactly_as_written() -> None:
    assert render_canonical(parse(REFERENCE), TEMPLATE) == REFERENCE


def test_the_same_sop_pasted_from_slack_keeps_its_own_numbers_and_headings() -> None:
    """Only the markup goes (bold, bullets' shapes, CRLF, the wrapped line); "1)" stays "1)"
    and "Purpose" stays "Purpose", where the house text would say "5.1" and "Objective"."""
    slack = (
        "*Standard Cleaning Procedure for Tablet Compression Machine*\r\n"
        "*Purpose*\r\nTo lay down the cleaning procedure for the Tablet Compression Machine.\r\n"
        "*Scope*\r\nThis SOP shall be applicable for the cleaning of the tablet compression "
        "machine\r\nin the production department.\r\n\r\n\r\n"
        "*Responsibilities*\r\n• Execution: Operator\r\n• Checking: Pharmacist and above\r\n"
        "*Accountable:* HOD - Production\r\n"
        "*Steps*\r\n1) Put 'OFF' the electric supply before the cleaning operation.\r\n"
        "2) Remove the hopper and the feed frame and clean them with purified water.\r\n"
        "3) Wipe the turret and the dies with a lint-free cloth soaked in IPA.\r\n"
        "*Definitions*\r\n• SCP - Standard Cleaning Procedure\r\n• IPA = Isopropyl Alcohol\r\n"
    )
    assert canonicalize(slack, TEMPLATE) == (
        "Title: Standard Cleaning Procedure for Tablet Compression Machine\n\n"
        "Purpose: To lay down the cleaning procedure for the Tablet Compression Machine.\n\n"
        "Scope: This SOP shall be applicable for the cleaning of the tablet compression machine "
        "in the production department.\n\n"
        "Responsibilities:\n- Execution: Operator\n- Checking: Pharmacist and above\n\n"
        "Accountable: HOD - Production\n\n"
        "Steps:\n1) Put 'OFF' the electric supply before the cleaning operation.\n"
        "2) Remove the hopper and the feed frame and clean them with purified water.\n"
        "3) Wipe the turret and the dies with a lint-free cloth soaked in IPA.\n\n"
        "Definitions:\n- SCP - Standard Cleaning Procedure\n- IPA = Isopropyl Alcohol\n"
    )
    assert validate(parse(slack), TEMPLATE) == []  # and it follows the house format as it is


@pytest.mark.parametrize("path", FIXTURES + BROKEN, ids=lambda p: p.name)
def test_canonical_rendering_is_idempotent_on_fixtures(path: Path) -> None:
    once = canonicalize(read(path), TEMPLATE)
    assert canonicalize(once, TEMPLATE) == once


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_canonical_text_is_clean_plain_text(path: Path) -> None:
    text = canonicalize(read(path), TEMPLATE)
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert "\r" not in text and "\u00a0" not in text and "\u200b" not in text
    assert all(line == line.rstrip() for line in text.split("\n"))
    assert "\n\n\n" not in text
    assert not any(mark in text for mark in ("**", "<@", "&amp;", "## "))
    sop = parse(read(path), TEMPLATE)
    headings = [block.split("\n")[0] for block in text.split("\n\n")[1:]]
    assert [h.split(":")[0] for h in headings] == [
        " ".join(p for p in (s.label, s.heading) if p) for s in sop.sections
    ]  # each section's own number and heading, in the author's order
    assert [s.key for s in sop.sections] == [spec.key for spec in TEMPLATE.sections]


def test_rendering_keeps_the_authors_order_numbers_and_headings() -> None:
    """It used to reorder, renumber and rename ("5.1 Stop", "1.0 Objective" first); now the
    text stays as written and validation tells the author what to change."""
    sop = parse(
        "Title: T\nSteps:\n- Stop\n  - Lock out\n- Open\n- Wipe\nPurpose: Keep it clean\n"
        "## Annexure\nForm 17\nGlossary:\nIPA - Isopropyl Alcohol\n"
    )
    assert render_canonical(sop, TEMPLATE) == (
        "Title: T\n\n"
        "Steps:\n- Stop\n   - Lock out\n- Open\n- Wipe\n\n"
        "Purpose: Keep it clean\n\n"
        "## Annexure:\nForm 17\n\n"
        "Glossary:\nIPA - Isopropyl Alcohol\n"
    )
    findings = [(f.code, f.section) for f in validate(sop, TEMPLATE)]
    assert ("wrong_order", "objective") in findings and ("extra_section", None) in findings


def test_an_empty_sop_renders_as_empty_text() -> None:
    assert render_canonical(SOP(title=None), TEMPLATE) == ""
    assert render_markdown(SOP(title=None), TEMPLATE) == ""


def test_a_sub_step_without_a_parent_step_is_kept_and_reported() -> None:
    """It used to be promoted to "5.1" without a word; now the author is told."""
    text = "Title: T\n\n5.0 Procedure:\n5.1.1 a\n5.1.2 b\n5.2 c\n"
    sop = parse(text)
    assert render_canonical(sop, TEMPLATE) == text
    assert [(f.code, f.message) for f in validate(sop, TEMPLATE) if f.section == "procedure"] == [
        ("numbering_gap", "In 5.0 Procedure, step 5.1.1 comes before any step 5.1. "
         "Add step 5.1 or renumber the sub-steps.")
    ]
    items = [Item("5.1.1", "a", 2, "5.1.1")]
    sop = SOP(title="T", sections=[Section("5.0", "procedure", "Procedure", items=items)])
    assert render_structure(sop, TEMPLATE)["sections"][0]["items"] == [
        {"number": "5.1.1", "text": "a", "level": 2, "line": "5.1.1 a"}
    ]


def test_a_draft_with_a_numbering_gap_and_a_duplicate_keeps_them_in_every_rendering() -> None:
    """What the model wrote is what the reviewer sees, approves and exports; the findings
    say what to fix."""
    draft = REFERENCE.replace("5.2 Remove", "5.4 Remove").replace("5.3 Wipe", "5.4 Wipe")
    sop = parse(draft)
    assert render_canonical(sop, TEMPLATE) == draft
    markdown = render_markdown(sop, TEMPLATE)
    assert "\n5.1 Put" in markdown and "\n5.4 Remove" in markdown and "\n5.4 Wipe" in markdown
    procedure = render_structure(sop, TEMPLATE)["sections"][4]
    assert [item["number"] for item in procedure["items"]] == ["5.1", "5.4", "5.4"]
    assert [(f.code, f.severity) for f in validate(sop, TEMPLATE)] == [
        ("numbering_gap", "error"), ("duplicate_step_number", "warning")
    ]


# --- markdown and structure ----------------------------------------------------------------


def test_markdown_uses_headings_and_keeps_each_step_with_its_own_number() -> None:
    markdown = render_markdown(parse(REFERENCE), TEMPLATE)
    assert markdown.startswith("# Standard Cleaning Procedure for Tablet Compression Machine\n\n")
    assert "## 1.0 Objective\n\nTo lay down" in markdown
    assert "## 5.0 Procedure\n\n5.1 Put 'OFF' the electric supply before the cleaning " \
        "operation.\n\n5.2 Remove" in markdown
    assert "\n\nIPA: Isopropyl Alcohol\n" in markdown


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_markdown_parses_back_to_the_same_sop(path: Path) -> None:
    sop = parse(read(path), TEMPLATE)
    assert canonicalize(render_markdown(sop, TEMPLATE), TEMPLATE) == render_canonical(sop, TEMPLATE)


def test_structure_is_json_ready_and_keeps_the_numbers_as_written() -> None:
    structure = render_structure(parse(REFERENCE), TEMPLATE)
    assert json.loads(json.dumps(structure)) == structure
    assert structure["title"] == "Standard Cleaning Procedure for Tablet Compression Machine"
    procedure = structure["sections"][4]
    assert {k: procedure[k] for k in ("number", "key", "heading", "body")} == {
        "number": "5.0",
        "key": "procedure",
        "heading": "Procedure",
        "body": "",
    }
    assert procedure["items"][0] == {
        "number": "5.1",
        "text": "Put 'OFF' the electric supply before the cleaning operation.",
        "level": 1,
        "line": "5.1 Put 'OFF' the electric supply before the cleaning operation.",
    }
    abbreviation = structure["sections"][5]["items"][1]
    assert abbreviation == {"number": None, "text": "IPA: Isopropyl Alcohol", "level": 1,
                            "line": "IPA: Isopropyl Alcohol"}
    bullets = render_structure(parse("Title: T\nSteps:\n• a\n  ◦ b\n1) c\n"), TEMPLATE)
    assert bullets["sections"][0]["number"] is None
    assert bullets["sections"][0]["items"] == [
        {"number": "-", "text": "a", "level": 1, "line": "- a"},
        {"number": "-", "text": "b", "level": 2, "line": "   - b"},  # indented, as in training
        {"number": "1)", "text": "c", "level": 1, "line": "1) c"},
    ]


# --- property: parse -> render -> parse -> render is stable ---------------------------------

WORD = st.text(alphabet="abcdefXYZ0123456789%°µ()-/,.;'\"&<>*_~`@#|", min_size=1, max_size=8)
PHRASE = st.lists(WORD, min_size=1, max_size=8).map(" ".join)
PLAIN_PHRASE = st.lists(
    st.sampled_from(["mix", "the", "IPA", "10 kg", "(dry)", "5%"]), min_size=1, max_size=6
).map(" ".join)
NUMBER_STYLES = ["{n}.0 ", "{n}. ", "{n}) ", "{n} ", "Section {n}: ", "", "## ", "## {n}.0 "]
DECORATIONS = ["{}", "*{}*", "**{}**"]
ITEM_STYLES = ["{n}.{k} ", "{n}.{k}) ", "{k}. ", "{k}) ", "• ", "- ", "* ", "", "  - "]


@st.composite
def pasted_sops(draw: st.DrawFn, phrases: st.SearchStrategy[str] = PHRASE) -> str:
    """A house SOP typed in a random mixture of the styles people paste; `phrases` fills in
    the text, by default with characters that Slack and Markdown treat specially."""
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    lines = []
    if draw(st.booleans()):
        lines.append(f"Title: {draw(phrases)}")
    specs = draw(
        st.permutations(TEMPLATE.sections).map(lambda s: s[: len(s) - 1])
        | st.just(TEMPLATE.sections)
    )
    for spec in specs:
        number = draw(st.sampled_from(NUMBER_STYLES)).format(n=spec.number)
        name = draw(st.sampled_from(spec.names))
        heading = draw(st.sampled_from(DECORATIONS)).format(f"{number}{name}:")
        inline = draw(st.booleans())
        lines.append(f"{heading} {draw(phrases)}" if inline else heading)
        for k in range(1, draw(st.integers(0, 4)) + 1):
            if spec.kind == "definitions":
                lines.append(f"{draw(st.sampled_from(['', '- ']))}ABC{k}: {draw(phrases)}")
            else:
                marker = draw(st.sampled_from(ITEM_STYLES)).format(n=spec.number, k=k)
                lines.append(marker + draw(phrases))
        lines.extend([""] * draw(st.integers(0, 2)))
    return newline.join(lines)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pasted_sops())
def test_canonicalization_is_idempotent_for_generated_sops(text: str) -> None:
    once = canonicalize(text, TEMPLATE)
    assert canonicalize(once, TEMPLATE) == once


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pasted_sops(PLAIN_PHRASE))
def test_generated_sops_keep_every_section_they_were_written_with(text: str) -> None:
    sop = parse(text, TEMPLATE)
    assert all(section.key is not None for section in sop.sections)
    assert canonicalize(render_markdown(sop, TEMPLATE), TEMPLATE) == render_canonical(sop, TEMPLATE)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pasted_sops(PLAIN_PHRASE))
def test_no_rendering_renumbers_anything(text: str) -> None:
    """Every renderer shows the numbers the author wrote, in the author's order; read back,
    the text and the Markdown give the same numbers again."""
    sop = parse(text, TEMPLATE)
    written = [(s.label, [i.marker for i in s.items]) for s in sop.sections]
    structure = render_structure(sop, TEMPLATE)
    assert [(s["number"], [i["number"] for i in s["items"]]) for s in structure["sections"]] == (
        written
    )
    for rendered in (render_canonical(sop, TEMPLATE), render_markdown(sop, TEMPLATE)):
        again = parse(rendered, TEMPLATE)
        assert [(s.label, [i.marker for i in s.items]) for s in again.sections] == written

