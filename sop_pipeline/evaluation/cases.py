"""The evaluation set: held-out approved examples plus curated prompts (EVAL_PROMPTS_FILE and
the template's own `<template>_eval_prompts.toml`), at most EVAL_MAX_PROMPTS."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from sop_pipeline.models import ExampleStatus, TrainingExample


class EvaluationError(ValueError):
    """The evaluation cannot run as configured; the text says what to fix."""

@dataclass(frozen=True)
class EvalCase:
    """One evaluation prompt; `reference` is the approved SOP it should resemble, if known."""

    prompt: str
    reference: str | None = None
    source: str = ""  # "example #12" or "<file>:3"
    example_id: int | None = None

# --- evaluation cases ----------------------------------------------------------------------


def _case_from_record(record: object, where: str) -> EvalCase:
    if isinstance(record, str):
        record = {"prompt": record}
    if not isinstance(record, dict) or not str(record.get("prompt") or "").strip():
        raise EvaluationError(f"{where} needs a non-empty \"prompt\"; fix that entry in "
                              "EVAL_PROMPTS_FILE.")
    reference = record.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise EvaluationError(f"{where}: \"reference\" must be text (the approved SOP).")
    return EvalCase(prompt=str(record["prompt"]).strip(),
                    reference=reference if reference and reference.strip() else None,
                    source=where)


def load_prompt_file(path: Path | str) -> list[EvalCase]:
    """Curated evaluation prompts: JSONL, YAML or TOML records of {prompt, reference?}.

    YAML/TOML may be a list at the top level or under a `prompts` key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"EVAL_PROMPTS_FILE {path} cannot be read ({exc.strerror}); "
                              "fix the path or unset EVAL_PROMPTS_FILE.") from None
    except UnicodeDecodeError:
        raise EvaluationError(f"EVAL_PROMPTS_FILE {path} is not UTF-8 text; save it as UTF-8."
                              ) from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _jsonl_cases(text, path)
    records = _structured_records(text, path, suffix)
    return [_case_from_record(r, f"{path.name} entry {i}") for i, r in enumerate(records, 1)]


def _jsonl_cases(text: str, path: Path) -> list[EvalCase]:
    cases = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise EvaluationError(f"Line {number} of {path.name} is not valid JSON; each line "
                                  "must be an object like {\"prompt\": \"...\"}.") from None
        cases.append(_case_from_record(record, f"{path.name}:{number}"))
    return cases


def _structured_records(text: str, path: Path, suffix: str) -> list:
    data: Any  # whatever the file holds; checked below
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise EvaluationError(f"{path.name} is not valid TOML ({exc}).") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise EvaluationError(f"{path.name} is YAML but PyYAML is not installed; run "
                                  "`pip install pyyaml` or use a .jsonl file.") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise EvaluationError(f"{path.name} is not valid YAML ({exc}).") from None
    else:
        raise EvaluationError(f"EVAL_PROMPTS_FILE {path.name} must end in .jsonl, .yaml, "
                              ".yml or .toml.")
    if isinstance(data, dict):
        data = data.get("prompts")
    if not isinstance(data, list):
        raise EvaluationError(f"{path.name} must hold a list of prompts (top level or under "
                              "a `prompts` key).")
    return data


TEMPLATE_PROMPTS_SUFFIX = "_eval_prompts.toml"


def template_prompts_path(settings) -> Path:  # noqa: ANN001 - Settings
    """Where the template's curated evaluation prompts live, by convention: next to the
    template, named `<template stem>_eval_prompts.toml` (the packaged house format's file for
    the default template)."""
    if settings.sop_template:
        template = Path(settings.sop_template)
        return template.with_name(template.stem + TEMPLATE_PROMPTS_SUFFIX)
    return Path(__file__).parent.parent / "templates" / f"house{TEMPLATE_PROMPTS_SUFFIX}"


def template_cases(settings, warnings: list[str] | None = None) -> list[EvalCase]:  # noqa: ANN001
    """The template's curated prompts ([] when switched off or when the template has none)."""
    path = template_prompts_path(settings)
    if not settings.eval_template_prompts or not path.is_file():
        return []
    try:
        return load_prompt_file(path)
    except EvaluationError as exc:
        if warnings is None:
            raise
        warnings.append(str(exc))
        return []


def evaluation_cases(
    session: Session, services, *, exclude_ids: set[int] | None = None,  # noqa: ANN001
    warnings: list[str] | None = None,
) -> list[EvalCase]:
    """Curated prompts first, then held-out approved examples, at most EVAL_MAX_PROMPTS; when
    that gives fewer than EVAL_MIN_PROMPTS, the template's curated prompts are added.

    `exclude_ids` drops examples that a run trained on (belt and braces: the hold-out is
    decided per example, but a small dataset holds nothing out). With `warnings` given, a
    broken prompts file becomes a warning instead of an error, so the gate still runs.
    """
    from sop_pipeline.examples import eval_holdout_ids

    settings = services.settings
    cases: list[EvalCase] = []
    if settings.eval_prompts_file:
        try:
            cases += load_prompt_file(settings.eval_prompts_file)
        except EvaluationError as exc:
            if warnings is None:
                raise
            warnings.append(str(exc))
    query = select(TrainingExample).where(TrainingExample.status == ExampleStatus.APPROVED)
    approved = list(session.exec(query.order_by(col(TrainingExample.id))))
    held = eval_holdout_ids(approved, settings) - set(exclude_ids or ())
    cases += [
        EvalCase(prompt=ex.prompt, reference=ex.sop_text, source=f"example #{ex.id}",
                 example_id=ex.id)
        for ex in approved if ex.id in held
    ]
    if len(cases) < settings.eval_min_prompts:
        cases += template_cases(settings, warnings)
    return cases[: settings.eval_max_prompts]
