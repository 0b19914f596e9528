"""A finding: one problem in an SOP, with a sentence saying where it is and what to change,
and the verdict and summary built from a list of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .model import Section
from .template import Template

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem. `section` is the template key it concerns, when there is one."""

    code: str
    severity: Severity
    message: str
    section: str | None = None


def is_compliant(findings: Iterable[Finding]) -> bool:
    """Compliant means no errors; warnings are advice."""
    return not any(f.severity == "error" for f in findings)


def summarize(findings: Iterable[Finding]) -> str:
    """A short plain-text report: a verdict line, then one line per finding."""
    findings = list(findings)
    if not findings:
        return "The SOP follows the house format."
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    verdict = "The SOP does not follow the house format" if errors else "The SOP is compliant"
    counts = f"{plural(errors, 'error')}, {plural(warnings, 'warning')}"
    lines = [f"{verdict} ({counts})."]
    lines += [f"- [{f.severity}] {f.message}" for f in findings]
    return "\n".join(lines)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def error(code: str, message: str, section: str | None = None) -> Finding:
    return Finding(code, "error", message, section)


def warning(code: str, message: str, section: str | None = None) -> Finding:
    return Finding(code, "warning", message, section)


def section_name(section: Section, template: Template) -> str:
    """How the user wrote the section: "5.0 Procedure" or "References"."""
    spec = template.spec(section.key)
    heading = spec.heading if spec else section.heading
    return f"{section.number} {heading}" if section.number else heading
