"""Drafting an SOP: validate the request, choose the model, stream the answer, check it
against the house format, repair once if needed, and store what happened.

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
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timedelta

import openai
from sqlalchemy import and_, or_, update
from sqlmodel import Session, select

from sop_pipeline import model_registry, sop_format
from sop_pipeline.generation import prompts, requests
from sop_pipeline.generation.recovery import current_worker
from sop_pipeline.generation.redaction import Redactor, make_redactor
from sop_pipeline.generation.retrieval import (
    Document,
    approved_documents,
    ids,
    select_examples,
)
from sop_pipeline.generation.retry import (
    Clock,
    Deadline,
    DeadlineExceeded,
    call_with_retries,
    is_quota_error,
)
from sop_pipeline.generation.sse import stream_chat
from sop_pipeline.models import Generation, ModelVersion
from sop_pipeline.notifications import Notification
from sop_pipeline.providers import ProviderConfigError
from sop_pipeline.services import Services
from sop_pipeline.tokens import count_chat_tokens, count_tokens

log = logging.getLogger(__name__)

MODE_FINE_TUNED = "fine_tuned"
MODE_RETRIEVAL = "retrieval"
DeltaFn = Callable[[str], None]


class RequestRejected(ValueError):
    """The request cannot become an SOP; `str(exc)` tells the user what to type instead."""


class GenerationCancelled(Exception):
    """The caller set the cancel event (e.g. the bot is shutting down)."""


class _ModelGone(Exception):
    """The fine-tuned model answered 404: deleted or retired at the provider."""

    def __init__(self, cause: openai.NotFoundError) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class GenerationResult:
    """What one generation produced. `text` is the canonical SOP without the DRAFT notice
    (empty unless `status == "completed"`); `markdown` has the notice on top."""

    generation_id: int
    status: str
    text: str
    sop: sop_format.SOP | None
    findings: list = field(default_factory=list)
    compliant: bool | None = None
    model: str | None = None
    mode: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int | None = None
    error: str | None = None
    draft_notice: str = ""
    markdown: str = ""
    repair_rounds: int = 0
    retrieved_example_ids: list[int] = field(default_factory=list)
    generated_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @property
    def summary(self) -> str:
        """One-paragraph compliance report (empty for failed generations)."""
        if not self.ok:
            return ""
        return sop_format.summarize(self.findings)


# --------------------------------------------------------------------------- requests


def validate_request(request: str | None, max_chars: int) -> str:
    """The cleaned request, or `RequestRejected` with a sentence saying what to do."""
    text = requests.normalize_request(request or "")
    if not text:
        raise RequestRejected(
            f"Your request is empty. Describe the procedure, for example: "
            f"{requests.EXAMPLE_REQUEST}"
        )
    if len(text) > max_chars:
        raise RequestRejected(
            f"Your request is {len(text):,} characters long; the limit is {max_chars:,}. "
            "Shorten it to the procedure's name and its key points, then try again."
        )
    if not requests.looks_like_sop_request(text):
        raise RequestRejected(
            "That doesn't look like a request for an SOP. "
            f"Try: {requests.EXAMPLE_REQUEST}"
        )
    return text


def start_generation(
    services: Services,
    request: str,
    requester: str | None,
    *,
    slack_channel: str | None = None,
    slack_thread_ts: str | None = None,
    slack_ts: str | None = None,
    claim: bool = False,
) -> Generation:
    """Validate the request and store a pending Generation (committed). No provider call.
    `slack_ts` is the reply that will show the draft, when it is already posted.

    `claim=True` stores it as already "streaming" by this worker, for a caller that runs it
    at once (`run_generation(..., claimed=row)`): one database write fewer before the provider
    call, which under a burst of drafts is what the provider requests queue behind."""
    text = validate_request(request, services.settings.sop_max_request_chars)
    row = Generation(
        request=text, requester=requester, status="streaming" if claim else "pending",
        worker=current_worker(),
        slack_channel=slack_channel, slack_thread_ts=slack_thread_ts, slack_ts=slack_ts,
        created_at=services.clock(),
    )
    with services.session() as session:
        session.add(row)
        session.commit()  # the id comes back with the INSERT; every other value is set here
    return row


def find_generation_by_message(session: Session, channel: str, ts: str) -> Generation | None:
    """The generation whose reply (or request thread) is message `ts` in `channel`."""
    by_reply = select(Generation).where(
        Generation.slack_channel == channel, Generation.slack_ts == ts
    ).order_by(Generation.id.desc())  # type: ignore[union-attr]
    found = session.exec(by_reply).first()
    if found is not None:
        return found
    by_thread = select(Generation).where(
        Generation.slack_channel == channel, Generation.slack_thread_ts == ts
    ).order_by(Generation.id.desc())  # type: ignore[union-attr]
    return session.exec(by_thread).first()


def generate(
    services: Services,
    request: str,
    requester: str | None = None,
    *,
    on_delta: DeltaFn | None = None,
    on_reset: Callable[[], None] | None = None,
    clock: Clock | None = None,
) -> GenerationResult:
    """Validate, store and run in one call (the CLI path)."""
    row = start_generation(services, request, requester)
    assert row.id is not None
    return run_generation(services, row.id, on_delta=on_delta, on_reset=on_reset, clock=clock)


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
    on_request: Callable[[], None] | None = None
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


def warm_up(services: Services) -> None:
    """Do at start-up what the first draft would otherwise do while the first burst of requests
    is being answered: load the SOP template and build the shared provider client (which
    imports its HTTP stack, and its chat resources on first use). A provider that is not
    configured yet is skipped: drafts will say what to set."""
    _ = services.template
    try:
        client = services.openai_client()
    except ProviderConfigError as exc:
        log.info("provider client not built at start-up: %s", exc)
        return
    _ = client.chat.completions.with_streaming_response


def run_generation(
    services: Services,
    generation_id: int,
    *,
    on_delta: DeltaFn | None = None,
    cancel: threading.Event | None = None,
    on_reset: Callable[[], None] | None = None,
    clock: Clock | None = None,
    claimed: Generation | None = None,
    on_request: Callable[[], None] | None = None,
) -> GenerationResult:
    """Generate the draft for a stored request, streaming it to `on_delta`.

    Failures never raise: provider trouble, the deadline, a cancel or a bug all end as status
    "failed" with a sentence in `error` (and no draft text). Only an unknown id raises
    `LookupError`. `clock` injects sleep/monotonic time for tests.

    A completed generation is returned as stored (no second provider call); one that another
    worker is streaming right now is returned as is, status "streaming".

    `claimed` is the row as `start_generation(..., claim=True)` returned it: this worker
    already owns it, so it is not claimed again. `on_request` is called just before each
    provider request is sent (the bot lets other work wait until its first one is out).
    """
    clock = clock or Clock()
    if claimed is not None and claimed.id == generation_id and claimed.status == "streaming":
        row = claimed
    else:
        row, won = _claim(services, generation_id)
        if not won:
            return _result_from_row(services, row)
    started = clock.monotonic()
    run = _Run(
        services=services, redactor=make_redactor(services.settings.sop_redact_patterns),
        deadline=Deadline(clock, services.settings.sop_generation_timeout_seconds),
        on_delta=on_delta, on_reset=on_reset, cancel=cancel, on_request=on_request,
    )
    draft: _Draft | None = None
    error: str | None = None
    try:
        run.client = services.openai_client()
        draft = _produce(run, row.request)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a stored sentence
        error = _error_sentence(exc, run, services)
    latency = int(round((clock.monotonic() - started) * 1000))
    return _finish(services, generation_id, run, draft, error, latency)


def _claim(services: Services, generation_id: int) -> tuple[Generation, bool]:
    """Atomically move pending/failed → streaming, so two workers never run one request.

    A row left "streaming" by a worker that died is claimable again once it is older than
    twice the generation timeout plus a minute (no live worker can still be on it).
    """
    stale_before = services.clock() - timedelta(
        seconds=2 * services.settings.sop_generation_timeout_seconds + 60
    )
    claimable = or_(
        Generation.status.in_(("pending", "failed")),  # type: ignore[attr-defined]
        and_(Generation.status == "streaming", Generation.created_at < stale_before),
    )
    with services.session() as session:
        result = session.execute(
            update(Generation)
            .where(Generation.id == generation_id, claimable)
            .values(status="streaming", error=None, worker=current_worker())
        )
        session.commit()
        row = session.get(Generation, generation_id)
        if row is None:
            raise LookupError(f"There is no SOP generation with id {generation_id}.")
        return row, result.rowcount == 1


def _produce(run: _Run, request: str) -> _Draft:
    """Fine-tuned model when one is active, else (or when it is gone) retrieval."""
    with run.services.session() as session:  # one database round for both questions
        active = model_registry.active_model(session)
        active_id, active_model_id = (active.id, active.model_id) if active else (None, None)
        documents = None if active_model_id else approved_documents(session)
    if active_model_id:
        run.mode, run.model = MODE_FINE_TUNED, active_model_id
        messages = prompts.fine_tuned_messages(run.services.settings.sop_system_prompt, request)
        try:
            return _converse(run, messages)
        except _ModelGone as gone:
            _retire(run.services, active_id, active_model_id, gone.cause)
    run.mode, run.model = MODE_RETRIEVAL, run.services.settings.sop_base_model
    return _converse(run, _retrieval_messages(run, request, documents))


def _retrieval_messages(
    run: _Run, request: str, documents: list[Document] | None = None,
) -> list[dict[str, str]]:
    """Messages with the approved examples closest to `request` (from `documents` when the
    caller has just read them, else read now)."""
    settings = run.services.settings
    redact = run.redactor

    def example_tokens(doc: Document) -> int:
        return count_chat_tokens(prompts.example_messages(_redacted_doc(doc, redact))) - 3

    if documents is None:
        with run.services.session() as session:
            documents = approved_documents(session)
    chosen = select_examples(
        redact(request), documents, k=settings.sop_retrieval_k,
        token_budget=settings.sop_retrieval_token_budget, count_tokens=example_tokens,
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
        raise _EmptyAnswer()
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


class _EmptyAnswer(Exception):
    """The model streamed no text at all."""


def _truncation_finding(limit: int) -> object:
    return sop_format.Finding(
        code="truncated", severity="error", section=None,
        message=(f"The draft stopped at the {limit}-token output limit and is incomplete; "
                 "ask for a shorter SOP or raise SOP_MAX_OUTPUT_TOKENS."),
    )


def _stream_with_retries(run: _Run, messages: list[dict[str, str]]) -> tuple[str, str | None]:
    outgoing = run.redactor.messages(messages)  # the one place text leaves for the provider

    def before_retry(exc: BaseException, delay: float) -> None:
        run.restart()

    def attempt() -> tuple[str, str | None]:
        return _stream_once(run, outgoing)

    try:
        return call_with_retries(
            attempt, max_retries=run.services.settings.provider_max_retries,
            deadline=run.deadline, before_retry=before_retry,
        )
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
    timeout = max(0.01, min(settings.openai_timeout_seconds, run.deadline.remaining()))
    parts: list[str] = []
    finish_reason: str | None = None
    usage_seen = False
    if run.on_request is not None:
        run.on_request()
    chunks = stream_chat(
        run.client,
        model=run.model or settings.sop_base_model,
        messages=messages,
        stream_options={"include_usage": True},
        temperature=settings.sop_temperature,
        max_tokens=settings.sop_max_output_tokens,
        timeout=timeout,
    )
    with closing(chunks):
        for chunk in chunks:
            usage = chunk.get("usage")
            if usage:
                run.usage.add(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
                usage_seen = True
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    parts.append(text)
                    run.emit(text)
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
            run.check_cancel()
            run.deadline.check()
    raw = "".join(parts)
    if not usage_seen:  # some OpenAI-compatible servers ignore include_usage: estimate
        run.usage.add(count_chat_tokens(messages), count_tokens(raw))
    return raw, finish_reason


# --------------------------------------------------------------------------- outcome


def _error_sentence(exc: BaseException, run: _Run, services: Services) -> str:
    """The sentence a user sees for a failure (bugs are logged with their traceback)."""
    settings = services.settings
    seconds = f"{settings.sop_generation_timeout_seconds:g}"
    later = "Please try again in a few minutes."
    if isinstance(exc, GenerationCancelled):
        return "The draft was cancelled before it was finished. Please ask again."
    if isinstance(exc, ProviderConfigError):
        return str(exc)
    if isinstance(exc, _EmptyAnswer):
        return "The model returned an empty answer. Please try again."
    if isinstance(exc, DeadlineExceeded):
        if isinstance(exc.__cause__, openai.RateLimitError):
            return f"The model provider is rate-limiting SOP Bot for longer than {seconds} " \
                   f"seconds. {later}"
        return f"The model provider did not answer within {seconds} seconds. {later}"
    if isinstance(exc, openai.AuthenticationError):
        return "SOP Bot's OpenAI key was refused; ask an admin to check OPENAI_API_KEY."
    if isinstance(exc, openai.PermissionDeniedError):
        return (f"SOP Bot's OpenAI key may not use the model {run.model}; ask an admin to "
                "check the key's project and model permissions.")
    if is_quota_error(exc):
        return ("SOP Bot's OpenAI account has run out of credit; ask an admin to check the "
                "billing settings.")
    if isinstance(exc, openai.RateLimitError):
        return f"The model provider is rate-limiting SOP Bot right now. {later}"
    if isinstance(exc, openai.NotFoundError):
        return (f"The model {run.model} does not exist at the provider; ask an admin to "
                "check SOP_BASE_MODEL.")
    if isinstance(exc, openai.BadRequestError):
        if exc.code == "context_length_exceeded":
            return ("The request and its examples are too long for the model; shorten the "
                    "request or lower SOP_RETRIEVAL_TOKEN_BUDGET.")
        return f"The model provider rejected the request ({exc.message[:200]}). Please " \
               "rephrase it and try again."
    if isinstance(exc, openai.APITimeoutError):
        return f"The model provider did not answer within {seconds} seconds. {later}"
    if isinstance(exc, openai.APIConnectionError):
        return ("SOP Bot could not reach the model provider. Please try again in a few "
                "minutes; if it keeps happening, ask an admin to check OPENAI_BASE_URL.")
    if isinstance(exc, openai.APIStatusError):
        return f"The model provider had an error (HTTP {exc.status_code}). {later}"
    if isinstance(exc, openai.APIError):
        return f"The model provider had an error while answering. {later}"
    log.error("SOP generation failed unexpectedly", exc_info=exc)
    return ("SOP generation failed unexpectedly. Please try again; if it keeps happening, "
            "tell an admin (the details are in the bot's log).")


def draft_notice(model: str | None, when: datetime) -> str:
    """The marker every generated document carries; deliberately NOT part of the SOP text."""
    return (f"DRAFT generated by SOP Bot with model {model or 'unknown'} on "
            f"{when:%Y-%m-%d} — not an approved SOP.")


def _findings_json(findings: list) -> list[dict]:
    out = []
    for finding in findings:
        if is_dataclass(finding):
            out.append(asdict(finding))  # type: ignore[arg-type]
        else:
            out.append({k: getattr(finding, k, None)
                        for k in ("code", "severity", "message", "section")})
    return out


def _findings_from_json(items: list) -> list:
    out = []
    for item in items or []:
        try:
            out.append(sop_format.Finding(**item))
        except TypeError:
            continue
    return out


def _finish(
    services: Services, generation_id: int, run: _Run, draft: _Draft | None,
    error: str | None, latency_ms: int,
) -> GenerationResult:
    """Store the outcome and build the result; a failed run keeps no draft text."""
    template = services.template
    now = services.clock()
    completed = draft is not None and error is None
    text = sop_format.render_canonical(draft.sop, template) if completed and draft else ""
    outcome = {
        "status": "completed" if completed else "failed",
        "error": error,
        "model": run.model,
        "mode": run.mode,
        "prompt_tokens": run.usage.prompt_tokens,
        "completion_tokens": run.usage.completion_tokens,
        "latency_ms": latency_ms,
        "repair_rounds": run.repair_rounds,
        "retrieved_example_ids": list(run.retrieved),
        "findings": _findings_json(draft.findings) if completed and draft else [],
        "compliant": draft.compliant if completed and draft else None,
        "draft_text": text or None,
        "completed_at": now,
    }
    with services.session() as session:
        row = _store_outcome(session, generation_id, outcome)
        session.commit()  # the row keeps its values (expire_on_commit=False): no re-read
    return _result_from_row(services, row)


def _store_outcome(session: Session, generation_id: int, outcome: dict) -> Generation:
    """Write a run's outcome onto its row (flushed; the caller commits)."""
    row = session.get(Generation, generation_id)
    assert row is not None
    for name, value in outcome.items():
        setattr(row, name, value)
    session.add(row)
    session.flush()
    return row


def exercise_statements(session: Session, services: Services) -> None:
    """Run the statements a draft runs, inside the caller's transaction, which must roll them
    back: SQLAlchemy then has them compiled before the first burst (`sop_pipeline.warm_up`).
    A draft's final UPDATE lists only the columns that changed, so each common shape runs."""
    find_generation_by_message(session, "C0", "0.0")
    model_registry.active_model(session)
    approved_documents(session)
    for retrieved in ([], [1]):
        for findings in ([], [{}]):
            row = Generation(request="warm-up", requester=None, status="streaming",
                             worker=current_worker(), slack_channel="C0",
                             slack_thread_ts="0.0", slack_ts="0.0", created_at=services.clock())
            session.add(row)
            session.flush()
            assert row.id is not None
            session.expunge(row)  # so that it is read back, as _finish does
            _store_outcome(session, row.id, {
                "status": "completed", "model": "warm-up", "mode": MODE_RETRIEVAL,
                "prompt_tokens": 1, "completion_tokens": 1, "latency_ms": 1,
                "retrieved_example_ids": retrieved, "findings": findings, "compliant": True,
                "draft_text": "warm-up", "completed_at": services.clock(),
            })


def _result_from_row(services: Services, row: Generation) -> GenerationResult:
    """Rebuild the result from storage (also used for already-completed generations)."""
    template = services.template
    text = (row.draft_text or "") if row.status == "completed" else ""
    sop = sop_format.parse(text, template) if text else None
    generated_at = row.completed_at or row.created_at or services.clock()
    notice = draft_notice(row.model, generated_at)
    markdown = ""
    if sop is not None:
        markdown = f"_{notice}_\n\n{sop_format.render_markdown(sop, template)}"
    return GenerationResult(
        generation_id=row.id or 0, status=row.status, text=text, sop=sop,
        findings=_findings_from_json(row.findings) if text else [],
        compliant=row.compliant, model=row.model, mode=row.mode,
        prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        latency_ms=row.latency_ms, error=row.error, draft_notice=notice, markdown=markdown,
        repair_rounds=row.repair_rounds,
        retrieved_example_ids=list(row.retrieved_example_ids or []),
        generated_at=generated_at,
    )

