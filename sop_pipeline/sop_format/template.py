"""The SOP format as data: a TOML template names the sections, their order and the rules.

Keeping the format out of code lets QA change headings, synonyms or the step minimum
without a release, and lets another site ship its own template file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

SectionKind = Literal["paragraph", "items", "definitions"]
Severity = Literal["error", "warning"]


class TemplateError(ValueError):
    """A template file is missing, is not TOML, or does not describe a usable format."""


@dataclass(frozen=True)
class SectionSpec:
    """One required-or-optional section of the format, in template order."""

    key: str
    number: int
    heading: str
    synonyms: tuple[str, ...] = ()
    required: bool = True
    subsections: bool = False
    kind: SectionKind = "paragraph"

    @property
    def label(self) -> str:
        """How findings name the section, e.g. "4.0 Accountability"."""
        return f"{self.number}.0 {self.heading}"

    @property
    def names(self) -> tuple[str, ...]:
        """Every heading that identifies this section, canonical name first."""
        return (self.heading, *self.synonyms)


@dataclass(frozen=True)
class Template:
    """A whole SOP format. Frozen and hashable so parsers can cache compiled patterns."""

    name: str
    sections: tuple[SectionSpec, ...]
    title_required: bool = True
    steps_section: str | None = None
    min_steps: int = 0
    abbreviations_section: str | None = None
    placeholders: tuple[str, ...] = ()
    abbreviation_min_length: int = 2
    abbreviation_max_length: int = 6
    abbreviation_ignore: frozenset[str] = frozenset()
    ignore_roman_numerals: bool = True
    undefined_abbreviation: Severity = "warning"
    extra_sections: Severity = "warning"
    duplicate_step_numbers: Severity = "warning"
    source: str = "<memory>"

    def spec(self, key: str | None) -> SectionSpec | None:
        """The section spec for a key, or None for unknown sections."""
        for spec in self.sections:
            if spec.key == key:
                return spec
        return None

    def index(self, key: str | None) -> int:
        """Position of a key in template order; unknown keys sort last."""
        for i, spec in enumerate(self.sections):
            if spec.key == key:
                return i
        return len(self.sections)

    def label(self, key: str | None) -> str:
        """ "5.0 Procedure" for a known key, the key itself otherwise."""
        spec = self.spec(key)
        return spec.label if spec else str(key)


def load_template(path: str | Path | None = None) -> Template:
    """Load a template file; None loads the packaged house format."""
    if path is None:
        return _default_template()
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TemplateError(f"Template file {path} cannot be read ({exc.strerror}).") from exc
    return _template_from_bytes(raw, str(path))


@lru_cache(maxsize=1)
def _default_template() -> Template:
    """The packaged house.toml, read once; lazily so importing has no side effects."""
    resource = resources.files("sop_pipeline") / "templates" / "house.toml"
    return _template_from_bytes(resource.read_bytes(), "sop_pipeline/templates/house.toml")


def _template_from_bytes(raw: bytes, source: str) -> Template:
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TemplateError(f"Template file {source} is not UTF-8 text.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"Template file {source} is not valid TOML: {exc}.") from exc
    try:
        return _build_template(data, source)
    except TemplateError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise TemplateError(f"Template file {source} has an invalid value: {exc}.") from exc


def _fail(source: str, problem: str) -> TemplateError:
    return TemplateError(f"Template file {source} {problem}.")


def _build_template(data: dict[str, Any], source: str) -> Template:
    raw_sections = data.get("sections")
    if not isinstance(raw_sections, list) or not raw_sections:
        raise _fail(source, "has no [[sections]]; list at least one section")
    rules = _table(data, "rules", source)
    abbreviations = _table(data, "abbreviations", source)
    title = _table(data, "title", source)
    abbreviations_key = _opt_str(rules, "abbreviations_section", source)
    specs = tuple(
        _build_section(raw, i, source, abbreviations_key) for i, raw in enumerate(raw_sections)
    )
    _check_sections(specs, source)
    template = Template(
        name=str(data.get("name", Path(source).stem)),
        sections=specs,
        title_required=_bool(title, "required", True, source),
        steps_section=_opt_str(rules, "steps_section", source),
        min_steps=_int(rules, "min_steps", 0, source),
        abbreviations_section=abbreviations_key,
        placeholders=_str_tuple(rules, "placeholders", source),
        abbreviation_min_length=_int(abbreviations, "min_length", 2, source),
        abbreviation_max_length=_int(abbreviations, "max_length", 6, source),
        abbreviation_ignore=frozenset(
            s.upper() for s in _str_tuple(abbreviations, "ignore", source)
        ),
        ignore_roman_numerals=_bool(abbreviations, "ignore_roman_numerals", True, source),
        undefined_abbreviation=_severity(abbreviations, "undefined", source),
        extra_sections=_severity(rules, "extra_sections", source),
        duplicate_step_numbers=_severity(rules, "duplicate_step_numbers", source),
        source=source,
    )
    _check_rules(template, source)
    return template


def _build_section(raw: Any, index: int, source: str, abbreviations_key: str | None) -> SectionSpec:
    where = f"section #{index + 1}"
    if not isinstance(raw, dict):
        raise _fail(source, f"has {where} that is not a table")
    key = raw.get("key")
    if not isinstance(key, str) or not key.strip() or " " in key:
        raise _fail(source, f"has {where} without a valid 'key' (a word without spaces)")
    heading = raw.get("heading")
    if not isinstance(heading, str) or not heading.strip():
        raise _fail(source, f"has section '{key}' without a 'heading'")
    number = raw.get("number", index + 1)
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise _fail(source, f"has section '{key}' whose 'number' is not a positive integer")
    subsections = _bool(raw, "subsections", False, source)
    kind: SectionKind = "items" if subsections else "paragraph"
    if key == abbreviations_key:
        kind = "definitions"
    return SectionSpec(
        key=key,
        number=number,
        heading=heading.strip(),
        synonyms=tuple(s.strip() for s in _str_tuple(raw, "synonyms", source) if s.strip()),
        required=_bool(raw, "required", True, source),
        subsections=subsections,
        kind=kind,
    )


def _check_sections(specs: tuple[SectionSpec, ...], source: str) -> None:
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise _fail(source, "uses the same section key twice")
    numbers = [s.number for s in specs]
    if numbers != sorted(set(numbers)):
        raise _fail(source, "must list sections with unique numbers in increasing order")
    seen: dict[str, str] = {}
    for spec in specs:
        for name in spec.names:
            folded = " ".join(name.casefold().split())
            if folded in seen and seen[folded] != spec.key:
                raise _fail(
                    source, f"uses the heading '{name}' for both '{seen[folded]}' and '{spec.key}'"
                )
            seen[folded] = spec.key


def _check_rules(template: Template, source: str) -> None:
    for rule, key in (
        ("steps_section", template.steps_section),
        ("abbreviations_section", template.abbreviations_section),
    ):
        if key is not None and template.spec(key) is None:
            raise _fail(source, f"names '{key}' as {rule} but has no section with that key")
    if template.min_steps < 0:
        raise _fail(source, "has a negative min_steps")
    if not 1 <= template.abbreviation_min_length <= template.abbreviation_max_length:
        raise _fail(source, "has abbreviation min_length/max_length out of order")


def _table(data: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise _fail(source, f"has '{name}' that is not a table")
    return value


def _bool(table: dict[str, Any], name: str, default: bool, source: str) -> bool:
    value = table.get(name, default)
    if not isinstance(value, bool):
        raise _fail(source, f"has '{name}' that is not true/false")
    return value


def _severity(table: dict[str, Any], name: str, source: str) -> Severity:
    value = table.get(name, "warning")
    if value not in ("warning", "error"):
        raise _fail(source, f"has '{name}' that is not \"warning\" or \"error\"")
    return "error" if value == "error" else "warning"


def _int(table: dict[str, Any], name: str, default: int, source: str) -> int:
    value = table.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(source, f"has '{name}' that is not an integer")
    return value


def _opt_str(table: dict[str, Any], name: str, source: str) -> str | None:
    value = table.get(name)
    if value is not None and not isinstance(value, str):
        raise _fail(source, f"has '{name}' that is not a string")
    return value or None


def _str_tuple(table: dict[str, Any], name: str, source: str) -> tuple[str, ...]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(source, f"has '{name}' that is not a list of strings")
    return tuple(value)
