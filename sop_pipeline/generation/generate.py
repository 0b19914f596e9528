"""Drafting an SOP (the service): choose the model, stream the answer, check it against the
house format, repair once if needed, and store what happened. Rows live in `store`, the
sentences people read in `messages`, the provider stream and its deadlines in `stream`.

Two steps, because Slack must acknowledge a slash command within 3 seconds:
`start_generation` validates and stores a pending row (fast, no provider call);
`run_generation` does the slow part in a worker thread and streams text to `on_delta`.

Modes:
* ``fine_tuned`` — an active fine-tuned model exists: send exactly the system prompt and the
  request, the two messages every training example starts with.
* ``retrieval`` — no fine-tune yet, or the active one is gone at the provider (404): the base
  model gets the format in the system prompt plus the most similar approved SOPs as examples.

Streaming contract for `on_delta`: text chunks of the draft in arrival order. When the text
shown so far must be thrown away (a repair round starts, or a dropped stream is retried, or
the fine-tuned model vanished mid-answer) `on_reset()` is called first, and the chunks that
follow are the new draft from its beginning. Without `on_reset`, chunks after the first
draft are not streamed at all (the final `GenerationResult` carries the text), so a consumer
that only appends never shows two drafts glued together.

Rejected requests raise `RequestRejected` and store nothing: no row, no provider call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field

import openai
from sqlmodel import Session

from sop_pipeline import model_registry, sop_format
from sop_pipeline.generation import prompts, store
from sop_pipeline.generation.messages import EmptyAnswer, GenerationCancelled, error_sentence
from sop_pipeline.generation.redaction import Redactor, make_redactor
from sop_pipeline.generation.retrieval import (
    Document,
    example_messages,
    ids,
    ranker_for,
    retrieve,
    stored_example_tokens,
)
from sop_pipeline.generation.store import GenerationResult, start_generation
from sop_pipeline.generation.stream import StreamBroken, stream_chat
from sop_pipeline.models import Generation, ModelVersion
from sop_pipeline.notifications import Notification
from sop_pipeline.retry_policy import Deadline, RetryPolicy
from sop_pipeline.services import DatabaseBusy, Services
from sop_pipeline.tokens import count_chat_tokens, count_tokens

log = logging.getLogger(__name__)

MODE_FINE_TUNED = "fine_tuned"
MODE_RETRIEVAL = "retrieval"
DeltaFn = Callable[[str], None]


class _ModelGone(Exception):
    """The fine-tuned model answered 404: deleted or retired at the provider."""

    def __init__(self, cause: openai.NotFoundError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def generate(
    services: Services,
    request: str,
    requester: str | None = None,
    *,
    on_delta: DeltaFn | None = None,
    on_reset: Callable[[], None] | None = None,
) -> GenerationResult:
    """Validate, store and run in one call (the CLI path)."""
    row = start_generation(services, request, requester)
    assert row.id is not None
    return run_generation(services, row.id, on_delta=on_delta, on_reset=on_reset)


# --------------------------------------------------------------------------- running


@dataclass
class _Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion


@dataclass
class _Draft:
    """One parsed and validated answer."""

    raw: str
    sop: sop_format.SOP
    findings: list
    truncated: bool = False

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if getattr(f, "severity", "") == "error")

    @property
    def compliant(self) -> bool:
        return sop_format.is_compliant(self.findings)


@dataclass
class _Run:
    """Per-run state shared by the helpers (kept out of signatures to keep them short)."""

    services: Services
    redactor: Redactor
    deadline: Deadline
    on_delta: DeltaFn | None
    on_reset: Callable[[], None] | None
    cancel: threading.Event | None
    client: openai.OpenAI | None = None
    usage: _Usage = field(default_factory=_Usage)
    model: str | None = None
    mode: str | None = None
    retrieved: list[int] = field(default_factory=list)
    repair_rounds: int = 0
    shown: bool = False  # has on_delta received text of the current draft?
    stream_now: bool = False  # are deltas of the current draft forwarded?
    drafts_started: int = 0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled()

    def begin_draft(self) -> None:
        """Called before each new answer: decides whether its deltas are forwarded."""
        self.drafts_started += 1
        if self.drafts_started == 1 or not self.shown:
            self.stream_now = self.on_delta is not None
        else:
            self.restart()

    def restart(self) -> None:
        """What was shown is obsolete: reset the consumer, or stop streaming if we cannot."""
        if not self.shown:
            return
        if self.on_reset is not None:
            try:
                self.on_reset()
                self.shown = False
                return
            except Exception:  # noqa: BLE001 - as in emit()
                log.exception("on_reset failed; streaming to this consumer stops")
        self.stream_now = False

    def emit(self, text: str) -> None:
        """Forward a chunk; a failing consumer (e.g. a Slack update) stops the stream to it,
        not the generation: the final result still carries the whole draft."""
        if not (self.stream_now and self.on_delta is not None and text):
            return
        try:
            self.on_delta(text)
        except Exception:  # noqa: BLE001 - the consumer's problem must not lose the draft
            log.exception("on_delta failed; streaming to this consumer stops")
            self.stream_now = False
            return
        self.shown = True


def run_generation(
    services: Services,
    generation_id: int,
    *,
    on_delta: DeltaFn | None = None,
    cancel: threading.Event | None = None,
    on_reset: Callable[[], None] | None = None,
    reply: store.ReplyAt | None = None,
) -> GenerationResult:
    """Generate the draft for a stored request, streaming it to `on_delta` (and, with `reply`,
    recording where the draft is shown as the run is claimed).

    Failures never raise: provider trouble, the deadline, a cancel or a bug all end as status
    "failed" with a sentence in `error` (and no draft text). Only an unknown id raises
    `LookupError`. The deadlines are wall-clock ones (`stream.stream_chat`).

    A completed generation is returned as stored (no second provider call); one that another
    worker is streaming right now is returned as is, status "streaming".
    """
    try:
        with services.draft_turn():  # the claim and the library read share one turn
            row, won = store.claim(services, generation_id, reply)
            if won:
                run = _Run(
                    services=services,
                    redactor=make_redactor(services.settings.sop_redact_patterns),
                    deadline=Deadline(services.settings.sop_generation_timeout_seconds),
                    on_delta=on_delta, on_reset=on_reset, cancel=cancel,
                )
                plan, error = _plan(run, row.request)
    except DatabaseBusy as busy:  # not stored either: the recovery sweep fails the row later
        return GenerationResult(generation_id=generation_id, status="failed", text="",
                                sop=None, error=str(busy))
    if not won:
        return store.result_from_row(services, row)
    draft: _Draft | None = None
    if plan is not None:
        try:
            run.client = services.openai_client()
            draft = _produce(run, row.request, plan)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a stored sentence
            error = error_sentence(exc, run.model, services.settings)
    latency = int(round((run.deadline.monotonic() - run.deadline.started) * 1000))
    return _finish(services, row, run, draft, error, latency)


@dataclass
class _Plan:
    """What the database says a run should send: the active fine-tune, else the retrieval
    messages."""

    active_id: int | None
    active_model_id: str | None
    messages: list[dict[str, str]] | None


def _plan(run: _Run, request: str) -> tuple[_Plan | None, str | None]:
    """The run's plan, read in one database round for both questions; or the sentence why
    it could not be read."""
    try:
        with run.services.draft_session() as session:
            active = model_registry.active_model(session)
            active_id, active_model_id = (active.id, active.model_id) if active else (None, None)
            messages = None if active_model_id else _retrieval_messages(run, request, session)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a stored sentence
        return None, error_sentence(exc, run.model, run.services.settings)
    return _Plan(active_id, active_model_id, messages), None


def _produce(run: _Run, request: str, plan: _Plan) -> _Draft:
    """Fine-tuned model when one is active, else (or when it is gone) retrieval."""
    messages = plan.messages
    if plan.active_model_id:
        run.mode, run.model = MODE_FINE_TUNED, plan.active_model_id
        messages = prompts.fine_tuned_messages(run.services.settings.sop_system_prompt, request)
        try:
            return _converse(run, messages)
        except _ModelGone as gone:
            _retire(run.services, plan.active_id, plan.active_model_id, gone.cause)
        messages = None
    run.mode, run.model = MODE_RETRIEVAL, run.services.settings.sop_base_model
    return _converse(run, messages or _retrieval_messages(run, request))


def _retrieval_messages(
    run: _Run, request: str, session: Session | None = None,
) -> list[dict[str, str]]:
    """Messages with the approved examples closest to `request`, ranked by the database
    (in `session` when the caller has one open)."""
    settings = run.services.settings
    redact = run.redactor

    def example_tokens(doc: Document) -> int:
        if not redact.enabled:
            return stored_example_tokens(doc)  # counted at approval
        return count_chat_tokens(example_messages(_redacted_doc(doc, redact))) - 3

    if session is None:
        with run.services.draft_session() as own:
            return _retrieval_messages(run, request, own)
    chosen = retrieve(
        session, redact(request), k=settings.sop_retrieval_k,
        token_budget=settings.sop_retrieval_token_budget, count_tokens=example_tokens,
        ranker=ranker_for(run.services),
    )
    run.retrieved = ids(chosen)
    return prompts.retrieval_messages(
        settings.sop_system_prompt, run.services.template, request,
        [item.document for item in chosen],
    )


def _redacted_doc(doc: Document, redact: Redactor) -> Document:
    if not redact.enabled:
        return doc
    return Document(id=doc.id, title=redact(doc.title), prompt=redact(doc.prompt),
                    text=redact(doc.text))


def _retire(services: Services, version_id: int | None, model_id: str, cause: Exception) -> None:
    """Mark the vanished model retired (audited) and tell the admins; generation falls back."""
    reason = f"The provider no longer knows {model_id} (404 model_not_found): {cause}"[:500]
    with services.session() as session:
        version = session.get(ModelVersion, version_id)
        if version is not None and version.status != "retired":
            model_registry.deactivate_missing(session, version, reason=reason)
        session.commit()
    log.warning("Fine-tuned model %s is gone; falling back to retrieval", model_id)
    services.notifier.notify(Notification(
        kind="model_retired",
        text=(f"The fine-tuned model {model_id} no longer exists at the provider, so SOP Bot "
              "now drafts with the base model and retrieval. Retrain or roll back with "
              "`sop-bot models`."),
        data={"model_id": model_id},
    ))


def _converse(run: _Run, messages: list[dict[str, str]]) -> _Draft:
    """First answer, then up to SOP_REPAIR_ROUNDS repairs; keeps the best draft seen.

    A repair that fails (provider error, deadline) keeps the complete draft we already have,
    with its findings: a whole non-compliant draft is more useful than an error message.
    """
    settings = run.services.settings
    best = _ask(run, messages)
    latest = best
    while not latest.compliant and run.repair_rounds < settings.sop_repair_rounds:
        run.repair_rounds += 1
        messages = [
            *messages,
            {"role": "assistant", "content": latest.raw},
            prompts.repair_message(_problems(latest.findings)),
        ]
        try:
            latest = _ask(run, messages)
        except GenerationCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - keep the draft we have
            log.warning("Repair round failed (%s); keeping the first draft", exc)
            run.restart()
            break
        if latest.errors <= best.errors:
            best = latest
    return best


def _problems(findings: list) -> list[str]:
    errors = [f for f in findings if getattr(f, "severity", "") == "error"] or findings
    return [getattr(f, "message", str(f)) for f in errors]


def _ask(run: _Run, messages: list[dict[str, str]]) -> _Draft:
    """One streamed answer (with retries), parsed and validated."""
    run.begin_draft()
    raw, finish_reason = _stream_with_retries(run, messages)
    if not raw.strip():
        raise EmptyAnswer()
    settings = run.services.settings
    template = run.services.template
    sop = sop_format.parse(raw, template)
    findings = list(sop_format.validate(
        sop, template, max_tokens=settings.sop_max_example_tokens, count_tokens=count_tokens,
    ))
    truncated = finish_reason == "length"
    if truncated:
        findings.append(_truncation_finding(settings.sop_max_output_tokens))
    return _Draft(raw=raw, sop=sop, findings=findings, truncated=truncated)


def _truncation_finding(limit: int) -> sop_format.Finding:
    return sop_format.Finding(
        code="truncated", severity="error", section=None,
        message=(f"The draft stopped at the {limit}-token output limit and is incomplete; "
                 "ask for a shorter SOP or raise SOP_MAX_OUTPUT_TOKENS."),
    )


def _stream_with_retries(run: _Run, messages: list[dict[str, str]]) -> tuple[str, str | None]:
    """One answer. The SDK retries the request itself; a stream that breaks after the
    provider started answering is asked again (`RetryPolicy.reask`), within the deadline."""
    outgoing = run.redactor.messages(messages)  # the one place text leaves for the provider
    policy = RetryPolicy.provider(run.services.settings)
    attempt = 0
    while True:
        try:
            return _stream_once(run, outgoing)
        except StreamBroken as broken:
            cause = broken.cause  # a dropped connection or an error event mid-answer
            transient = (isinstance(cause, openai.APIConnectionError)
                         or type(cause) is openai.APIError)
            if not (transient and policy.reask(attempt, run.deadline)):
                raise broken.cause from None
            log.info("Stream broke (%s); asking again", broken.cause)
            run.restart()
            attempt += 1
        except openai.NotFoundError as exc:
            if run.mode == MODE_FINE_TUNED:
                run.restart()
                run.drafts_started = 0  # the fallback's first draft streams like a first draft
                raise _ModelGone(exc) from exc
            raise


def _stream_once(run: _Run, messages: list[dict[str, object]]) -> tuple[str, str | None]:
    """Stream one chat completion; usage comes in the last chunk (include_usage)."""
    run.check_cancel()
    run.deadline.check()
    settings = run.services.settings
    assert run.client is not None
    parts: list[str] = []
    finish_reason: str | None = None
    usage_seen = False
    pieces = stream_chat(
        run.client,
        {"model": run.model or settings.sop_base_model, "messages": messages,
         "stream_options": {"include_usage": True}, "temperature": settings.sop_temperature,
         "max_tokens": settings.sop_max_output_tokens},
        timeout=max(0.01, min(settings.openai_timeout_seconds, run.deadline.remaining())),
        deadline=run.deadline, idle_seconds=settings.sop_stream_idle_seconds,
        check=run.check_cancel,
    )
    with closing(pieces):
        for piece in pieces:
            if piece.has_usage:
                run.usage.add(piece.prompt_tokens, piece.completion_tokens)
                usage_seen = True
            if piece.text:
                parts.append(piece.text)
                run.emit(piece.text)
            if piece.finish_reason:
                finish_reason = piece.finish_reason
    raw = "".join(parts)
    if not usage_seen:  # some OpenAI-compatible servers ignore include_usage: estimate
        run.usage.add(count_chat_tokens(messages), count_tokens(raw))
    return raw, finish_reason


# --------------------------------------------------------------------------- outcome


def _finish(
    services: Services, row: Generation, run: _Run, draft: _Draft | None,
    error: str | None, latency_ms: int,
) -> GenerationResult:
    """Store the outcome and build the result; a failed run keeps no draft text."""
    completed = draft is not None and error is None
    # The model's own numbering, as it will be shown, approved and exported (issue #13);
    # gaps and duplicates are findings for the reviewer, never renumbered here.
    text = (
        sop_format.render_training_text(draft.sop, services.template) if completed and draft else ""
    )
    assert row.id is not None  # a claimed row
    return store.finish(services, row.id, {
        "status": "completed" if completed else "failed",
        "error": error,
        "model": run.model,
        "mode": run.mode,
        "prompt_tokens": run.usage.prompt_tokens,
        "completion_tokens": run.usage.completion_tokens,
        "latency_ms": latency_ms,
        "repair_rounds": run.repair_rounds,
        "retrieved_example_ids": list(run.retrieved),
        "findings": store.findings_json(draft.findings) if completed and draft else [],
        "compliant": draft.compliant if completed and draft else None,
        "draft_text": text or None,
        "completed_at": services.clock(),
    }, row)
