"""The gate's decision: the candidate and the current model draft SOPs for the same cases,
both are scored the same way, and the candidate is promoted only when neither its aggregate
score nor its compliance rate is more than EVAL_TOLERANCE below the current model's; without
enough evidence it is never promoted."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import openai
from sqlmodel import Session, select

from sop_pipeline import model_registry
from sop_pipeline.evaluation.cases import (
    EvalCase,
    EvaluationError,
    evaluation_cases,
    template_prompts_path,
)
from sop_pipeline.evaluation.metrics import (
    METRIC_LABELS,
    MODE_FINE_TUNED,
    MODE_RETRIEVAL,
    Mode,
    ModelScores,
    failed_case,
    score_draft,
)
from sop_pipeline.models import DatasetSnapshot, ExampleStatus, TrainingExample, TrainingRun
from sop_pipeline.notifications import Notification
from sop_pipeline.training.backend import BackendError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    scores: dict = field(default_factory=dict)
    report: str = ""

# --- drafting --------------------------------------------------------------------------------


def _messages(services, case: EvalCase, mode: Mode, hidden: set[int]) -> list[dict]:  # noqa: ANN001
    """Exactly the prompts generation sends, so the gate measures what users will get."""
    from sop_pipeline.generation import prompts

    settings = services.settings
    if mode == MODE_FINE_TUNED:
        return prompts.fine_tuned_messages(settings.sop_system_prompt, case.prompt)
    from sop_pipeline.generation.retrieval import example_messages, ranker_for, retrieve
    from sop_pipeline.tokens import count_chat_tokens

    with services.session() as session:
        chosen = retrieve(
            session, case.prompt, k=settings.sop_retrieval_k,
            token_budget=settings.sop_retrieval_token_budget,
            count_tokens=lambda doc: count_chat_tokens(example_messages(doc)),
            exclude=hidden, ranker=ranker_for(services),
        )
    return prompts.retrieval_messages(settings.sop_system_prompt, services.template,
                                      case.prompt, [item.document for item in chosen])


def _draft(services, client: openai.OpenAI, model_id: str, messages: list[dict]) -> str:  # noqa: ANN001
    """One non-streamed completion; the SDK retries transient errors (`retry_policy`)."""
    response = client.chat.completions.create(
        model=model_id, messages=messages,  # type: ignore[arg-type]
        temperature=0, max_tokens=services.settings.sop_max_output_tokens,
    )
    return (response.choices[0].message.content or "") if response.choices else ""


def _transient(exc: BaseException) -> bool:
    """Trouble that may pass (what the SDK retries): rate limits other than an empty quota,
    server errors, timeouts and connection errors."""
    if isinstance(exc, openai.RateLimitError):
        return exc.code != "insufficient_quota"
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409) or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)


def evaluate_model(
    services, model_id: str, cases: Sequence[EvalCase], *, mode: Mode,  # noqa: ANN001
) -> ModelScores:
    """Draft an SOP for every case with `model_id` and score the drafts.

    A prompt the provider refuses for good (404 model not found, 400) scores zero, so a model
    that cannot answer is never promoted; trouble that may pass (rate limits, 5xx, timeouts)
    raises a retryable `BackendError`, so the lifecycle tries the evaluation again later.
    """
    from sop_pipeline.retry_policy import retry_after_from_headers
    from sop_pipeline.tokens import count_tokens

    client = services.openai_client()
    hidden = {case.example_id for case in cases if case.example_id is not None}
    scores = ModelScores(model_id=model_id, mode=mode)
    for case in cases:
        messages = _messages(services, case, mode, hidden)
        try:
            draft = _draft(services, client, model_id, messages)
        except Exception as exc:  # noqa: BLE001 - classified: retry later, or a zero score
            if _transient(exc):
                raise BackendError(
                    f"The evaluation could not reach {model_id} ({type(exc).__name__}); it "
                    "will be retried.", code="evaluation_provider_unavailable",
                    retryable=True, retry_after=retry_after_from_headers(
                        getattr(getattr(exc, "response", None), "headers", None))) from exc
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


def gate(services, run: TrainingRun, candidate_model_id: str) -> GateDecision:  # noqa: ANN001
    """Decide whether the candidate may replace the current model, and tell the admins why.

    Emits `Notification(kind="eval_report")` with the comparison table in `data["table"]`.
    """
    warnings: list[str] = []
    with services.session() as session:
        trained_on = _snapshot_example_ids(session, run)
        cases = evaluation_cases(session, services, exclude_ids=trained_on, warnings=warnings)
    tolerance = services.settings.eval_tolerance
    if len(cases) < services.settings.eval_min_prompts:
        decision = _no_evidence(services, cases, warnings, tolerance)
        _notify(services, run, decision, table="")
        return decision
    _serve_local_adapter(services, run, candidate_model_id)
    baseline_id, baseline_mode = baseline_for(services)
    candidate = evaluate_model(services, candidate_model_id, cases, mode=MODE_FINE_TUNED)
    baseline = evaluate_model(services, baseline_id, cases, mode=baseline_mode)
    promote, reason = decide(candidate, baseline, tolerance)
    table = comparison_table([(_column_title("Candidate", candidate), candidate),
                              (_column_title("Current", baseline), baseline)])
    report = "\n".join([
        f"Evaluation of run #{run.id} on {len(cases)} prompt(s) "
        f"({sum(1 for c in cases if c.example_id)} held-out approved SOPs):",
        table, *warnings, reason])
    scores = {"candidate": candidate.to_dict(), "baseline": baseline.to_dict(),
              "n_cases": len(cases), "tolerance": tolerance, "promote": promote,
              "decision": "promote" if promote else "reject", "reason": reason,
              "warnings": warnings, "prompts": prompts_used(cases)}
    decision = GateDecision(promote=promote, scores=scores, report=report)
    _notify(services, run, decision, table=table)
    return decision


def prompts_used(cases: Sequence[EvalCase]) -> list[dict]:
    """The evaluation set as stored with the run (what was asked, and where it came from)."""
    return [{"source": c.source, "prompt": c.prompt, "example_id": c.example_id,
             "has_reference": c.reference is not None} for c in cases]


def _approved_count(services) -> int:  # noqa: ANN001
    from sqlalchemy import func

    with services.session() as session:
        query = select(func.count()).select_from(TrainingExample).where(
            TrainingExample.status == ExampleStatus.APPROVED)
        return int(session.exec(query).one())


def _no_evidence(
    services, cases: Sequence[EvalCase], warnings: list[str], tolerance: float,  # noqa: ANN001
) -> GateDecision:
    """Refuse to promote without a comparison, saying how much evidence is missing."""
    settings = services.settings
    need, have = settings.eval_min_prompts, len(cases)
    approved = _approved_count(services)
    missing_prompts = need - have
    missing_approved: int | None = None
    if settings.eval_share > 0:
        # enough approved SOPs that EVAL_SHARE of them is `need` and the rest can still train
        total = max(settings.sop_min_examples + need, math.ceil(need / settings.eval_share))
        missing_approved = max(1, total - approved)
        more = (f"approve about {missing_approved} more SOP(s) (EVAL_SHARE "
                f"{settings.eval_share:.2f} of them are held out for evaluation)")
    else:
        more = "set EVAL_SHARE above 0 so approved SOPs are held out for evaluation"
    if settings.eval_template_prompts:
        where = (f"add {missing_prompts} curated prompt(s) to "
                 f"{template_prompts_path(settings)} or to EVAL_PROMPTS_FILE")
    else:
        where = (f"add {missing_prompts} curated prompt(s) to EVAL_PROMPTS_FILE (or set "
                 "EVAL_TEMPLATE_PROMPTS=true to use the template's)")
    reason = (f"Not promoted: the evaluation gate needs at least {need} evaluation prompt(s) "
              f"to compare the candidate with the current model and has {have} ({approved} "
              f"approved SOP(s), none or too few held out). To give it evidence, {more}, or "
              f"{where}. The candidate is kept; an admin can still activate it with "
              "`sop-bot models activate <id>`.")
    report = "\n".join([*warnings, reason])
    scores = {"n_cases": have, "tolerance": tolerance, "promote": False,
              "decision": "insufficient_evidence", "reason": reason, "warnings": warnings,
              "min_prompts": need, "missing_prompts": missing_prompts,
              "missing_approved": missing_approved, "approved": approved,
              "prompts": prompts_used(cases)}
    return GateDecision(promote=False, scores=scores, report=report)


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


def evaluate_on_demand(services, model_id: str | None = None) -> tuple[str, dict]:  # noqa: ANN001
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
            "and SOP_MIN_EXAMPLES), EVAL_PROMPTS_FILE is not set and the template ships no "
            "curated prompts; add prompts to a file and set EVAL_PROMPTS_FILE.")
    base_id = services.settings.sop_base_model
    baseline = evaluate_model(services, base_id, cases, mode=MODE_RETRIEVAL)
    columns = [(_column_title("Base", baseline), baseline)]
    scores: dict = {"baseline": baseline.to_dict(), "n_cases": len(cases)}
    lines = [f"Evaluation on {len(cases)} prompt(s):"]
    if model_id:
        candidate = evaluate_model(services, model_id, cases, mode=MODE_FINE_TUNED)
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
