"""Undefined abbreviations: every abbreviation an SOP uses must be defined in it, in the
abbreviations section, any glossary or definitions section, or where it is first used
("Standard Operating Procedure (SOP)"). Ordinary words written in capitals are not
abbreviations (ordinary_words.txt).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

from .entries import split_definition
from .findings import Finding, section_name
from .headings import looks_like_heading
from .model import SOP, Section
from .template import Template

_DEFINED_IN_PARENS = re.compile(r"\(([A-Z][A-Za-z0-9]{1,9})\)")
# "Standard Operating Procedure (SOP)", "... (\"SOPs\")"; and "HVAC (Heating, Ventilation ...)".
_LONG_THEN_SHORT = re.compile(
    r"\(\s*[\"“']?(?P<short>[A-Z][A-Za-z0-9&/-]{0,8}?[A-Z0-9])s?[\"”']?\s*\)"
)
_SHORT_THEN_LONG = re.compile(
    r"(?<![\w])(?P<short>[A-Z][A-Z0-9&/-]{0,8}[A-Z0-9])s?\s*\((?P<long>[^()]{3,200})\)"
)
# A section the template does not know but whose heading says it defines terms.
_DEFINITIONS_HEADING = re.compile(
    r"\b(?:abbreviations?|acronyms?|definitions?|glossary|terminology|nomenclature|terms)\b",
    re.I,
)
_ROMAN = re.compile(r"^(?:X{0,3})(?:IX|IV|V?I{0,3})$")


def check_abbreviations(sop: SOP, template: Template) -> Iterator[Finding]:
    if template.abbreviations_section is None:
        return
    defined = _defined_abbreviations(sop, template)
    target = template.label(template.abbreviations_section)
    reported: set[str] = set()
    for where, text in _body_texts(sop, template):
        for token in _abbreviations_in(text, template):
            if token in defined or token in reported:
                continue
            reported.add(token)
            yield Finding(
                "undefined_abbreviation",
                template.undefined_abbreviation,
                f"The abbreviation {token} is used in {where} but not defined. "
                f"Add '{token}: <meaning>' to {target}.",
                template.abbreviations_section,
            )


def _defined_abbreviations(sop: SOP, template: Template) -> set[str]:
    """Terms a person would call defined: the entries of the abbreviations section and of any
    definitions or glossary section ("IPA: ..." lines, "... (IPA)"), and anywhere in the SOP a
    long form with its abbreviation in brackets, either way round, whose letters match."""
    defined: set[str] = set()
    for section in sop.sections:
        if _defines_terms(section, template):
            entries = [section.body, *(item.text for item in section.items)]
        else:
            entries = list(_glossary_entries(section))
        for text in entries:
            parts = split_definition(text)
            if parts:
                defined.add(parts[0].strip().upper())
            defined.update(t.upper() for t in _DEFINED_IN_PARENS.findall(text))
    for text in _all_texts(sop):
        defined.update(_defined_in_passing(text))
    return defined


def _glossary_entries(section: Section) -> Iterator[str]:
    """Definition lines under a sub-heading such as "### Document Type Abbreviations" inside
    another section, up to the next sub-heading."""
    inside = False
    for item in section.items:
        if looks_like_heading(item.text):
            inside = _DEFINITIONS_HEADING.search(item.text) is not None
        elif inside and split_definition(item.text):
            yield item.text


def _defines_terms(section: Section, template: Template) -> bool:
    """The abbreviations section, or one headed like it ("Terms and Definitions", "7.0
    Glossary") that the template does not know."""
    if section.key == template.abbreviations_section:
        return True
    return section.key is None and _DEFINITIONS_HEADING.search(section.heading) is not None


def _all_texts(sop: SOP) -> Iterator[str]:
    if sop.title:
        yield sop.title
    yield from sop.preamble
    for section in sop.sections:
        yield section.body
        yield from (item.text for item in section.items)


def _defined_in_passing(text: str) -> Iterator[str]:
    """ "Standard Operating Procedure (SOP)" and "HVAC (Heating, Ventilation and Air
    Conditioning)": the abbreviation next to a long form in brackets, either way round."""
    if "(" not in text:
        return
    for match in _LONG_THEN_SHORT.finditer(text):
        short = match.group("short")
        words = text[: match.start()].split()[-min(len(short) + 5, 2 * len(short)) :]
        if _letters_match(short, " ".join(words)):
            yield short.upper()
    for match in _SHORT_THEN_LONG.finditer(text):
        if _letters_match(match.group("short"), match.group("long")):
            yield match.group("short").upper()


def _letters_match(short: str, long: str) -> bool:
    """Schwartz and Hearst's test (2003) that a long form can stand for a short one: every
    letter and digit of the short form appears in the long form in the same order (read from
    the end), and the first one starts a word ("Isopropyl Alcohol" for IPA, not "water" for
    QA)."""
    position = len(long) - 1
    characters = [ch.casefold() for ch in short if ch.isalnum()]
    for index in range(len(characters) - 1, -1, -1):
        wanted = characters[index]
        while position >= 0 and (
            long[position].casefold() != wanted
            or (index == 0 and position > 0 and long[position - 1].isalnum())
        ):
            position -= 1
        if position < 0:
            return False
        position -= 1
    return bool(characters) and len(long) > len(short)


def _body_texts(sop: SOP, template: Template) -> Iterator[tuple[str, str]]:
    if sop.title:
        yield "the title", sop.title
    for section in sop.sections:
        if _defines_terms(section, template):
            continue  # its meanings are definitions, not uses
        name = section_name(section, template)
        yield name, section.body
        for item in section.items:
            yield name, item.text


def _abbreviations_in(text: str, template: Template) -> Iterator[str]:
    """All-caps tokens that need a definition. Skipped: words in the template's ignore list,
    roman numerals, ordinary words in capitals ("AUTO", "STABLE"), document codes
    ("QC/PH/01", "PHE-2") and shouted phrases such as "UNDER CLEANING" or an all-caps title.
    Capitals mixed with digits in one token ("CO2", "H2O2") are candidates too."""
    low, high = template.abbreviation_min_length, template.abbreviation_max_length
    pattern = _abbreviation_pattern(low, high)
    words = text.split()
    shouted = _shouted_words(words, high)
    for index, word in enumerate(words):
        if index in shouted or word == word.lower():  # no capital: nothing to define
            continue
        if any(ch.isdigit() for ch in word):
            mixed = _MIXED_WITH_DIGITS.fullmatch(word.strip(_PUNCTUATION))
            if (
                mixed
                and sum(ch.isalpha() for ch in mixed.group(1)) >= 2
                and mixed.group(1) not in template.abbreviation_ignore
            ):
                yield mixed.group(1)
            continue
        for match in pattern.finditer(word):
            token = match.group(1)
            if token in template.abbreviation_ignore or token.casefold() in ordinary_words():
                continue
            if template.ignore_roman_numerals and _ROMAN.match(token):
                continue
            yield token


_PUNCTUATION = ".,;:!?()[]{}'\"’“”"
# A chemical-formula-like token: capitals and digits, starting with a capital ("CO2").
_MIXED_WITH_DIGITS = re.compile(r"((?:[A-Z]{1,2}\d{1,2}){1,3}[A-Z]?)s?")


@lru_cache(maxsize=1)
def ordinary_words() -> frozenset[str]:
    """Words that are ordinary English even in capitals (see ordinary_words.txt)."""
    from importlib import resources

    raw = (resources.files("sop_pipeline.sop_format") / "ordinary_words.txt").read_text("utf-8")
    words = (line.split("#", 1)[0] for line in raw.splitlines())
    return frozenset(word.casefold() for line in words for word in line.split())


def _shouted_words(words: list[str], max_length: int) -> set[int]:
    """Indexes of words in runs of capitals that read as emphasis: three or more words, or
    two or more with one longer than any abbreviation."""
    shouted: set[int] = set()
    run: list[int] = []
    for index, word in enumerate([*words, ""]):
        if _in_capitals(word):
            run.append(index)
            continue
        if not run:
            continue
        longest = max((sum(ch.isalpha() for ch in words[i]) for i in run), default=0)
        if len(run) >= 3 or (len(run) >= 2 and longest > max_length):
            shouted.update(run)
        run = []
    return shouted


def _in_capitals(word: str) -> bool:
    """Two or more letters, every one a capital."""
    if word.isascii() and word != word.upper():  # most words: a small letter, found in C
        return False
    letters = [ch for ch in word if ch.isalpha()]
    return len(letters) >= 2 and all(ch.isupper() for ch in letters)


@lru_cache(maxsize=8)
def _abbreviation_pattern(low: int, high: int) -> re.Pattern[str]:
    """All-caps words of low..high letters, a plural "s" allowed ("SOPs"), not glued to
    digits or letters (so "SS316" and "pH" are not abbreviations)."""
    return re.compile(rf"(?<![\w])([A-Z]{{{low},{high}}})s?(?![\w])")
