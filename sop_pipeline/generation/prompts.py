"""The messages SOP Bot sends to the model.

Fine-tuned mode sends exactly what the model was trained on: the system prompt and the user's
request. Keeping it short is the whole point of fine-tuning (cost and latency per request).
Retrieval mode (no fine-tune yet) teaches the format in context instead: a system prompt that
lists the template's sections, then approved SOPs as example conversations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sop_pipeline.generation.retrieval import Document

Message = dict[str, str]


def fine_tuned_messages(system_prompt: str, request: str) -> list[Message]:
    """The same two messages every training example starts with (see the dataset builder)."""
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": request},
    ]


def _skeleton(template: object) -> list[str]:
    """The house layout (as the template numbers it), with placeholders for the content."""
    lines = ["Title: <name of the procedure>"]
    for spec in getattr(template, "sections", ()):
        kind = getattr(spec, "kind", "paragraph")
        head = f"{spec.number}.0 {spec.heading}:"
        optional = " (optional section)" if not getattr(spec, "required", True) else ""
        lines.append("")
        if kind == "items":
            lines += [head + optional, f"{spec.number}.1 <item>", f"{spec.number}.2 <item>",
                      "..."]
        elif kind == "definitions":
            lines += [head + optional, "SOP: Standard Operating Procedure",
                      "<ABBREVIATION>: <meaning>"]
        else:
            lines.append(f"{head} <text>{optional}")
    return lines


def format_instructions(template: object) -> str:
    """The house format in words and as a skeleton, for a base model that never saw it."""
    parts = [
        "Write the SOP in the house format: plain text, no Markdown, exactly this layout and",
        "section order:",
        "",
        *_skeleton(template),
        "",
    ]
    steps_key = getattr(template, "steps_section", None)
    min_steps = getattr(template, "min_steps", 0)
    spec = template.spec(steps_key) if steps_key and hasattr(template, "spec") else None
    if spec is not None and min_steps:
        parts.append(
            f"{spec.number}.0 {spec.heading} needs at least {min_steps} numbered steps "
            f"({spec.number}.1, {spec.number}.2, ...), one action per step."
        )
    if getattr(template, "abbreviations_section", None):
        parts.append(
            "Define every abbreviation you use (SOP included) in the abbreviations section."
        )
    parts.append("Answer with the SOP only: no introduction, no closing remarks.")
    return "\n".join(parts)


def retrieval_system_prompt(system_prompt: str, template: object) -> str:
    """The configured system prompt extended with the template's section list."""
    return f"{system_prompt}\n\n{format_instructions(template)}"


def retrieval_messages(
    system_prompt: str,
    template: object,
    request: str,
    examples: Sequence[Document],
) -> list[Message]:
    """System prompt, example conversations (least similar first, so the closest example
    sits right before the request), then the request."""
    messages: list[Message] = [
        {"role": "system", "content": retrieval_system_prompt(system_prompt, template)}
    ]
    for doc in reversed(list(examples)):
        messages.append({"role": "user", "content": doc.prompt})
        messages.append({"role": "assistant", "content": doc.text})
    messages.append({"role": "user", "content": request})
    return messages



def repair_message(problems: Iterable[str]) -> Message:
    """Ask for the whole corrected SOP: partial fixes are hard to merge reliably."""
    listed = "\n".join(f"- {problem}" for problem in problems)
    return {
        "role": "user",
        "content": (
            "That SOP does not follow the house format yet. Fix these problems:\n"
            f"{listed}\n"
            "Reply with the complete corrected SOP only, from the title to the last section."
        ),
    }
