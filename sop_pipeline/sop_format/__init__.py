"""SOP format engine: parse pasted SOPs, check them against the house template, render them.

Slack-free on purpose, so the bot, the importers and the training pipeline share one
definition of what a well-formed SOP is.
"""

from .findings import Finding, is_compliant, summarize
from .model import SOP, Item, Section
from .parse import parse
from .render import (
    canonicalize,
    render_canonical,
    render_markdown,
    render_structure,
    render_training_text,
    training_text,
)
from .template import SectionSpec, Template, TemplateError, load_template
from .validate import validate

__all__ = [
    "SOP",
    "Finding",
    "Item",
    "Section",
    "SectionSpec",
    "Template",
    "TemplateError",
    "canonicalize",
    "is_compliant",
    "load_template",
    "parse",
    "render_canonical",
    "render_markdown",
    "render_structure",
    "render_training_text",
    "summarize",
    "training_text",
    "validate",
]
