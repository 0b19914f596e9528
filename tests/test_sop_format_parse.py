"""Parsing SOPs the way people actually paste them: Slack, Markdown, Word, sloppy numbering."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sop_pipeline.sop_format import SOP, Item, load_template, parse, training_text

FIXTURES = Path(__file__).parent / "data" / "sops"
HOUSE_KEYS = [
    "objective",
    "scope",
    "responsibility",
    "accountability",
    "procedure",
    "abbreviations",
]


def keys(sop: SOP) -> list[str | None]:
    return [section.key for section in sop.sections]


def steps(sop: SOP) -> list[str]:
    procedure = sop.section("procedure")
    assert procedure is not None
    return [item.text for item in procedure.items]


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")  # keep CRLF as pasted


# --- the fixtures -------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(FIXTURES.iterdir()), ids=lambda p: p.name)
def test_every_fixture_parses_into_the_six_house_sections(path: Path) -> None:
    sop = parse(read(path))
    assert sop.title
    assert keys(sop) == HOUSE_KEYS
    assert len(steps(sop)) >= 5
    assert sop.preamble == []


def test_the_canonical_fixture_keeps_numbers_and_headings_as_written() -> None:
    sop = parse(read(FIXTURES / "01_tablet_compression_cleaning.txt"))
    assert sop.title == "Standard Cleaning Procedure for Tablet Compression Machine"
    objective = sop.sections[0]
    assert (objective.number, objective.key, objective.heading) == ("1.0", "objective", "Objective")
    assert objective.body.startswith("To lay down the cleaning procedure")
    responsibility = sop.section("responsibility")
    assert responsibility is not None
    assert responsibility.items == [
        Item("3.1", "Execution: Operator"),
        Item("3.2", "Checking: Pharmacist and above"),
    ]
    assert sop.section("accountability").body == "HOD - Production"  # type: ignore[union-attr]


# --- Slack mrkdwn ---------------------------------------------------------------------------


def test_slack_decoration_entities_mentions_channels_and_links_become_plain_text() -> None:
    text = (
        "*Title:* Calibration of _pH_ meter\n"
        "*1.0 Objective:* To ~check~ the meter &amp; buffers &lt;daily&gt;\n"
        "*5.0 Procedure:*\n"
        "• Ask <@U123ABC> for the key\n"
        "• Post in <#C999|qc-lab>\n"
        "• Use <https://intranet.example.com/f17|Form 17> or <https://example.com/x>\n"
        "• Press `CAL` and wait\n"
    )
    sop = parse(text)
    assert sop.title == "Calibration of pH meter"
    assert sop.sections[0].body == "To check the meter & buffers <daily>"
    assert steps(sop) == [
        "Ask @U123ABC for the key",
        "Post in #qc-lab",
        "Use Form 17 or https://example.com/x",
        "Press CAL and wait",
    ]


def test_underscores_and_asterisks_inside_words_are_not_decoration() -> None:
    sop = parse("Title: x\nProcedure:\n- open file_name_v2\n- mix 2 * 3 * 4 parts\n- c\n")
    assert steps(sop) == ["open file_name_v2", "mix 2 * 3 * 4 parts", "c"]


# --- headings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "1.0 Objective: Keep it clean",
        "1. Objective: Keep it clean",
        "1 Objective: Keep it clean",
        "1) Objective: Keep it clean",
        "1.0. Objective - Keep it clean",
        "Section 1: Objective: Keep it clean",
        "Section 1 - Objective: Keep it clean",
        "Objective: Keep it clean",
        "OBJECTIVE : Keep it clean",
        "objective - Keep it clean",
        "*1.0 Objective:* Keep it clean",
        "**Objective:** Keep it clean",
        "Purpose: Keep it clean",
        "1.0 Aim: Keep it clean",
    ],
)
def test_numbering_styles_case_and_synonyms_all_find_the_objective(line: str) -> None:
    sop = parse(f"Title: T\n{line}\n")
    assert keys(sop) == ["objective"]
    assert sop.sections[0].body == "Keep it clean"


@pytest.mark.parametrize(
    "heading",
    ["## 1.0 Objective", "# Objective", "**Objective**", "*Objective:*", "Objective", "Purpose:"],
)
def test_a_heading_on_its_own_line_takes_the_following_lines_as_content(heading: str) -> None:
    sop = parse(f"Title: T\n{heading}\n\nTo keep the\nline clean.\n\nScope\nAll lines.\n")
    assert keys(sop) == ["objective", "scope"]
    assert sop.sections[0].body == "To keep the line clean."
    assert sop.sections[1].body == "All lines."


@pytest.mark.parametrize(
    ("heading", "key"),
    [
        ("Definitions", "abbreviations"),
        ("Abbreviations and Definitions", "abbreviations"),
        ("Abbreviations & Definitions", "abbreviations"),
        ("Glossary", "abbreviations"),
        ("Acronyms", "abbreviations"),
        ("Applicability", "scope"),
        ("Responsibilities", "responsibility"),
        ("Accountable", "accountability"),
        ("Method", "procedure"),
        ("Steps", "procedure"),
        ("Process", "procedure"),
    ],
)
def test_template_synonyms_map_to_the_canonical_key(heading: str, key: str) -> None:
    sop = parse(f"Title: T\n{heading}:\nsomething\n")
    assert keys(sop) == [key]
    assert sop.sections[0].heading == heading


def test_unknown_numbered_sections_are_kept_with_key_none() -> None:
    sop = parse("Title: T\n5.0 Procedure:\n5.1 a\n5.2 b\n7.0 References: SOP/QA/001\n")
    assert keys(sop) == ["procedure", None]
    assert sop.sections[1].heading == "References"
    assert sop.sections[1].body == "SOP/QA/001"


def test_numbered_steps_with_colons_inside_a_procedure_stay_steps() -> None:
    sop = parse(
        "Title: T\n5. Procedure:\n1. Weigh the granules: 10 kg\n2. Process: mix 5 min\n"
        "7. Blend the lot: 20 min\n"
    )
    assert keys(sop) == ["procedure"]
    assert steps(sop) == [
        "Weigh the granules: 10 kg",
        "Process: mix 5 min",
        "Blend the lot: 20 min",
    ]


def test_a_wrapped_line_starting_with_a_heading_name_in_small_letters_is_the_line_above() -> None:
    """Hard-wrapped at 80 columns, "... the operator has full" / "responsibility: for the
    record." is one sentence. Read as a second Responsibility section, it gave the approver a
    duplicate-section error and a Scope out of order, and the model learnt two sections."""
    text = ("Title: T\n1.0 Objective:\nTo describe the cleaning so that the operator has full\n"
            "responsibility: for the cleaning record.\n2.0 Scope: Press TP-01.\n"
            "3.0 Responsibility: Operator.\n")
    sop = parse(text)
    assert keys(sop) == ["objective", "scope", "responsibility"]
    assert sop.sections[0].body == ("To describe the cleaning so that the operator has full "
                                    "responsibility: for the cleaning record.")
    assert training_text(training_text(text)) == training_text(text)
    # After a blank line, or numbered, or in capitals, it is the heading it names.
    for heading in ("\nresponsibility: Operator.", "3.0 responsibility: Operator.",
                    "Responsibility: Operator."):
        assert keys(parse(f"Title: T\n1.0 Objective:\nTo describe.\n{heading}\n")) == [
            "objective", "responsibility"], heading


def test_markdown_subheadings_inside_a_section_are_content() -> None:
    sop = parse("# T\n## Procedure\n### Hopper\n1. clean it\n### Turret\n2. wipe it\n")
    assert keys(sop) == ["procedure"]
    assert steps(sop) == ["Hopper", "clean it", "Turret", "wipe it"]


@pytest.mark.parametrize("title", ["Title: CAPA SOP", "---\nrevision: 1\ntitle: CAPA SOP\n---"])
def test_after_a_title_line_a_top_level_markdown_heading_is_a_section(title: str) -> None:
    """As in RDM's SOPs (YAML front matter, then "# Approvals"): each "#" heading before the
    first house section is a section of its own, not stray text line by line."""
    text = f"{title}\n# Approvals\nSign the table.\n# Purpose\nTo track CAPAs.\n"
    sop = parse(text)
    assert sop.title == "CAPA SOP"
    assert [(s.key, s.heading, [i.text for i in s.items], s.body) for s in sop.sections] == [
        (None, "Approvals", ["Sign the table."], ""),
        ("objective", "Purpose", [], "To track CAPAs."),
    ]
    # Without a "Title:" line the first "#" heading is still the title.
    assert parse("# CAPA SOP\n## Purpose\nTo track CAPAs.\n").title == "CAPA SOP"


@pytest.mark.parametrize(
    "heading", ["## Procedure:", "## Procedure", "### Procedure", "## 5.0 Procedure"])
def test_a_house_section_under_an_extra_section_is_that_house_section(heading: str) -> None:
    """ "# Cleaning steps" (not in the house format) then "## Procedure": the procedure is the
    house's own section, not a line of the extra one. As a line, the training text wrote it
    "Procedure:", which read again was the section: the approved text did not read back."""
    text = f"Title: T\n4.0 Accountability: QA\n# Cleaning steps\n{heading}\n5.1 Wipe.\n5.2 Dry.\n"
    sop = parse(text)
    assert [(s.key, s.heading) for s in sop.sections] == [
        ("accountability", "Accountability"), (None, "Cleaning steps"), ("procedure", "Procedure"),
    ]
    assert steps(sop) == ["Wipe.", "Dry."]
    training = training_text(text)
    assert training_text(training) == training
    # A house section already seen stays a sub-heading of the extra section, as written.
    seen = "Title: T\n5.0 Procedure:\n5.1 Wipe.\n# Notes\n## Procedure\nAsk QA.\n"
    assert [s.key for s in parse(seen).sections] == ["procedure", None]


def test_a_subheading_is_never_continued_by_the_line_under_it() -> None:
    """ "### Retention Periods" straight above its text (no blank line) stays a line of its
    own; joined, the heading's words had become part of the first sentence."""
    text = (
        "# T\n## Procedure\n### Retention Periods\nRecords are kept for 10 years.\n"
        "**Note:**\nkeep the lid closed.\n- wipe it\n"
    )
    sop = parse(text)
    assert steps(sop) == [
        "Retention Periods", "Records are kept for 10 years.", "Note:", "keep the lid closed.",
        "wipe it",
    ]
    training = training_text(text)
    assert training_text(training) == training


# --- steps and sub-numbering ---------------------------------------------------------------


@pytest.mark.parametrize(
    "markers",
    [
        ["5.1 ", "5.2 ", "5.3 "],
        ["5.1. ", "5.2. ", "5.3. "],
        ["5.1) ", "5.2) ", "5.3) "],
        ["1. ", "2. ", "3. "],
        ["1) ", "2) ", "3) "],
        ["(1) ", "(2) ", "(3) "],
        ["Step 1: ", "Step 2: ", "Step 3: "],
        ["a) ", "b) ", "c) "],
        ["(a) ", "(b) ", "(c) "],
        ["• ", "• ", "• "],
        ["- ", "- ", "- "],
        ["* ", "* ", "* "],
        ["", "", ""],
    ],
)
def test_every_list_style_under_procedure_becomes_steps(markers: list[str]) -> None:
    words = ["Stop", "Open", "Wipe"]
    # Plain lines without a marker continue the line before (hard-wrapped text); only a
    # blank line makes them separate entries.
    joiner = "\n" if markers[0] else "\n\n"
    body = joiner.join(f"{m}{word} the machine" for m, word in zip(markers, words, strict=True))
    sop = parse(f"Title: T\n5.0 Procedure:\n{body}\n")
    assert steps(sop) == ["Stop the machine", "Open the machine", "Wipe the machine"]


def test_dotted_sub_steps_and_indented_bullets_are_level_two() -> None:
    sop = parse(
        "Title: T\nProcedure:\n5.1 Stop\n5.1.1 Lock out\n5.2 Open\n- Wipe\n    - with IPA\n"
    )
    procedure = sop.section("procedure")
    assert procedure is not None
    assert [(i.number, i.text, i.level) for i in procedure.items] == [
        ("5.1", "Stop", 1),
        ("5.1.1", "Lock out", 2),
        ("5.2", "Open", 1),
        (None, "Wipe", 1),
        (None, "with IPA", 2),
    ]


def test_abbreviation_lines_keep_their_text_and_none_is_a_body() -> None:
    sop = parse("Title: T\nAbbreviations:\n- *IPA*: Isopropyl Alcohol\n6.1 SS - Stainless Steel\n")
    section = sop.section("abbreviations")
    assert section is not None
    assert [i.text for i in section.items] == ["IPA: Isopropyl Alcohol", "SS - Stainless Steel"]
    assert parse("Title: T\nAbbreviations:\nNone\n").sections[0].body == "None"


# --- title ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Title: Cleaning of Sifter\n1.0 Objective: x",
        "SOP Title - Cleaning of Sifter\n1.0 Objective: x",
        "Title:\nCleaning of Sifter\n1.0 Objective: x",
        "# Cleaning of Sifter\nObjective: x",
        "*Cleaning of Sifter*\nObjective: x",
        "Cleaning of Sifter\n\n1.0 Objective: x",
        "Here is the SOP:\n**Cleaning of Sifter**\nObjective: x",
    ],
)
def test_the_title_comes_from_a_title_line_a_heading_or_the_first_line(text: str) -> None:
    assert parse(text).title == "Cleaning of Sifter"


def test_other_text_before_the_first_section_is_kept_as_preamble() -> None:
    sop = parse("Title: T\nSOP No.: QA-001\nEffective date: 1 Jan\nObjective: x\n")
    assert sop.preamble == ["SOP No.: QA-001", "Effective date: 1 Jan"]


def test_no_sections_and_no_text_parse_to_empty_sops() -> None:
    assert parse("") == SOP(title=None)
    assert parse("\n \u200b\n") == SOP(title=None)
    assert parse("Just a sentence.").title == "Just a sentence."


# --- characters ----------------------------------------------------------------------------


def test_crlf_nbsp_unicode_spaces_and_zero_width_characters_are_normalised() -> None:
    text = (
        "\ufeffTitle:\u00a0Metal\u2003Detector\r\n\r\n1.0\u00a0Obje\u200bctive:\u202fVerify"
        "\u200d it\r\n5.0 Procedure:\r\n5.1\tStop\r5.2 Go\u2028\u00a05.3 Log\r\n"
    )
    sop = parse(text)
    assert sop.title == "Metal Detector"
    assert keys(sop) == ["objective", "procedure"]
    assert sop.sections[0].body == "Verify it"
    assert steps(sop) == ["Stop", "Go", "Log"]


def test_units_and_symbols_survive_cleaning() -> None:
    sop = parse("Title: T\nScope: 5 m² at 25 °C, ±0.1 µL, ½ dose\n")
    assert sop.sections[0].body == "5 m² at 25 °C, ±0.1 µL, ½ dose"


def test_markdown_backslash_escapes_are_markup() -> None:
    r"""Word, Pandoc and Slack copy-paste write "5\.1", "\*", "\_", "\#": the backslash goes,
    so "5\.1" is step 5.1 and "\*\*Note\*\*" reads as "**Note**" typed plain."""
    text = (
        r"Title: Cleaning of the \#2 Hopper" "\n"
        r"5\.0 Procedure\:" "\n"
        r"5\.1 Clean the hopper\." "\n"
        r"5\.1\.1 Wipe the *lid\_seal* with 70\% IPA \(fresh\)\." "\n"
        r"\- Mix 2 \* 3 parts; \*\*Note\*\* the \[batch\] \<number\>\!" "\n"
    )
    sop = parse(text)
    assert sop.title == "Cleaning of the #2 Hopper"
    procedure = sop.section("procedure")
    assert procedure is not None and procedure.label == "5.0"
    assert [(i.marker, i.level, i.text) for i in procedure.items] == [
        ("5.1", 1, "Clean the hopper."),
        ("5.1.1", 2, "Wipe the lid_seal with 70% IPA (fresh)."),
        ("-", 1, "Mix 2 * 3 parts; Note the [batch] <number>!"),
    ]


@pytest.mark.parametrize(
    "literal",
    [
        r"C:\QA\SOP",  # Windows paths, word for word
        r"C:\QA\SOP\_archive\*.docx",
        r"D:\_records",
        r"\\qa-server\sops\v2.1",  # a UNC path
        r"\d{3}-\d{2}",  # a pattern
        "`C:\\*.txt`",  # in a code span too
        r"x \\ y and a lone \ backslash",  # a doubled backslash stays, as Markdown's "\\"
    ],
)
def test_backslashes_that_are_not_markdown_escapes_survive(literal: str) -> None:
    sop = parse(f"Title: T\n5.0 Procedure:\n5.1 Save to {literal} now\n")
    expected = literal.replace("`", "")  # the code-span marks are markup, their text is not
    assert steps(sop) == [f"Save to {expected} now"]


def test_an_html_line_break_is_a_new_line_and_a_space_inside_a_table_cell() -> None:
    text = (
        "Title: T\n5.0 Procedure:\n5.1 Switch off.<br>5.2 Unplug.<BR/>\n"
        "5.3 Open the lid<br />and wipe it.\n"
        "| Input | Purchase need<br>List of Qualified Suppliers |\n"
    )
    assert [(i.marker, i.text) for i in parse(text).section("procedure").items] == [  # type: ignore[union-attr]
        ("5.1", "Switch off."),
        ("5.2", "Unplug."),  # a "<br>" at a line end adds nothing
        ("5.3", "Open the lid and wipe it."),  # a broken line joins its item, as any wrap
        (None, "Input | Purchase need List of Qualified Suppliers"),
    ]
    # Slack sends a typed "<br>" as "&lt;br&gt;".
    assert steps(parse("Title: T\n5.0 Procedure:\n5.1 a&lt;br&gt;5.2 b\n")) == ["a", "b"]


def test_a_custom_template_changes_what_counts_as_a_heading(tmp_path: Path) -> None:
    path = tmp_path / "mini.toml"
    path.write_text(
        '[[sections]]\nkey = "why"\nheading = "Rationale"\nsynonyms = ["Reason"]\n'
        '[[sections]]\nkey = "how"\nheading = "Instructions"\nsubsections = true\n'
    )
    sop = parse("Title: T\nReason: because\nInstructions:\n- a\n- b\n", load_template(path))
    assert keys(sop) == ["why", "how"]


def test_table_cells_left_by_cleaning_read_the_same_again() -> None:
    """Found by the generated-SOP properties: "5.1 `| 0" wrapped onto "0`" cleans to "| 0 0";
    the training text "5.1 | 0 0" read again is step 5.1 in a table cell, "0 0"."""
    text = "Title: T\n5.0 Procedure:\n5.1 `| 0\n0`\n5.2 b\n5.3 c\n"
    training = training_text(text)
    assert training_text(training) == training
    assert parse(text).section("procedure").items[0] == Item("5.1", "0 0")  # type: ignore[union-attr]
    # "> |0": the table row inside a quote reads as the "|0" it leaves in the training text.
    quoted = "Title: T\n5.0 Procedure:\n> | IPA | Isopropyl Alcohol |\n5.1 a\n> |0\n"
    assert steps(parse(quoted)) == ["IPA | Isopropyl Alcohol", "a 0"]
    assert training_text(training_text(quoted)) == training_text(quoted)
    # "6.0 Abbreviations: 10 X 0|0": a definition inline, but a section "10 X 0" on its own line.
    inline = "Title: T\n5.0 Procedure:\n5.1 a\n6.0 Abbreviations: 10 X 0|0\n"
    assert training_text(training_text(inline)) == training_text(inline)


def test_layouts_of_real_documents_read_back_as_themselves() -> None:
    """Found with real SOPs (tests/data/real_sops and a sample QMS): each training text read
    again is the same text, and no word or "#" is lost on the way."""
    records = (  # "## 7. References" after a list: written "7. References:" it was the list's
        "Title: T\n5.0 Procedure:\n5.1 Build.\n## 6. Records\n- Build logs\n"  # next line
        "## 7. References\n- ISO 13485\n")
    storage = (  # "### ALLOWED" under "## Fridges": written "ALLOWED", it read as a section
        "Title: T\n## RESPONSIBILITY\nStaff.\n## Fridges\n### ALLOWED\n- Dairy\n"
        "### NOT ALLOWED\n- Raw meat\n")
    language = "Title: T\n1.0 Objective: a\n## Notes: written in C#\n## Tools ##\n- b\n"
    house = storage.replace("## Fridges", "## Procedure")  # written "## Procedure:", so that
    for text in (records, storage, language, house):  # its "ALLOWED" stays one of its lines
        training = training_text(text)
        assert training_text(training) == training, text
    assert [s.heading for s in parse(records).sections] == ["Procedure", "Records", "References"]
    assert [s.heading for s in parse(storage).sections] == ["RESPONSIBILITY", "Fridges"]
    fridges = parse(storage).sections[1]
    assert [i.text for i in fridges.items] == ["ALLOWED", "Dairy", "NOT ALLOWED", "Raw meat"]
    assert "## Notes: written in C# #" in training_text(language)  # the closing "#" is markup
    assert "\n## Procedure:\nALLOWED\n- Dairy\n\nNOT ALLOWED\n" in training_text(house)
    assert steps(parse(training_text(house))) == ["ALLOWED", "Dairy", "NOT ALLOWED", "Raw meat"]
    assert [s.heading for s in parse(language).sections] == ["Objective", "Notes", "Tools"]


def test_an_empty_table_cell_keeps_every_other_cell_in_its_column() -> None:
    """ "| Operator | | QA |" read as "Operator | QA" moved QA under the wrong column heading;
    the empty cell stays, and a row that starts with one keeps its outer pipes."""
    text = (
        "Title: T\n3.0 Responsibility:\n| Role | Checks | Approves |\n|---|---|---|\n"
        "| Operator | | QA |\n| | Supervisor | |\n|| Head QA |\n| Auditor | Lead | |\n"
    )
    assert [i.text for i in parse(text).section("responsibility").items] == [  # type: ignore[union-attr]
        "Role | Checks | Approves",
        "Operator | | QA",
        "| | Supervisor |",
        "| | Head QA |",
        "Auditor | Lead",  # an empty last cell moves nothing
    ]
    training = training_text(text)
    assert training_text(training) == training


@pytest.mark.parametrize(
    "text",
    [
        "Title: T\n1.0 Objective:\n1.1 a\n2. X\n0|\n2.0 Scope: b\n",  # joined: a heading "X 0"
        "Title: T\nScope:\n1. a\nb :\n",  # "1. a b :" would be the heading "a b"
        "Title: T\n1.0 Objective:\n1.1 a\n2. a\nC:/QA/SOP\n",  # and "a C:" here
        "Title: T\nResponsibility:\n3.1 1\n2. a\nb :\n2.0 Scope: x\n",  # after "3.1" too
        "Title: T\nObjective:\n1. `a: a\nb `\n",  # once the code marks are gone
        "Title: T\n6.0 Abbreviations:\nABC1:\n1\n",  # joined, the first definition
        "Title: T\n6.0 Abbreviations: 5.1 | 1\n",  # on its own line, step 5.1
        "Title: T\n5.0 Procedure:\n` `|1\n",  # cleaned to "|1", a table row
        "Title: T\n1.0 Objective:\n1.1 0\n2. * a|\n",  # "2. -" would read as a heading
        "Title: T\n3.0 Responsibility:\n3.1 a\n3.2 b\n4. a\\ :\n",  # "a\\:" is an escape
        "Title: T\n1.0 Objective:\n1.1 1\n2. |:a:\n2.0 Scope:\n",  # "2. :a:" is the heading "a"
        "Title: T\n1.0 Objective:\n1.1 1\n2. : \\- a :\n2.0 Scope:\n",  # labelled "2.", not "2. :"
        "Title: T\n1.0 Objective:\n# a\n1.2 1\n## 2.0 Scope:\n",  # the house's Scope, not a line
    ],
)
def test_lines_that_would_read_differently_when_read_again_are_kept_apart(text: str) -> None:
    """Found by the generated-SOP properties: a wrapped line joins its item only when the
    joined line still reads as that item, so the training text reads back the same."""
    training = training_text(text)
    assert training_text(training) == training


# --- robustness ----------------------------------------------------------------------------

SOPISH = st.lists(
    st.sampled_from(
        [
            "Title:",
            "1.0 Objective:",
            "Scope",
            "## Procedure",
            "*5.0 Procedure:*",
            "5.1 ",
            "5.1.1 ",
            "• ",
            "- ",
            "a) ",
            "1) ",
            "Section 7:",
            "<@U1>",
            "<#C1|x>",
            "<http://x|y>",
            "&amp;",
            "&lt;",
            "*",
            "_",
            "~",
            "`",
            "```",
            "\r\n",
            "\n",
            "\u00a0",
            "\u200b",
            "#",
            "Abbreviations:",
            "IPA: Isopropyl Alcohol",
            "text",
            "TEXT",
            "7. References: x",
        ]
    )
    | st.text(max_size=8),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_never_crashes_on_any_string(text: str) -> None:
    assert isinstance(parse(text), SOP)


@settings(max_examples=300, deadline=None)
@given(SOPISH)
def test_parse_never_crashes_on_sop_like_garbage(text: str) -> None:
    assert isinstance(parse(text), SOP)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
def test_the_ascii_shortcut_of_normalize_chars_agrees_with_the_per_character_rules(
    text: str,
) -> None:
    from sop_pipeline.sop_format.text import _LINE_BREAKS, _normalize_each_char, normalize_chars

    unified = text.replace("\r\n", "\n").translate(_LINE_BREAKS)
    assert normalize_chars(text) == _normalize_each_char(unified)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab 1.:-()#>\t|/@!\"'<[]&`*_~\xa0;")))
def test_the_cleaning_shortcut_gives_the_same_line_as_applying_every_rule(
    text: str,
) -> None:
    from sop_pipeline.sop_format.text import _apply_cleaning_rules, _clean_once

    assert _clean_once(text) == _apply_cleaning_rules(text)
