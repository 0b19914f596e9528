"""The provider-job steps of a training run: wait for the files, create (or adopt) the job,
poll it and store its events.

Never two jobs for one snapshot: before creating a provider job we ask the provider for a job
carrying our `snapshot_hash` in its metadata and adopt it; a per-run lock that dies with its
process (`locks.run_lock`) keeps two pollers from racing past that check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar, cast

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from sop_pipeline.models import RunState, TrainingEvent, TrainingRun
from sop_pipeline.settings import Settings
from sop_pipeline.training import sunset
from sop_pipeline.training.backend import BackendError, JobSpec, JobStatus, TrainingBackend
from sop_pipeline.training.crashpoints import crash_point
from sop_pipeline.training.runs import (
    Sleep,
    _clear_backoff,
    _fail,
    _notify,
    _snapshot,
    _transition,
)

log = logging.getLogger(__name__)

FILE_WAIT_POLLS = 30  # file_status checks per tick before giving the provider more time
FILE_WAIT_SECONDS = 2.0
POLLED_STATES = (RunState.VALIDATING_FILES, RunState.QUEUED, RunState.RUNNING)

T = TypeVar("T")


# defined here, not in steps, so that steps -> jobs is the only arrow between the two
@dataclass
class _Step:
    """What one step needs: the services, the backend and the injected sleep."""

    services: object
    backend: TrainingBackend
    sleep: Sleep

    @property
    def settings(self) -> Settings:
        return self.services.settings  # type: ignore[attr-defined]

    def call(self, fn: Callable[[], T]) -> T:
        """One provider call: the client retries inside it (`retry_policy`); a retryable
        error that survives that becomes the run's stored backoff (`_record_backoff`)."""
        return fn()


def _files_ready(step: _Step, run: TrainingRun) -> bool | None:
    """True when every file is processed, None if one failed (run failed), False to wait."""
    for file_id in filter(None, (run.train_file_id, run.validation_file_id)):
        for attempt in range(FILE_WAIT_POLLS):
            info = step.call(partial(step.backend.file_status, file_id))
            if info.status == "processed":
                break
            if info.status == "error":
                _fail(step.services, run, "file_invalid",
                      f"The provider rejected file {file_id}: "
                      f"{info.error or 'no details given'}. Check the dataset with "
                      "`sop-bot dataset check` and start a new run.")
                return None
            if attempt + 1 < FILE_WAIT_POLLS:
                step.sleep(FILE_WAIT_SECONDS)
        else:
            return False
    return True


def _adoptable(job: JobStatus | None, run: TrainingRun) -> bool:
    """A job found for our snapshot is ours to follow if it is this run's, or still live."""
    if job is None:
        return False
    if job.metadata.get("run_id") == str(run.id):
        return True
    return job.state not in (RunState.FAILED, RunState.CANCELLED)


def _create_job(step: _Step, run: TrainingRun) -> bool:
    ready = _files_ready(step, run)
    if not ready:
        return False
    with step.services.session() as session:  # type: ignore[attr-defined]
        snapshot_hash = _snapshot(session, run).content_hash
    job = step.call(lambda: step.backend.find_job(snapshot_hash))
    if _adoptable(job, run):
        log.info("run %s adopts existing job %s", run.id, job.id)  # type: ignore[union-attr]
    else:
        spec = JobSpec(
            base_model=run.base_model, training_file_id=run.train_file_id or "",
            validation_file_id=run.validation_file_id,
            hyperparameters=dict(run.hyperparameters or {}),
            suffix=step.settings.fine_tune_suffix, seed=step.settings.fine_tune_seed,
            metadata={"snapshot_hash": snapshot_hash, "run_id": str(run.id)},
        )
        try:
            job = step.call(lambda: step.backend.start_job(spec))
        except BackendError as exc:
            if _org_blocked(step, run, exc):
                return False
            raise
        crash_point("job_created")
    return _store_job(step, run, job)  # type: ignore[arg-type]


def _org_blocked(step: _Step, run: TrainingRun, exc: BackendError) -> bool:
    """OpenAI's 403 on job creation means this organisation may not fine-tune any more:
    remember it (retraining stops asking), end the run with its own sentence, tell admins once.
    A 403 naming a key's missing scopes is a restricted key: the run fails as any other."""
    if step.backend.name != "openai" or exc.status != 403:
        return False
    if sunset.is_key_scope_refusal(exc.message or ""):
        return False
    with step.services.session() as session:  # type: ignore[attr-defined]
        sunset.claim_org_blocked(session)
        session.commit()
    log.warning("OpenAI refused job creation for run %s: %s", run.id, exc.message)
    if not _transition(step.services, run.id, expect=run.state, state=RunState.FAILED,
                       error_code=sunset.ORG_BLOCKED_CODE, error_message=sunset.ORG_BLOCKED,
                       attempts=0, next_attempt_at=None):
        return True
    text = (f"Training run #{run.id} stopped and scheduled retraining will not try again: "
            f"{sunset.ORG_BLOCKED}")
    if run.trigger == "schedule":
        sunset.notify_once(step.services, sunset.stop_key("openai", "org_blocked"), "sunset",
                           text)
    else:  # an admin asked for this run: they hear how it ended, however often they ask
        _notify(step.services, "run_failed", text, run.id, error_code=sunset.ORG_BLOCKED_CODE,
                error_message=sunset.ORG_BLOCKED)
    return True


def _store_job(step: _Step, run: TrainingRun, job: JobStatus) -> bool:
    stored = _transition(step.services, run.id, expect=RunState.VALIDATING_FILES,
                         provider_job_id=job.id)
    if not stored:  # cancelled while we were creating it: do not leave it running (and billing)
        log.warning("run %s moved on while job %s was created; cancelling the job", run.id,
                    job.id)
        try:
            step.backend.cancel(job.id)
        except BackendError as exc:
            log.error("could not cancel orphan job %s: %s", job.id, exc.message)
        return False
    _notify(step.services, "run_progress",
            f"Training run #{run.id}: provider job {job.id} created.", run.id, job_id=job.id,
            state=job.state)
    return True


def _poll(step: _Step, run: TrainingRun) -> bool:
    job_id = run.provider_job_id
    if not job_id:
        return _create_job(step, run)
    job = step.call(lambda: step.backend.job_status(job_id))
    _store_new_events(step, run)
    return _apply_job_status(step, run, job)


def _apply_job_status(step: _Step, run: TrainingRun, job: JobStatus) -> bool:
    services = step.services
    if job.state == RunState.SUCCEEDED:
        ok = _transition(services, run.id, expect=run.state, state=RunState.SUCCEEDED,
                         fine_tuned_model=job.fine_tuned_model,
                         trained_tokens=job.trained_tokens, **_clear_backoff())
        if ok:
            _notify(services, "run_succeeded",
                    f"Training run #{run.id} finished: {job.fine_tuned_model} "
                    f"({job.trained_tokens or 0:,} trained tokens). Evaluating it now.",
                    run.id, model=job.fine_tuned_model, trained_tokens=job.trained_tokens)
        return ok
    if job.state == RunState.FAILED:
        _fail(services, run, job.error_code or "job_failed",
              job.error_message or "The provider reported the job as failed without details.")
        return False
    if job.state == RunState.CANCELLED:
        _transition(services, run.id, expect=run.state, state=RunState.CANCELLED,
                    error_code="cancelled_at_provider",
                    error_message="The job was cancelled at the provider.")
        return False
    if job.state != run.state and job.state in POLLED_STATES:
        if _transition(services, run.id, expect=run.state, state=job.state):
            from sop_pipeline.training.run_messages import state_words

            _notify(services, "run_progress", f"Training run #{run.id}: "
                    f"{state_words(job.state)}.", run.id, state=job.state)  # where the job is
    return False  # still training: wait for the next tick


def _store_new_events(step: _Step, run: TrainingRun) -> list[TrainingEvent]:
    """Fetch events after the newest stored one and store the unseen ones (idempotent)."""
    services = step.services
    with services.session() as session:  # type: ignore[attr-defined]
        last = session.exec(
            select(TrainingEvent.provider_event_id).where(TrainingEvent.run_id == run.id)
            .order_by(TrainingEvent.id.desc()).limit(1)  # type: ignore[union-attr]
        ).first()
    events = step.call(lambda: step.backend.events(cast(str, run.provider_job_id), after=last))
    if not events:
        return []
    with services.session() as session:  # type: ignore[attr-defined]
        seen = set(session.exec(select(TrainingEvent.provider_event_id)
                                .where(TrainingEvent.run_id == run.id)))
        new = [_event_row(cast(int, run.id), e) for e in events if e.id not in seen]
        session.add_all(new)
        try:
            session.commit()
        except IntegrityError:  # another poller stored them first
            session.rollback()
            return []
    for warning in (e for e in new if e.level == "warning"):  # e.g. examples cut to length
        _notify(services, "run_progress", f"Training run #{run.id}: {warning.message}", run.id)
    metrics = [e for e in new if e.kind == "metrics"]
    if metrics:
        latest = metrics[-1]
        _notify(services, "run_progress", _progress_text(run.id, latest), run.id,
                step=latest.step, train_loss=latest.train_loss, valid_loss=latest.valid_loss)
    return new


def _event_row(run_id: int, event) -> TrainingEvent:  # noqa: ANN001 - JobEvent
    return TrainingEvent(
        run_id=run_id, provider_event_id=event.id,
        created_at=datetime.fromtimestamp(event.created_at, UTC), level=event.level,
        kind=event.kind, message=event.message, step=event.step,
        train_loss=event.train_loss, valid_loss=event.valid_loss,
    )


def _progress_text(run_id: int | None, event: TrainingEvent) -> str:
    loss = f"train loss {event.train_loss:.4f}" if event.train_loss is not None else "no loss yet"
    if event.valid_loss is not None:
        loss += f", validation loss {event.valid_loss:.4f}"
    return f"Training run #{run_id}: step {event.step}, {loss}."
