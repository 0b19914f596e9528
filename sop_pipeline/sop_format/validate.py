"""Checking a parsed SOP against the template, with findings a QA reviewer can act on.

Every finding says where the problem is and what to change, because the messages go
straight into Slack threads for people who never see this code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from .abbreviations import check_abbreviations
from .findings import Finding, error, plural, section_name, warning
from .model import SOP, Section
from .render import render_training_text
from .template import SectionSpec, Template


def validate(
    sop: SOP,
    template: Template,
    *,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> list[Finding]:
    """All findings for an SOP, errors and warnings, in reading order of the checks."""
    findings: list[Finding] = []
    findings += _check_title(sop, template)
    findings += _check_preamble(sop)
    findings += _check_presence(sop, template)
    findings += _check_order(sop, template)
    findings += _check_section_numbers(sop, template)
    for section in sop.sections:
        findings += _check_section(section, template)
    findings += check_abbreviations(sop, template)
    if max_tokens is not None and count_tokens is not None:
        findings += _check_tokens(sop, template, max_tokens, count_tokens)
    return findings


def _check_title(sop: SOP, template: Template) -> Iterator[Finding]:
    if template.title_required and not (sop.title or "").strip():
        yield error("missing_title", "The SOP has no title. Add a first line 'Title: ...'.")


def _check_preamble(sop: SOP) -> Iterator[Finding]:
    """One finding for all the text before the first section (a document's front matter or
    a table there is many lines, and one warning per line buried the findings after it)."""
    shown = [line if len(line) <= 60 else line[:57] + "..." for line in sop.preamble[:2]]
    if len(sop.preamble) == 1:
        yield warning(
            "stray_text",
            f"The text '{shown[0]}' before the first section is not part of any section and "
            "is left out of the house format. Move it into a section or delete it.",
        )
    elif sop.preamble:
        quoted = ", ".join(f"'{line}'" for line in shown)
        yield warning(
            "stray_text",
            f"{len(sop.preamble)} lines before the first section ({quoted}, ...) are not part "
            "of any section and are left out of the house format. Move them into a section "
            "or delete them.",
        )


def _check_presence(sop: SOP, template: Template) -> Iterator[Finding]:
    counts = Counter(s.key for s in sop.sections if s.key)
    for index, spec in enumerate(template.sections):
        if counts[spec.key] == 0 and spec.required:
            yield error("missing_section", _missing_message(template, index), spec.key)
        elif counts[spec.key] > 1:
            yield error(
                "duplicate_section",
                f"Section {spec.label} appears {counts[spec.key]} times. "
                "Merge them into one section.",
                spec.key,
            )


def _missing_message(template: Template, index: int) -> str:
    spec = template.sections[index]
    if index == 0:
        where = "Add it as the first section."
    else:
        where = f"Add it after {template.sections[index - 1].label}."
    return f"Section {spec.label} is missing. {where}"


def _check_order(sop: SOP, template: Template) -> Iterator[Finding]:
    """Report the fewest sections that must move: those outside the longest run that is
    already in template order. Swapping 2.0 and 3.0 flags one section, not a cascade."""
    firsts: list[SectionSpec] = []
    for section in sop.sections:
        spec = template.spec(section.key)
        if spec is not None and spec not in firsts:
            firsts.append(spec)
    keep = _longest_ordered_run([template.index(spec.key) for spec in firsts])
    in_place = [spec for i, spec in enumerate(firsts) if i in keep]
    for i, spec in enumerate(firsts):
        if i not in keep:
            yield error("wrong_order", _order_message(spec, in_place, template), spec.key)


def _longest_ordered_run(values: list[int]) -> set[int]:
    """Positions of a longest strictly increasing subsequence (small n, plain DP)."""
    if not values:
        return set()
    length = [1] * len(values)
    previous = [-1] * len(values)
    for i, value in enumerate(values):
        for j in range(i):
            if values[j] < value and length[j] + 1 > length[i]:
                length[i], previous[i] = length[j] + 1, j
    position = max(range(len(values)), key=lambda i: (length[i], -i))
    keep: set[int] = set()
    while position != -1:
        keep.add(position)
        position = previous[position]
    return keep


def _order_message(spec: SectionSpec, in_place: list[SectionSpec], template: Template) -> str:
    earlier = [s for s in in_place if template.index(s.key) < template.index(spec.key)]
    later = [s for s in in_place if template.index(s.key) > template.index(spec.key)]
    if earlier:
        where = f"Move it to just after {earlier[-1].label}."
    elif later:
        where = f"Move it to just before {later[0].label}."
    else:
        where = "Move it to its place in the house order."
    return f"Section {spec.label} is out of order. {where}"


def _check_section_numbers(sop: SOP, template: Template) -> Iterator[Finding]:
    """A gap is a section number nobody uses between the lowest and highest one. Sections
    merely out of order are left to the order check, and a gap where a required section is
    missing is left to the missing-section finding, since adding the section closes it."""
    by_major = {s.major: s for s in reversed(sop.sections) if s.major is not None}
    present = {s.key for s in sop.sections}
    missing = {spec.number for spec in template.sections if spec.key not in present}
    majors = sorted(by_major)
    for low, high in zip(majors, majors[1:], strict=False):
        if high > low + 1 and not set(range(low + 1, high)) <= missing:
            skipped = ", ".join(f"{n}.0" for n in range(low + 1, high))
            yield error(
                "numbering_gap",
                f"Section numbers skip {skipped}: {by_major[low].number} is followed by "
                f"{by_major[high].number}. Renumber the sections so they run 1.0, 2.0, 3.0 ... "
                "without gaps.",
                by_major[high].key,
            )


def _check_section(section: Section, template: Template) -> Iterator[Finding]:
    spec = template.spec(section.key)
    name = section_name(section, template)
    if spec is None:
        shown = " ".join(part for part in (section.label, section.heading) if part)
        yield Finding(
            "extra_section",
            template.extra_sections,
            f"Section '{shown}' is not part of the house format; it is kept as its own "
            "section, as written. Rename it to a standard heading or remove it.",
        )
    if _is_empty(section, template):
        yield error("empty_section", f"Section {name} is empty. Write its content.", section.key)
    elif spec is not None and spec.key == template.steps_section:
        yield from _check_steps(section, spec, template)
    if spec is not None and spec.kind == "paragraph":
        yield from _check_stray_subsections(section, spec)
    yield from _check_item_numbers(section, name, template)


def _is_empty(section: Section, template: Template) -> bool:
    placeholders = {p.casefold() for p in template.placeholders}
    texts = [section.body, *(item.text for item in section.items)]
    meaningful = [t for t in texts if t.strip() and t.strip().casefold() not in placeholders]
    return not meaningful


def count_steps(section: Section) -> int:
    """Steps at any level: every item that has no sub-steps of its own, so "5.1 Preparation"
    with 5.1.1 and 5.1.2 counts as two steps. Numbered or bulleted items count; plain
    paragraphs count only when the procedure has no marked items at all."""
    marked = [item for item in section.items if item.marker or item.number]
    items = marked or section.items
    return sum(
        1
        for index, item in enumerate(items)
        if index + 1 == len(items) or items[index + 1].level <= item.level
    )


def _check_steps(section: Section, spec: SectionSpec, template: Template) -> Iterator[Finding]:
    steps = count_steps(section)
    if steps < template.min_steps:
        yield error(
            "too_few_steps",
            f"Section {spec.label} has {plural(steps, 'step')}; the house format "
            f"needs at least {template.min_steps}. Write the procedure as steps "
            f"{spec.number}.1, {spec.number}.2, {spec.number}.3 ...",
            spec.key,
        )


def _check_stray_subsections(section: Section, spec: SectionSpec) -> Iterator[Finding]:
    """Sub-numbers ("2.1") in a one-paragraph section; bullets there are fine."""
    numbered = [item for item in section.items if item.number and "." in item.number]
    if numbered:
        yield warning(
            "unexpected_subsections",
            f"Section {spec.label} should be a single paragraph but has numbered lines "
            f"({numbered[0].number} ...). Merge them into the section text.",
            spec.key,
        )


def _check_item_numbers(section: Section, name: str, template: Template) -> Iterator[Finding]:
    """Within a section, numbered items must count up by one at each level from 1: 5.3
    then 5.5 is a gap, and so are 5.2 first and 5.2.1 with no 5.2 before it; 5.3 twice is
    a duplicate; 4.1 under 5.0 is numbered for the wrong section. Nothing is renumbered:
    these are for the author."""
    last: dict[tuple[int, ...], int] = {}
    seen: set[tuple[int, ...]] = set()
    orphaned: set[tuple[int, ...]] = set()  # parents reported missing, each once
    duplicated: set[tuple[int, ...]] = set()
    mismatch_reported = False
    for item in section.items:
        parts = _numeric_parts(item.number)
        if parts is None:
            continue
        prefix, value = parts[:-1], parts[-1]
        expected = last.get(prefix, 0) + 1
        if value > expected and prefix in last:
            previous = ".".join(map(str, (*prefix, last[prefix])))
            yield error(
                "numbering_gap",
                f"In {name}, step {item.number} follows {previous}. "
                f"Renumber the steps so none is skipped.",
                section.key,
            )
        elif len(prefix) >= 2 and prefix[0] == section.major and prefix not in seen | orphaned:
            orphaned.add(prefix)
            if last.get(prefix[:-1], 0) + 1 == prefix[-1]:
                # the finding asks for the missing step 5.2: 5.3 after it is no second one
                last[prefix[:-1]] = prefix[-1]
            parent = ".".join(map(str, prefix))
            yield error(
                "numbering_gap",
                f"In {name}, step {item.number} comes before any step {parent}. "
                f"Add step {parent} or renumber the sub-steps.",
                section.key,
            )
        elif len(prefix) >= 1 and prefix not in last and value > 1:
            # "5.2" as the procedure's first step, "5.2.2" as the first under 5.2
            first = ".".join(map(str, (*prefix, 1)))
            yield error(
                "numbering_gap",
                f"In {name}, step {item.number} comes first; there is no step {first}. "
                f"Renumber the steps so none is skipped.",
                section.key,
            )
        elif len(parts) == 1 and value == 1:
            # A plain list that starts again at 1 is a new list (under a new sub-heading, or
            # Markdown's "1." on every line, which shows 1, 2, 3): not a duplicate.
            seen = {numbers for numbers in seen if len(numbers) > 1}
        elif parts in seen and parts not in duplicated:
            duplicated.add(parts)
            yield Finding(
                "duplicate_step_number",
                template.duplicate_step_numbers,
                f"In {name}, step {item.number} appears more than once. "
                "Renumber the steps so each number is used once.",
                section.key,
            )
        last[prefix] = value
        seen.add(parts)
        major = section.major
        if len(parts) > 1 and major is not None and parts[0] != major and not mismatch_reported:
            mismatch_reported = True
            yield warning(
                "item_number_mismatch",
                f"In {name}, item {item.number} is numbered as part of section {parts[0]}. "
                f"Number it {major}.x.",
                section.key,
            )


def _numeric_parts(number: str | None) -> tuple[int, ...] | None:
    if not number or not all(part.isdigit() for part in number.split(".")):
        return None
    return tuple(int(part) for part in number.split("."))




def _check_tokens(
    sop: SOP, template: Template, max_tokens: int, count_tokens: Callable[[str], int]
) -> Iterator[Finding]:
    tokens = count_tokens(render_training_text(sop, template))
    if tokens > max_tokens:
        yield error(
            "over_token_limit",
            f"The SOP is {tokens} tokens long in the house format; the limit is {max_tokens}. "
            "Shorten it or split it into separate SOPs.",
        )
