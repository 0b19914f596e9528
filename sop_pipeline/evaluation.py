"""The evaluation gate: a newly fine-tuned model replaces the active one only if it is no worse.

A fine-tune can go wrong quietly (a bad batch of approvals, over-fitting, a provider glitch),
and in a regulated plant a model that drafts worse SOPs is worse than no new model. So when a
run succeeds, the candidate and the current model (the active fine-tune, or the base model in
retrieval mode when none is active) draft SOPs for the same evaluation prompts, and both are
scored the same way:

* compliance   share of drafts that pass the house-format check (`sop_format.validate`),
* coverage     share of the template's required sections present and not blank,
* similarity   ROUGE-L F1 between draft and approved reference, section by section,
* length       closeness of the draft's length to the reference's (1.0 = same length).

Evaluation prompts are the held-out approved examples (`examples.eval_holdout_ids`, never in
any training snapshot) plus optional curated prompts from EVAL_PROMPTS_FILE, at most
EVAL_MAX_PROMPTS. The candidate is promoted when neither its aggregate score nor its compliance
rate is more than EVAL_TOLERANCE below the current model's.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import openai
from sqlmodel import Session, select

from sop_pipeline import model_registry
from sop_pipeline.models import DatasetSnapshot, ExampleStatus, TrainingExample, TrainingRun
from sop_pipeline.notifications import Notification
from sop_pipeline.training.backend import BackendError

log = logging.getLogger(__name__)

Mode = Literal["fine_tuned", "retrieval"]
MODE_FINE_TUNED: Mode = "fine_tuned"
MODE_RETRIEVAL: Mode = "retrieval"

# How much each metric weighs in the aggregate; compliance matters most in a regulated plant.
WEIGHTS = {"compliance": 0.4, "coverage": 0.2, "similarity": 0.3, "length": 0.1}
MAX_LCS_WORDS = 800  # per section; bounds the O(n*m) LCS on very long sections
METRIC_LABELS = (
    ("compliance", "Format compliance"),
    ("coverage", "Section coverage"),
    ("similarity", "ROUGE-L vs reference"),
    ("length", "Length closeness"),
    ("aggregate", "Aggregate score"),
)
_WORD = re.compile(r"\w+", re.UNICODE)


class EvaluationError(ValueError):
    """The evaluation cannot run as configured; the text says what to fix."""


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    scores: dict = field(default_factory=dict)
    report: str = ""


@dataclass(frozen=True)
class EvalCase:
    """One evaluation prompt; `reference` is the approved SOP it should resemble, if known."""

    prompt: str
    reference: str | None = None
    source: str = ""  # "example #12" or "<file>:3"
    example_id: int | None = None


@dataclass
class CaseScore:
    """Scores of one draft. `similarity`/`length` are None without a reference."""

    source: str
    compliant: bool
    coverage: float
    similarity: float | None
    length: float | None
    error: str | None = None
    errors: int = 0  # format errors found


@dataclass
class ModelScores:
    """One model's scores over all cases, with the per-case details."""

    model_id: str
    mode: Mode
    cases: list[CaseScore] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.cases)

    def _mean(self, values: Sequence[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    @property
    def compliance(self) -> float | None:
        return self._mean([1.0 if c.compliant else 0.0 for c in self.cases])

    @property
    def coverage(self) -> float | None:
        return self._mean([c.coverage for c in self.cases])

    @property
    def similarity(self) -> float | None:
        return self._mean([c.similarity for c in self.cases if c.similarity is not None])

    @property
    def length(self) -> float | None:
        return self._mean([c.length for c in self.cases if c.length is not None])

    @property
    def aggregate(self) -> float | None:
        """Weighted mean of the metrics that exist (no references: compliance and coverage)."""
        parts = [(WEIGHTS[name], getattr(self, name)) for name in WEIGHTS]
        present = [(w, v) for w, v in parts if v is not None]
        if not present:
            return None
        return round(sum(w * v for w, v in present) / sum(w for w, _ in present), 4)

    def to_dict(self) -> dict:
        """Plain JSON for TrainingRun.eval_scores / ModelVersion.eval_scores."""
        return {
            "model": self.model_id, "mode": self.mode, "n_cases": self.n,
            "compliance": self.compliance, "coverage": self.coverage,
            "similarity": self.similarity, "length": self.length, "aggregate": self.aggregate,
            "failed_requests": sum(1 for c in self.cases if c.error),
            "cases": [asdict(c) for c in self.cases],
        }


# --- text metrics --------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-cased word tokens (what ROUGE compares)."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, in O(len(a)*len(b)) time and O(len(b))
    memory."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of two texts on word tokens (1.0 for identical, 0.0 for nothing shared)."""
    cand, ref = words(candidate)[:MAX_LCS_WORDS], words(reference)[:MAX_LCS_WORDS]
    if not cand and not ref:
        return 1.0
    lcs = lcs_length(cand, ref)
    if not lcs:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def length_closeness(draft_tokens: int, reference_tokens: int) -> float:
    """min(r, 1/r) for r = draft/reference: 1.0 for equal length, 0.5 for half or double."""
    if draft_tokens <= 0 or reference_tokens <= 0:
        return 1.0 if draft_tokens == reference_tokens else 0.0
    ratio = draft_tokens / reference_tokens
    return min(ratio, 1 / ratio)


def _section_texts(sop, template) -> dict[str, str]:  # noqa: ANN001 - SOP, Template
    """Template key -> the section's text (body and items), plus the title."""
    texts = {"title": sop.title or ""}
    for section in sop.sections:
        if section.key is None or section.key in texts:
            continue
        items = "\n".join(item.text for item in section.items)
        texts[section.key] = f"{section.body}\n{items}".strip()
    return texts


def score_draft(
    draft: str, reference: str | None, template, *, source: str = "",  # noqa: ANN001
    count_tokens: Callable[[str], int] | None = None,
) -> CaseScore:
    """Score one draft against the template and (when given) the approved reference."""
    from sop_pipeline import sop_format

    sop = sop_format.parse(draft, template)
    findings = sop_format.validate(sop, template)
    required = [spec.key for spec in template.sections if spec.required]
    present = [key for key in required
               if (section := sop.section(key)) is not None and not section.is_blank()]
    coverage = len(present) / len(required) if required else 1.0
    similarity = length = None
    if reference is not None:
        ref_sop = sop_format.parse(reference, template)
        ref_texts, draft_texts = _section_texts(ref_sop, template), _section_texts(sop, template)
        keys = [key for key, text in ref_texts.items() if text.strip()]
        if keys:
            similarity = sum(rouge_l_f1(draft_texts.get(k, ""), ref_texts[k])
                             for k in keys) / len(keys)
        else:
            similarity = rouge_l_f1(draft, reference)
        counter = count_tokens or (lambda text: len(words(text)))
        length = length_closeness(counter(draft), counter(reference))
    return CaseScore(
        source=source, compliant=sop_format.is_compliant(findings), coverage=round(coverage, 4),
        similarity=None if similarity is None else round(similarity, 4),
        length=None if length is None else round(length, 4),
        errors=sum(1 for f in findings if f.severity == "error"),
    )


def failed_case(case: EvalCase, error: str) -> CaseScore:
    """A prompt the model did not answer: the worst score on every metric."""
    has_reference = case.reference is not None
    return CaseScore(source=case.source, compliant=False, coverage=0.0,
                     similarity=0.0 if has_reference else None,
                     length=0.0 if has_reference else None, error=error)


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
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise EvaluationError(f"{path.name} is not valid TOML ({exc}).") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
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


def evaluation_cases(
    session: Session, services, *, exclude_ids: set[int] | None = None,  # noqa: ANN001
    warnings: list[str] | None = None,
) -> list[EvalCase]:
    """Curated prompts first, then held-out approved examples, at most EVAL_MAX_PROMPTS.

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
    approved = list(session.exec(query.order_by(TrainingExample.id)))
    held = eval_holdout_ids(approved, settings) - set(exclude_ids or ())
    cases += [
        EvalCase(prompt=ex.prompt, reference=ex.sop_text, source=f"example #{ex.id}",
                 example_id=ex.id)
        for ex in approved if ex.id in held
    ]
    return cases[: settings.eval_max_prompts]


# --- drafting --------------------------------------------------------------------------------


def _messages(services, case: EvalCase, mode: Mode, hidden: set[int]) -> list[dict]:  # noqa: ANN001
    """Exactly the prompts generation sends, so the gate measures what users will get."""
    from sop_pipeline.generation import prompts

    settings = services.settings
    if mode == MODE_FINE_TUNED:
        return prompts.fine_tuned_messages(settings.sop_system_prompt, case.prompt)
    from sop_pipeline.generation.retrieval import approved_documents, select_examples
    from sop_pipeline.tokens import count_chat_tokens

    with services.session() as session:
        documents = [d for d in approved_documents(session) if d.id not in hidden]
    chosen = select_examples(
        case.prompt, documents, k=settings.sop_retrieval_k,
        token_budget=settings.sop_retrieval_token_budget,
        count_tokens=lambda doc: count_chat_tokens(prompts.example_messages(doc)),
    )
    return prompts.retrieval_messages(settings.sop_system_prompt, services.template,
                                      case.prompt, [item.document for item in chosen])


def _draft(services, client: openai.OpenAI, model_id: str, messages: list[dict],  # noqa: ANN001
           clock) -> str:  # noqa: ANN001 - generation.retry.Clock
    """One non-streamed completion, retrying transient errors (honouring Retry-After)."""
    from sop_pipeline.generation.retry import Deadline, call_with_retries

    settings = services.settings

    def ask() -> str:
        response = client.chat.completions.create(
            model=model_id, messages=messages,  # type: ignore[arg-type]
            temperature=0, max_tokens=settings.sop_max_output_tokens,
        )
        return (response.choices[0].message.content or "") if response.choices else ""

    deadline = Deadline(clock, settings.sop_generation_timeout_seconds)
    return call_with_retries(ask, max_retries=settings.provider_max_retries, deadline=deadline)


def evaluate_model(
    services, model_id: str, cases: Sequence[EvalCase], *, mode: Mode,  # noqa: ANN001
    clock=None,  # noqa: ANN001 - generation.retry.Clock; tests pass one that does not sleep
) -> ModelScores:
    """Draft an SOP for every case with `model_id` and score the drafts.

    A prompt the provider refuses for good (404 model not found, 400) scores zero, so a model
    that cannot answer is never promoted; trouble that may pass (rate limits, 5xx, timeouts)
    raises a retryable `BackendError`, so the lifecycle tries the evaluation again later.
    """
    from sop_pipeline.generation.retry import Clock, is_retryable
    from sop_pipeline.providers import retry_after_seconds
    from sop_pipeline.tokens import count_tokens

    clock = clock or Clock()
    client = services.openai_client()
    hidden = {case.example_id for case in cases if case.example_id is not None}
    scores = ModelScores(model_id=model_id, mode=mode)
    for case in cases:
        messages = _messages(services, case, mode, hidden)
        try:
            draft = _draft(services, client, model_id, messages, clock)
        except Exception as exc:  # noqa: BLE001 - classified: retry later, or a zero score
            if is_retryable(exc) or isinstance(exc, TimeoutError):
                raise BackendError(
                    f"The evaluation could not reach {model_id} ({type(exc).__name__}); it "
                    "will be retried.", code="evaluation_provider_unavailable",
                    retryable=True, retry_after=retry_after_seconds(exc)) from exc
            log.warning("evaluation draft with %s failed: %s", model_id, exc)
            scores.cases.append(failed_case(case, f"{type(exc).__name__}: {exc}"[:300]))
            continue
        scores.cases.append(score_draft(draft, case.reference, services.template,
                                        source=case.source, count_tokens=count_tokens))
    return scores


# --- the decision and the report -------------------------------------------------------------


def decide(candidate: ModelScores, baseline: ModelScores, tolerance: float) -> tuple[bool, str]:
    """Promote unless the candidate is more than `tolerance` worse on the aggregate score or
    on format compliance; returns (promote, the reason as a sentence)."""
    for name, label in (("aggregate", "aggregate score"), ("compliance", "format compliance")):
        new, old = getattr(candidate, name), getattr(baseline, name)
        if new is None or old is None:
            continue
        if new < old - tolerance:
            return False, (f"Rejected: the candidate's {label} {new:.2f} is below the current "
                           f"model's {old:.2f} by more than the tolerance {tolerance:.2f}; the "
                           "current model stays active.")
    return True, (f"Promoted: the candidate scores {candidate.aggregate or 0:.2f} against "
                  f"{baseline.aggregate or 0:.2f} (tolerance {tolerance:.2f}).")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def comparison_table(columns: Sequence[tuple[str, ModelScores]]) -> str:
    """A fixed-width text table (metric rows, one column per model) for Slack and terminals."""
    header = ["Metric", *[title for title, _ in columns]]
    rows = [[label, *[_fmt(getattr(s, name)) for _, s in columns]]
            for name, label in METRIC_LABELS]
    rows.append(["Prompts answered",
                 *[f"{sum(1 for c in s.cases if not c.error)}/{s.n}" for _, s in columns]])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) \
            + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *[line(row) for row in rows]])


def _column_title(role: str, scores: ModelScores) -> str:
    mode = " (retrieval)" if scores.mode == MODE_RETRIEVAL else ""
    return f"{role}: {scores.model_id}{mode}"


def baseline_for(services) -> tuple[str, Mode]:  # noqa: ANN001
    """What the candidate must beat: the active fine-tune, else the base model + retrieval."""
    with services.session() as session:
        active = model_registry.active_model(session)
        if active is not None:
            return active.model_id, MODE_FINE_TUNED
    return services.settings.sop_base_model, MODE_RETRIEVAL


def _snapshot_example_ids(session: Session, run: TrainingRun) -> set[int]:
    snapshot = session.get(DatasetSnapshot, run.snapshot_id) if run.snapshot_id else None
    return {int(i) for i in (snapshot.example_ids or [])} if snapshot else set()


def gate(services, run: TrainingRun, candidate_model_id: str, *, clock=None) -> GateDecision:  # noqa: ANN001
    """Decide whether the candidate may replace the current model, and tell the admins why.

    Emits `Notification(kind="eval_report")` with the comparison table in `data["table"]`.
    """
    warnings: list[str] = []
    with services.session() as session:
        trained_on = _snapshot_example_ids(session, run)
        cases = evaluation_cases(session, services, exclude_ids=trained_on, warnings=warnings)
    tolerance = services.settings.eval_tolerance
    if not cases:
        report = ("No evaluation prompts: no approved example is held out yet and "
                  "EVAL_PROMPTS_FILE gives none, so the model was promoted without a "
                  "comparison. Set EVAL_PROMPTS_FILE or approve more SOPs to enable the gate.")
        report = "\n".join([*warnings, report])
        decision = GateDecision(promote=True, report=report, scores={
            "n_cases": 0, "promote": True, "tolerance": tolerance, "reason": report})
        _notify(services, run, decision, table="")
        return decision
    _serve_local_adapter(services, run, candidate_model_id)
    baseline_id, baseline_mode = baseline_for(services)
    candidate = evaluate_model(services, candidate_model_id, cases, mode=MODE_FINE_TUNED,
                               clock=clock)
    baseline = evaluate_model(services, baseline_id, cases, mode=baseline_mode, clock=clock)
    promote, reason = decide(candidate, baseline, tolerance)
    table = comparison_table([(_column_title("Candidate", candidate), candidate),
                              (_column_title("Current", baseline), baseline)])
    report = "\n".join([
        f"Evaluation of run #{run.id} on {len(cases)} prompt(s) "
        f"({sum(1 for c in cases if c.example_id)} held-out approved SOPs):",
        table, *warnings, reason])
    scores = {"candidate": candidate.to_dict(), "baseline": baseline.to_dict(),
              "n_cases": len(cases), "tolerance": tolerance, "promote": promote,
              "reason": reason, "warnings": warnings}
    decision = GateDecision(promote=promote, scores=scores, report=report)
    _notify(services, run, decision, table=table)
    return decision


def _serve_local_adapter(services, run: TrainingRun, model_id: str) -> None:  # noqa: ANN001
    """A LoRA candidate must be served before it can draft: ask vLLM to load it (best effort;
    a server that cannot load adapters at runtime needs `--lora-modules` instead)."""
    if run.backend != "local" or not run.provider_job_id:
        return
    from sop_pipeline.training.lora_backend import LoraBackend, load_adapter_into_server

    adapter = LoraBackend(services).adapter_path(run.provider_job_id)
    if not load_adapter_into_server(services.settings, model_id, adapter):
        log.warning("could not load adapter %s into the server at OPENAI_BASE_URL; "
                    "evaluating %s as it is served", adapter, model_id)


def _notify(services, run: TrainingRun, decision: GateDecision, *, table: str) -> None:  # noqa: ANN001
    verdict = "promote" if decision.promote else "reject"
    services.notifier.notify(Notification(
        kind="eval_report", run_id=run.id,
        text=f"Evaluation of training run #{run.id}: {verdict}.",
        data={"table": table, "report": decision.report, "promote": decision.promote,
              "scores": decision.scores},
    ))


def evaluate_on_demand(services, model_id: str | None = None, *, clock=None  # noqa: ANN001
                       ) -> tuple[str, dict]:
    """`sop-bot eval`: the given (or active) model vs the base model in retrieval mode.

    Returns (report text, scores). Raises EvaluationError when there is nothing to evaluate.
    """
    with services.session() as session:
        if model_id is None:
            active = model_registry.active_model(session)
            model_id = active.model_id if active else None
        cases = evaluation_cases(session, services)
    if not cases:
        raise EvaluationError(
            "There are no evaluation prompts: no approved SOP is held out yet (see EVAL_SHARE "
            "and SOP_MIN_EXAMPLES) and EVAL_PROMPTS_FILE is not set; add prompts to a file "
            "and set EVAL_PROMPTS_FILE.")
    base_id = services.settings.sop_base_model
    baseline = evaluate_model(services, base_id, cases, mode=MODE_RETRIEVAL, clock=clock)
    columns = [(_column_title("Base", baseline), baseline)]
    scores: dict = {"baseline": baseline.to_dict(), "n_cases": len(cases)}
    lines = [f"Evaluation on {len(cases)} prompt(s):"]
    if model_id:
        candidate = evaluate_model(services, model_id, cases, mode=MODE_FINE_TUNED, clock=clock)
        columns.insert(0, (_column_title("Model", candidate), candidate))
        scores["candidate"] = candidate.to_dict()
        promote, _ = decide(candidate, baseline, services.settings.eval_tolerance)
        scores["better_or_equal"] = promote
        lines.append(comparison_table(columns))
        verdict = "is no worse than" if promote else "scores worse than"
        lines.append(f"{model_id} {verdict} the base model with retrieval "
                     f"({_fmt(candidate.aggregate)} vs {_fmt(baseline.aggregate)}, tolerance "
                     f"{services.settings.eval_tolerance:.2f}).")
    else:
        lines.append(comparison_table(columns))
        lines.append("No fine-tuned model is active; showing the base model only.")
    return "\n".join(lines), scores
